"""``python -m weir``: the same as the ``weir`` command (see :mod:`weir.entry`)."""

import sys

from weir.entry import main

sys.exit(main())
