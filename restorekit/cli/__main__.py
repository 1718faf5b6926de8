"""``python -m restorekit.cli``: the same as the ``restorekit`` command."""

import sys

from restorekit.cli import main

sys.exit(main())
