"""`python -m lmlang ...` is the `lmlang` command."""

import sys

from lmlang.cli import main

if __name__ == "__main__":
    sys.exit(main())
