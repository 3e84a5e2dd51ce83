"""`python -m loom.cli.loomctl`: the same as the `loomctl` console script."""

import sys

from loom.cli.loomctl import main

sys.exit(main())
