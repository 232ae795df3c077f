"""The fast-path process: one per core, started by the slow path.

Every packet is handled inside ``tas_fp_poll`` (C; with ``TAS_PURE=1`` by
its pure-Python twin ``flextcp.fastpath_py.PyFastPath``), and the busy-poll
around it runs in C too (``tas_fp_spin_run``; with ``TAS_PURE=1`` its twin
:class:`SpinLoop`): it polls while there is work and for ``poll_us`` after
the last work (:class:`SpinPolicy`), then arms its doorbell (so apps and
the slow path kick its eventfd) and polls once more to close the race.
Python only sleeps -- in epoll on the TAP queue, the doorbell and its
control socket -- and reads the control socket, which the spin returns for
every ``SPIN_MAX_US``.  It exits when the slow path's control socket
closes, so a dead slow path never leaves fast-path orphans.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import json
import logging
import os
import select
import signal
import socket
import sys

from flextcp.native import ffi, lib, use_pure
from flextcp.shm import Region
from flextcp.stackmem import stack_layout

log = logging.getLogger("flextcp")

PR_SET_PDEATHSIG = 1
# A paced flow due within this many us keeps the loop polling (docs/CC.md);
# epoll's timeout has millisecond granularity.  (= C TAS_FP_PACE_SPIN_US)
PACE_SPIN_US = 1000
# What the spin returns (= C TAS_FP_SPIN_*): armed and idle, time to sleep;
# or time to read the control socket and look at `running` (a SIGTERM's
# handler runs only then).
SPIN_SLEEP = 0
SPIN_CHECK = 1
# The spin returns SPIN_CHECK after this many polls or this many us.
SPIN_MAX_POLLS = 4096
SPIN_MAX_US = 1000
# Two idle polls further apart than this mean another task had this CPU in
# between (SpinPolicy).  An idle spin iteration takes ~0.3 us in C (~0.7 us
# with its sched_yield; 1-3 us when the loop was Python); a time slice or an
# app's request takes >= 15 us.
PREEMPT_GAP_US = 20


class SpinPolicy:
    """When the loop polls again and when it arms its doorbell and sleeps
    (sans-I/O: fed each poll's time and result, in us).

    After the last work it spins for ``poll_us``, so a packet or an app's
    entry arriving meanwhile costs no wake-up (a fast path with a CPU of its
    own).  The spin ends early when two consecutive idle polls are more
    than ``gap_us`` apart: another task ran on this CPU in between while we
    had nothing to do, so the spin is in its way; sleeping hands the CPU
    over until the TAP or a doorbell wakes us.  sched_yield() between polls
    cannot do that: it reorders only our own scheduling group, and an app
    started in another session is in another autogroup.  A gap that starts
    or ends at a poll with work does not count: an app woken by our
    doorbell ran, answered and went back to sleep, and spinning on catches
    the next request.  ``gap_us=None`` (the default: the stack's loop
    unless ``TAS_FP_SPIN=yield``) never ends the spin early.  A paced flow
    due within ``PACE_SPIN_US`` keeps the loop polling either way."""

    def __init__(self, poll_us: int, gap_us: int | None = None) -> None:
        self.poll_us = poll_us
        self.gap_us = gap_us
        self.idle_since = 0
        self.last_idle = 0  # time of the previous poll if it found nothing, else 0
        self.preempted_sleeps = 0  # sleeps that ended a spin early

    def woke(self, t: int) -> None:
        """Back from a sleep (or the first poll) at t."""
        self.idle_since = t
        self.last_idle = 0

    def spin(self, t: int, work: int, pace_due: int = 0) -> bool:
        """After a poll at t that did ``work``: True to poll again, False
        to arm the doorbell and sleep."""
        if work:
            self.idle_since = t
            self.last_idle = 0
            return True
        last, self.last_idle = self.last_idle, t
        if pace_due and pace_due - t < PACE_SPIN_US:
            return True
        if self.gap_us is not None and last and t - last > self.gap_us:
            self.preempted_sleeps += 1
            return False
        return t - self.idle_since < self.poll_us


class SpinLoop:
    """The busy-poll part of the fast path's loop, the pure twin of C
    ``tas_fp_spin_run`` (fastpath.h; tests/test_fp_spin.py drives both with
    the same fake engine and clock).

    ``run()`` polls, and keeps polling as ``policy`` decides (with
    ``yield_()`` after each idle poll if ``yield_idle``); when the policy
    says sleep it arms the doorbell and polls once more: work found there
    disarms and goes on spinning, none returns ``SPIN_SLEEP`` with the
    doorbell armed (the caller sleeps, disarms, then calls ``woke``).  After
    ``max_polls`` polls or ``max_us`` us it returns ``SPIN_CHECK``."""

    def __init__(
        self,
        policy: SpinPolicy,
        *,
        now,
        poll,
        pace_due,
        set_armed,
        yield_=os.sched_yield,
        yield_idle: bool = True,
        max_polls: int = SPIN_MAX_POLLS,
        max_us: int = SPIN_MAX_US,
    ) -> None:
        self.policy = policy
        self.now = now
        self.poll = poll
        self.pace_due = pace_due
        self.set_armed = set_armed
        self.yield_ = yield_
        self.yield_idle = yield_idle
        self.max_polls = max_polls
        self.max_us = max_us
        self.polls = 0  # poll calls, the re-polls after arming included
        self.yields = 0
        self.runs = 0

    @property
    def preempted_sleeps(self) -> int:
        return self.policy.preempted_sleeps

    def woke(self, t: int) -> None:
        self.policy.woke(t)

    def run(self) -> int:
        policy = self.policy
        spin = policy.spin
        now, poll, pace_due = self.now, self.poll, self.pace_due
        self.runs += 1
        n = 0
        start = 0
        while True:
            t = now()
            work = poll(t)
            self.polls += 1
            if n == 0:
                start = t
            n += 1
            if spin(t, work, 0 if work else pace_due()):
                if not work and self.yield_idle:
                    self.yield_()
                    self.yields += 1
            else:
                self.set_armed(1)
                self.polls += 1
                if not poll(now()):
                    return SPIN_SLEEP
                self.set_armed(0)
                policy.woke(now())
            if n >= self.max_polls or t - start >= self.max_us:
                return SPIN_CHECK


class CSpinLoop:
    """``tas_fp_spin_run`` on a C engine, with SpinLoop's interface."""

    def __init__(
        self,
        fp,
        poll_us: int,
        gap_us: int | None,
        *,
        yield_idle: bool = True,
        max_polls: int = SPIN_MAX_POLLS,
        max_us: int = SPIN_MAX_US,
    ) -> None:
        s = ffi.new("struct tas_fp_spin *")
        s.poll_us = poll_us
        s.gap_us = -1 if gap_us is None else gap_us
        s.yield_idle = 1 if yield_idle else 0
        s.max_polls = max(1, max_polls)
        s.max_us = max_us
        self.s = s
        self.run = functools.partial(lib.tas_fp_spin_run, fp, s)
        self.woke = functools.partial(lib.tas_fp_spin_woke, s)

    @property
    def preempted_sleeps(self) -> int:
        return int(self.s.preempted_sleeps)

    @property
    def polls(self) -> int:
        return int(self.s.polls)

    @property
    def yields(self) -> int:
        return int(self.s.yields)


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


class FastPath:
    def __init__(self, a: argparse.Namespace) -> None:
        self.core = a.core
        self.ctl = socket.socket(fileno=a.ctl_fd)
        self.ctl.setblocking(False)
        self.stack = Region.attach(a.stack_fd, a.stack_size)
        lay = stack_layout(a.n_flows, a.n_cores, a.kq_slots)
        self.stats = self.stack.cast("struct tas_fp_stats", lay.stats_off[a.core])
        self.tap_fd = a.tap_fd
        self.evfd = a.fp_evfd
        self.poll_us = a.poll_us
        # TAS_FP_SPIN=yield: end a spin another task interrupted (off by default:
        # measured no better on the shared 2-CPU machine, docs/ARCHITECTURE.md)
        yield_ = os.environ.get("TAS_FP_SPIN", "always") == "yield"
        gap_us = PREEMPT_GAP_US if yield_ else None
        # sched_yield() between idle polls (TAS_FP_IDLE_YIELD=0: none; kept
        # by default: rr at 1 connection measured 0.49-1.11x of Linux with
        # it, 0.31-1.32x without, median 0.71x / 0.64x)
        yield_idle = os.environ.get("TAS_FP_IDLE_YIELD", "1") != "0"
        cfg = ffi.new("struct tas_fp_config *")
        cfg.core = a.core
        cfg.n_cores = a.n_cores
        cfg.tap_fd = a.tap_fd
        cfg.sp_evfd = a.sp_evfd
        cfg.local_ip = a.ip
        mac = bytes.fromhex(a.mac.replace(":", ""))
        for i in range(6):
            cfg.local_mac[i] = mac[i]
        cfg.ft_mem = self.stack.ptr(lay.ft_off)
        cfg.ft_len = lay.ft_len
        cfg.n_flows = a.n_flows
        cfg.kq_slots = a.kq_slots
        cfg.krx_mem = self.stack.ptr(lay.krx_off[a.core])
        cfg.ktx_mem = self.stack.ptr(lay.ktx_off[a.core])
        cfg.stats = self.stats
        cfg.rx_batch = 32
        cfg.tx_batch = 64
        self.pure = use_pure()
        if self.pure:
            from flextcp.fastpath_py import PyFastPath, PyFPConfig

            self.fp = PyFastPath.create(PyFPConfig(
                core=a.core, n_cores=a.n_cores, tap_fd=a.tap_fd, sp_evfd=a.sp_evfd, local_ip=a.ip,
                local_mac=mac, stack=self.stack, ft_off=lay.ft_off, ft_len=lay.ft_len, n_flows=a.n_flows,
                kq_slots=a.kq_slots, krx_off=lay.krx_off[a.core], ktx_off=lay.ktx_off[a.core],
                stats_off=lay.stats_off[a.core], rx_batch=cfg.rx_batch, tx_batch=cfg.tx_batch))  # fmt: skip
            if self.fp is None:
                raise SystemExit("fast path: PyFastPath.create failed")
            from nicemu.tap import has_vnet_hdr

            if has_vnet_hdr(a.tap_fd):
                raise SystemExit(
                    "fast path: the pure-Python fast path does not do TAP offloads (IFF_VNET_HDR)"
                )
            self._set_armed = self.fp.set_armed
            stats = self.stats
            self.spinner: SpinLoop | CSpinLoop = SpinLoop(
                SpinPolicy(a.poll_us, gap_us),
                now=lib.tas_now_us,
                poll=self.fp.poll,
                pace_due=lambda: stats.pace_due_us,
                set_armed=self.fp.set_armed,
                yield_idle=yield_idle,
            )
        else:
            self.fp = lib.tas_fp_create(cfg)
            if self.fp == ffi.NULL:
                raise SystemExit("fast path: tas_fp_create failed")
            from nicemu.tap import has_vnet_hdr

            if has_vnet_hdr(a.tap_fd):
                # TAP offloads: the header on every frame, TSO4 on writes
                tso = os.environ.get("TAS_TSO", "1") != "0"
                lib.tas_fp_set_offload(self.fp, 1, 1 if tso else 0)
                log.info("fast path core %d: TAP offloads on (vnet header, tso=%d)", a.core, tso)
            self._set_armed = functools.partial(lib.tas_fp_set_armed, self.fp)
            self.spinner = CSpinLoop(self.fp, a.poll_us, gap_us, yield_idle=yield_idle)
        self.ctxs: dict[int, tuple[Region, int]] = {}
        self.running = True

    # -- control messages from the slow path ---------------------------
    def handle_ctl(self) -> None:
        while True:
            try:
                msg, fds, _flags, _addr = socket.recv_fds(self.ctl, 65536, 4)
            except BlockingIOError:
                return
            except OSError:
                self.running = False
                return
            if not msg:
                self.running = False
                return
            req = json.loads(msg)
            op = req.get("op")
            ok = False
            if op == "add_ctx" and len(fds) == 2:
                ok = self.add_ctx(req["ctx"], req["size"], fds[0], fds[1], req["atx"], req["arx"])
                if not ok:
                    for fd in fds:
                        os.close(fd)
            elif op == "remove_ctx":
                ok = self.remove_ctx(req["ctx"])
            elif op == "stop":
                self.running = False
                ok = True
            else:
                for fd in fds:
                    os.close(fd)
            try:
                self.ctl.send(json.dumps({"ok": ok, "op": op}).encode())
            except OSError:
                self.running = False
                return

    def add_ctx(self, ctx_id: int, size: int, memfd: int, evfd: int, atx: int, arx: int) -> bool:
        if ctx_id in self.ctxs:
            return False
        region = Region.attach(memfd, size)
        if self.pure:
            rc = self.fp.add_ctx(ctx_id, region, size, evfd, atx, arx)
        else:
            rc = lib.tas_fp_add_ctx(self.fp, ctx_id, region.addr, size, evfd, atx, arx)
        if rc != 0:
            region.close()
            return False
        self.ctxs[ctx_id] = (region, evfd)
        return True

    def remove_ctx(self, ctx_id: int) -> bool:
        entry = self.ctxs.pop(ctx_id, None)
        if entry is None:
            return False
        if self.pure:
            self.fp.remove_ctx(ctx_id)
        else:
            lib.tas_fp_remove_ctx(self.fp, ctx_id)
        region, evfd = entry
        region.close()
        os.close(evfd)
        return True

    # -- the loop -------------------------------------------------------
    def run(self) -> None:
        spinner = self.spinner
        spin_run = spinner.run
        woke = spinner.woke
        set_armed = self._set_armed
        now = lib.tas_now_us
        ep = select.epoll()
        ep.register(self.tap_fd, select.EPOLLIN)
        ep.register(self.evfd, select.EPOLLIN)
        ep.register(self.ctl.fileno(), select.EPOLLIN)
        stats = self.stats
        woke(now())
        while self.running:
            if spin_run() == SPIN_CHECK:
                self.handle_ctl()
                continue
            # armed, and the poll after arming found nothing: sleep
            stats.sleeps += 1
            due = stats.pace_due_us
            timeout = min(0.1, max(0, due - now() - PACE_SPIN_US) / 1e6) if due else 0.1
            for fd, _ev in ep.poll(timeout):
                if fd == self.evfd:
                    try:
                        os.eventfd_read(self.evfd)
                    except BlockingIOError:
                        pass
                elif fd == self.ctl.fileno():
                    self.handle_ctl()
            set_armed(0)
            woke(now())
        ep.close()
        log.info(
            "fast path core %d: %d sleeps, %d of them ending a spin another task interrupted; %d polls",
            self.core,
            stats.sleeps,
            spinner.preempted_sleeps,
            spinner.polls,
        )

    def close(self) -> None:
        for ctx_id in list(self.ctxs):
            self.remove_ctx(ctx_id)
        if self.pure:
            self.fp.destroy()
        else:
            lib.tas_fp_destroy(self.fp)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="flextcp", description="TAS fast-path process (started by `tas start`).")
    for name in (
        "core",
        "n-cores",
        "stack-fd",
        "stack-size",
        "n-flows",
        "kq-slots",
        "tap-fd",
        "sp-evfd",
        "fp-evfd",
        "ctl-fd",
        "ip",
        "cpu",
        "poll-us",
    ):
        p.add_argument(f"--{name}", type=int, required=True)
    p.add_argument("--mac", required=True)
    a = p.parse_args(argv)
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        os.sched_setaffinity(0, {a.cpu})
    except OSError:
        pass
    fpath = FastPath(a)
    signal.signal(signal.SIGTERM, lambda *_: setattr(fpath, "running", False))
    try:
        fpath.run()
    finally:
        fpath.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
