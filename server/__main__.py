"""python -m medfed.server: the same as fed-server."""

import sys

from medfed.server.app import main

sys.exit(main())
