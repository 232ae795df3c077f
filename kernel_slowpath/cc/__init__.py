"""Congestion control, decided in the slow path (the TAS split).

The fast path counts per flow (bytes acknowledged, ECN-echoed bytes,
retransmissions, RTT); on a control interval the slow path feeds the
deltas to one of these sans-I/O algorithms, which answer with a congestion
window (bytes) and, for rate-based variants, a pacing rate (bytes/s) the
fast path enforces.  Time is passed in as integer microseconds.
"""

from __future__ import annotations

from kernel_slowpath.cc.base import CongestionControl, Interval
from kernel_slowpath.cc.const import ConstRate
from kernel_slowpath.cc.cubic import Cubic
from kernel_slowpath.cc.dctcp import Dctcp
from kernel_slowpath.cc.newreno import NewReno

ALGORITHMS: dict[str, type[CongestionControl]] = {
    "newreno": NewReno,
    "cubic": Cubic,
    "dctcp": Dctcp,
    "const": ConstRate,
}


def make(name: str, mss: int, now_us: int, **params) -> CongestionControl:
    """The algorithm registered as `name` (KeyError lists the choices)."""
    try:
        cls = ALGORITHMS[name]
    except KeyError:
        raise KeyError(
            f"unknown congestion control {name!r}; choose from {', '.join(sorted(ALGORITHMS))}"
        ) from None
    return cls(mss=mss, now_us=now_us, **params)


__all__ = ["ALGORITHMS", "CongestionControl", "ConstRate", "Cubic", "Dctcp", "Interval", "NewReno", "make"]
