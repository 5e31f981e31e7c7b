"""`python -m recipes --recipe NAME ...`: see recipes/cli.py."""

import sys

from recipes.cli import main

sys.exit(main())
