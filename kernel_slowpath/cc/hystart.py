"""HyStart++ (RFC 9406): leave slow start on a rise of the per-round
minimum RTT, through a Conservative Slow Start (CSS) phase that returns to
slow start if the rise was not the flow's own queue.

Sans-I/O, fed once per control interval by the algorithm that owns it
(NewReno and CUBIC here).  What the RFC does per ACK is done per interval:

* the RTT sample is the flow's smoothed RTT read in that interval (the
  fast path's RTT samples come from timestamps with 1 ms resolution and
  are smoothed per RFC 6298; the control loop sees srtt, not each sample).
  One reading stands for the ACKs of the interval it summarises: the
  owner passes their estimated number (acked / 2 MSS, delayed ACKs, at
  least 1) and ``N_RTT_SAMPLE`` counts those, so the check comes after
  about as many ACKs of the round as the RFC's per-ACK form waits for;
* rounds are counted in acknowledged bytes: a round ends once the bytes
  acknowledged since the start of the connection reach ``window_end``,
  which is SND.NXT at the round's start (bytes acked so far + in flight);
* ``L`` (the per-ACK cap on the bytes applied to cwnd) is infinity: RFC 9406
  4.2 says a paced sender SHOULD use that, and the stack paces.  The loop
  does not see individual ACKs, so ``L = 8`` for ``--no-pacing`` is not
  applied.

HyStart++ runs only in the initial slow start (RFC 9406 4.3: ssthresh still
at its initial value); a loss, an RTO or ECN-Echo during slow start or CSS
ends it (the algorithm's own response sets ssthresh), as does a finished
CSS (ssthresh = cwnd).

Constants (RFC 9406 4.3, all the RFC's recommended values):
"""

from __future__ import annotations

import copy

MIN_RTT_THRESH_US = 4_000  # lower clamp of the delay-increase threshold
MAX_RTT_THRESH_US = 16_000  # upper clamp
MIN_RTT_DIVISOR = 8  # threshold = lastRoundMinRTT / 8, clamped
N_RTT_SAMPLE = 8  # samples a round needs before the check
CSS_GROWTH_DIVISOR = 4  # CSS grows cwnd by acked / 4 (slow start: acked)
CSS_ROUNDS = 5  # rounds of CSS before congestion avoidance

INF = 1 << 62  # "infinity" for RTTs (us)

SLOW_START = "slow-start"
CSS = "css"
DONE = "done"  # congestion avoidance, or HyStart++ not in use


def rtt_thresh(last_round_min_us: int) -> int:
    """RttThresh = max(MIN_RTT_THRESH, min(lastRoundMinRTT / MIN_RTT_DIVISOR,
    MAX_RTT_THRESH)) (RFC 9406 4.2)."""
    return max(MIN_RTT_THRESH_US, min(last_round_min_us // MIN_RTT_DIVISOR, MAX_RTT_THRESH_US))


class HyStartPP:
    """One flow's HyStart++ state.  The owner calls ``on_ack`` for every
    interval in slow start and adds the returned bytes to cwnd; when
    ``on_ack`` reports the end of slow start the owner sets ssthresh = cwnd
    (congestion avoidance).  ``stop()`` on a loss, RTO or ECN-Echo."""

    def __init__(self) -> None:
        self.state = SLOW_START
        self.last_round_min = INF  # lastRoundMinRTT
        self.cur_round_min = INF  # currentRoundMinRTT
        self.samples = 0  # rttSampleCount
        self.acked_total = 0  # bytes acknowledged so far (SND.UNA, relative)
        self.window_end: int | None = None  # windowEnd, relative like acked_total
        self.css_baseline = INF  # cssBaselineMinRtt
        self.css_rounds = 0  # rounds begun since CSS was entered
        self.rounds = 0  # rounds begun (for tests / traces)
        # transitions, for the control loop's counters
        self.css_entries = 0
        self.ss_resumes = 0
        self.exits = 0

    @property
    def active(self) -> bool:
        return self.state != DONE

    @property
    def in_css(self) -> bool:
        return self.state == CSS

    def stop(self) -> None:
        """Loss / RTO / ECN during slow start or CSS (RFC 9406 4.2: enter
        congestion avoidance; the algorithm's response sets ssthresh)."""
        self.state = DONE

    def snapshot(self) -> HyStartPP:
        """A copy, kept with the algorithm's undo state."""
        return copy.copy(self)

    def _new_round(self, in_flight: int) -> None:
        self.window_end = self.acked_total + in_flight  # SND.NXT
        self.last_round_min = self.cur_round_min
        self.cur_round_min = INF
        self.samples = 0
        self.rounds += 1
        if self.state == CSS:
            self.css_rounds += 1

    def on_ack(
        self, acked: int, in_flight: int, rtt_us: int, grow: bool = True, samples: int = 1
    ) -> tuple[int, bool]:
        """One interval: bytes newly acknowledged, bytes in flight after
        them, the RTT sample (0: none).  Returns (bytes to add to cwnd,
        True if slow start is over: the owner adds them, then sets
        ssthresh = cwnd).  `grow` False: the flow is not cwnd-limited; the
        RTT is sampled and rounds are counted, the window does not grow.
        `samples`: how many ACKs (RTT samples) the RTT reading stands for.

        An interval belongs to the round it is acknowledged in; the one
        that reaches ``window_end`` is the round's last, and the next round
        ends at SND.NXT as of then (acked + in flight)."""
        if self.state == DONE:
            return (acked if grow else 0), False
        if acked <= 0:
            return 0, False
        self.acked_total += acked
        if self.window_end is None:
            self._new_round(in_flight)
        if rtt_us > 0:
            self.cur_round_min = min(self.cur_round_min, rtt_us)
            self.samples += max(1, samples)
        inc = acked if grow else 0
        enough = self.samples >= N_RTT_SAMPLE and self.cur_round_min != INF
        if self.state == SLOW_START:
            if (
                enough
                and self.last_round_min != INF
                and self.cur_round_min >= self.last_round_min + rtt_thresh(self.last_round_min)
            ):
                # the delay rose: Conservative Slow Start from here
                self.css_baseline = self.cur_round_min
                self.state = CSS
                self.css_rounds = 0
                self.css_entries += 1
        else:  # CSS
            inc //= CSS_GROWTH_DIVISOR
            if enough and self.cur_round_min < self.css_baseline:
                # the RTT fell below the baseline: the exit was spurious
                # (jitter), back to slow start
                self.css_baseline = INF
                self.state = SLOW_START
                self.ss_resumes += 1
        if self.acked_total >= self.window_end:
            # windowEnd acknowledged: the round is over
            self._new_round(in_flight)
            if self.state == CSS and self.css_rounds >= CSS_ROUNDS:
                # CSS_ROUNDS rounds of CSS (the partial round it began in is
                # the first) -> congestion avoidance
                self.state = DONE
                self.exits += 1
                return inc, True
        return inc, False
