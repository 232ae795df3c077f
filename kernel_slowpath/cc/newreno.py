"""NewReno (RFC 5681, RFC 6582) in the per-interval form, with HyStart++
(RFC 9406) in the initial slow start."""

from __future__ import annotations

from kernel_slowpath.cc.base import CongestionControl, Interval
from kernel_slowpath.cc.hystart import HyStartPP


class NewReno(CongestionControl):
    name = "newreno"
    UNDO_FIELDS = ("cwnd", "ssthresh", "hystart")

    def __init__(self, mss: int, now_us: int, hystart: bool = True) -> None:
        super().__init__(mss, now_us)
        self.hystart = HyStartPP() if hystart else None

    def on_interval(self, iv: Interval) -> None:
        ecn = self._ecn_due(iv)
        if iv.rto:
            self._drop_undo()
            self._end_hystart()
            # RFC 5681 (4): ssthresh = max(FlightSize / 2, 2*SMSS); cwnd = 1 SMSS
            self.ssthresh = max(iv.in_flight // 2, 2 * self.mss)
            self.cwnd = self.mss
            self._hold_ecn(iv)
            return
        if iv.loss_events or ecn:
            # RFC 5681 (4) on fast retransmit, deflated after recovery (RFC 6582);
            # ECN-Echo the same, without a retransmission (RFC 3168 6.1.2) and
            # never undone (Linux tcp_enter_cwr)
            if iv.loss_events:
                self._save_undo()
            else:
                self._drop_undo()
            self._end_hystart()
            self.ssthresh = max(iv.in_flight // 2, 2 * self.mss)
            self.cwnd = self.ssthresh
            self._hold_ecn(iv)
            return
        if self.in_slow_start() and iv.acked_bytes:
            # RFC 5681 (2) with appropriate byte counting (RFC 3465, L = 2 SMSS per ACK
            # is the per-ACK cap; per interval the acked bytes grow the window)
            self._slow_start(iv)
            return
        if iv.app_limited or not iv.acked_bytes:
            return
        # RFC 5681 (3): cwnd += SMSS*SMSS/cwnd per ACK ~ SMSS * acked / cwnd
        self.cwnd += max(1, self.mss * iv.acked_bytes // self.cwnd)
