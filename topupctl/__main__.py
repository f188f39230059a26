import sys

from topupctl.cli import main

sys.exit(main())
