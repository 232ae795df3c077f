"""The fast path's spin/sleep decision (flextcp.loop.SpinPolicy), fed poll
times and results: it spins poll_us after the last work; with gap_us
(TAS_FP_SPIN=yield) it sleeps at once when another task took the CPU between
two idle polls; a paced flow that is due soon keeps it polling.

The busy-poll loop runs in C (tas_fp_spin_run, tas_fp_spin_decide) with
SpinPolicy + SpinLoop as its pure twin: both are fed the same sequences (a
fake engine and clock) and must decide identically; the C loop is also run
on a real engine (fp_harness) for the doorbell protocol and its returns to
Python.  Correctness only, no timing (beyond "returns within a second")."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from fp_harness import FPHarness, fastpath_on
from hypothesis import given, settings
from hypothesis import strategies as st

from flextcp.loop import (
    PACE_SPIN_US,
    PREEMPT_GAP_US,
    SPIN_CHECK,
    SPIN_SLEEP,
    CSpinLoop,
    SpinLoop,
    SpinPolicy,
)
from flextcp.native import ffi, lib


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


# ------------------------------------------- the C kernel against its twin


def test_constants_match_the_c_kernel():
    assert PACE_SPIN_US == lib.TAS_FP_PACE_SPIN_US
    assert (SPIN_SLEEP, SPIN_CHECK) == (lib.TAS_FP_SPIN_SLEEP, lib.TAS_FP_SPIN_CHECK)


def _c_state(poll_us: int, gap_us: int | None):
    s = ffi.new("struct tas_fp_spin *")
    s.poll_us = poll_us
    s.gap_us = -1 if gap_us is None else gap_us
    return s


_T0 = 5_000_000_000  # us, far from 0 like the monotonic clock
_gap = st.one_of(st.none(), st.integers(0, 40))
_pace = st.one_of(
    st.just(0),
    st.sampled_from([PACE_SPIN_US - 1, PACE_SPIN_US, PACE_SPIN_US + 1]),
    st.integers(-200, 3 * PACE_SPIN_US),
)
_step = st.tuples(
    st.sampled_from(["spin", "spin", "spin", "woke"]),
    st.integers(-3, 60),  # time step (negative: a clock that went back)
    st.sampled_from([0, 0, 0, 1, 5]),  # work
    _pace,  # pace_due - t (0: none)
)


@settings(max_examples=300, deadline=None)
@given(poll_us=st.integers(0, 200), gap_us=_gap, steps=st.lists(_step, max_size=80))
def test_decide_matches_spin_policy(poll_us, gap_us, steps):
    """tas_fp_spin_decide / tas_fp_spin_woke == SpinPolicy.spin / woke, call
    by call, and the state they keep (idle_since, last_idle, preempted_sleeps)."""
    py = SpinPolicy(poll_us, gap_us)
    c = _c_state(poll_us, gap_us)
    t = _T0
    py.woke(t)
    lib.tas_fp_spin_woke(c, t)
    for op, dt, work, pace in steps:
        t += dt
        if op == "woke":
            py.woke(t)
            lib.tas_fp_spin_woke(c, t)
            continue
        due = t + pace if pace else 0
        assert bool(lib.tas_fp_spin_decide(c, t, work, due)) == py.spin(t, work, due), (t, work, due)
        assert (c.idle_since, c.last_idle, c.preempted_sleeps) == (
            py.idle_since,
            py.last_idle,
            py.preempted_sleeps,
        )


class FakeEngine:
    """A scripted engine and clock for the loop: each now() returns the
    clock and advances it by the next tick; the i-th poll does works[i]
    (0 past the end); pace_due is the clock plus the next pace offset; a
    yield lets another task run for the next yield tick.  Every call is
    logged, so two loops fed by two FakeEngines can be compared call by call."""

    def __init__(self, ticks, works, paces, yield_ticks) -> None:
        self.t = _T0
        self.ticks, self.works, self.paces, self.yield_ticks = ticks, works, paces, yield_ticks
        self.i_tick = self.i_poll = self.i_pace = self.i_yield = 0
        self.armed = 0
        self.log: list[tuple] = []

    @staticmethod
    def _next(seq, i):
        return seq[i % len(seq)] if seq else 0

    def now(self) -> int:
        t = self.t
        self.t += self._next(self.ticks, self.i_tick)
        self.i_tick += 1
        return t

    def poll(self, t: int) -> int:
        w = self.works[self.i_poll] if self.i_poll < len(self.works) else 0
        self.i_poll += 1
        self.log.append(("poll", t, w, self.armed))
        return w

    def pace_due(self) -> int:
        off = self._next(self.paces, self.i_pace)
        self.i_pace += 1
        self.log.append(("pace", off))
        return self.t + off if off else 0

    def set_armed(self, v: int) -> None:
        self.armed = v
        self.log.append(("arm", v))

    def yield_(self) -> None:
        self.t += self._next(self.yield_ticks, self.i_yield)
        self.i_yield += 1
        self.log.append(("yield", self.armed))

    def sleep(self, dt: int) -> None:
        """The caller's side of SPIN_SLEEP: epoll, disarm (then woke)."""
        self.t += dt
        self.log.append(("sleep", dt))
        self.set_armed(0)


