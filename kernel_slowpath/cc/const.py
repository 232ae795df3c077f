"""A fixed pacing rate, for experiments: the window only bounds in-flight
data to rate x RTT (with a floor), the pacer does the rest."""

from __future__ import annotations

from kernel_slowpath.cc.base import CongestionControl, Interval


class ConstRate(CongestionControl):
    name = "const"

    def __init__(self, mss: int, now_us: int, rate_bps: int = 1_000_000_000) -> None:
        super().__init__(mss, now_us)
        if rate_bps <= 0:
            raise ValueError("rate must be positive")
        self.pacing_rate = rate_bps // 8

    def on_interval(self, iv: Interval) -> None:
        rtt_s = max(iv.rtt_us, 100) / 1e6
        self.cwnd = max(int(self.pacing_rate * rtt_s * 2), 4 * self.mss)
