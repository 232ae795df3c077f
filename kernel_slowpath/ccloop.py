"""The slow path's congestion-control loop (issue 6; docs/CC.md).

The fast path counts per flow (bytes acknowledged, ECN-echoed bytes, loss
events = fast-recovery entries, undos, in-flight high-water mark) in the
flow record and its side-table entry (``struct tas_flow_cc``), and marks a
flow whose algorithm runs here in the CC news bits when one of those
counters moves (``struct tas_cc_news_hdr``, issues 5/6).  The loop takes the
marked ids in one C call (``tas_sp_cc_news``), and runs a flow when it has
news (or an RTO the engine reported) and its own interval has passed since
its last run: read the counters of those flows in one C call
(``tas_sp_cc_read``), feed the deltas to each flow's sans-I/O algorithm
(:mod:`kernel_slowpath.cc`), and write the new windows and pacing rates back
in one C call (``tas_sp_cc_write``, under each flow's lock).  Per-flow work
on shared memory is in C; the decisions are Python.  The cost is
proportional to the flows with news, never to the number of flows: a heap of
due times, no scans; a flow without news costs nothing, an idle stack has no
CC wake-ups at all (the loop sleeps "armed" and the fast path wakes it with
a TAS_EV_CC_NEWS flow event on the first news, ``poke``).

A flow's interval is ``interval_us`` (fixed), or with ``interval_us = 0``
max(1 ms, srtt) of its own.  The fast path reacts to a loss at once (fast
retransmit; the window kept is the algorithm's beta, given at install) and
to ECN only by counting; everything else waits for the flow's next run.
"""

from __future__ import annotations

import errno
import heapq
import logging
import os
from collections.abc import Callable
from typing import Any

from flextcp.native import ffi, lib
from kernel_slowpath import cc as ccmod
from kernel_slowpath.cc.base import INITIAL_WINDOW_SEGMENTS

log = logging.getLogger("tas.cc")

U32 = 0xFFFFFFFF
MIN_INTERVAL_US = 1000
# Idle restart (RFC 5681 4.1 / RFC 7661): a flow with nothing in flight or
# queued at its last run and no news for longer than max(4 srtt, this) has
# its window restarted when news comes again (decided then, lazily).
IDLE_RESTART_MIN_US = 200_000
# The loop sleeps until the next flow is due; when that is further away than
# this it also arms the news wake-up (once per sleep), so a flow that had
# been quiet is not left waiting for a long interval of another flow.
ARM_GAP_US = 5000
# Algorithms whose state an interval without loss, ECN-Echo, RTO or undo in
# which the flow was not cwnd-limited (or nothing was acknowledged) cannot
# change, unless HyStart++ runs in slow start (it samples the RTT and counts
# rounds then): cc/newreno.py, cc/cubic.py return before touching anything
# (docs/CC.md).  DCTCP's alpha moves with every acknowledged byte and
# const's window with the RTT.
SKIP_QUIET = frozenset({"newreno", "cubic"})
# Pacing gain over cwnd/srtt (Linux: tcp_pacing_ss_ratio 200, ca_ratio 120).
PACING_GAIN_SS = 2.0
PACING_GAIN_CA = 1.2
# Window kept on a fast retransmit, per mille (the algorithm's beta).
LOSS_BETA = {"newreno": 500, "cubic": 700, "dctcp": 500, "const": 1000}
# Fast-path-only NewReno (today's behaviour, the baseline).
FP_NEWRENO = "fp-newreno"
CHOICES = (*sorted(ccmod.ALGORITHMS), FP_NEWRENO)
# per-socket names (TCP_CONGESTION) Linux apps use for the same algorithm
ALIASES = {"reno": "newreno"}
# Algorithms that leave their initial slow start with HyStart++ (RFC 9406,
# kernel_slowpath/cc/hystart.py); TAS_CC_HYSTART=0 in the environment of
# `tas start` turns it off (standard slow start, for comparisons).
HYSTART_ALGORITHMS = ("newreno", "cubic")


def resolve(name: str) -> str:
    """The algorithm a per-socket name selects; OSError(ENOENT) if none, as
    Linux's setsockopt(TCP_CONGESTION) answers an unknown name."""
    n = ALIASES.get(name, name)
    if n not in CHOICES:
        raise OSError(errno.ENOENT, f"no congestion control {name!r}; choose from {', '.join(CHOICES)}")
    return n


