"""``python -m modelyard.cli``: the same as the ``modelyard`` command."""

import sys

from modelyard.cli import main

sys.exit(main())
