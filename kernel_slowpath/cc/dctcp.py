"""DCTCP (RFC 8257), window form: cwnd *= (1 - alpha/2) once per window
with marks, alpha an EWMA of the marked fraction; Reno otherwise and on
loss (RFC 8257 3.5)."""

from __future__ import annotations

from kernel_slowpath.cc.base import CongestionControl, Interval
from kernel_slowpath.cc.newreno import NewReno

G = 1 / 16  # RFC 8257 4.2 estimation gain


class Dctcp(CongestionControl):
    name = "dctcp"

    def __init__(self, mss: int, now_us: int, g: float = G) -> None:
        super().__init__(mss, now_us)
        self.g = g
        self.alpha = 1.0  # RFC 8257 3.3: DCTCP.Alpha initialised to 1
        self._acked = 0
        self._marked = 0
        self._window_end_bytes = self.cwnd
        self._reno = NewReno(mss, now_us, hystart=False)  # DCTCP leaves slow start on marks

    def on_interval(self, iv: Interval) -> None:
        if iv.rto or iv.loss_events:
            # loss response is NewReno's (RFC 8257 3.5); an undo puts the
            # window back as it was, alpha is not touched by a loss
            if iv.rto:
                self._drop_undo()
            else:
                self._save_undo()
            self._reno.cwnd, self._reno.ssthresh = self.cwnd, self.ssthresh
            self._reno.on_interval(iv)
            self.cwnd, self.ssthresh = self._reno.cwnd, self._reno.ssthresh
            return
        self._acked += iv.acked_bytes
        self._marked += iv.ecn_bytes
        if self._acked >= self._window_end_bytes:
            # one observation window (about one cwnd of data) has passed
            frac = self._marked / self._acked if self._acked else 0.0
            self.alpha = (1 - self.g) * self.alpha + self.g * frac  # RFC 8257 3.3
            if self._marked:
                self.cwnd = max(int(self.cwnd * (1 - self.alpha / 2)), 2 * self.mss)  # RFC 8257 3.4
                self.ssthresh = self.cwnd
            self._acked = self._marked = 0
            self._window_end_bytes = self.cwnd
            if frac:
                return
        if iv.ecn_bytes or iv.app_limited or not iv.acked_bytes:
            return
        self._reno.cwnd, self._reno.ssthresh = self.cwnd, self.ssthresh
        self._reno.on_interval(iv)
        self.cwnd = self._reno.cwnd
