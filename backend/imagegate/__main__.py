"""``python -m imagegate`` is the ``imagegate`` command."""

import sys

from imagegate.cli import main

sys.exit(main())
