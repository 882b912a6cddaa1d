"""`python -m attnkit` is the `attnkit` command (so `accelerate launch -m attnkit batch ...` runs it per process)."""

import sys

from .cli import main

sys.exit(main())
