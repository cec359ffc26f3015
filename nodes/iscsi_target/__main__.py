"""Entry point: python -m nodes.iscsi_target (see the package docstring)."""

import sys

from . import main

sys.exit(main())
