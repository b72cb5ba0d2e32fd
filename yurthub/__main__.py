import sys

from yurthub import cli

sys.exit(cli.main())
