"""``python -m client`` runs the ``parley`` command."""

import sys

from client.cli import main

sys.exit(main())
