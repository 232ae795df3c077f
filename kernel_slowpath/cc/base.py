"""The interface every congestion-control algorithm implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

INITIAL_WINDOW_SEGMENTS = 10  # RFC 6928


@dataclass(frozen=True)
class Interval:
    """What the fast path counted for one flow since the last control step."""

    now_us: int
    acked_bytes: int = 0  # newly acknowledged bytes
    ecn_bytes: int = 0  # of those, acknowledged with ECN-Echo
    loss_events: int = 0  # fast retransmits (one per recovery episode)
    rto: bool = False  # a retransmission timeout fired
    rtt_us: int = 0  # latest smoothed RTT (0: none yet)
    in_flight: int = 0  # bytes outstanding now
    app_limited: bool = False  # the sender had nothing more to send


class CongestionControl(ABC):
    """A window (`cwnd`, bytes) and optionally a pacing rate (bytes/s)."""

    name = "base"

    def __init__(self, mss: int, now_us: int) -> None:
        if mss <= 0:
            raise ValueError("mss must be positive")
        self.mss = mss
        self.cwnd = INITIAL_WINDOW_SEGMENTS * mss
        self.ssthresh = 1 << 31
        self.pacing_rate: int | None = None
        self.last_send_us = now_us

    @abstractmethod
    def on_interval(self, iv: Interval) -> None:
        """Update cwnd (and pacing_rate) from one interval's counters."""

    def on_idle_restart(self, now_us: int, rto_us: int) -> None:
        """RFC 5681 4.1 / RFC 7661: after an idle period longer than an RTO
        the window restarts from min(IW, cwnd)."""
        self.cwnd = min(self.cwnd, INITIAL_WINDOW_SEGMENTS * self.mss)

    def in_slow_start(self) -> bool:
        return self.cwnd < self.ssthresh

    def _floor(self) -> None:
        self.cwnd = max(self.cwnd, self.mss)