class FlowCC:
    """A flow whose algorithm runs here.  The algorithm object is made on
    first use (``alg``): a flow gone before its first run -- most short
    connections -- never needs one."""

    __slots__ = ("fid", "_alg", "_make", "name", "acked", "ecn_bytes", "loss", "undo", "rto", "last_run", "interval",
                 "last_active", "drained", "news", "due", "rate")

    def __init__(self, fid: int, alg: ccmod.CongestionControl | None, name: str = "", *, last_run: int = 0,
                 last_active: int = 0, make: tuple | None = None) -> None:
        self.fid = fid
        self._alg = alg
        self._make = make  # (mss, now, params): ccmod.make's arguments, for when alg is None
        self.name = name
        self.acked = 0
        self.ecn_bytes = 0
        self.loss = 0
        self.undo = 0  # cnt_undo as last read
        self.rto = 0  # RTOs the engine reported since the last run
        self.last_run = last_run  # when the loop last ran the flow
        self.interval = 0  # the flow's interval as of that run
        self.last_active = last_active  # last run with something acked, in flight, queued, lost or timed out
        self.drained = True  # nothing in flight or queued at the last run
        self.news = False  # counters moved (or an RTO) since the last run
        self.due: int | None = None  # time of its entry in the loop's heap; None: no entry
        self.rate = -1  # pacing rate last written

    @property
    def alg(self) -> ccmod.CongestionControl:
        alg = self._alg
        if alg is None:
            mss, now, params = self._make
            alg = self._alg = ccmod.make(self.name, mss, now, **params)
            self._make = None
        return alg

    @alg.setter
    def alg(self, value: ccmod.CongestionControl) -> None:
        self._alg = value
        self._make = None


