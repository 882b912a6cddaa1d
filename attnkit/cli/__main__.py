"""`python -m attnkit.cli` is the `attnkit` command."""

import sys

from . import main

sys.exit(main())
