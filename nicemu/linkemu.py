"""A seeded userspace link emulator between two interfaces of one namespace.

Each direction has its own impairment engine (C kernel ``le_*`` in
``nicemu/csrc/linkemu.c``, semantics in ``nicemu/csrc/include/linkemu.h``)
with loss, duplication, corruption, delay + jitter, reordering, a rate limit
with a bounded bottleneck queue and ECN CE-marking above a queue threshold.
:class:`PyEngine` is the pure-Python twin (same PRNG, same decisions, same
departure times); ``TAS_PURE=1`` makes the forwarder use it.

The forwarder (:func:`run`) reads frames from AF_PACKET sockets bound to the
two ports (``PACKET_IGNORE_OUTGOING`` plus an ``sll_pkttype`` check so its own
transmissions are never forwarded again), submits them to the engine of their
direction and sends them out of the other port when due.  Per-packet work is
in C (``le_pump``/``le_flush``); Python loops once per batch and waits with
``le_wait2`` (ppoll, microsecond timeouts).

Directions: ``ab`` is port a -> port b, ``ba`` is b -> a.  With
:class:`nicemu.topology.Topology` (``link="emu"``), a faces the Linux peer
and b faces the stack's TAP, so ``ab`` is peer -> stack.

Use it as a child process (:class:`LinkEmu`), or from a shell::

    scripts/linkemu.py --ns NS --a IF --b IF --loss 1 --delay-ms 20 --seed 7 --duration 30
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import heapq
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SLOT_BYTES = 2048
DRAWS = 6
PPM = 1_000_000
DEFAULT_FRAMES = 4096
M64 = (1 << 64) - 1
ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
PACKET_IGNORE_OUTGOING = 23
PACKET_OUTGOING = 4
BATCH = 256

COUNTERS = (
    "frames_in",
    "frames_out",
    "bytes_in",
    "bytes_out",
    "dropped_loss",
    "dropped_queue",
    "dropped_full",
    "dropped_big",
    "duplicated",
    "corrupted",
    "reordered",
    "ce_marked",
    "skipped_outgoing",
    "tx_errors",
    "rx_errors",
    "max_backlog_bytes",
)

REPO_ROOT = Path(__file__).resolve().parent.parent


def now_us() -> int:
    """CLOCK_MONOTONIC in integer microseconds."""
    return time.monotonic_ns() // 1000


def use_pure() -> bool:
    return os.environ.get("TAS_PURE", "") == "1"


def _native():
    try:
        from flextcp.native import ffi, lib
    except ImportError:
        from flextcp._native import ffi, lib
    return ffi, lib


def derive_seed(seed: int, direction: int) -> int:
    """Seed of one direction (0 = ab, 1 = ba) from the emulator seed."""
    return ((seed << 1) | direction) & M64


@dataclasses.dataclass
class LinkConfig:
    """One direction's impairments, in human units.

    Probabilities are percent; times microseconds; ``rate_bps`` bits/s (0 =
    unlimited); ``queue_limit_bytes`` bounds the bottleneck backlog (only
    with a rate; 0 = unbounded); ``ecn_threshold_bytes`` CE-marks ECT IPv4
    frames that find at least this backlog (0 = off); ``max_frames`` is the
    number of frames the delay line holds.
    """

    loss: float = 0.0
    dup: float = 0.0
    corrupt: float = 0.0
    reorder: float = 0.0
    delay_us: int = 0
    jitter_us: int = 0
    reorder_us: int = 0
    rate_bps: int = 0
    queue_limit_bytes: int = 0
    ecn_threshold_bytes: int = 0
    max_frames: int = DEFAULT_FRAMES

    @staticmethod
    def _ppm(pct: float) -> int:
        v = round(pct * 10_000)
        if not 0 <= v <= PPM:
            raise ValueError(f"probability {pct}% out of range")
        return v

    def c_fields(self, seed: int) -> dict[str, int]:
        """The fields of ``struct le_config``."""
        return {
            "loss_ppm": self._ppm(self.loss),
            "dup_ppm": self._ppm(self.dup),
            "corrupt_ppm": self._ppm(self.corrupt),
            "reorder_ppm": self._ppm(self.reorder),
            "delay_us": int(self.delay_us),
            "jitter_us": int(self.jitter_us),
            "reorder_us": int(self.reorder_us),
            "queue_limit_bytes": int(self.queue_limit_bytes),
            "ecn_threshold_bytes": int(self.ecn_threshold_bytes),
            "max_frames": int(self.max_frames),
            "rate_bps": int(self.rate_bps),
            "seed": seed & M64,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> LinkConfig:
        return cls(**(d or {}))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------
# Engines
# ---------------------------------------------------------------------------


def _ce_mark(f: bytearray) -> bool:
    """Set ECN CE on an ECT IPv4 frame, fixing the checksum (RFC 1624)."""
    if len(f) < 34 or f[12] != 0x08 or f[13] != 0x00 or (f[14] >> 4) != 4:
        return False
    tos = f[15]
    if tos & 3 not in (1, 2):
        return False
    m = (f[14] << 8) | tos
    m2 = m | 3
    hc = (f[24] << 8) | f[25]
    s = (~hc & 0xFFFF) + (~m & 0xFFFF) + m2
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    nc = ~s & 0xFFFF
    f[15] = tos | 3
    f[24] = nc >> 8
    f[25] = nc & 0xFF
    return True


class PyEngine:
    """Pure-Python twin of the C engine (see linkemu.h for the semantics)."""

    def __init__(self, cfg: LinkConfig, seed: int = 0):
        self.cfg = cfg
        self.c = cfg.c_fields(seed)
        self.nslots = self.c["max_frames"] or DEFAULT_FRAMES
        self.rng = self.c["seed"]
        self.busy_ns = 0
        self.last_depart = 0
        self.seq = 0
        self.heap: list[tuple[int, int, bytes]] = []
        self.cnt = dict.fromkeys(COUNTERS, 0)

    def _next(self) -> int:
        self.rng = (self.rng + 0x9E3779B97F4A7C15) & M64
        z = self.rng
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        return z ^ (z >> 31)

    def backlog_bytes(self, now: int) -> int:
        now_ns = now * 1000
        if not self.c["rate_bps"] or self.busy_ns <= now_ns:
            return 0
        return (self.busy_ns - now_ns) * self.c["rate_bps"] // 8_000_000_000

    def _push(self, depart: int, frame: bytes) -> None:
        heapq.heappush(self.heap, (depart, self.seq, frame))
        self.seq += 1

    def submit(self, frame: bytes, now: int) -> int:
        c, cnt = self.c, self.cnt
        r = [self._next() for _ in range(DRAWS)]
        n = len(frame)
        cnt["frames_in"] += 1
        cnt["bytes_in"] += n
        if r[0] % PPM < c["loss_ppm"]:
            cnt["dropped_loss"] += 1
            return 0
        if n > SLOT_BYTES:
            cnt["dropped_big"] += 1
            return 0
        backlog = self.backlog_bytes(now)
        if c["queue_limit_bytes"] and backlog + n > c["queue_limit_bytes"]:
            cnt["dropped_queue"] += 1
            return 0
        if len(self.heap) >= self.nslots:
            cnt["dropped_full"] += 1
            return 0
        f = bytearray(frame)
        if n > 0 and r[2] % PPM < c["corrupt_ppm"]:
            pos = 14 + r[5] % (n - 14) if n > 14 else r[5] % n
            f[pos] ^= 1 << ((r[5] >> 32) & 7)
            cnt["corrupted"] += 1
        if c["ecn_threshold_bytes"] and backlog >= c["ecn_threshold_bytes"]:
            if _ce_mark(f):
                cnt["ce_marked"] += 1
        done = now
        if c["rate_bps"]:
            now_ns = now * 1000
            start = max(self.busy_ns, now_ns)
            end = start + n * 8_000_000_000 // c["rate_bps"]
            self.busy_ns = end
            done = (end + 999) // 1000
            cnt["max_backlog_bytes"] = max(cnt["max_backlog_bytes"], self.backlog_bytes(now))
        depart = done + c["delay_us"]
        if c["jitter_us"]:
            depart += r[4] % (c["jitter_us"] + 1)
        if r[3] % PPM < c["reorder_ppm"]:
            depart += c["reorder_us"]
            cnt["reordered"] += 1
        else:
            depart = max(depart, self.last_depart)
            self.last_depart = depart
        data = bytes(f)
        self._push(depart, data)
        if r[1] % PPM < c["dup_ppm"] and len(self.heap) < self.nslots:
            self._push(depart, data)
            cnt["duplicated"] += 1
            return 2
        return 1

    def next_deadline(self) -> int:
        return self.heap[0][0] if self.heap else -1

    def queued(self) -> int:
        return len(self.heap)

    def pop_ready(self, now: int, max_frames: int = BATCH) -> list[bytes]:
        out = []
        while len(out) < max_frames and self.heap and self.heap[0][0] <= now:
            f = heapq.heappop(self.heap)[2]
            out.append(f)
            self.cnt["frames_out"] += 1
            self.cnt["bytes_out"] += len(f)
        return out

    def counters(self) -> dict[str, int]:
        return dict(self.cnt)


class CEngine:
    """The C engine (``le_*`` in flextcp._native), same API as PyEngine."""

    def __init__(self, cfg: LinkConfig, seed: int = 0):
        self.ffi, self.lib = _native()
        self.cfg = cfg
        c = self.ffi.new("struct le_config *", cfg.c_fields(seed))
        ptr = self.lib.le_create(c)
        if ptr == self.ffi.NULL:
            raise MemoryError("le_create failed")
        self.ptr = self.ffi.gc(ptr, self.lib.le_destroy)
        self._cap = BATCH * SLOT_BYTES
        self._buf = self.ffi.new("uint8_t[]", self._cap)
        self._lens = self.ffi.new("uint32_t[]", BATCH)

    def submit(self, frame: bytes, now: int) -> int:
        return self.lib.le_submit(self.ptr, self.ffi.from_buffer(frame), len(frame), now)

    def next_deadline(self) -> int:
        return self.lib.le_next_deadline(self.ptr)

    def queued(self) -> int:
        return self.lib.le_queued(self.ptr)

    def backlog_bytes(self, now: int) -> int:
        return self.lib.le_backlog_bytes(self.ptr, now)

    def pop_ready(self, now: int, max_frames: int = BATCH) -> list[bytes]:
        out: list[bytes] = []
        while len(out) < max_frames:
            want = min(BATCH, max_frames - len(out))
            n = self.lib.le_pop_ready(self.ptr, now, self._buf, self._cap, self._lens, want)
            off = 0
            for i in range(n):
                ln = self._lens[i]
                out.append(bytes(self.ffi.buffer(self._buf + off, ln)))
                off += ln
            if n < want:
                break
        return out

    def counters(self) -> dict[str, int]:
        c = self.ffi.new("struct le_counters *")
        self.lib.le_get_counters(self.ptr, c)
        return {k: getattr(c, k) for k in COUNTERS}


def make_engine(cfg: LinkConfig, seed: int = 0, pure: bool | None = None):
    """C engine, or the twin if ``pure`` (default: TAS_PURE=1)."""
    if pure is None:
        pure = use_pure()
    return PyEngine(cfg, seed) if pure else CEngine(cfg, seed)


# ---------------------------------------------------------------------------
# Forwarder
# ---------------------------------------------------------------------------


def open_port(ifname: str) -> socket.socket:
    """AF_PACKET socket bound to ifname, promiscuous, ignoring own output."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        with contextlib.suppress(OSError):
            s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        s.bind((ifname, ETH_P_ALL))
        idx = socket.if_nametoindex(ifname)
        mreq = idx.to_bytes(4, sys.byteorder) + PACKET_MR_PROMISC.to_bytes(2, sys.byteorder) + bytes(10)
        s.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
        # Drain anything queued before the bind took effect.
        while True:
            try:
                s.recv(65536, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
    except BaseException:
        s.close()
        raise
    return s


def _low_timer_slack() -> None:
    """Ask for 1 us timer slack (default 50 us) so departures are punctual."""
    with contextlib.suppress(Exception):
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.prctl(29, 1000, 0, 0, 0)  # PR_SET_TIMERSLACK, ns


class _Stop:
    flag = False


def _py_pump(eng: PyEngine, s: socket.socket, now: int, max_frames: int) -> int:
    n = 0
    while n < max_frames:
        try:
            data, addr = s.recvfrom(65536, socket.MSG_DONTWAIT)
        except BlockingIOError:
            break
        n += 1
        if addr[2] == PACKET_OUTGOING:
            eng.cnt["skipped_outgoing"] += 1
            continue
        eng.submit(data, now)
    return n


def _py_flush(eng: PyEngine, s: socket.socket, now: int, max_frames: int) -> int:
    frames = eng.pop_ready(now, max_frames)
    for f in frames:
        try:
            s.send(f)
        except OSError:
            eng.cnt["tx_errors"] += 1
            eng.cnt["frames_out"] -= 1
            eng.cnt["bytes_out"] -= len(f)
    return len(frames)


def run(
    a: str,
    b: str,
    ab: LinkConfig,
    ba: LinkConfig,
    seed: int = 0,
    duration: float | None = None,
    ns: str | None = None,
    ready=None,
    stop: _Stop | None = None,
    pure: bool | None = None,
) -> dict[str, Any]:
    """Forward between ports a and b until ``stop.flag``, SIGINT/SIGTERM via
    the caller, or ``duration`` seconds.  Returns the stats dict."""
    if pure is None:
        pure = use_pure()
    stop = stop or _Stop()
    if ns:
        from nicemu.topology import enter

        with enter(ns):
            sa, sb = open_port(a), open_port(b)
    else:
        sa, sb = open_port(a), open_port(b)
    e_ab = make_engine(ab, derive_seed(seed, 0), pure)
    e_ba = make_engine(ba, derive_seed(seed, 1), pure)
    fa, fb = sa.fileno(), sb.fileno()
    _low_timer_slack()
    t0 = now_us()
    end = t0 + int(duration * 1e6) if duration else None
    if ready:
        ready()
    try:
        if pure:
            poller = select.poll()
            poller.register(fa, select.POLLIN)
            poller.register(fb, select.POLLIN)
        else:
            lib = e_ab.lib
        while not stop.flag:
            now = now_us()
            if end is not None and now >= end:
                break
            if pure:
                na = _py_pump(e_ab, sa, now, BATCH)
                nb = _py_pump(e_ba, sb, now, BATCH)
                now = now_us()
                _py_flush(e_ab, sb, now, BATCH)
                _py_flush(e_ba, sa, now, BATCH)
            else:
                na = lib.le_pump(e_ab.ptr, fa, now, BATCH)
                nb = lib.le_pump(e_ba.ptr, fb, now, BATCH)
                now = now_us()
                lib.le_flush(e_ab.ptr, fb, now, BATCH)
                lib.le_flush(e_ba.ptr, fa, now, BATCH)
            if na >= BATCH or nb >= BATCH:
                continue  # more input pending: no wait
            deadlines = [d for d in (e_ab.next_deadline(), e_ba.next_deadline()) if d >= 0]
            now = now_us()
            timeout = 100_000
            if deadlines:
                timeout = min(timeout, min(deadlines) - now)
            if end is not None:
                timeout = min(timeout, end - now)
            if timeout <= 0:
                continue
            if pure:
                poller.poll(max(1, timeout // 1000))
            else:
                lib.le_wait2(fa, fb, timeout)
    finally:
        sa.close()
        sb.close()
    return {
        "a": a,
        "b": b,
        "seed": seed,
        "pure": bool(pure),
        "runtime_s": (now_us() - t0) / 1e6,
        "ab": e_ab.counters(),
        "ba": e_ba.counters(),
    }


# ---------------------------------------------------------------------------
# Child-process driver
# ---------------------------------------------------------------------------


_CHILD_MAIN = "import sys; from nicemu.linkemu import main; sys.exit(main(sys.argv[1:]))"


class LinkEmu:
    """The forwarder as a child process.

    ``ab``/``ba``: per-direction :class:`LinkConfig` (or dicts of its
    fields); any other keyword argument is a LinkConfig field applied to
    both directions where ``ab``/``ba`` is not given.  ``duration`` bounds the
    child's runtime (seconds).  ``start()`` returns when both ports are open;
    ``stop()`` ends the child and returns its stats dict.
    """

    def __init__(
        self,
        ns: str | None,
        a: str,
        b: str,
        *,
        ab: LinkConfig | dict | None = None,
        ba: LinkConfig | dict | None = None,
        seed: int = 0,
        duration: float | None = None,
        pure: bool | None = None,
        **common: Any,
    ):
        base = LinkConfig(**common)
        self.ns, self.a, self.b = ns, a, b
        self.ab = ab if isinstance(ab, LinkConfig) else (LinkConfig(**ab) if ab else base)
        self.ba = ba if isinstance(ba, LinkConfig) else (LinkConfig(**ba) if ba else base)
        self.seed = seed
        self.duration = duration
        self.pure = use_pure() if pure is None else pure
        self.proc: subprocess.Popen | None = None
        self.stats: dict[str, Any] | None = None

    def argv(self) -> list[str]:
        cfg = json.dumps({"ab": self.ab.to_dict(), "ba": self.ba.to_dict()})
        argv = [sys.executable, "-c", _CHILD_MAIN, "--a", self.a, "--b", self.b]
        argv += ["--seed", str(self.seed), "--config-json", cfg]
        if self.ns:
            argv += ["--ns", self.ns]
        if self.duration:
            argv += ["--duration", str(self.duration)]
        if self.pure:
            argv += ["--pure"]
        return argv

    def start(self, timeout: float = 10.0) -> LinkEmu:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(
            self.argv(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=str(REPO_ROOT),
        )
        r, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if r else ""
        if line.strip() != "READY":
            self.proc.kill()
            _, err = self.proc.communicate()
            self.proc = None
            raise RuntimeError(f"link emulator failed to start: {line!r} {err.strip()}")
        return self

    def __enter__(self) -> LinkEmu:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self, timeout: float = 10.0) -> dict[str, Any]:
        if self.proc is None:
            return self.stats or {}
        p, self.proc = self.proc, None
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
            raise RuntimeError("link emulator did not stop") from None
        lines = [ln for ln in out.splitlines() if ln.startswith("{")]
        if not lines:
            raise RuntimeError(f"link emulator exited {p.returncode} without stats: {err.strip()}")
        self.stats = json.loads(lines[-1])
        return self.stats

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------

_CLI_FIELDS = {
    # option: (LinkConfig field, scale to field units)
    "loss": ("loss", 1),
    "dup": ("dup", 1),
    "corrupt": ("corrupt", 1),
    "reorder": ("reorder", 1),
    "delay_ms": ("delay_us", 1000),
    "jitter_ms": ("jitter_us", 1000),
    "reorder_ms": ("reorder_us", 1000),
    "rate_mbit": ("rate_bps", 1_000_000),
    "queue_bytes": ("queue_limit_bytes", 1),
    "ecn_bytes": ("ecn_threshold_bytes", 1),
    "max_frames": ("max_frames", 1),
}


def _parse_kv(text: str) -> dict[str, Any]:
    """'loss=1,delay_ms=20' -> LinkConfig fields."""
    out: dict[str, Any] = {}
    for item in filter(None, text.split(",")):
        k, _, v = item.partition("=")
        k = k.strip().replace("-", "_")
        if k not in _CLI_FIELDS:
            raise argparse.ArgumentTypeError(f"unknown option {k!r} (one of {', '.join(_CLI_FIELDS)})")
        field, scale = _CLI_FIELDS[k]
        val = float(v) * scale
        out[field] = val if field in ("loss", "dup", "corrupt", "reorder") else int(round(val))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="linkemu",
        description="Seeded userspace link emulator between two interfaces (AF_PACKET).",
        epilog="Options apply to both directions; --ab/--ba 'key=val,...' override one "
        "direction (keys: " + ", ".join(_CLI_FIELDS) + "). Stats are printed as JSON on exit.",
    )
    ap.add_argument("--ns", help="network namespace holding both interfaces")
    ap.add_argument("--a", required=True, help="port a (e.g. facing the Linux peer)")
    ap.add_argument("--b", required=True, help="port b (e.g. facing the stack's TAP)")
    ap.add_argument("--loss", type=float, help="loss percent")
    ap.add_argument("--dup", type=float, help="duplication percent")
    ap.add_argument("--corrupt", type=float, help="corruption percent (one bit flip)")
    ap.add_argument("--reorder", type=float, help="percent of frames delayed by --reorder-ms extra")
    ap.add_argument("--reorder-ms", type=float)
    ap.add_argument("--delay-ms", type=float)
    ap.add_argument("--jitter-ms", type=float, help="uniform extra delay in [0, jitter]")
    ap.add_argument("--rate-mbit", type=float, help="rate limit, Mbit/s")
    ap.add_argument("--queue-bytes", type=int, help="bottleneck queue limit (with --rate-mbit)")
    ap.add_argument("--ecn-bytes", type=int, help="CE-mark ECT frames above this backlog")
    ap.add_argument("--max-frames", type=int, help="delay-line capacity in frames")
    ap.add_argument("--ab", type=_parse_kv, default={}, help="overrides for a->b")
    ap.add_argument("--ba", type=_parse_kv, default={}, help="overrides for b->a")
    ap.add_argument("--config-json", help='{"ab": {LinkConfig fields}, "ba": {...}} (replaces the above)')
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--duration", type=float, help="stop after this many seconds")
    ap.add_argument("--pure", action="store_true", help="use the pure-Python engine")
    args = ap.parse_args(argv)

    if args.config_json:
        d = json.loads(args.config_json)
        ab, ba = LinkConfig.from_dict(d.get("ab")), LinkConfig.from_dict(d.get("ba"))
    else:
        common = _parse_kv(
            ",".join(f"{k}={getattr(args, k)}" for k in _CLI_FIELDS if getattr(args, k) is not None)
        )
        ab = LinkConfig(**{**common, **args.ab})
        ba = LinkConfig(**{**common, **args.ba})

    stop = _Stop()

    def on_signal(signum, frame):
        stop.flag = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def ready():
        print("READY", flush=True)

    stats = run(
        args.a,
        args.b,
        ab,
        ba,
        seed=args.seed,
        duration=args.duration,
        ns=args.ns,
        ready=ready,
        stop=stop,
        pure=args.pure or None,
    )
    stats["config"] = {"ab": ab.to_dict(), "ba": ba.to_dict()}
    print(json.dumps(stats), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
