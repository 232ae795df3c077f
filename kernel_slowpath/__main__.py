import sys

from kernel_slowpath.cli import main

sys.exit(main())
