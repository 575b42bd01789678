"""`python -m lbkit`: the same as the `lbkit` command."""

import sys

from lbkit.cli import main

sys.exit(main())
