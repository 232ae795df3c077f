"""Deterministic network simulation for the fast path (issue 4).

Two fast-path engines (the C ``struct tas_fp`` or the Python twin
``flextcp.fastpath_py``), each in its own :class:`fp_harness.FPHarness`
with one flow installed ESTABLISHED (no handshake: the two flow records are
mirror images: ports, ISNs, windows), talk to each other through a scripted
channel, driven by a fake clock.  Nothing here reads a real clock or
sleeps, so a run is a pure function of its :class:`Scenario`.

* **Channel** (:class:`Link`, one per direction): the i-th frame sent gets
  ``fates[i]`` (frames past the end of the script are delivered): ``ok``,
  ``drop``, ``dup`` (a second copy ``arg`` µs later), ``delay`` (``arg`` µs
  more than the base one-way delay) or ``reorder`` (held back until
  ``arg`` later frames were sent, then delivered right behind the last of
  them; at most 50 ms).  Delivery order: due time, then send order.
  Frames are passed on with MAC and IP addresses swapped (both harnesses
  use the same local/remote addresses; the swap keeps both checksums).
* **Clock**: jumps to the next event: a frame due, an application read
  (slow-reader scenarios), or a slow-path timer.
* **Slow path** (:class:`Endpoint.scan`): what kernel_slowpath/engine.py
  ``scan_once`` does for timers, on its 10 ms grid: ``tas_sp_scan_timeouts``
  then per reason ``tas_sp_rto_fire`` / ``tas_sp_tlp`` / ``tas_sp_probe``
  and a KTX kick -- the C operations (as the real slow path uses, also with
  the Python engine) or their twins in flextcp/spflow_py.py
  (``sp="py"``).  The next timer is found by bisecting the (read-only) scan
  over the grid, so timers the scan learns later need no change here.  A
  flow that would be given up (backoff > 12) fails the run.
* **Applications**: the writer copies its stream into the tx buffer as far
  as it fits, the reader drains the rx buffer (at once, or ``read_chunk``
  bytes every ``read_period_us``: windows close, zero-window probes run).

Every loop is bounded: ``max_events`` events, a simulated-time limit
(:meth:`Scenario.time_limit_us`) and a cap on polls per event; exceeding any
raises :class:`SimFailure` with a dump of both flows, both links and the
last frames on the wire.
"""

from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import dataclass, field

from fp_harness import FlowSpec, FPHarness, stream_bytes

from flextcp import spflow_py
from flextcp.native import ffi, lib
from nicemu.wire import TAS_PK_TCP, parse_frame

M32 = 0xFFFFFFFF
FID = 0
CTX_ID = 1
START_US = 5_000_000_000  # the harness's clock start
SCAN_US = 10_000  # the slow path's busy timer scan interval (engine.SCAN_INTERVAL_S)
GIVE_UP_BACKOFF = 12  # engine.scan_once resets a flow past this many RTOs
REORDER_HOLD_US = 50_000
MAX_POLL_ROUNDS = 500  # polls of both engines at one instant before "never quiet"
TIMER_HORIZON_US = 61_000_000  # > the 60 s RTO cap: a pending timer is due within this
TMO_TLP = getattr(lib, "TAS_TMO_TLP", None)

FATES = ("ok", "drop", "dup", "delay", "reorder")
GOOD = ("ok", "dup")  # fates that deliver the frame on time
# A script with more undelivered frames may lose 13 RTO retransmissions (or
# their ACKs) in a row, after which the slow path rightly gives up.
MAX_BAD = GIVE_UP_BACKOFF


class SimFailure(AssertionError):
    """A run that did not finish, or finished wrong; the message holds the dump."""


