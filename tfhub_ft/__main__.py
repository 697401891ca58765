"""`python -m tfhub_ft ...` runs the `tfhub_ft` command."""

from tfhub_ft import cli

if __name__ == "__main__":
    cli.run()
