import sys

from selfprune.cli import main

sys.exit(main())
