import sys

from nasdd.cli import main

sys.exit(main())
