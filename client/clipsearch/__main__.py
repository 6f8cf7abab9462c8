"""`python -m clipsearch`: the `clipsearch` command."""

import sys

from .cli import main

sys.exit(main())
