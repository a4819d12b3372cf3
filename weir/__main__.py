"""``python -m weir``: the same as the ``weir`` command (see :mod:`weir.entry`)."""

import sys

from weir.entry import main

if __name__ == "__main__":
    sys.exit(main())
