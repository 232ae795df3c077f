"""CUBIC (RFC 9438) in the per-interval form, window in bytes, with
HyStart++ (RFC 9406, RFC 9438 4.10) in the initial slow start."""

from __future__ import annotations

from kernel_slowpath.cc.base import CongestionControl, Interval
from kernel_slowpath.cc.hystart import HyStartPP

C = 0.4  # RFC 9438 4.2 (segments / s^3)
BETA = 0.7  # RFC 9438 4.6 multiplicative decrease factor
ALPHA = 3 * (1 - BETA) / (1 + BETA)  # RFC 9438 4.3 Reno-friendly additive increase


class Cubic(CongestionControl):
    name = "cubic"
    # RFC 9438 4.9: prior_cwnd, prior_ssthresh, prior_W_max, prior_K,
    # prior_epoch_start, prior_W_est (and the epoch's starting window); HyStart++'s state
    UNDO_FIELDS = ("cwnd", "ssthresh", "w_max", "k", "epoch_us", "w_est", "cwnd_epoch", "hystart")

    def __init__(self, mss: int, now_us: int, fast_convergence: bool = True, hystart: bool = True) -> None:
        super().__init__(mss, now_us)
        self.hystart = HyStartPP() if hystart else None
        self.fast_convergence = fast_convergence
        self.w_max = 0.0  # segments, window before the last reduction
        self.k = 0.0  # seconds until W_cubic reaches w_max
        self.epoch_us: int | None = None
        self.w_est = 0.0  # segments, Reno-friendly estimate (RFC 9438 4.3)
        self.cwnd_epoch = 0.0  # segments at the start of the epoch

    def w_cubic(self, t_s: float) -> float:
        """RFC 9438 eq. 1: W_cubic(t) = C*(t-K)^3 + W_max (segments)."""
        return C * (t_s - self.k) ** 3 + self.w_max

    def _reduce(self, in_flight: int) -> None:
        cwnd_seg = self.cwnd / self.mss
        # RFC 9438 4.7 fast convergence
        if self.fast_convergence and cwnd_seg < self.w_max:
            self.w_max = cwnd_seg * (1 + BETA) / 2
        else:
            self.w_max = cwnd_seg
        self.ssthresh = max(int(cwnd_seg * BETA * self.mss), 2 * self.mss)
        self.epoch_us = None

    def on_interval(self, iv: Interval) -> None:
        ecn = self._ecn_due(iv)
        if iv.rto:
            self._drop_undo()
            self._end_hystart()
            self._reduce(iv.in_flight)
            self.cwnd = self.mss  # RFC 9438 4.8
            self._hold_ecn(iv)
            return
        if iv.loss_events or ecn:
            # RFC 9438 4.6: a loss or ECN-Echo (RFC 3168 6.1.2) is a congestion
            # event; HyStart++ ends with it (RFC 9406 4.2).  An ECN cut is not
            # undone (no retransmission to find spurious; Linux tcp_enter_cwr)
            if iv.loss_events:
                self._save_undo()
            else:
                self._drop_undo()
            self._end_hystart()
            self._reduce(iv.in_flight)
            self.cwnd = self.ssthresh
            self._hold_ecn(iv)
            return
        if self.in_slow_start() and iv.acked_bytes:
            # slow start (RFC 9438 4.10: HyStart++); leaving it without a
            # loss, the first epoch starts with W_max = cwnd, K = 0 (below)
            self._slow_start(iv)
            return
        if iv.app_limited or not iv.acked_bytes:
            return
        cwnd_seg = self.cwnd / self.mss
        if self.epoch_us is None:
            # RFC 9438 4.2: a new congestion-avoidance epoch
            self.epoch_us = iv.now_us
            self.cwnd_epoch = cwnd_seg
            self.w_est = cwnd_seg
            if self.w_max <= cwnd_seg:
                self.k = 0.0
                self.w_max = cwnd_seg
            else:
                self.k = ((self.w_max - cwnd_seg) / C) ** (1 / 3)  # RFC 9438 eq. 2
        t = (iv.now_us - self.epoch_us) / 1e6
        rtt = max(iv.rtt_us, 1) / 1e6
        target = self.w_cubic(t + rtt)
        # RFC 9438 4.3 Reno-friendly estimate
        self.w_est += ALPHA * (iv.acked_bytes / self.mss) / max(cwnd_seg, 1.0)
        if self.w_est > self.w_cubic(t):
            new = self.w_est
        else:
            # RFC 9438 4.4/4.5: grow by (target - cwnd)/cwnd per acked segment, capped at 1.5x
            target = min(max(target, cwnd_seg), 1.5 * cwnd_seg)
            new = cwnd_seg + (target - cwnd_seg) / cwnd_seg * (iv.acked_bytes / self.mss)
        self.cwnd = max(int(new * self.mss), self.mss)
