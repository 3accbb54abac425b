"""``python -m flows.cli``: the ``sonufy`` command without its installed script."""

import sys

from flows.cli import main

sys.exit(main())
