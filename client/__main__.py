"""python -m medfed.client: the same as fed-client."""

import sys

from medfed.client.app import main

sys.exit(main())
