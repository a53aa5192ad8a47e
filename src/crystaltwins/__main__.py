"""``python -m crystaltwins``: the command-line tool."""

import sys

from crystaltwins.cli.main import main

sys.exit(main())
