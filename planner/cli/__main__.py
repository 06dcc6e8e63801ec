"""`python -m planner.cli ...`: the same as the `planner` command."""

import sys

from planner.cli import main

if __name__ == "__main__":  # importing this module (a package walk, a docs tool) must not run the CLI
    sys.exit(main())
