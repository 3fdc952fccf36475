"""`python -m cogrpo.train --config C`: the training entry point for `ray job submit` and scripts."""

import sys

from cogrpo.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
