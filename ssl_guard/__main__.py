"""`python -m ssl_guard` (and `torchrun -m ssl_guard`) runs the CLI."""

import sys

from ssl_guard.cli import main

sys.exit(main())