class CCLoop:
    """One per stack.  ``add``/``remove`` follow flow install/free;
    ``on_rto`` is called by the engine's timer scan, ``poke`` by its flow
    event handler (TAS_EV_CC_NEWS: the loop slept armed and a flow has
    news)."""

    def __init__(
        self,
        *,
        ft,
        cc_table,
        n_flows: int,
        algorithm: str,
        interval_us: int,
        loop,
        now_us: Callable[[], int] = lib.tas_now_us,
        rate_bps: int = 0,
        pacing: bool = True,
        params: dict[str, Any] | None = None,
    ) -> None:
        if algorithm not in CHOICES:
            raise KeyError(f"unknown congestion control {algorithm!r}; choose from {', '.join(CHOICES)}")
        if cc_table == ffi.NULL:
            raise ValueError("the stack region has no CC side table")
        self.ft = ft
        self.table = cc_table
        self.n_flows = n_flows
        self.algorithm = algorithm
        self.interval_us = max(0, int(interval_us))
        self.tick_us = self.interval_us if self.interval_us else MIN_INTERVAL_US
        self.tick_us = max(self.tick_us, 200)
        self.loop = loop
        self.now_us = now_us
        self.pacing = pacing
        self.params = dict(params or {})  # for the stack's algorithm
        self.rate_bps = rate_bps or 100_000_000  # const
        self.flows: dict[int, FlowCC] = {}  # flows with an algorithm in the slow path
        self.names: dict[int, str] = {}  # every installed flow's algorithm
        self.chosen: dict[int, str] = {}  # per-socket choices (TCP_CONGESTION) by flow id
        self._running = False
        self._heap: list[tuple[int, int, FlowCC]] = []  # (due, seq, flow): flows to run or to look at
        self._seq = 0
        self._handle = None
        self._handle_at = 0
        self._armed = False
        self.hystart = os.environ.get("TAS_CC_HYSTART", "1") != "0"
        # cc_passes: runs of the loop that ran some flow; cc_flows_run: flows
        # run (read); cc_flow_updates: windows written; cc_alg_skipped: runs
        # whose interval could not change the algorithm (not called);
        # cc_wakeups: news wake-ups from the fast path (the loop slept armed).
        # cc_hystart_css: CSS entered (delay rise); cc_hystart_resumes: back to
        # slow start from CSS (RTT fell); cc_hystart_exits: CSS_ROUNDS done,
        # congestion avoidance without a loss
        self.counters = {"cc_passes": 0, "cc_flows_run": 0, "cc_flow_updates": 0, "cc_alg_skipped": 0,
                         "cc_wakeups": 0, "cc_loss_events": 0, "cc_ecn_bytes": 0,
                         "cc_rto": 0, "cc_idle_restarts": 0, "cc_hystart_css": 0, "cc_hystart_resumes": 0,
                         "cc_hystart_exits": 0, "cc_undo": 0, "cc_undo_restored": 0}  # fmt: skip
        self._pcache: dict[tuple, dict] = {}  # _lazy_params
        self._cap = 0
        self._grow(64)
        self._ncap = max(1, min(n_flows, 4096))
        self._nids = ffi.new("uint32_t[]", self._ncap)

    def _grow(self, n: int) -> None:
        self._cap = n
        self._ids = ffi.new("uint32_t[]", n)
        self._samples = ffi.new("struct tas_cc_sample[]", n)
        self._cwnd = ffi.new("uint32_t[]", n)
        self._rate = ffi.new("uint64_t[]", n)
        self._seen = ffi.new("uint32_t[]", n)

    # -- lifecycle -----------------------------------------------------------
    def start(self) -> None:
        """The loop runs when flows have news; until then it sleeps armed."""
        self._running = True
        self._sleep(self.now_us(), arm_ok=True)

    def stop(self) -> None:
        self._running = False
        if self._handle:
            self._handle.cancel()
            self._handle = None
        self._arm(False)

    def _arm(self, on: bool) -> bool:
        """Arm (or disarm) the fast path's wake-up; arming returns True if a
        flow is marked already (run rather than sleep)."""
        if on == self._armed:
            return False
        self._armed = on
        return bool(lib.tas_sp_cc_news_arm(self.ft, 1 if on else 0))

    def _sleep(self, now: int, arm_ok: bool) -> None:
        """Sleep until the first flow in the heap is due (at least a tick
        from now, so that runs batch); with nothing in the heap, or far
        away, arm the wake-up (``arm_ok``: not again after a wake-up by
        news until a timer has fired)."""
        if not self._running or self.loop is None:
            return
        heap = self._heap
        at = max(heap[0][0], now + self.tick_us) if heap else None
        if at is not None and (self._handle is None or at < self._handle_at):
            if self._handle is not None:
                self._handle.cancel()
            self._handle_at = at
            self._handle = self.loop.call_later((at - now) / 1e6, self._tick)
        if at is None or (arm_ok and at - now > ARM_GAP_US):
            if self._arm(True):
                # marked between our last look and the arming: look now
                self._arm(False)
                self.loop.call_soon(self.poke)
        elif self._armed:
            self._arm(False)

    def _tick(self) -> None:
        self._handle = None
        now = self.now_us()
        try:
            self.run_once(now)
        except Exception:
            log.exception("congestion control pass failed")
        self._sleep(self.now_us(), arm_ok=True)

    def poke(self) -> None:
        """The fast path found the loop armed and a flow with news
        (TAS_EV_CC_NEWS), or news was seen on arming: take the news and
        run it a tick from now (flows that start together share a run, a
        connection that is gone by then costs none; a flow was run at most a
        tick after its first ACK before, too), without arming again."""
        if self._armed:
            self._armed = False  # the fast path cleared it
            lib.tas_sp_cc_news_arm(self.ft, 0)
        self.counters["cc_wakeups"] += 1
        now = self.now_us()
        self._take_news(now)
        self._sleep(now, arm_ok=False)

    def _queue(self, fl: FlowCC, now: int) -> None:
        """Give a flow with news an entry in the heap: due when its
        interval since its last run has passed."""
        if fl.due is None:
            fl.due = max(now, fl.last_run + fl.interval)
            self._seq += 1
            heapq.heappush(self._heap, (fl.due, self._seq, fl))

    def _params(self, name: str) -> dict:
        params = self.params if name == self.algorithm else {}
        if name == "const":
            params = {"rate_bps": self.rate_bps, **params}
        if name in HYSTART_ALGORITHMS:
            # HyStart++ for the loss-based ones; DCTCP leaves slow start on marks
            params = {"hystart": self.hystart, **params}
        return params

    def _lazy_params(self, name: str) -> dict:
        """_params(name), kept (the algorithm's arguments of lazily made
        flows; the settings they come from do not change while flows run)."""
        key = (name, self.rate_bps, self.hystart, id(self.params))
        p = self._pcache.get(key)
        if p is None:
            p = self._pcache[key] = self._params(name)
        return p

    def _make(self, name: str, mss: int, now: int, lazy: bool = False) -> FlowCC:
        """A FlowCC with a fresh algorithm of `name` as of `now`; with
        `lazy`, the algorithm is made (as of `now` still) when first used."""
        params = self._lazy_params(name) if lazy else self._params(name)
        # no run yet: the first news is due at once
        if lazy:
            return FlowCC(-1, None, name, last_run=now - (1 << 40), last_active=now, make=(mss, now, params))
        return FlowCC(-1, ccmod.make(name, mss, now, **params), name, last_run=now - (1 << 40), last_active=now)

    def register(self, fid: int, mss: int) -> tuple[int, int]:
        """A flow is being installed: it gets the algorithm chosen for it
        (``choose``), else the stack's.  Returns the side record's mode and
        loss beta for it (the caller writes them there, engine.py _install:
        tas_sp_activate).  O(1), and the algorithm object is made when the
        flow is first run (on news from the fast path)."""
        name = self.chosen.pop(fid, self.algorithm) if self.chosen else self.algorithm
        self.names[fid] = name
        if name == FP_NEWRENO:
            self.flows.pop(fid, None)
            return 0, 0
        fl = self._make(name, mss, self.now_us(), lazy=True)
        fl.fid = fid
        self.flows[fid] = fl
        return lib.TAS_CC_SP, LOSS_BETA.get(name, 500)

    def add(self, fid: int, mss: int) -> None:
        """``register``, and the side-table entry set up here (a flow being
        installed, its record not ACTIVE yet)."""
        mode, beta = self.register(fid, mss)
        lib.tas_sp_cc_init(self.table, self.n_flows, fid, mode, beta)

    def remove(self, fid: int) -> None:
        # (its heap entry, if any, is dropped when it comes up)
        self.flows.pop(fid, None)
        self.names.pop(fid, None)
        if self.chosen:
            self.chosen.pop(fid, None)

    def algorithm_of(self, fid: int) -> str | None:
        """The algorithm of an installed flow (or the one chosen for a flow
        not installed yet); None for an unknown id."""
        return self.names.get(fid) or self.chosen.get(fid)

    def choose(self, fid: int, name: str) -> str:
        """Per-socket algorithm (setsockopt TCP_CONGESTION): `name` for flow
        `fid` only.  A flow not installed yet (connecting) gets it at
        install; an installed one switches now, keeping its window and
        ssthresh (as Linux's tcp_set_congestion_control; the new algorithm
        starts from them, its own state fresh).  Returns the algorithm's
        name; OSError(ENOENT) for an unknown one."""
        name = resolve(name)
        if fid not in self.names:
            self.chosen[fid] = name
            return name
        if self.names[fid] == name:
            return name
        f = self.ft.flows[fid]
        self.names[fid] = name
        if name == FP_NEWRENO:
            self.flows.pop(fid, None)
            lib.tas_sp_cc_set_mode(self.ft, self.table, fid, 0, 0)
            return name
        ids = ffi.new("uint32_t[]", [fid])
        s = ffi.new("struct tas_cc_sample[]", 1)
        lib.tas_sp_cc_read(self.ft, self.table, ids, 1, s)
        now = self.now_us()
        fl = self._make(name, int(s[0].mss) or int(f.mss) or 536, now)
        fl.fid = fid
        fl.acked, fl.ecn_bytes, fl.loss, fl.undo = s[0].acked, s[0].ecn_bytes, s[0].loss, s[0].undo
        fl.alg.cwnd = max(int(s[0].cwnd), fl.alg.mss)
        ssthresh = int(self.table[fid].ssthresh)  # in the flow's side record (tas_abi.h)
        if ssthresh < 0x7FFFFFFF:
            fl.alg.ssthresh = max(ssthresh, 2 * fl.alg.mss)
        self.flows[fid] = fl
        lib.tas_sp_cc_set_mode(self.ft, self.table, fid, lib.TAS_CC_SP, LOSS_BETA.get(name, 500))
        self.mark(fid)  # its pacing rate, on the next run
        return name

    def mark(self, fid: int) -> None:
        """Flow `fid` has news the fast path does not report (an RTO, an
        algorithm switch): run it when its interval has passed."""
        fl = self.flows.get(fid)
        if fl is None:
            return
        fl.news = True
        now = self.now_us()
        self._queue(fl, now)
        self._sleep(now, arm_ok=False)

    def on_rto(self, fid: int) -> None:
        fl = self.flows.get(fid)
        if fl is not None:
            fl.rto += 1
            self.mark(fid)

    def window_of(self, fid: int) -> int | None:
        fl = self.flows.get(fid)
        return fl.alg.cwnd if fl else None

    # -- the control loop ----------------------------------------------------
    def _take_news(self, now: int) -> None:
        """The fast path's marks: each marked flow has news and an entry,
        due one interval after its last run; a flow never run yet, one tick
        after it was installed (as when news wakes an armed loop: a
        connection over by then -- most short ones -- costs no run, whether
        the loop slept or was ticking for other flows)."""
        flows, ids, cap, heap, tick = self.flows, self._nids, self._ncap, self._heap, self.tick_us
        while True:
            n = lib.tas_sp_cc_news(self.ft, ids, cap)
            for i in range(n):
                fl = flows.get(ids[i])
                if fl is not None:
                    fl.news = True
                    if fl.due is None:
                        # (interval is 0 until the first run; last_active is the install time until then)
                        due = fl.last_run + fl.interval if fl.interval else fl.last_active + tick
                        fl.due = due = due if due > now else now
                        self._seq += 1
                        heapq.heappush(heap, (due, self._seq, fl))
            if n < cap:
                return

    def run_once(self, now: int | None = None) -> int:
        """Take the fast path's news and run the flows that have news and
        are due; returns how many windows were written."""
        now = self.now_us() if now is None else now
        self._take_news(now)
        heap, flows = self._heap, self.flows
        due: list[FlowCC] = []
        while heap and heap[0][0] <= now:
            t, _, fl = heapq.heappop(heap)
            if fl.due != t or flows.get(fl.fid) is not fl:
                continue  # removed (or switched) since
            fl.due = None
            if fl.news:
                due.append(fl)
            # else: no news for a whole interval -- quiet, no entry until its next news
        if not due:
            return 0
        n = len(due)
        if n > self._cap:
            self._grow(max(n, 2 * self._cap))
        for i, fl in enumerate(due):
            self._ids[i] = fl.fid
        lib.tas_sp_cc_read(self.ft, self.table, self._ids, n, self._samples)
        k = 0
        for i, fl in enumerate(due):
            s = self._samples[i]
            fl.news = False
            fl.last_run = now
            if s.status != lib.TAS_FLOW_ACTIVE:
                fl.interval = MIN_INTERVAL_US
                continue
            if not self._decide(fl, s, now):
                continue
            self._ids[k] = fl.fid
            self._cwnd[k] = min(max(int(fl.alg.cwnd), int(s.mss)), U32)
            self._rate[k] = fl.rate
            self._seen[k] = s.loss
            k += 1
        for fl in due:
            # look again after one interval: news by then -> run, else quiet
            self._queue(fl, now + fl.interval)
        done = (
            lib.tas_sp_cc_write(self.ft, self.table, self._ids, k, self._cwnd, self._rate, self._seen)
            if k
            else 0
        )
        self.counters["cc_passes"] += 1
        self.counters["cc_flows_run"] += n
        self.counters["cc_flow_updates"] += done
        return done

    def _decide(self, fl: FlowCC, s, now: int) -> bool:
        """Feed one flow's interval to its algorithm; True if its window or
        pacing rate is to be written back."""
        acked = (s.acked - fl.acked) & ((1 << 64) - 1)
        ecn = (s.ecn_bytes - fl.ecn_bytes) & ((1 << 64) - 1)
        loss = (s.loss - fl.loss) & U32
        undo = (s.undo - fl.undo) & U32
        fl.acked, fl.ecn_bytes, fl.loss, fl.undo = s.acked, s.ecn_bytes, s.loss, s.undo
        rto, fl.rto = fl.rto, 0
        alg = fl.alg
        srtt = int(s.srtt_us)
        fl.interval = self.interval_us or max(MIN_INTERVAL_US, srtt)
        if loss or ecn or rto or undo:
            c = self.counters
            c["cc_loss_events"] += loss
            c["cc_ecn_bytes"] += ecn
            c["cc_rto"] += rto
            c["cc_undo"] += undo
            if undo:
                loss = self._undo(fl, s, now, loss, undo)

        in_flight, backlog = int(s.in_flight), int(s.backlog)
        restart = False
        if acked or in_flight or backlog or loss or rto:
            idle_us = max(srtt * 4, IDLE_RESTART_MIN_US)
            if fl.drained and now - fl.last_active > idle_us:
                # restart after idle (RFC 5681 4.1 / RFC 7661): nothing was in
                # flight or queued at the last run, and no news since
                alg.on_idle_restart(now, idle_us)
                self.counters["cc_idle_restarts"] += 1
                restart = True
            fl.last_active = now
        fl.drained = not in_flight and not backlog
        # cwnd-limited (Linux tcp_is_cwnd_limited): only then may the window grow
        cwnd = max(int(alg.cwnd), 1)
        peak = max(int(s.max_flight), in_flight)
        if alg.in_slow_start():
            limited = peak * 2 >= cwnd
        else:
            limited = peak + 3 * int(s.mss) >= cwnd
        hs = alg.hystart
        quiet = not (loss or rto or undo or ecn or restart) and (not acked or not limited)
        if (
            quiet
            and fl.name in SKIP_QUIET
            and (not acked or hs is None or not hs.active or not alg.in_slow_start())
        ):
            # this interval cannot change the algorithm's state (SKIP_QUIET)
            self.counters["cc_alg_skipped"] += 1
        else:
            iv = ccmod.Interval(now_us=now, acked_bytes=acked, ecn_bytes=ecn, loss_events=loss, rto=bool(rto),
                                rtt_us=srtt, in_flight=in_flight or peak, app_limited=not limited)  # fmt: skip
            if hs is not None and hs.active:
                before = (hs.css_entries, hs.ss_resumes, hs.exits)
                alg.on_interval(iv)
                hs = alg.hystart  # (an undo may have put a saved copy back)
                if hs is not None and (hs.css_entries, hs.ss_resumes, hs.exits) != before:
                    for key, a, b in zip(("cc_hystart_css", "cc_hystart_resumes", "cc_hystart_exits"), before,
                                         (hs.css_entries, hs.ss_resumes, hs.exits), strict=True):  # fmt: skip
                        self.counters[key] += max(0, b - a)
            else:
                alg.on_interval(iv)
            quiet = False
        # never beyond what the peer's window and our buffer allow to be useful
        cap = max(int(s.snd_wnd), INITIAL_WINDOW_SEGMENTS * int(s.mss)) * 2
        if alg.cwnd > cap and not alg.pacing_rate:
            alg.cwnd = cap
        rate = self._rate_of(fl, s)
        if (quiet and rate == fl.rate and not s.flags & lib.TAS_FF_RECOVERY
                and min(max(int(alg.cwnd), int(s.mss)), U32) == int(s.cwnd)):  # fmt: skip
            # the fast path has this window and rate already (nothing since
            # the last write could have changed them there: no loss, undo, RTO)
            return False
        fl.rate = rate
        return True

    def _undo(self, fl: FlowCC, s, now: int, loss: int, undo: int) -> int:
        """The fast path undid `undo` recoveries since the last pass (it has
        already put its cwnd/ssthresh back); `loss` recoveries began in the
        same time.  Recoveries that began and were undone within the
        interval never reach the algorithm; an undo of one it already
        reacted to restores the algorithm's state from before that cut
        (``on_undo``).  A flow still in recovery has its latest loss
        pending, not undone.  Returns the loss events left to react to."""
        pending = 1 if loss and s.flags & lib.TAS_FF_RECOVERY else 0
        fresh = min(loss - pending, undo)  # began and ended here
        if undo > fresh and fl.alg.on_undo(now):
            self.counters["cc_undo_restored"] += 1
        return loss - fresh

    def _rate_of(self, fl: FlowCC, s) -> int:
        alg = fl.alg
        if alg.pacing_rate:
            return int(alg.pacing_rate)
        if not self.pacing or not s.srtt_us:
            return 0
        gain = PACING_GAIN_SS if alg.in_slow_start() else PACING_GAIN_CA
        return int(gain * alg.cwnd * 1e6 / max(int(s.srtt_us), 100))

    def stats(self) -> dict[str, Any]:
        per_alg: dict[str, int] = {}
        for name in self.names.values():
            per_alg[name] = per_alg.get(name, 0) + 1
        return {"cc_algorithm": self.algorithm, "cc_interval_us": self.interval_us, "cc_flows": len(self.flows),
                "cc_flows_by_algorithm": per_alg, "cc_flows_scheduled": len(self._heap), **self.counters}  # fmt: skip