def _c_ops(fe: FakeEngine):
    """tas_fp_spin_ops calling into fe (and the callbacks, kept alive)."""
    cbs = [
        ffi.callback("uint64_t(void *)", lambda _a: fe.now()),
        ffi.callback("uint32_t(void *, uint64_t)", lambda _a, t: fe.poll(t)),
        ffi.callback("uint64_t(void *)", lambda _a: fe.pace_due()),
        ffi.callback("void(void *, uint32_t)", lambda _a, v: fe.set_armed(v)),
        ffi.callback("void(void *)", lambda _a: fe.yield_()),
    ]
    ops = ffi.new("struct tas_fp_spin_ops *")
    ops.now, ops.poll, ops.pace_due, ops.set_armed, ops.yield_cpu = cbs
    return ops, cbs


def _drive(run, woke, fe: FakeEngine, sleeps: list[int], n_runs: int) -> list[int]:
    """FastPath.run's part: call run(); after SPIN_SLEEP sleep, disarm, woke."""
    woke(fe.now())
    out = []
    for i in range(n_runs):
        r = run()
        out.append(r)
        if r == SPIN_SLEEP:
            assert fe.armed == 1
            fe.sleep(sleeps[i % len(sleeps)] if sleeps else 1000)
            woke(fe.now())
        else:
            assert fe.armed == 0
    return out


_loop_case = dict(
    poll_us=st.integers(0, 120),
    gap_us=_gap,
    yield_idle=st.booleans(),
    max_polls=st.integers(1, 50),
    max_us=st.integers(0, 300),
    ticks=st.lists(st.integers(0, 30), max_size=20),
    works=st.lists(st.sampled_from([0, 0, 0, 0, 1, 3]), max_size=120),
    paces=st.lists(_pace, max_size=10),
    yield_ticks=st.lists(st.sampled_from([0, 0, 1, 2, 45]), max_size=10),
    sleeps=st.lists(st.integers(0, 5000), max_size=5),
)


def _loops_on(fe_py, fe_c, poll_us, gap_us, yield_idle=True, max_polls=10_000, max_us=1_000_000):
    """SpinLoop on fe_py and the C loop's state and ops on fe_c, set up alike:
    (SpinLoop, C state, C ops, the callbacks to keep alive)."""
    py = SpinLoop(
        SpinPolicy(poll_us, gap_us),
        now=fe_py.now,
        poll=fe_py.poll,
        pace_due=fe_py.pace_due,
        set_armed=fe_py.set_armed,
        yield_=fe_py.yield_,
        yield_idle=yield_idle,
        max_polls=max_polls,
        max_us=max_us,
    )
    c = _c_state(poll_us, gap_us)
    c.yield_idle, c.max_polls, c.max_us = yield_idle, max_polls, max_us
    ops, cbs = _c_ops(fe_c)
    return py, c, ops, cbs


