"""The interface every congestion-control algorithm implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from kernel_slowpath.cc.hystart import HyStartPP

INITIAL_WINDOW_SEGMENTS = 10  # RFC 6928
INITIAL_SSTHRESH = 1 << 31  # "arbitrarily high" (RFC 5681 3.1)
ECN_HOLD_NO_RTT_US = 100_000  # ECN-Echo ignored this long after a cut while no RTT is known


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
    """A window (`cwnd`, bytes) and optionally a pacing rate (bytes/s).

    Undo of spurious recoveries: an algorithm that cuts its state on a loss
    event calls ``_save_undo()`` first; when the fast path later finds that
    recovery spurious (Eifel / D-SACK, it restores its own cwnd/ssthresh and
    counts ``cnt_undo``) the control loop calls ``on_undo()``, which puts
    back the attributes named in ``UNDO_FIELDS`` as they were before the cut
    (RFC 9438 4.9, Linux ``tcp_undo_cwnd``)."""

    name = "base"
    # the state an undo restores (saved at each loss event)
    UNDO_FIELDS: tuple[str, ...] = ("cwnd", "ssthresh")

    def __init__(self, mss: int, now_us: int) -> None:
        if mss <= 0:
            raise ValueError("mss must be positive")
        self.mss = mss
        self.cwnd = INITIAL_WINDOW_SEGMENTS * mss
        self.ssthresh = INITIAL_SSTHRESH
        self.pacing_rate: int | None = None
        self.last_send_us = now_us
        self._undo: dict[str, object] | None = None  # state before the last loss cut
        self._ecn_hold_until_us = 0  # ECN-Echo before then was caused before the last cut
        self.hystart: HyStartPP | None = None  # HyStart++ in the initial slow start (RFC 9406)

    @abstractmethod
    def on_interval(self, iv: Interval) -> None:
        """Update cwnd (and pacing_rate) from one interval's counters."""

    def on_idle_restart(self, now_us: int, rto_us: int) -> None:
        """RFC 5681 4.1 / RFC 7661: after an idle period longer than an RTO
        the window restarts from min(IW, cwnd)."""
        self.cwnd = min(self.cwnd, INITIAL_WINDOW_SEGMENTS * self.mss)

    def _save_undo(self) -> None:
        """Keep the state before a loss reduction, for ``on_undo``."""
        # (mutable state such as HyStart++'s is kept as a copy)
        self._undo = {
            k: (v.snapshot() if hasattr(v, "snapshot") else v)
            for k, v in ((k, getattr(self, k)) for k in self.UNDO_FIELDS)
        }

    def _drop_undo(self) -> None:
        """No undo past this point (an RTO: the fast path does not undo it)."""
        self._undo = None

    def on_undo(self, now_us: int) -> bool:
        """The last loss event was spurious: restore the state saved before
        its reduction, once.  As RFC 9438 4.9 says, only if the window is
        still below the one before the loss; a window that has already grown
        past it is kept (with its current state).  True if restored."""
        saved, self._undo = self._undo, None
        if saved is None or self.cwnd >= saved["cwnd"]:
            return False
        for k, v in saved.items():
            setattr(self, k, v)
        return True

    def _ecn_due(self, iv: Interval) -> bool:
        """True if the interval's ECN-Echo is a congestion event: at most
        one per round trip (RFC 3168 6.1.2: once per window of data), counted
        from the last reduction, loss or ECN alike (``_hold_ecn``).  Reads
        no state a quiet interval could change (ccloop.SKIP_QUIET)."""
        return bool(iv.ecn_bytes) and iv.now_us >= self._ecn_hold_until_us

    def _hold_ecn(self, iv: Interval) -> None:
        """A reduction just happened: ECN-Echo for what is in flight now
        was caused before it and must not cut the window again."""
        self._ecn_hold_until_us = iv.now_us + (iv.rtt_us or ECN_HOLD_NO_RTT_US)

    def in_slow_start(self) -> bool:
        return self.cwnd < self.ssthresh

    def _end_hystart(self) -> None:
        """A loss or an RTO: HyStart++ is over (the loss response sets ssthresh)."""
        if self.hystart is not None:
            self.hystart.stop()

    def _slow_start(self, iv: Interval) -> bool:
        """Slow-start growth for one interval (RFC 5681 with byte counting,
        up to ssthresh), through HyStart++ while it runs.  Returns True if
        the interval was consumed (the caller stops there): HyStart++ sees
        every interval with acknowledged data, also the not cwnd-limited
        ones (RTT samples and rounds), and grows only when limited."""
        hs = self.hystart
        grow = not iv.app_limited and iv.acked_bytes > 0
        if hs is not None and hs.active:
            if self.ssthresh < INITIAL_SSTHRESH:
                hs.stop()  # RFC 9406 4.3: only the initial slow start
            else:  # (loss and ECN-Echo end it through the algorithm's response: _end_hystart)
                acks = -(-iv.acked_bytes // (2 * self.mss))  # ACKs the srtt reading summarises
                inc, done = hs.on_ack(iv.acked_bytes, iv.in_flight, iv.rtt_us, grow, acks)
                if inc:
                    self.cwnd = min(self.cwnd + inc, max(self.ssthresh, self.cwnd + self.mss))
                if done:
                    self.ssthresh = max(int(self.cwnd), 2 * self.mss)  # CSS_ROUNDS over
                return True
        if grow:
            self.cwnd = min(self.cwnd + iv.acked_bytes, max(self.ssthresh, self.cwnd + self.mss))
        return True

    def _floor(self) -> None:
        self.cwnd = max(self.cwnd, self.mss)
