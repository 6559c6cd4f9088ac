"""`python -m smtriton` runs the same command line as the `smtriton` script."""

import sys

from smtriton.cli import main

sys.exit(main())
