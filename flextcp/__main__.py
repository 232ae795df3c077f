"""`python -m flextcp`: a fast-path process (see flextcp.loop)."""

import sys

from flextcp.loop import main

sys.exit(main())
