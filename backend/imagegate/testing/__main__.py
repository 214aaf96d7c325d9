"""``python -m imagegate.testing <kind> --port P [--tls]``."""

import sys

from imagegate.testing.cli import main

sys.exit(main())
