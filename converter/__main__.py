"""`python -m converter ...` is `yurtctl ...`; `python -m converter manager ...` is `yurt-manager ...`."""

import sys

from converter import cli

sys.exit(cli.main())
