"""`python -m tfhub_ft ...` runs the `tfhub_ft` command."""

import sys

from tfhub_ft import cli

if __name__ == "__main__":
    sys.exit(cli.main())
