"""`python -m recipes.policy_split_default [--yes] [--dryrun] [--detach] [options] [section.field=value ...]`: see recipes/cli.py."""

import sys

from recipes.cli import main

if __name__ == "__main__":
    sys.exit(main("policy_split_default"))
