#!/usr/bin/env python3
"""Run the seeded userspace link emulator (see nicemu/linkemu.py).

    scripts/linkemu.py --ns NS --a IF --b IF [--loss PCT] [--delay-ms MS] [--jitter-ms MS]
        [--reorder PCT --reorder-ms MS] [--dup PCT] [--corrupt PCT] [--rate-mbit M]
        [--queue-bytes B] [--ecn-bytes B] [--ab k=v,...] [--ba k=v,...]
        [--seed N] [--duration S] [--pure]

With `scripts/topology.py up --link emu --prefix P`, use --ns Pstk --a Pv1 --b Pe0.
Prints READY once forwarding, and the stats as JSON on exit (SIGINT/SIGTERM or --duration).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nicemu.linkemu import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
