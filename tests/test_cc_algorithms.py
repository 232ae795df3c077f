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
