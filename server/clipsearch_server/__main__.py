"""`python -m clipsearch_server`: the same as `clipsearch server`."""

import sys

from clipsearch.cli import main

if __name__ == "__main__":
    sys.exit(main(["server", *sys.argv[1:]]))
