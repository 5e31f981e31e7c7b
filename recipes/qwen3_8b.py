"""`python -m recipes.qwen3_8b [--yes] [--dryrun] [--detach] [options] [section.field=value ...]`: see recipes/cli.py."""

import sys

from recipes.cli import main

if __name__ == "__main__":
    sys.exit(main("qwen3_8b"))
