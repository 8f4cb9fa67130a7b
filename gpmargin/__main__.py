import sys

from gpmargin.cli import main

sys.exit(main())