@dataclass(frozen=True)
class Scenario:
    n_ab: int = 10_000  # bytes A sends to B
    n_ba: int = 0  # bytes B sends to A
    fates_ab: tuple[tuple[str, int], ...] = ()  # fates of the first frames A -> B
    fates_ba: tuple[tuple[str, int], ...] = ()
    mss: int = 536
    rx_len: int = 8192  # both ends (power of two)
    tx_len: int = 8192
    wscale: int = 0  # both directions
    delay_us: int = 1000  # one-way base delay
    read_period_us: int = 0  # 0: the app reads as soon as data is there
    read_chunk: int = 1 << 30
    max_events: int = 200_000

    def time_limit_us(self) -> int:
        """Simulated time within which the transfer must finish: 5 s, plus the
        slow reader's own pace, plus for every frame the script does not
        deliver at once (drop, delay, reorder) one more backed-off RTO
        (1 s initial, doubling, 60 s cap).  Frames past the script always
        arrive, so a correct stack always makes it (with at most MAX_BAD
        such frames: more can legitimately exhaust the RTO retries)."""
        t = 5_000_000
        if self.read_period_us:
            chunks = (self.n_ab + self.n_ba) // max(1, min(self.read_chunk, self.rx_len)) + 2
            t += chunks * self.read_period_us
        bad = sum(1 for k, _ in self.fates_ab + self.fates_ba if k not in GOOD)
        t += sum(min(60_000_000, 1_000_000 << j) for j in range(1, bad + 1))
        return t


@dataclass
class Result:
    delivered_ab: bytes
    delivered_ba: bytes
    end_us: int  # simulated time from start to completion
    events: int
    frames: int
    digest: str  # of every frame on the wire with its time and direction
    counters: dict = field(default_factory=dict)
    wire: list = field(default_factory=list, repr=False)  # (µs, link, frame) for every frame


def first_difference(x: Result, y: Result) -> str:
    """Where two runs' wire traces part (for comparing the engines)."""
    for i, (a, b) in enumerate(zip(x.wire, y.wire, strict=False)):
        if a != b:
            return (f"frame {i}:\n  {a[0]} {a[1]} {describe(a[2])}\n  {b[0]} {b[1]} {describe(b[2])}\n"
                    f"  {a[2].hex()}\n  {b[2].hex()}")  # fmt: skip
    return f"one trace is a prefix of the other ({len(x.wire)} vs {len(y.wire)} frames)"


# ---------------------------------------------------------------- the channel


def swap_addrs(frame: bytes) -> bytes:
    """Hand a frame from one harness to the other: swap the MACs and the IPs
    (one's-complement sums are order-free: both checksums stay valid)."""
    b = bytearray(frame)
    b[0:6], b[6:12] = frame[6:12], frame[0:6]
    b[26:30], b[30:34] = frame[30:34], frame[26:30]
    return bytes(b)


class Link:
    """One direction of the channel with its script of fates."""

    def __init__(self, name: str, fates, delay_us: int) -> None:
        self.name = name
        self.fates = list(fates)
        self.delay = max(1, delay_us)
        self.sent = 0
        self.order = 0
        self.q: list[tuple[int, int, bytes, str]] = []  # (due, order, frame, fate)
        self.held: list[list] = []  # [frames still to pass, latest due, frame]
        self.delivered = 0
        self.dropped = 0

    def _push(self, due: int, frame: bytes, fate: str) -> None:
        self.order += 1
        self.q.append((due, self.order, frame, fate))

    def send(self, now: int, frame: bytes) -> str:
        fate, arg = self.fates[self.sent] if self.sent < len(self.fates) else ("ok", 0)
        self.sent += 1
        due = now + self.delay
        # frames held back for reordering pass once enough frames followed them
        released = []
        for h in list(self.held):
            h[0] -= 1
            if h[0] <= 0:
                self.held.remove(h)
                released.append(h[2])
        if fate == "drop":
            self.dropped += 1
        elif fate == "reorder":
            self.held.append([max(1, arg), now + REORDER_HOLD_US, frame])
        elif fate == "delay":
            self._push(due + arg, frame, fate)
        else:
            self._push(due, frame, fate)
            if fate == "dup":
                self._push(due + max(1, arg), frame, "dup2")
        for fr in released:  # right behind this frame
            self._push(due, fr, "reordered")
        return fate

    def next_due(self) -> int | None:
        ts = [d for d, *_ in self.q] + [h[1] for h in self.held]
        return min(ts) if ts else None

    def pop_due(self, now: int) -> list[tuple[bytes, str]]:
        for h in [h for h in self.held if h[1] <= now]:
            self.held.remove(h)
            self._push(h[1], h[2], "reordered")
        ready = sorted(x for x in self.q if x[0] <= now)
        if ready:
            self.q = [x for x in self.q if x[0] > now]
        self.delivered += len(ready)
        return [(f, fate) for _, _, f, fate in ready]

    def empty(self) -> bool:
        return not self.q and not self.held


