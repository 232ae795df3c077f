"""The fast path's spin/sleep decision (flextcp.loop.SpinPolicy), fed poll
times and results: it spins poll_us after the last work; with gap_us
(TAS_FP_SPIN=yield) it sleeps at once when another task took the CPU between
two idle polls; a paced flow that is due soon keeps it polling.  Correctness
only, no timing."""

from flextcp.loop import PACE_SPIN_US, PREEMPT_GAP_US, SpinPolicy


def idle_polls(policy: SpinPolicy, t: int, end: int, step: int = 2) -> tuple[int, bool]:
    """Idle polls every `step` us from t while the policy spins; (time, spun to end)."""
    while t < end:
        if not policy.spin(t, 0):
            return t, False
        t += step
    return t, True


def test_spins_poll_us_after_work_then_sleeps():
    p = SpinPolicy(poll_us=500, gap_us=PREEMPT_GAP_US)
    p.woke(1000)
    assert p.spin(1000, 3)
    t, spun = idle_polls(p, 1002, 1000 + 499)
    assert spun
    t, spun = idle_polls(p, t, t + 10)
    assert not spun and 1500 <= t <= 1502
    assert p.preempted_sleeps == 0


def test_poll_us_zero_sleeps_at_the_first_idle_poll():
    p = SpinPolicy(poll_us=0, gap_us=PREEMPT_GAP_US)
    p.woke(0)
    assert p.spin(1, 1)
    assert not p.spin(2, 0)


def test_work_restarts_the_spin():
    p = SpinPolicy(poll_us=100, gap_us=PREEMPT_GAP_US)
    p.woke(0)
    idle_polls(p, 0, 90)
    assert p.spin(90, 1)
    _, spun = idle_polls(p, 92, 180)
    assert spun


def _yield_policy() -> SpinPolicy:
    """The TAS_FP_SPIN=yield policy with the default spin, woken at t=0."""
    p = SpinPolicy(poll_us=500, gap_us=PREEMPT_GAP_US)
    p.woke(0)
    return p


def test_preempted_during_an_idle_spin_sleeps_at_once():
    p = _yield_policy()
    assert p.spin(0, 1)
    assert p.spin(2, 0)
    assert p.spin(4, 0)
    assert not p.spin(4 + PREEMPT_GAP_US + 20, 0)  # another task ran for ~40 us
    assert p.preempted_sleeps == 1


def test_a_gap_ending_in_work_does_not_end_the_spin():
    """An app woken by our doorbell runs, answers and sleeps: the poll after
    the gap finds its reply, and the loop goes on spinning."""
    p = _yield_policy()
    assert p.spin(2, 0)
    assert p.spin(60, 1)
    _, spun = idle_polls(p, 62, 400)
    assert spun and p.preempted_sleeps == 0


def test_a_gap_starting_at_a_work_poll_does_not_count():
    """A long poll with work (or a preemption inside it) is not a spin cut short."""
    p = _yield_policy()
    assert p.spin(2, 1)
    assert p.spin(80, 0)
    assert p.spin(82, 0)


def test_woke_clears_the_gap():
    p = _yield_policy()
    assert p.spin(2, 0)
    p.woke(10_000)  # slept in between: not a preemption
    assert p.spin(10_001, 0)


def test_default_spins_whatever_happens():
    """The stack's default (no TAS_FP_SPIN=yield): the whole poll_us."""
    p = SpinPolicy(poll_us=500)
    p.woke(0)
    assert p.spin(2, 0)
    assert p.spin(300, 0)
    assert not p.spin(600, 0)
    assert p.preempted_sleeps == 0


def test_a_paced_flow_due_soon_keeps_polling_even_when_preempted():
    p = SpinPolicy(poll_us=0, gap_us=PREEMPT_GAP_US)
    p.woke(0)
    assert p.spin(10, 0, pace_due=10 + PACE_SPIN_US - 1)
    assert not p.spin(20, 0, pace_due=20 + PACE_SPIN_US + 1)
    p = _yield_policy()
    assert p.spin(2, 0)
    assert p.spin(200, 0, pace_due=300)