@settings(max_examples=200, deadline=None)
@given(**_loop_case)
def test_c_loop_matches_spin_loop(poll_us, gap_us, yield_idle, max_polls, max_us, ticks, works, paces, yield_ticks, sleeps):  # fmt: skip
    """tas_fp_spin_run's loop (tas_fp_spin_run_ops) and SpinLoop make the
    same calls in the same order -- polls and their times, pace_due reads,
    yields, arming -- and return the same codes, fed the same script."""
    script = (ticks, works, paces, yield_ticks)
    fe_py, fe_c = FakeEngine(*script), FakeEngine(*script)
    py, c, ops, _cbs = _loops_on(fe_py, fe_c, poll_us, gap_us, yield_idle=yield_idle, max_polls=max_polls,
                                 max_us=max_us)  # fmt: skip
    r_py = _drive(py.run, py.woke, fe_py, sleeps, 8)
    r_c = _drive(
        lambda: lib.tas_fp_spin_run_ops(c, ops), lambda t: lib.tas_fp_spin_woke(c, t), fe_c, sleeps, 8
    )
    assert fe_c.log == fe_py.log
    assert r_c == r_py
    assert (c.polls, c.yields, c.runs, c.preempted_sleeps) == (
        py.polls,
        py.yields,
        py.runs,
        py.preempted_sleeps,
    )
    # the loop's own rules, beyond agreeing with each other
    polls = [e for e in fe_py.log if e[0] == "poll"]
    assert len(polls) == py.polls
    assert all(e[1] == 0 for e in fe_py.log if e[0] == "yield")  # never yields while armed


def _loop_pair(works, **kw):
    """SpinLoop and the C loop on the same script; their logs and results."""
    fe_py, fe_c = FakeEngine([2], works, [0], [0]), FakeEngine([2], works, [0], [0])
    kw.setdefault("max_polls", 10_000)
    kw.setdefault("max_us", 1_000_000)
    poll_us, gap_us = kw.pop("poll_us"), kw.pop("gap_us", None)
    py, c, ops, _cbs = _loops_on(fe_py, fe_c, poll_us, gap_us, **kw)
    out = []
    for fe, run, woke in ((fe_py, py.run, py.woke), (fe_c, lambda: lib.tas_fp_spin_run_ops(c, ops), lambda t: lib.tas_fp_spin_woke(c, t))):  # fmt: skip
        woke(fe.now())
        out.append((run(), fe.log))
    assert out[0] == out[1]
    return out[0]


def test_loop_work_on_the_poll_after_arming_disarms_and_spins_on():
    """The doorbell race: an entry published just before we armed is found
    by the re-poll; the loop disarms and spins (no sleep, nothing lost)."""
    # poll_us=0: the first idle poll ends the spin; the re-poll finds work
    r, log = _loop_pair([0, 1, 0, 0], poll_us=0, yield_idle=False)
    assert r == SPIN_SLEEP
    kinds = [(e[0], e[2], e[3]) if e[0] == "poll" else e[:2] for e in log if e[0] != "pace"]
    assert kinds == [
        ("poll", 0, 0),
        ("arm", 1),
        ("poll", 1, 1),  # armed re-poll: work
        ("arm", 0),
        ("poll", 0, 0),
        ("arm", 1),
        ("poll", 0, 1),  # armed, idle: return to sleep
    ]


def test_loop_spins_poll_us_with_yields_then_arms():
    r, log = _loop_pair([1], poll_us=10, yield_idle=True)
    assert r == SPIN_SLEEP
    polls = [e for e in log if e[0] == "poll"]
    # now() ticks 2 us: work at t0, idle polls until 10 us after it, then the armed re-poll
    assert [p[2] for p in polls] == [1, 0, 0, 0, 0, 0, 0]
    assert polls[-1][3] == 1 and sum(1 for e in log if e[0] == "yield") == 4


def test_loop_returns_for_the_control_socket():
    r, log = _loop_pair([1] * 100, poll_us=1000, max_polls=7)
    assert r == SPIN_CHECK and sum(1 for e in log if e[0] == "poll") == 7
    r, log = _loop_pair([1] * 100, poll_us=1000, max_us=9)  # now() ticks 2 us
    assert r == SPIN_CHECK and sum(1 for e in log if e[0] == "poll") == 6
    assert not any(e == ("arm", 1) for e in log)