# ---------------------------------------------------------------- the endpoints


class Endpoint:
    """One harness + engine + one established flow + its app + its slow path."""

    def __init__(self, name: str, pure: bool, sp_py: bool, spec: FlowSpec, send: bytes, expect: int,
                 sc: Scenario) -> None:  # fmt: skip
        self.name = name
        self.pure = pure
        self.sp_py = sp_py
        self.h = FPHarness(pure)
        region_len = 1 << max(17, (2 * (spec.rx_len + spec.tx_len) + (1 << 16)).bit_length())
        self.ctx = self.h.add_ctx(CTX_ID, region_len)
        self.fl = self.h.install_flow(FID, self.ctx, spec)
        self.spec = spec
        self.send_data = send
        self.expect = expect
        self.got = bytearray()
        self.sc = sc
        self.next_read = START_US
        self.dirty = False  # an ATX update is owed (the ring was full)
        self.rto_fired = self.tlps = self.probes = 0
        self.gave_up = False
        self.krx: list[tuple] = []
        self._cursor = ffi.new("uint32_t *")
        self._ids = ffi.new("uint32_t[]", 16)
        self._why = ffi.new("uint8_t[]", 16)

    def close(self) -> None:
        self.h.close()

    @property
    def f(self):
        return self.h.flow(FID)

    @property
    def x(self):
        """The flow's side record (struct tas_flow_cc)."""
        return self.h.side(FID)

    def af(self):
        return self.h.appflow(FID)

    # -- the application --------------------------------------------------
    def app_step(self, now: int) -> bool:
        """Write what fits, read if it is time; post the positions.  True if
        anything changed."""
        fl, h = self.fl, self.h
        changed = False
        af = self.af()
        if fl.app_tx_head < len(self.send_data):
            ln = fl.spec.tx_len
            n = min(len(self.send_data) - fl.app_tx_head, ln - (fl.app_tx_head - af.tx_acked))
            if n > 0:
                self._copy_in(
                    fl.tx_off, ln, fl.app_tx_head, self.send_data[fl.app_tx_head : fl.app_tx_head + n]
                )
                fl.app_tx_head += n
                changed = True
        if not self.sc.read_period_us or now >= self.next_read:
            avail = af.rx_head - fl.app_rx_tail
            n = min(avail, self.sc.read_chunk)
            if n > 0:
                self.got += self._copy_out(fl.rx_off, fl.spec.rx_len, fl.app_rx_tail, n)
                fl.app_rx_tail += n
                changed = True
            if self.sc.read_period_us and now >= self.next_read:
                self.next_read = now + self.sc.read_period_us
        if changed or self.dirty:
            self.dirty = not h.app_update(FID)
        return changed

    def _copy_in(self, off: int, ln: int, pos: int, data: bytes) -> None:
        mv = self.ctx.region.view(off, ln)
        try:
            s = pos & (ln - 1)
            k = min(len(data), ln - s)
            mv[s : s + k] = data[:k]
            mv[0 : len(data) - k] = data[k:]
        finally:
            mv.release()

    def _copy_out(self, off: int, ln: int, pos: int, n: int) -> bytes:
        mv = self.ctx.region.view(off, ln)
        try:
            s = pos & (ln - 1)
            k = min(n, ln - s)
            return bytes(mv[s : s + k]) + bytes(mv[0 : n - k])
        finally:
            mv.release()

    def drain(self) -> None:
        self.h.drain_arx(self.ctx)
        for hdr, data in self.h.drain_krx():
            if len(self.krx) < 20:
                self.krx.append((hdr, data[:80].hex()))

    # -- the slow path's timers (engine.scan_once) --------------------------
    def _scan(self, now: int) -> list[tuple[int, int]]:
        if self.sp_py:
            flows = [self.h.ft.flow(i) for i in range(self.h.n_flows)]
            sides = [self.h.ft.side(i) for i in range(self.h.n_flows)]
            ids, why, _ = spflow_py.scan_timeouts(flows, sides, self.h.n_flows, now & M32, self.h.n_flows, 0, 16)
            return list(zip(ids, why, strict=True))
        self._cursor[0] = 0
        n = lib.tas_sp_scan_timeouts(self.h.ft.raw, now & M32, self.h.n_flows, self._cursor, self._ids,
                                     self._why, 16)  # fmt: skip
        return [(self._ids[i], self._why[i]) for i in range(n)]

    def timer_due(self, now: int) -> bool:
        return bool(self._scan(now))

    def scan(self, now: int) -> int:
        """Fire what is due at now; the number of timers fired."""
        due = self._scan(now)
        for fid, why in due:
            if fid != FID:
                continue
            if why == lib.TAS_TMO_RTO:
                f = self.h.ft.flow(fid)
                b = (
                    spflow_py.rto_fire(f, self.h.ft.side(fid), now)
                    if self.sp_py
                    else lib.tas_sp_rto_fire(self.h.ft.raw, fid, now & M32)
                )
                self.rto_fired += 1
                if b > GIVE_UP_BACKOFF:
                    self.gave_up = True
                    return len(due)
            elif TMO_TLP is not None and why == TMO_TLP:
                if self.sp_py and hasattr(spflow_py, "tlp"):
                    spflow_py.tlp(self.h.ft.flow(fid))
                else:
                    lib.tas_sp_tlp(self.h.ft.raw, fid)
                self.tlps += 1
            else:
                f = self.h.ft.flow(fid)
                if self.sp_py:
                    spflow_py.probe(f, self.h.ft.side(fid), now)
                else:
                    lib.tas_sp_probe(self.h.ft.raw, fid, now & M32)
                self.probes += 1
            assert self.h.post_ktx(lib.TAS_KTX_KICK, fid) == 1, "KTX ring full"
        return len(due)

    # -- state --------------------------------------------------------------
    def done(self) -> bool:
        return len(self.got) >= self.expect and self.f.tx_una >= len(self.send_data)

    def dump(self) -> str:
        f = self.f
        out = [
            f"endpoint {self.name} ({'py' if self.pure else 'C'} engine, {'py' if self.sp_py else 'C'} sp ops):"
        ]
        out.append(f"  app: wrote {self.fl.app_tx_head}/{len(self.send_data)}, read {len(self.got)}/{self.expect}"
                   f" (rx_tail {self.fl.app_rx_tail}); appflow rx_head {self.af().rx_head}"
                   f" tx_acked {self.af().tx_acked}; atx owed {self.dirty}")  # fmt: skip
        out.append(f"  timers: rto_fired {self.rto_fired} tlp {self.tlps} probes {self.probes}"
                   f" gave_up {self.gave_up}")  # fmt: skip
        fields = []
        for rec, ctype in ((f, "struct tas_flow"), (self.x, "struct tas_flow_cc")):
            for name, _ in ffi.typeof(ctype).fields:
                v = getattr(rec, name)
                if isinstance(v, ffi.CData):
                    v = list(v)
                fields.append(f"{name}={hex(v) if name == 'flags' else v}")
        out.append("  flow: " + " ".join(fields))
        st = ffi.typeof("struct tas_fp_stats")
        nz = [f"{n}={getattr(self.h.stats, n)}" for n, _ in st.fields if getattr(self.h.stats, n)]
        out.append("  fp stats: " + " ".join(nz))
        if self.krx:
            out.append(f"  KRX (punted to the slow path): {self.krx}")
        return "\n".join(out)


