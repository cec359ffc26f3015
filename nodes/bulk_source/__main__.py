"""Entry point: python -m nodes.bulk_source (see the package docstring)."""

import sys

from . import main

sys.exit(main())
