"""`python -m reconciler` is the `reconcile` command."""

import sys

from reconciler.cli.main import main

sys.exit(main())
