import sys

from cogrpo.cli import main

sys.exit(main())
