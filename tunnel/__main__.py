"""`python -m tunnel server ...` or `python -m tunnel agent ...`."""

import sys

from tunnel import cli

sys.exit(cli.main())
