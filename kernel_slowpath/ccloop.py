"""The slow path's congestion-control loop (issue 6; docs/CC.md).

The fast path counts per flow (bytes acknowledged, ECN-echoed bytes, loss
events = fast-recovery entries, in-flight high-water mark) in the flow record
and its side-table entry (``struct tas_flow_cc``).  Every tick this loop reads
the counters of the flows that are due in one C call
(``tas_sp_cc_read``), feeds the deltas to each flow's sans-I/O algorithm
(:mod:`kernel_slowpath.cc`), and writes the new windows and pacing rates back
in one C call (``tas_sp_cc_write``, under each flow's lock).  Per-flow work
on shared memory is in C; the decisions are Python.

A flow is due every ``interval_us`` (fixed), or with ``interval_us = 0``
every max(1 ms, srtt) of its own.  The fast path reacts to a loss at once
(fast retransmit; the window kept is the algorithm's beta, given at install)
and to ECN only by counting; everything else waits for the next interval.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flextcp.native import ffi, lib
from kernel_slowpath import cc as ccmod
from kernel_slowpath.cc.base import INITIAL_WINDOW_SEGMENTS

log = logging.getLogger("tas.cc")

U32 = 0xFFFFFFFF
MIN_INTERVAL_US = 1000
# An idle flow (nothing acked, in flight or queued for longer than the idle
# restart threshold, max(4 srtt, 200 ms)) is looked at this often: enough to
# notice its restart well within an RTO floor, cheap for many idle flows.
IDLE_INTERVAL_US = 50_000
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


@dataclass
class FlowCC:
    fid: int
    alg: ccmod.CongestionControl
    acked: int = 0
    ecn_bytes: int = 0
    loss: int = 0
    undo: int = 0  # cnt_undo as last read
    rto: int = 0  # RTOs the engine reported since the last pass
    next_due: int = 0
    last_active: int = 0
    idle: bool = False


class CCLoop:
    """One per stack.  ``add``/``remove`` follow flow install/free;
    ``on_rto`` is called by the engine's timer scan."""

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
        self.hystart = os.environ.get("TAS_CC_HYSTART", "1") != "0"
        # cc_hystart_css: CSS entered (delay rise); cc_hystart_resumes: back to
        # slow start from CSS (RTT fell); cc_hystart_exits: CSS_ROUNDS done,
        # congestion avoidance without a loss
        self.counters = {"cc_passes": 0, "cc_flow_updates": 0, "cc_loss_events": 0, "cc_ecn_bytes": 0,
                         "cc_rto": 0, "cc_idle_restarts": 0, "cc_hystart_css": 0, "cc_hystart_resumes": 0,
                         "cc_hystart_exits": 0, "cc_undo": 0, "cc_undo_restored": 0}  # fmt: skip
        self._handle = None
        self._cap = 0
        self._grow(64)

    def _grow(self, n: int) -> None:
        self._cap = n
        self._ids = ffi.new("uint32_t[]", n)
        self._samples = ffi.new("struct tas_cc_sample[]", n)
        self._cwnd = ffi.new("uint32_t[]", n)
        self._rate = ffi.new("uint64_t[]", n)
        self._seen = ffi.new("uint32_t[]", n)

    # -- lifecycle -----------------------------------------------------------
    def start(self) -> None:
        """The loop ticks while some flow has its algorithm in the slow path."""
        self._running = True
        self._kick()

    def stop(self) -> None:
        self._running = False
        if self._handle:
            self._handle.cancel()
            self._handle = None

    def _kick(self, soon: bool = False) -> None:
        """Schedule the next pass; `soon`: a flow just became due, so a
        pass asleep for idle flows is brought forward."""
        if soon and self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._running and self._handle is None and self.flows and self.loop is not None:
            # sleep until the earliest flow is due (idle flows: IDLE_INTERVAL_US)
            wait = min(fl.next_due for fl in self.flows.values()) - self.now_us()
            self._handle = self.loop.call_later(max(self.tick_us, wait) / 1e6, self._tick)

    def _make(self, name: str, mss: int, now: int) -> FlowCC:
        params = self.params if name == self.algorithm else {}
        if name == "const":
            params = {"rate_bps": self.rate_bps, **params}
        if name in HYSTART_ALGORITHMS:
            # HyStart++ for the loss-based ones; DCTCP leaves slow start on marks
            params = {"hystart": self.hystart, **params}
        alg = ccmod.make(name, mss, now, **params)
        return FlowCC(-1, alg, next_due=now, last_active=now)

    def add(self, fid: int, mss: int) -> None:
        """A flow is being installed (its record not ACTIVE yet): it gets the
        algorithm chosen for it (``choose``), else the stack's."""
        name = self.chosen.pop(fid, self.algorithm)
        self.names[fid] = name
        if name == FP_NEWRENO:
            lib.tas_sp_cc_init(self.table, self.n_flows, fid, 0, 0)
            self.flows.pop(fid, None)
            return
        lib.tas_sp_cc_init(self.table, self.n_flows, fid, lib.TAS_CC_SP, LOSS_BETA.get(name, 500))
        fl = self._make(name, mss, self.now_us())
        fl.fid = fid
        self.flows[fid] = fl
        self._kick(soon=True)

    def remove(self, fid: int) -> None:
        self.flows.pop(fid, None)
        self.names.pop(fid, None)
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
        self._kick(soon=True)
        return name

    def on_rto(self, fid: int) -> None:
        fl = self.flows.get(fid)
        if fl is not None:
            fl.rto += 1

    def window_of(self, fid: int) -> int | None:
        fl = self.flows.get(fid)
        return fl.alg.cwnd if fl else None

    # -- the control loop ----------------------------------------------------
    def _tick(self) -> None:
        self._handle = None
        try:
            self.run_once()
        except Exception:
            log.exception("congestion control pass failed")
        self._kick()

    def run_once(self, now: int | None = None) -> int:
        """One pass over the flows that are due; returns how many were updated."""
        now = self.now_us() if now is None else now
        due = [fl for fl in self.flows.values() if fl.next_due <= now]
        if not due:
            return 0
        if len(due) > self._cap:
            self._grow(max(len(due), 2 * self._cap))
        n = len(due)
        for i, fl in enumerate(due):
            self._ids[i] = fl.fid
        lib.tas_sp_cc_read(self.ft, self.table, self._ids, n, self._samples)
        k = 0
        for i, fl in enumerate(due):
            s = self._samples[i]
            if s.status != lib.TAS_FLOW_ACTIVE:
                fl.next_due = now + MIN_INTERVAL_US
                continue
            self._decide(fl, s, now)
            self._ids[k] = fl.fid
            self._cwnd[k] = min(max(int(fl.alg.cwnd), int(s.mss)), U32)
            self._rate[k] = self._rate_of(fl, s)
            self._seen[k] = s.loss
            k += 1
        done = (
            lib.tas_sp_cc_write(self.ft, self.table, self._ids, k, self._cwnd, self._rate, self._seen)
            if k
            else 0
        )
        self.counters["cc_passes"] += 1
        self.counters["cc_flow_updates"] += done
        return done

    def _decide(self, fl: FlowCC, s, now: int) -> None:
        acked = (s.acked - fl.acked) & ((1 << 64) - 1)
        ecn = (s.ecn_bytes - fl.ecn_bytes) & ((1 << 64) - 1)
        loss = (s.loss - fl.loss) & U32
        undo = (s.undo - fl.undo) & U32
        fl.acked, fl.ecn_bytes, fl.loss, fl.undo = s.acked, s.ecn_bytes, s.loss, s.undo
        rto, fl.rto = fl.rto, 0
        alg = fl.alg
        srtt = int(s.srtt_us)
        interval = self.interval_us or max(MIN_INTERVAL_US, srtt)
        fl.next_due = now + interval
        self.counters["cc_loss_events"] += loss
        self.counters["cc_ecn_bytes"] += ecn
        self.counters["cc_rto"] += rto
        self.counters["cc_undo"] += undo
        if undo:
            loss = self._undo(fl, s, now, loss, undo)

        busy = acked or s.in_flight or s.backlog or loss or rto
        if busy:
            if fl.idle or (now - fl.last_active > max(srtt * 4, 200_000) and not s.in_flight):
                # restart after idle (RFC 5681 4.1 / RFC 7661)
                alg.on_idle_restart(now, max(srtt * 4, 200_000))
                self.counters["cc_idle_restarts"] += 1
            fl.idle = False
            fl.last_active = now
        elif now - fl.last_active > max(srtt * 4, 200_000):
            fl.idle = True
        if fl.idle:
            fl.next_due = now + IDLE_INTERVAL_US
        # cwnd-limited (Linux tcp_is_cwnd_limited): only then may the window grow
        cwnd = max(int(alg.cwnd), 1)
        peak = max(int(s.max_flight), int(s.in_flight))
        if alg.in_slow_start():
            limited = peak * 2 >= cwnd
        else:
            limited = peak + 3 * int(s.mss) >= cwnd
        iv = ccmod.Interval(now_us=now, acked_bytes=acked, ecn_bytes=ecn, loss_events=loss, rto=bool(rto),
                            rtt_us=srtt, in_flight=int(s.in_flight) or peak, app_limited=not limited)  # fmt: skip
        hs = alg.hystart
        if hs is not None and hs.active:
            before = (hs.css_entries, hs.ss_resumes, hs.exits)
            alg.on_interval(iv)
            hs = alg.hystart  # (an undo may have put a saved copy back)
            if hs is not None:
                for key, a, b in zip(("cc_hystart_css", "cc_hystart_resumes", "cc_hystart_exits"), before,
                                     (hs.css_entries, hs.ss_resumes, hs.exits), strict=True):  # fmt: skip
                    self.counters[key] += max(0, b - a)
        else:
            alg.on_interval(iv)
        # never beyond what the peer's window and our buffer allow to be useful
        cap = max(int(s.snd_wnd), INITIAL_WINDOW_SEGMENTS * int(s.mss)) * 2
        if alg.cwnd > cap and not alg.pacing_rate:
            alg.cwnd = cap

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
                "cc_flows_by_algorithm": per_alg, **self.counters}  # fmt: skip
