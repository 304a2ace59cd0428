"""``python -m authswitch`` is the ``authswitch`` command."""

import sys

from authswitch.cli import main

sys.exit(main())