# ---------------------------------------------------------------- the simulator


def describe(frame: bytes) -> str:
    r, p = parse_frame(frame)
    if r != TAS_PK_TCP:
        return f"non-TCP ({r}) {len(frame)} B"
    fl = "".join(c for c, bit in zip("FSRPAUEC", range(8), strict=True) if p.tcp_flags >> bit & 1)
    sack = [(p.sack_start[i], p.sack_end[i]) for i in range(p.n_sack)]
    return (f"{p.src_port}->{p.dst_port} [{fl}] seq={p.seq} ack={p.ack} len={p.payload_len} win={p.win}"
            f" ts={p.tsval}/{p.tsecr}" + (f" sack={sack}" if sack else ""))  # fmt: skip


class Sim:
    """Two endpoints, two links, one clock.  ``engines``: "c" or "py" for A
    and B; ``sp``: "c" (the C slow-path flow ops, like the real slow path) or
    "py" (their twins)."""

    ISS_A = 0xFFFFF000  # A's sequence numbers wrap during the transfer
    ISS_B = 0x7FFFFF00

    def __init__(self, sc: Scenario, engines: tuple[str, str] = ("c", "c"), sp: str = "c") -> None:
        self.sc = sc
        win = sc.rx_len
        common = dict(rx_len=sc.rx_len, tx_len=sc.tx_len, mss=sc.mss, snd_wscale=sc.wscale,
                      rcv_wscale=sc.wscale, snd_wnd=win)  # fmt: skip
        spec_a = FlowSpec(local_port=80, remote_port=40000, tx_seq0=self.ISS_A, rx_seq0=self.ISS_B, **common)
        spec_b = FlowSpec(local_port=40000, remote_port=80, tx_seq0=self.ISS_B, rx_seq0=self.ISS_A, **common)
        self.data_ab = stream_bytes(0, sc.n_ab, 1)
        self.data_ba = stream_bytes(0, sc.n_ba, 2)
        self.a = self.b = None
        try:
            self.a = Endpoint("A", engines[0] == "py", sp == "py", spec_a, self.data_ab, sc.n_ba, sc)
            self.b = Endpoint("B", engines[1] == "py", sp == "py", spec_b, self.data_ba, sc.n_ab, sc)
        except BaseException:
            self.close()
            raise
        self.ab = Link("A->B", sc.fates_ab, sc.delay_us)
        self.ba = Link("B->A", sc.fates_ba, sc.delay_us)
        self.now = START_US
        self.events = 0
        self.frames = 0
        self.trace: deque = deque(maxlen=60)
        self.hash = hashlib.blake2b(digest_size=16)
        self.wire: list[tuple[int, str, bytes]] = []

    def close(self) -> None:
        for ep in (self.a, self.b):
            if ep is not None:
                ep.close()

    def __enter__(self) -> Sim:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- pieces of an event ----------------------------------------------------
    def _out(self, ep: Endpoint, link: Link, frames: list[bytes]) -> None:
        for fr in frames:
            self.frames += 1
            fate = link.send(self.now, fr)
            self.hash.update(b"%d %s %d " % (self.now - START_US, link.name.encode(), len(fr)) + fr)
            self.trace.append((self.now - START_US, link.name, fate, fr))
            self.wire.append((self.now - START_US, link.name, fr))

    def _poll_all(self) -> None:
        for _ in range(MAX_POLL_ROUNDS):
            busy = False
            for ep, link in ((self.a, self.ab), (self.b, self.ba)):
                busy |= ep.app_step(self.now)
                work, frames = ep.h.poll(self.now)
                ep.drain()
                self._out(ep, link, frames)
                busy |= bool(work) or bool(frames) or ep.dirty
            if not busy:
                return
        self.fail(f"engines still busy after {MAX_POLL_ROUNDS} polls at one instant")

    def _next_timer(self, horizon: int) -> int | None:
        """The first 10 ms scan tick in (now, horizon] at which either slow
        path has a timer due (the scan is read-only and monotone in time)."""
        k0 = (self.now - START_US) // SCAN_US + 1
        k1 = (horizon - START_US) // SCAN_US
        if k1 < k0:
            return None

        def due(k: int) -> bool:
            t = START_US + k * SCAN_US
            return self.a.timer_due(t) or self.b.timer_due(t)

        if not due(k1):
            return None
        lo, hi = k0, k1
        while lo < hi:
            mid = (lo + hi) // 2
            if due(mid):
                hi = mid
            else:
                lo = mid + 1
        return START_US + lo * SCAN_US

    def done(self) -> bool:
        return self.a.done() and self.b.done()

    def fail(self, why: str) -> None:
        raise SimFailure(f"{why}\n{self.dump()}")

    def dump(self) -> str:
        out = [
            f"simulated {(self.now - START_US) / 1e6:.3f} s, {self.events} events, {self.frames} frames; {self.sc}"
        ]
        out += [self.a.dump(), self.b.dump()]
        for link in (self.ab, self.ba):
            q = ", ".join(
                f"{(d - START_US) / 1000:.1f}ms:{describe(fr)}" for d, _, fr, _ in sorted(link.q)[:8]
            )
            out.append(f"link {link.name}: sent {link.sent} (script {len(link.fates)}) delivered {link.delivered}"
                       f" dropped {link.dropped} queued {len(link.q)} held {len(link.held)} [{q}]")  # fmt: skip
        out.append("last frames on the wire (µs, link, fate):")
        out += [f"  {t:>12} {n} {fate:<9} {describe(fr)}" for t, n, fate, fr in self.trace]
        return "\n".join(out)

    # -- the loop ----------------------------------------------------------------
    def run(self) -> Result:
        sc = self.sc
        limit = START_US + sc.time_limit_us()
        end_us = None
        while True:
            self.events += 1
            if self.events > sc.max_events:
                self.fail(f"no completion within {sc.max_events} events")
            for link, dst in ((self.ab, self.b), (self.ba, self.a)):
                for fr, _ in link.pop_due(self.now):
                    dst.h.inject(swap_addrs(fr))
            for ep in (self.a, self.b):
                if (self.now - START_US) % SCAN_US == 0:
                    ep.scan(self.now)
                if ep.gave_up:
                    self.fail(
                        f"{ep.name}: the slow path would reset the flow (RTO backoff > {GIVE_UP_BACKOFF})"
                    )
            self._poll_all()
            if end_us is None and self.done():
                end_us = self.now - START_US
            if end_us is not None and self.ab.empty() and self.ba.empty():
                break
            # next event: a frame, a read, a timer
            cand = [t for t in (self.ab.next_due(), self.ba.next_due()) if t is not None]
            if sc.read_period_us:
                for ep in (self.a, self.b):
                    if len(ep.got) < ep.expect:
                        cand.append(max(ep.next_read, self.now + 1))
            # any armed timer is due within the 60 s RTO cap (and the bisection
            # must stay well inside the 71 minutes of the 32-bit µs clock)
            horizon = min([*cand, self.now + TIMER_HORIZON_US])
            t = self._next_timer(horizon)
            if t is not None:
                cand.append(t)
            if not cand:
                self.fail("stuck: no frame in flight, no timer due, transfer not complete")
            nxt = max(min(cand), self.now + 1)
            if nxt > limit:
                self.now = limit
                self.fail(f"not complete within the time limit of {(limit - START_US) / 1e6:.1f} simulated s")
            self.now = nxt
        self.check(end_us)
        return Result(
            delivered_ab=bytes(self.b.got),
            delivered_ba=bytes(self.a.got),
            end_us=end_us,
            events=self.events,
            frames=self.frames,
            digest=self.hash.hexdigest(),
            wire=self.wire,
            counters={
                ep.name + "." + k: v
                for ep in (self.a, self.b)
                for k, v in (
                    ("rto", ep.rto_fired),
                    ("tlp", ep.tlps),
                    ("probe", ep.probes),
                    ("rexmit", ep.x.cnt_rexmit),
                    ("dsack", ep.x.cnt_dsack),
                )  # fmt: skip
            },
        )

    def check(self, end_us: int) -> None:
        """Exactly once, in order: each reader got exactly the other side's
        stream, nothing beyond it arrived, all of it was acknowledged."""
        for rx, tx, data in ((self.b, self.a, self.data_ab), (self.a, self.b, self.data_ba)):
            if bytes(rx.got) != data:
                first = next((i for i, (x, y) in enumerate(zip(rx.got, data, strict=False)) if x != y), None)
                self.fail(f"{tx.name}->{rx.name}: read {len(rx.got)} of {len(data)} bytes, first difference at "
                          f"{first if first is not None else min(len(rx.got), len(data))}")  # fmt: skip
            if rx.f.rx_head != len(data) or rx.af().rx_head != len(data):
                self.fail(f"{rx.name}: rx_head {rx.f.rx_head} / appflow {rx.af().rx_head} != {len(data)}")
            if tx.f.tx_una != len(data) or tx.f.tx_head != len(data):
                self.fail(f"{tx.name}: tx_una {tx.f.tx_una} tx_head {tx.f.tx_head} != {len(data)}")


def run(sc: Scenario, engines: tuple[str, str] = ("c", "c"), sp: str = "c") -> Result:
    with Sim(sc, engines, sp) as sim:
        return sim.run()


__all__ = ["first_difference", "Link", "Result", "Scenario", "Sim", "SimFailure", "run", "swap_addrs"]
