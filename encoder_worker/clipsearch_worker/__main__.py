"""`python -m clipsearch_worker`: the same as `clipsearch worker`."""

import sys

from clipsearch.cli import main

if __name__ == "__main__":
    sys.exit(main(["worker", *sys.argv[1:]]))
