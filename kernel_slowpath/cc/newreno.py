"""NewReno (RFC 5681, RFC 6582) in the per-interval form."""

from __future__ import annotations

from kernel_slowpath.cc.base import CongestionControl, Interval


class NewReno(CongestionControl):
    name = "newreno"

    def on_interval(self, iv: Interval) -> None:
        if iv.rto:
            self._drop_undo()
            # RFC 5681 (4): ssthresh = max(FlightSize / 2, 2*SMSS); cwnd = 1 SMSS
            self.ssthresh = max(iv.in_flight // 2, 2 * self.mss)
            self.cwnd = self.mss
            return
        if iv.loss_events:
            # RFC 5681 (4) on fast retransmit, deflated after recovery (RFC 6582)
            self._save_undo()
            self.ssthresh = max(iv.in_flight // 2, 2 * self.mss)
            self.cwnd = self.ssthresh
            return
        if iv.app_limited or not iv.acked_bytes:
            return
        if self.in_slow_start():
            # RFC 5681 (2) with appropriate byte counting (RFC 3465, L = 2 SMSS per ACK
            # is the per-ACK cap; per interval the acked bytes grow the window)
            self.cwnd = min(self.cwnd + iv.acked_bytes, max(self.ssthresh, self.cwnd + self.mss))
        else:
            # RFC 5681 (3): cwnd += SMSS*SMSS/cwnd per ACK ~ SMSS * acked / cwnd
            self.cwnd += max(1, self.mss * iv.acked_bytes // self.cwnd)
