"""``python -m nfapps`` is the ``nfapps`` command."""

import sys

from .cli import main

sys.exit(main())
