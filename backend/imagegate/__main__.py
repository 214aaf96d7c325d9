"""``python -m imagegate`` is the ``imagegate`` command."""

import sys

from imagegate.cli.main import main

sys.exit(main())
