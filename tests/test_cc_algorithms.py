"""Congestion-control algorithms as sans-I/O code against the RFC formulas,
driven by a fake clock (no network)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel_slowpath import cc
from kernel_slowpath.cc.base import Interval
from kernel_slowpath.cc.cubic import BETA, C

MSS = 1000
RTT = 20_000  # µs


def run_rtts(alg, n: int, t0: int = 0, ecn_frac: float = 0.0) -> list[int]:
    """Feed n RTT-long intervals in which a full window is acknowledged."""
    trace = []
    t = t0
    for _ in range(n):
        t += RTT
        acked = alg.cwnd
        alg.on_interval(
            Interval(
                now_us=t, acked_bytes=acked, ecn_bytes=int(acked * ecn_frac), rtt_us=RTT, in_flight=alg.cwnd
            )
        )
        trace.append(alg.cwnd)
    return trace


def test_registry():
    assert set(cc.ALGORITHMS) == {"newreno", "cubic", "dctcp", "const"}
    assert cc.make("cubic", MSS, 0).cwnd == 10 * MSS  # RFC 6928 IW10
    with pytest.raises(KeyError, match="choose from"):
        cc.make("bbr", MSS, 0)


def test_newreno_slow_start_doubles_then_linear():
    a = cc.make("newreno", MSS, 0)
    a.ssthresh = 80 * MSS
    trace = run_rtts(a, 3)
    assert trace == [20 * MSS, 40 * MSS, 80 * MSS]
    before = a.cwnd
    run_rtts(a, 5, t0=10 * RTT)
    # congestion avoidance: about one MSS per RTT (RFC 5681 3.1)
    assert 4 * MSS <= a.cwnd - before <= 6 * MSS


def test_newreno_loss_and_rto():
    a = cc.make("newreno", MSS, 0)
    a.cwnd = 100 * MSS
    a.on_interval(Interval(now_us=1, loss_events=1, in_flight=100 * MSS))
    assert a.ssthresh == 50 * MSS and a.cwnd == 50 * MSS
    a.on_interval(Interval(now_us=2, rto=True, in_flight=40 * MSS))
    assert a.cwnd == MSS and a.ssthresh == 20 * MSS


def test_cubic_reduction_and_k():
    a = cc.make("cubic", MSS, 0)
    a.cwnd = 100 * MSS
    a.ssthresh = 1  # congestion avoidance
    a.on_interval(Interval(now_us=0, loss_events=1, in_flight=100 * MSS))
    assert a.cwnd == int(100 * BETA) * MSS  # RFC 9438 4.6
    assert a.w_max == pytest.approx(100)
    run_rtts(a, 1)  # opens the epoch
    k = ((100 - 70) / C) ** (1 / 3)  # RFC 9438 eq. 2: K = cbrt(W_max (1 - beta) / C)
    assert a.k == pytest.approx(k, rel=0.05)


def test_cubic_shape_concave_then_convex():
    # a large window, so CUBIC is in its cubic region, not the Reno-friendly one
    a = cc.make("cubic", MSS, 0)
    a.cwnd = 1000 * MSS
    a.ssthresh = 1
    a.fast_convergence = False
    a.on_interval(Interval(now_us=0, loss_events=1, in_flight=1000 * MSS))
    assert a.cwnd == 700 * MSS
    trace = [c / MSS for c in run_rtts(a, int(18e6 / RTT))]  # 18 s at 20 ms
    k_rtts = int(a.k * 1e6 / RTT)
    assert a.k == pytest.approx((1000 * (1 - BETA) / C) ** (1 / 3), rel=0.01)
    # grows after the loss, approaches W_max near K, and exceeds it later
    assert trace[5] > 700
    assert trace[k_rtts] == pytest.approx(1000, rel=0.05)
    assert trace[-1] > 1150  # W_cubic(18 s - K) = C (18 - K)^3 + W_max ~ 1280
    inc_early = trace[k_rtts // 4 + 5] - trace[k_rtts // 4]
    inc_plateau = trace[k_rtts + 2] - trace[k_rtts - 3]
    inc_late = trace[-1] - trace[-6]
    assert inc_early > inc_plateau < inc_late  # concave, plateau, convex


def test_cubic_fast_convergence():
    a = cc.make("cubic", MSS, 0)
    a.cwnd, a.ssthresh, a.w_max = 80 * MSS, 1, 100.0
    a.on_interval(Interval(now_us=0, loss_events=1, in_flight=80 * MSS))
    assert a.w_max == pytest.approx(80 * (1 + BETA) / 2)  # RFC 9438 4.7


def test_dctcp_alpha_converges_to_marked_fraction():
    a = cc.make("dctcp", MSS, 0)
    a.ssthresh = 1
    a.cwnd = 100 * MSS
    for _ in range(300):
        run_rtts(a, 1, ecn_frac=0.1)
        a.cwnd = 100 * MSS  # hold the window so every interval is one observation window
    assert a.alpha == pytest.approx(0.1, abs=0.02)


def test_dctcp_cut_is_alpha_over_two():
    a = cc.make("dctcp", MSS, 0)
    a.cwnd, a.ssthresh = 100 * MSS, 1
    a.alpha = 0.5
    a.on_interval(Interval(now_us=RTT, acked_bytes=100 * MSS, ecn_bytes=100 * MSS, rtt_us=RTT))
    # alpha <- (1-g)*0.5 + g*1, then cwnd *= 1 - alpha/2 (RFC 8257 3.3/3.4)
    alpha = (1 - 1 / 16) * 0.5 + 1 / 16
    assert a.alpha == pytest.approx(alpha)
    assert a.cwnd == int(100 * MSS * (1 - alpha / 2))


def test_dctcp_without_marks_behaves_like_reno():
    a, r = cc.make("dctcp", MSS, 0), cc.make("newreno", MSS, 0)
    assert run_rtts(a, 6) == run_rtts(r, 6)
    a.on_interval(Interval(now_us=10 * RTT, loss_events=1, in_flight=a.cwnd))
    r.on_interval(Interval(now_us=10 * RTT, loss_events=1, in_flight=r.cwnd))
    assert a.cwnd == r.cwnd


def test_const_rate_window():
    a = cc.make("const", MSS, 0, rate_bps=80_000_000)
    a.on_interval(Interval(now_us=1, rtt_us=10_000))
    assert a.pacing_rate == 10_000_000
    assert a.cwnd == 200_000  # 2 x rate x RTT


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(sorted(cc.ALGORITHMS)),
    st.lists(
        st.tuples(
            st.integers(0, 1 << 22),
            st.integers(0, 100),
            st.booleans(),
            st.booleans(),
            st.integers(0, 500_000),
        ),
        max_size=60,
    ),
)
def test_window_never_below_one_mss(name, steps):
    a = cc.make(name, MSS, 0)
    t = 0
    for acked, ecn_pct, loss, rto, rtt in steps:
        t += 1000
        a.on_interval(
            Interval(
                now_us=t,
                acked_bytes=acked,
                ecn_bytes=acked * ecn_pct // 100,
                loss_events=int(loss),
                rto=rto,
                rtt_us=rtt,
                in_flight=a.cwnd,
            )
        )
        assert a.cwnd >= MSS


# -- undo of spurious recoveries (issue 6; RFC 9438 4.9) ----------------------
def _cubic_state(a) -> tuple:
    return (a.cwnd, a.ssthresh, a.w_max, a.k, a.epoch_us, a.w_est, a.cwnd_epoch)


def test_cubic_undo_restores_state_before_the_loss():
    """RFC 9438 4.9: prior_cwnd, prior_ssthresh, prior_W_max, prior_K,
    prior_epoch_start, prior_W_est are saved before the reduction and put
    back when the loss turns out spurious; growth then continues on the old
    epoch (the same curve as if there had been no loss)."""
    a, ref = cc.make("cubic", MSS, 0), cc.make("cubic", MSS, 0)
    for x in (a, ref):
        x.cwnd, x.ssthresh = 100 * MSS, 1
        x.on_interval(Interval(now_us=0, loss_events=1, in_flight=100 * MSS))  # a real loss: W_max 100
        run_rtts(x, 50)  # an epoch under way (concave region)
    before = _cubic_state(a)
    assert a.epoch_us is not None and a.k > 0
    t = 51 * RTT
    a.on_interval(Interval(now_us=t, loss_events=1, in_flight=a.cwnd))
    assert a.cwnd < before[0] and a.epoch_us is None  # cut, new epoch pending
    run_rtts(a, 2, t0=t)  # regrowth on a new epoch before the undo is seen
    assert a.on_undo(t + 3 * RTT) is True
    assert _cubic_state(a) == before
    assert a.on_undo(t + 4 * RTT) is False  # once
    # from here it follows the undisturbed flow's curve
    assert run_rtts(a, 5, t0=t + 3 * RTT) == run_rtts(ref, 5, t0=t + 3 * RTT)


def test_cubic_undo_keeps_a_window_that_already_grew_past():
    """RFC 9438 4.9: if cwnd is already above prior_cwnd, keep the current
    state."""
    a = cc.make("cubic", MSS, 0)
    a.cwnd, a.ssthresh = 20 * MSS, 1
    a.on_interval(Interval(now_us=0, loss_events=1, in_flight=20 * MSS))
    a.cwnd = 30 * MSS  # (grew past it meanwhile)
    state = _cubic_state(a)
    assert a.on_undo(RTT) is False and _cubic_state(a) == state


def test_undo_after_rto_does_nothing():
    """The fast path does not undo a recovery that ended in an RTO; neither
    does the algorithm."""
    for name in ("newreno", "cubic", "dctcp"):
        a = cc.make(name, MSS, 0)
        a.cwnd, a.ssthresh = 40 * MSS, 1
        a.on_interval(Interval(now_us=0, loss_events=1, in_flight=40 * MSS))
        a.on_interval(Interval(now_us=RTT, rto=True, in_flight=20 * MSS))
        assert a.on_undo(2 * RTT) is False and a.cwnd == MSS, name


def test_newreno_undo_restores_cwnd_and_ssthresh():
    a = cc.make("newreno", MSS, 0)
    a.cwnd, a.ssthresh = 60 * MSS, 40 * MSS
    a.on_interval(Interval(now_us=0, loss_events=1, in_flight=60 * MSS))
    assert (a.cwnd, a.ssthresh) == (30 * MSS, 30 * MSS)
    run_rtts(a, 3)
    assert a.on_undo(4 * RTT) is True
    assert (a.cwnd, a.ssthresh) == (60 * MSS, 40 * MSS)
    # only the last cut is undone: two losses, one undo -> the state between them
    a.on_interval(Interval(now_us=5 * RTT, loss_events=1, in_flight=60 * MSS))
    a.on_interval(Interval(now_us=6 * RTT, loss_events=1, in_flight=30 * MSS))
    assert a.on_undo(7 * RTT) is True and (a.cwnd, a.ssthresh) == (30 * MSS, 30 * MSS)
    assert a.on_undo(8 * RTT) is False


def test_dctcp_undo_restores_window_keeps_alpha():
    a = cc.make("dctcp", MSS, 0)
    a.cwnd, a.ssthresh, a.alpha = 50 * MSS, 1, 0.25
    a.on_interval(Interval(now_us=0, loss_events=1, in_flight=50 * MSS))
    assert a.cwnd == 25 * MSS
    assert a.on_undo(RTT) is True
    assert (a.cwnd, a.ssthresh, a.alpha) == (50 * MSS, 1, 0.25)


def test_const_has_nothing_to_undo():
    a = cc.make("const", MSS, 0, rate_bps=8_000_000)
    a.on_interval(Interval(now_us=1, loss_events=1, rtt_us=RTT))
    assert a.on_undo(2) is False


# -- HyStart++ (RFC 9406) -----------------------------------------------------
from kernel_slowpath.cc import hystart as hsmod  # noqa: E402
from kernel_slowpath.cc.base import INITIAL_SSTHRESH  # noqa: E402
from kernel_slowpath.cc.hystart import HyStartPP  # noqa: E402


def hs_round(hs: HyStartPP, rtt_us: int, samples: int = 10, per: int = MSS, grow: bool = True) -> list[tuple]:
    """One round of `samples` intervals of `per` bytes each, all with RTT
    `rtt_us`: the round ends with the last of them (in flight = the bytes
    still to come in the round when it starts)."""
    out = []
    for _ in range(samples):
        first = hs.window_end is None
        out.append(hs.on_ack(per, (samples - 1 if first else samples) * per, rtt_us, grow))
    return out


def test_hystart_constants_are_the_rfc_ones():
    # RFC 9406 4.3
    assert (hsmod.MIN_RTT_THRESH_US, hsmod.MAX_RTT_THRESH_US, hsmod.MIN_RTT_DIVISOR) == (4000, 16000, 8)
    assert (hsmod.N_RTT_SAMPLE, hsmod.CSS_GROWTH_DIVISOR, hsmod.CSS_ROUNDS) == (8, 4, 5)


def test_hystart_rtt_threshold_clamp():
    # RttThresh = max(4 ms, min(lastRoundMinRTT / 8, 16 ms))
    assert hsmod.rtt_thresh(20_000) == 4000  # 2.5 ms -> MIN_RTT_THRESH
    assert hsmod.rtt_thresh(32_000) == 4000
    assert hsmod.rtt_thresh(80_000) == 10_000  # in between: min / 8
    assert hsmod.rtt_thresh(128_000) == 16_000
    assert hsmod.rtt_thresh(400_000) == 16_000  # 50 ms -> MAX_RTT_THRESH
    for base, thresh in ((20_000, 4000), (80_000, 10_000), (400_000, 16_000)):
        for rise, css in ((thresh - 1, False), (thresh, True)):
            hs = HyStartPP()
            hs_round(hs, base)
            hs_round(hs, base + rise)
            assert hs.in_css is css, (base, rise)


def test_hystart_rounds_end_at_snd_nxt():
    """A round ends when the data in flight at its start (SND.NXT) is
    acknowledged; the next one ends at SND.NXT as of then."""
    hs = HyStartPP()
    hs.on_ack(1000, 5000, RTT)  # round 1: ends once 1000 + 5000 bytes are acked
    assert (hs.rounds, hs.window_end) == (1, 6000)
    for _ in range(4):
        hs.on_ack(1000, 5000, RTT)
    assert hs.rounds == 1
    hs.on_ack(1000, 12_000, RTT)  # acks up to 6000: round 2 ends at 6000 + 12000
    assert (hs.rounds, hs.window_end) == (2, 18_000)
    # the round's minimum moved to lastRoundMinRTT, a new minimum is collected
    assert hs.last_round_min == RTT and hs.cur_round_min == hsmod.INF and hs.samples == 0


def test_hystart_needs_n_rtt_samples():
    hs = HyStartPP()
    hs_round(hs, RTT)
    for i in range(hsmod.N_RTT_SAMPLE):
        hs.on_ack(MSS, 100 * MSS, RTT + 10_000)
        assert hs.in_css is (i == hsmod.N_RTT_SAMPLE - 1), i
    assert hs.css_baseline == RTT + 10_000
    # one srtt reading stands for the ACKs of its interval (the algorithms
    # pass acked / 2 MSS): 16 MSS acked in one interval are 8 samples
    a = cc.make("cubic", MSS, 0)
    hs_round(a.hystart, RTT, samples=20)  # the next round is 20 MSS long
    a.on_interval(Interval(now_us=1, acked_bytes=16 * MSS, rtt_us=RTT + 10_000, in_flight=100 * MSS))
    assert a.hystart.samples == 8 and a.hystart.in_css


def test_hystart_the_round_minimum_decides():
    """One low sample in the round keeps it in slow start (jitter on some
    ACKs is not a queue)."""
    hs = HyStartPP()
    hs_round(hs, RTT)
    hs.on_ack(MSS, 20 * MSS, RTT)
    for _ in range(15):
        hs.on_ack(MSS, 20 * MSS, RTT + 10_000)
    assert hs.state == hsmod.SLOW_START


def test_hystart_css_growth_rounds_and_exit_to_congestion_avoidance():
    """CSS: cwnd grows by acked / CSS_GROWTH_DIVISOR; after CSS_ROUNDS rounds
    (the one CSS began in is the first) slow start ends with ssthresh = cwnd."""
    for name in ("newreno", "cubic"):
        a = cc.make(name, MSS, 0)
        t = 0

        def iv(rtt, acked=MSS, flight=None, _a=a):
            nonlocal t
            t += 1000
            _a.on_interval(Interval(now_us=t, acked_bytes=acked, rtt_us=rtt, in_flight=flight or _a.cwnd))

        # round 1 (ends after the initial window): base RTT
        for _ in range(10):
            iv(RTT, flight=9 * MSS)
        assert a.cwnd == 20 * MSS and a.hystart.rounds == 2
        # round 2: the RTT rose by 4 ms -> CSS after 8 samples
        for _ in range(8):
            iv(RTT + 4000)
        assert a.hystart.in_css and a.hystart.css_entries == 1, name
        c0 = a.cwnd
        iv(RTT + 4000, acked=4 * MSS)
        assert a.cwnd == c0 + MSS, name  # 4 MSS acked / 4
        assert a.in_slow_start() and a.ssthresh == INITIAL_SSTHRESH
        rounds = []
        while a.hystart.active and t < 10_000_000:
            iv(RTT + 4000, acked=2 * MSS)
            rounds.append(a.hystart.css_rounds)
        assert a.hystart.exits == 1 and a.hystart.css_rounds == hsmod.CSS_ROUNDS, name
        assert not a.in_slow_start() and a.ssthresh == a.cwnd, name
        assert a.hystart.ss_resumes == 0
        # congestion avoidance from there: CUBIC's epoch starts at W_max = cwnd, K = 0 (RFC 9438 4.10)
        c1 = a.cwnd
        iv(RTT + 4000, acked=10 * MSS)
        assert c1 < a.cwnd < c1 + 2 * MSS, name
        if name == "cubic":
            assert a.w_max == pytest.approx(c1 / MSS) and a.k == 0.0


def test_hystart_back_to_slow_start_when_the_rtt_falls():
    """RFC 9406 4.2: in CSS, a round whose minimum RTT (N_RTT_SAMPLE
    samples) is below cssBaselineMinRtt resumes slow start."""
    hs = HyStartPP()
    hs_round(hs, RTT)
    hs_round(hs, RTT + 5000)
    assert hs.in_css and hs.css_baseline == RTT + 5000
    inc = hs_round(hs, RTT + 6000)  # still high: CSS growth
    assert all(i == MSS // 4 for i, _ in inc) and hs.in_css
    for _ in range(hsmod.N_RTT_SAMPLE - 1):
        hs.on_ack(MSS, 20 * MSS, RTT + 1000)
    assert hs.in_css
    inc, done = hs.on_ack(MSS, 20 * MSS, RTT + 1000)  # the 8th sample below the baseline
    assert hs.state == hsmod.SLOW_START and hs.ss_resumes == 1 and not done
    assert hs.css_baseline == hsmod.INF
    assert hs.on_ack(MSS, 20 * MSS, RTT + 1000) == (MSS, False)  # full slow-start growth again
    # and CSS again when the delay rises again (the CSS round count starts over)
    hs_round(hs, RTT + 1000)
    hs_round(hs, RTT + 6000)
    assert hs.in_css and hs.css_entries == 2 and hs.css_rounds <= 1


@pytest.mark.parametrize("name,beta", [("newreno", 0.5), ("cubic", 0.7)])
def test_ecn_echo_cuts_once_per_round_trip(name, beta):
    """RFC 3168 6.1.2 (RFC 9438 4.6 for CUBIC): ECN-Echo is a congestion
    event like a loss, without a retransmission, answered at most once per
    round trip, and not undone."""
    a = cc.make(name, MSS, 0)
    a.cwnd, a.ssthresh = 100 * MSS, 50 * MSS  # congestion avoidance
    a.on_interval(Interval(now_us=1000, acked_bytes=10 * MSS, ecn_bytes=MSS, rtt_us=RTT, in_flight=100 * MSS))
    cut = a.cwnd
    assert cut == int(100 * MSS * beta) and a.ssthresh == cut
    # marks for data sent before the cut, within one RTT: no second cut
    a.on_interval(Interval(now_us=1000 + RTT - 1, acked_bytes=10 * MSS, ecn_bytes=5 * MSS, rtt_us=RTT, in_flight=cut))
    assert a.cwnd >= cut
    assert a.on_undo(RTT) is False  # not a spurious loss: nothing to restore
    # a round trip later the next marks cut again
    a.on_interval(Interval(now_us=1000 + RTT, acked_bytes=10 * MSS, ecn_bytes=MSS, rtt_us=RTT, in_flight=a.cwnd))
    assert a.cwnd < cut


def test_ecn_echo_right_after_a_loss_cut_is_not_a_second_cut():
    a = cc.make("cubic", MSS, 0)
    a.cwnd, a.ssthresh = 100 * MSS, 50 * MSS
    a.on_interval(Interval(now_us=1000, loss_events=1, rtt_us=RTT, in_flight=100 * MSS))
    assert a.cwnd == 70 * MSS
    a.on_interval(Interval(now_us=2000, acked_bytes=10 * MSS, ecn_bytes=10 * MSS, rtt_us=RTT, in_flight=70 * MSS))
    assert a.cwnd >= 70 * MSS


def test_hystart_not_cwnd_limited_samples_but_does_not_grow():
    hs = HyStartPP()
    assert hs.on_ack(MSS, 10 * MSS, RTT, grow=False) == (0, False)
    assert hs.samples == 1 and hs.rounds == 1


def test_hystart_loss_or_ecn_in_css_and_only_the_initial_slow_start():
    # a loss in CSS: the algorithm's loss response, HyStart++ is over
    a = cc.make("cubic", MSS, 0)
    a.hystart.state = hsmod.CSS
    a.cwnd = 100 * MSS
    a.on_interval(Interval(now_us=1, loss_events=1, in_flight=100 * MSS))
    assert not a.hystart.active and a.cwnd == 70 * MSS and a.ssthresh == 70 * MSS
    # ECN-Echo in slow start or CSS: the algorithm's congestion response
    # (RFC 3168 6.1.2), which ends slow start and HyStart++ (RFC 9406 4.2)
    r = cc.make("newreno", MSS, 0)
    r.cwnd = 40 * MSS
    r.on_interval(Interval(now_us=1, acked_bytes=10 * MSS, ecn_bytes=MSS, rtt_us=RTT, in_flight=40 * MSS))
    assert not r.hystart.active and r.ssthresh == r.cwnd == 20 * MSS and not r.in_slow_start()
    # after an RTO, slow start up to the new ssthresh is standard (RFC 9406 4.3)
    b = cc.make("newreno", MSS, 0)
    b.on_interval(Interval(now_us=1, rto=True, in_flight=40 * MSS))
    assert not b.hystart.active
    run_rtts(b, 3)
    assert b.cwnd == 8 * MSS  # 1 -> 2 -> 4 -> 8: doubling per round, no CSS
    # a window chosen with a known ssthresh (TCP_CONGESTION switch) does not use it either
    c = cc.make("cubic", MSS, 0)
    c.ssthresh = 50 * MSS
    run_rtts(c, 1)
    assert not c.hystart.active and c.cwnd == 20 * MSS


def test_hystart_undo_restores_its_state():
    a = cc.make("newreno", MSS, 0)
    hs_round(a.hystart, RTT)
    a.cwnd = 30 * MSS
    a.on_interval(Interval(now_us=1, loss_events=1, in_flight=30 * MSS))
    assert not a.hystart.active
    assert a.on_undo(2) is True
    assert a.hystart.active and a.hystart.last_round_min == RTT and a.in_slow_start()


def test_dctcp_has_no_hystart():
    d = cc.make("dctcp", MSS, 0)
    assert d.hystart is None and d._reno.hystart is None


def _fluid_bottleneck(alg, rate_bps=50e6, base_us=20_000, queue_bytes=None, ms=3000):
    """1 ms intervals through a fluid bottleneck: delivery min(cwnd / RTT,
    rate), RTT = base + standing queue / rate, the queue being what cwnd
    has beyond the BDP; a loss event when it exceeds `queue_bytes`.  Returns
    (time of the first loss or None, cwnd trace)."""
    rate = rate_bps / 8 / 1e6  # bytes per us
    bdp = rate * base_us
    trace = []
    for t in range(1, ms + 1):
        q = max(0.0, alg.cwnd - bdp)
        if queue_bytes is not None and q > queue_bytes:
            return t, trace
        rtt = int(base_us + q / rate)
        acked = int(min(alg.cwnd / rtt, rate) * 1000)
        alg.on_interval(Interval(now_us=t * 1000, acked_bytes=acked, rtt_us=rtt, in_flight=int(alg.cwnd)))
        trace.append(int(alg.cwnd))
    return None, trace


@pytest.mark.parametrize("name", ["cubic", "newreno"])
def test_hystart_leaves_slow_start_before_the_queue_overflows(name):
    """50 Mbit/s, 20 ms, a deep (8 BDP) queue, fluid model (srtt = the
    current RTT): standard slow start overflows it; with HyStart++ the flow
    enters CSS in the first round whose minimum RTT is 4 ms above the
    previous round's, grows by a quarter from then on, and reaches
    congestion avoidance without a loss.  (The round minimum lags one
    round behind the window, so on the 1-BDP queue of the link tests the
    detection comes when the queue is already half full: docs/CC.md.)"""
    std = cc.make(name, 1448, 0, hystart=False)
    loss_at, _ = _fluid_bottleneck(std, queue_bytes=1_000_000)
    assert loss_at is not None
    a = cc.make(name, 1448, 0)
    loss_at, trace = _fluid_bottleneck(a, queue_bytes=1_000_000)
    assert loss_at is None, trace[-1]
    assert a.hystart.css_entries == 1 and a.hystart.exits == 1 and a.hystart.ss_resumes == 0
    assert not a.in_slow_start() and a.ssthresh < 125_000 + 1_000_000
    # the CSS entry: where the per-interval growth fell to a quarter
    steps = [b - c for c, b in zip(trace, trace[1:], strict=False)]
    i = next(i for i in range(1, len(steps)) if 0 < steps[i] <= steps[i - 1] // 3)
    assert 150_000 < trace[i] < 400_000  # BDP + 4 ms of queue = 150 KB, one round late


@pytest.mark.parametrize("name", ["newreno", "cubic"])
@pytest.mark.parametrize("hystart", [True, False])
def test_quiet_interval_changes_nothing(name, hystart):
    """What lets the control loop skip the algorithm (ccloop.SKIP_QUIET): for
    NewReno and CUBIC an interval without loss, ECN-Echo or RTO in which the
    flow was not cwnd-limited, or nothing was acknowledged, leaves every
    attribute as it was -- unless HyStart++ runs in slow start.  Checked
    from states reached by random intervals (losses, RTOs, growth)."""
    import copy
    import random

    from kernel_slowpath.ccloop import SKIP_QUIET

    assert name in SKIP_QUIET
    rnd = random.Random(11)
    mss = 1448
    alg = cc.make(name, mss, 0, hystart=hystart)
    now = 0
    checked = 0
    for _ in range(3000):
        now += rnd.choice([1000, 5000, 20000])
        kind = rnd.random()
        iv = Interval(now_us=now, acked_bytes=rnd.randrange(0, 20 * mss), rtt_us=rnd.choice([0, 10_000, 30_000]),
                      in_flight=rnd.randrange(0, 40 * mss), loss_events=int(kind < 0.03), rto=0.03 <= kind < 0.04,
                      ecn_bytes=0, app_limited=rnd.random() < 0.3)  # fmt: skip
        quiet = Interval(now_us=now + 1, acked_bytes=rnd.choice([0, rnd.randrange(1, 20 * mss)]),
                         rtt_us=rnd.choice([0, 10_000, 30_000]), in_flight=rnd.randrange(0, 40 * mss),
                         app_limited=True)  # fmt: skip
        hs = alg.hystart
        if not (quiet.acked_bytes and hs is not None and hs.active and alg.in_slow_start()):
            before = copy.deepcopy(vars(alg))
            alg.on_interval(quiet)
            assert _plain(vars(alg)) == _plain(before)
            checked += 1
        alg.on_interval(iv)
    assert checked > 500


def _plain(v):
    """Attributes as plain data (HyStart++ objects by their fields, nested)."""
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if hasattr(v, "__dict__"):
        return _plain(vars(v))
    return v