# ------------------------------------------ the C loop on a real engine


def _spin(h: FPHarness, poll_us: int, **kw) -> CSpinLoop:
    sp = CSpinLoop(h.engine.fp, poll_us, None, **kw)
    sp.woke(lib.tas_now_us())
    return sp


def test_c_loop_on_an_engine_arms_and_sleeps():
    with FPHarness(False) as h:
        ctx = h.add_ctx(1)
        hdr = ctx.region.cast("struct tas_ctx_hdr")
        sp = _spin(h, 0, yield_idle=False)
        assert sp.run() == SPIN_SLEEP
        assert hdr.fp_armed[0] == 1
        assert sp.polls == 2 and h.stat("polls") == 2  # the idle poll and the armed re-poll
        h.set_armed(0)
        # a frame waiting in the TAP: handled, then idle, armed, idle again
        h.inject(b"\x00" * 20)  # too short: dropped, but it is work
        sp.woke(lib.tas_now_us())
        assert sp.run() == SPIN_SLEEP
        assert sp.polls == 5 and h.stat("busy_polls") == 1 and hdr.fp_armed[0] == 1


def test_c_loop_on_an_engine_returns_within_max_us():
    """Spinning for 10 s after the last work, it still returns every max_us
    (here 2 ms) so Python can read its control socket and see SIGTERM."""
    with FPHarness(False) as h:
        h.add_ctx(1)
        sp = _spin(h, 10_000_000, max_polls=1 << 30, max_us=2000)
        t0 = time.monotonic()
        for _ in range(5):
            assert sp.run() == SPIN_CHECK
        assert time.monotonic() - t0 < 1.0
        assert sp.polls >= 5 and sp.yields == sp.polls  # all idle, each one yielded
        assert h.ctxs[1].region.cast("struct tas_ctx_hdr").fp_armed[0] == 0




def test_fastpath_run_stops_promptly_while_spinning(monkeypatch):
    """FastPath.run with a spin that never ends (poll_us 100 s) notices
    `running = False` and a closed control socket within a second, on both
    engines."""
    for pure in (False, True):
        monkeypatch.setenv("TAS_PURE", "1" if pure else "0")
        with FPHarness(False) as h:
            fpath, ctl_sp, cleanup = fastpath_on(h, 100_000_000)
            try:
                assert isinstance(fpath.spinner, SpinLoop if pure else CSpinLoop)
                th = threading.Thread(target=fpath.run)
                th.start()
                time.sleep(0.05)
                t0 = time.monotonic()
                fpath.running = False
                th.join(5)
                assert not th.is_alive() and time.monotonic() - t0 < 1.0
                fpath.running = True
                th = threading.Thread(target=fpath.run)
                th.start()
                time.sleep(0.05)
                t0 = time.monotonic()
                ctl_sp.close()  # the slow path died
                th.join(5)
                assert not th.is_alive() and time.monotonic() - t0 < 1.0
                assert fpath.spinner.polls > 0
            finally:
                cleanup()


def test_sigterm_stops_the_c_spin_promptly(tmp_path: Path):
    """A SIGTERM handler (Python runs it only between C calls) is seen within
    a second while the C loop spins."""
    code = textwrap.dedent(
        """
        import signal, sys, time
        from fp_harness import FPHarness
        from flextcp.loop import CSpinLoop
        from flextcp.native import lib
        stop = []
        signal.signal(signal.SIGTERM, lambda *_: stop.append(time.monotonic()))
        with FPHarness(False) as h:
            h.add_ctx(1)
            sp = CSpinLoop(h.engine.fp, 100_000_000, None)
            sp.woke(lib.tas_now_us())
            print("spinning", flush=True)
            while not stop:
                sp.run()
            print(f"stopped {time.monotonic() - stop[0]:.6f}", flush=True)
        """
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), *sys.path]))
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert p.stdout.readline().strip() == "spinning"
        time.sleep(0.05)
        t0 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        out, _ = p.communicate(timeout=10)
        assert p.returncode == 0 and out.startswith("stopped ")
        assert time.monotonic() - t0 < 2.0 and float(out.split()[1]) < 0.5
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
