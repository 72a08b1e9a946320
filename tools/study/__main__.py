import sys

from medfed.tools.study.cli import main

sys.exit(main())
