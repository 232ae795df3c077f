"""Link emulator: engine semantics (C and twin), and forwarding in namespaces."""

from __future__ import annotations

import hashlib
import os
import struct
import subprocess
import sys
import textwrap

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nicemu import linkemu
from nicemu.linkemu import CEngine, LinkConfig, PyEngine


def _have_native() -> bool:
    try:
        _, lib = linkemu._native()
    except Exception:
        return False
    return hasattr(lib, "le_create")


HAVE_NATIVE = _have_native()
needs_native = pytest.mark.skipif(
    not HAVE_NATIVE, reason="flextcp._native without le_* (run build_native.py)"
)
ENGINES = [pytest.param(CEngine, id="c", marks=needs_native), pytest.param(PyEngine, id="py")]


def ip_csum(hdr: bytes) -> int:
    s = sum(struct.unpack(f"!{len(hdr) // 2}H", hdr))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def frame(seq: int, size: int = 100, ecn: int = 0) -> bytes:
    """Ethernet + IPv4 + UDP frame of `size` bytes carrying `seq`."""
    size = max(size, 14 + 20 + 8 + 4)
    eth = bytes.fromhex("020000000002020000000001") + b"\x08\x00"
    tot = size - 14
    ip = bytearray(
        struct.pack(
            "!BBHHHBBH4s4s",
            0x45,
            ecn,
            tot,
            seq & 0xFFFF,
            0,
            64,
            17,
            0,
            bytes([198, 18, 0, 1]),
            bytes([198, 18, 0, 3]),
        )
    )
    ip[10:12] = struct.pack("!H", ip_csum(bytes(ip)))
    udp = struct.pack("!HHHH", 1000, 2000, tot - 20, 0)
    payload = struct.pack("!I", seq) + bytes((seq + i) & 0xFF for i in range(size - 14 - 20 - 8 - 4))
    return eth + bytes(ip) + udp + payload


def seq_of(f: bytes) -> int:
    return struct.unpack("!I", f[42:46])[0]


def drain(eng, until: int, step: int = 100) -> list[tuple[int, bytes]]:
    """Pop everything due up to `until`, returning (time, frame)."""
    out = []
    t = 0
    while t <= until:
        for f in eng.pop_ready(t, 10_000):
            out.append((t, f))
        t += step
    return out


# ---------------------------------------------------------------------------
# Engine level (no root)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("Eng", ENGINES)
def test_loss_rate(Eng):
    n = 10_000
    eng = Eng(LinkConfig(loss=5.0), seed=42)
    out = []
    for i in range(n):
        eng.submit(frame(i), i)
        out += eng.pop_ready(i)
    c = eng.counters()
    assert c["frames_in"] == n
    assert 0.04 * n <= c["dropped_loss"] <= 0.06 * n
    assert len(out) == c["frames_out"] == n - c["dropped_loss"]
    assert [seq_of(f) for f in out] == sorted(seq_of(f) for f in out)


@pytest.mark.parametrize("Eng", ENGINES)
def test_seed_determinism(Eng):
    cfg = LinkConfig(loss=10, dup=5, corrupt=5, reorder=10, reorder_us=300, delay_us=100, jitter_us=50)

    def go(seed):
        eng = Eng(cfg, seed=seed)
        for i in range(2000):
            eng.submit(frame(i), i * 10)
        return drain(eng, 25_000), eng.counters()

    assert go(7) == go(7)
    assert go(7) != go(8)


@needs_native
def test_c_equals_twin_fixed():
    cfg = LinkConfig(
        loss=3,
        dup=4,
        corrupt=5,
        reorder=6,
        reorder_us=700,
        delay_us=250,
        jitter_us=90,
        rate_bps=20_000_000,
        queue_limit_bytes=30_000,
        ecn_threshold_bytes=6_000,
        max_frames=64,
    )
    c, p = CEngine(cfg, seed=99), PyEngine(cfg, seed=99)
    t = 0
    for i in range(5000):
        size = 60 + (i * 37) % 1400
        f = frame(i, size, ecn=i % 4)
        t += (i * 13) % 200
        assert c.submit(f, t) == p.submit(f, t)
        assert c.next_deadline() == p.next_deadline()
        assert c.backlog_bytes(t) == p.backlog_bytes(t)
        assert c.pop_ready(t, 7) == p.pop_ready(t, 7)
    assert c.pop_ready(t + 10**7, 10**6) == p.pop_ready(t + 10**7, 10**6)
    assert c.counters() == p.counters()
    cnt = c.counters()
    for k in (
        "dropped_loss",
        "dropped_queue",
        "dropped_full",
        "duplicated",
        "corrupted",
        "reordered",
        "ce_marked",
    ):
        assert cnt[k] > 0, k


_pct = st.sampled_from([0.0, 0.5, 5.0, 30.0, 100.0])


@needs_native
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**64 - 1),
    loss=_pct,
    dup=_pct,
    corrupt=_pct,
    reorder=_pct,
    delay=st.integers(0, 5000),
    jitter=st.integers(0, 3000),
    reorder_us=st.integers(0, 3000),
    rate=st.sampled_from([0, 1_000_000, 100_000_000, 10**10]),
    qlim=st.sampled_from([0, 1500, 20_000]),
    ecn=st.sampled_from([0, 1, 3000]),
    max_frames=st.sampled_from([0, 4, 100]),
    frames=st.lists(
        st.tuples(st.integers(0, 2100), st.integers(0, 3), st.integers(0, 500)), min_size=1, max_size=150
    ),
)
def test_c_equals_twin(
    seed, loss, dup, corrupt, reorder, delay, jitter, reorder_us, rate, qlim, ecn, max_frames, frames
):
    cfg = LinkConfig(
        loss=loss,
        dup=dup,
        corrupt=corrupt,
        reorder=reorder,
        delay_us=delay,
        jitter_us=jitter,
        reorder_us=reorder_us,
        rate_bps=rate,
        queue_limit_bytes=qlim,
        ecn_threshold_bytes=ecn,
        max_frames=max_frames,
    )
    c, p = CEngine(cfg, seed), PyEngine(cfg, seed)
    t = 0
    for i, (size, ect, gap) in enumerate(frames):
        f = frame(i, size, ecn=ect)[:size] if size < 46 else frame(i, size, ecn=ect)
        t += gap
        assert c.submit(f, t) == p.submit(f, t)
        assert c.next_deadline() == p.next_deadline()
        assert c.pop_ready(t, 3) == p.pop_ready(t, 3)
    assert c.queued() == p.queued()
    assert c.pop_ready(2**62, 10**6) == p.pop_ready(2**62, 10**6)
    assert c.counters() == p.counters()


@pytest.mark.parametrize("Eng", ENGINES)
def test_reordering_reorders(Eng):
    n = 1000
    eng = Eng(LinkConfig(reorder=20, reorder_us=500, delay_us=1000), seed=3)
    for i in range(n):
        eng.submit(frame(i), i * 50)
    seqs = [seq_of(f) for _, f in drain(eng, n * 50 + 5000)]
    assert sorted(seqs) == list(range(n))  # nothing lost
    inversions = sum(1 for x, y in zip(seqs, seqs[1:], strict=False) if x > y)
    assert inversions > 50
    assert 150 <= eng.counters()["reordered"] <= 250


@pytest.mark.parametrize("Eng", ENGINES)
def test_jitter_alone_keeps_order(Eng):
    n = 1000
    eng = Eng(LinkConfig(delay_us=1000, jitter_us=2000), seed=5)
    for i in range(n):
        eng.submit(frame(i), i * 10)
    got = drain(eng, n * 10 + 5000, step=10)
    seqs = [seq_of(f) for _, f in got]
    assert seqs == list(range(n))
    delays = [t - seq_of(f) * 10 for t, f in got]
    assert min(delays) >= 1000 and max(delays) > 1500


@pytest.mark.parametrize("Eng", ENGINES)
def test_duplication(Eng):
    n = 5000
    eng = Eng(LinkConfig(dup=10, max_frames=2 * n), seed=11)
    for i in range(n):
        assert eng.submit(frame(i), i) in (1, 2)
    out = eng.pop_ready(n + 1, 2 * n)
    dups = eng.counters()["duplicated"]
    assert 400 <= dups <= 600
    assert len(out) == n + dups
    seqs = [seq_of(f) for f in out]
    assert sorted(set(seqs)) == list(range(n))
    assert sum(1 for x, y in zip(seqs, seqs[1:], strict=False) if x == y) == dups  # copies are adjacent


@pytest.mark.parametrize("Eng", ENGINES)
def test_rate_limit_spacing(Eng):
    # 8 Mbit/s = 1 byte per microsecond: 1000-byte frames leave 1000 us apart.
    eng = Eng(LinkConfig(rate_bps=8_000_000, delay_us=500), seed=1)
    for i in range(10):
        eng.submit(frame(i, 1000), 0)
    assert eng.backlog_bytes(0) == 10_000
    assert eng.backlog_bytes(4000) == 6_000
    deps = []
    while eng.queued():
        d = eng.next_deadline()
        assert eng.pop_ready(d - 1) == []
        (f,) = eng.pop_ready(d, 1)
        deps.append(d)
    assert deps == [500 + 1000 * (i + 1) for i in range(10)]
    # Idle link: no queueing delay for the next frame.
    eng.submit(frame(99, 1000), 100_000)
    assert eng.next_deadline() == 100_000 + 1000 + 500


@pytest.mark.parametrize("Eng", ENGINES)
def test_queue_bound_drops(Eng):
    eng = Eng(LinkConfig(rate_bps=8_000_000, queue_limit_bytes=10_000), seed=1)
    acc = sum(eng.submit(frame(i, 1000), 0) for i in range(50))
    c = eng.counters()
    assert acc == 10 and c["dropped_queue"] == 40
    assert c["max_backlog_bytes"] <= 10_000
    # Once the queue drained by half, five more fit.
    acc = sum(eng.submit(frame(100 + i, 1000), 5000) for i in range(10))
    assert acc == 5


@pytest.mark.parametrize("Eng", ENGINES)
def test_ce_marking_above_threshold(Eng):
    eng = Eng(LinkConfig(rate_bps=8_000_000, ecn_threshold_bytes=3000), seed=1)
    for i in range(10):
        eng.submit(frame(i, 1000, ecn=2), 0)  # ECT(0); backlog seen = i * 1000
    for i in range(10, 14):
        eng.submit(frame(i, 1000, ecn=0), 0)  # not ECT: never marked
    eng.submit(frame(14, 1000, ecn=1), 0)  # ECT(1)
    eng.submit(frame(15, 1000, ecn=3), 0)  # already CE
    out = eng.pop_ready(10**9, 100)
    assert len(out) == 16
    for f in out:
        assert ip_csum(f[14:34]) == 0, "IPv4 header checksum must stay valid"
    ecns = [f[15] & 3 for f in out]
    assert ecns == [2, 2, 2] + [3] * 7 + [0] * 4 + [3, 3]
    assert eng.counters()["ce_marked"] == 8


@pytest.mark.parametrize("Eng", ENGINES)
def test_corruption_flips_one_bit_past_ethernet(Eng):
    eng = Eng(LinkConfig(corrupt=100), seed=9)
    frames = [frame(i, 60 + i) for i in range(200)]
    for i, f in enumerate(frames):
        eng.submit(f, i)
    out = eng.pop_ready(10**6, 1000)
    assert eng.counters()["corrupted"] == 200
    for a, b in zip(frames, out, strict=True):
        diff = [(i, x ^ y) for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
        assert len(diff) == 1
        pos, bits = diff[0]
        assert pos >= 14 and bin(bits).count("1") == 1


@pytest.mark.parametrize("Eng", ENGINES)
def test_delay_line_capacity_and_big_frames(Eng):
    eng = Eng(LinkConfig(delay_us=1000, max_frames=8), seed=1)
    acc = sum(eng.submit(frame(i), 0) for i in range(20))
    assert acc == 8 and eng.counters()["dropped_full"] == 12
    assert eng.pop_ready(999) == [] and len(eng.pop_ready(1000)) == 8
    assert eng.submit(bytes(linkemu.SLOT_BYTES + 1), 2000) == 0
    assert eng.counters()["dropped_big"] == 1
    assert eng.submit(bytes(linkemu.SLOT_BYTES), 2000) == 1


def test_cli_kv_parsing():
    assert linkemu._parse_kv("loss=1.5,delay-ms=20,rate_mbit=10") == {
        "loss": 1.5,
        "delay_us": 20_000,
        "rate_bps": 10_000_000,
    }


# ---------------------------------------------------------------------------
# Interop (root, namespaces)
# ---------------------------------------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")


def _py(topo, ns, code):
    return topo.run_in(
        ns,
        [sys.executable, "-c", textwrap.dedent(code)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(p, timeout):
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        raise AssertionError(f"timed out: {err}") from None
    assert p.returncode == 0, err
    return out


@pytest.fixture
def emu_topo():
    from nicemu.topology import Topology

    with Topology(linux_server=True, link="emu") as topo:
        topo.pin_linux_neighbors()
        yield topo


@pytest.mark.interop
@needs_root
@pytest.mark.parametrize(
    "pure", [pytest.param(False, marks=needs_native, id="c"), pytest.param(True, id="py")]
)
def test_udp_through_emulator_with_loss(emu_topo, pure):
    topo, n = emu_topo, 1000
    rcv = _py(
        topo,
        topo.stack_ns,
        f"""
        import socket
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.bind(("{topo.linux_ip}", 7010)); s.settimeout(20.0)
        print("ready", flush=True)
        got = set()
        for _ in range({n}):
            try:
                got.add(s.recv(100))
            except TimeoutError:
                break
            s.settimeout(2.0)  # the first datagram may be slow on a loaded machine; then the rest flows
        print(len(got), flush=True)
        """,
    )
    with topo.linkemu(ab=LinkConfig(loss=20), ba=LinkConfig(), seed=1, duration=60, pure=pure) as emu:
        assert rcv.stdout.readline().strip() == "ready"
        snd = _py(
            topo,
            topo.peer_ns,
            f"""
            import socket, time
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            for i in range({n}):
                s.sendto(b"%06d" % i, ("{topo.linux_ip}", 7010))
                if i % 10 == 9:
                    time.sleep(0.001)
            """,
        )
        _finish(snd, 30)
        got = int(_finish(rcv, 30).split()[-1])
    stats = emu.stats
    assert 0.75 * n <= got <= 0.85 * n, got
    ab = stats["ab"]
    assert ab["frames_in"] == n and ab["dropped_loss"] == n - got
    assert ab["frames_out"] == got and ab["tx_errors"] == 0
    assert stats["ba"]["frames_in"] < 10  # static ARP, no IPv6: (almost) nothing comes back


@pytest.mark.interop
@needs_root
@needs_native
def test_tcp_transfer_through_emulator(emu_topo):
    topo, size = emu_topo, 4 << 20
    srv = _py(
        topo,
        topo.stack_ns,
        f"""
        import hashlib, socket
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("{topo.linux_ip}", 7011)); s.listen(1); s.settimeout(60)
        print("ready", flush=True)
        c, _ = s.accept(); c.settimeout(60)
        h, n = hashlib.sha256(), 0
        while d := c.recv(1 << 16):
            h.update(d); n += len(d)
        print(n, h.hexdigest())
        """,
    )
    data = hashlib.shake_256(b"linkemu").digest(size)
    with topo.linkemu(loss=2, delay_us=5000, seed=2, duration=120) as emu:
        assert srv.stdout.readline().strip() == "ready"
        cli = _py(
            topo,
            topo.peer_ns,
            f"""
            import hashlib, socket
            data = hashlib.shake_256(b"linkemu").digest({size})
            c = socket.create_connection(("{topo.linux_ip}", 7011), timeout=60)
            c.sendall(data); c.shutdown(socket.SHUT_WR); c.recv(1); c.close()
            """,
        )
        _finish(cli, 120)
        n, digest = _finish(srv, 120).split()
    assert int(n) == size and digest == hashlib.sha256(data).hexdigest()
    s = emu.stats
    assert s["ab"]["dropped_loss"] > 0 and s["ba"]["dropped_loss"] > 0
    assert s["ab"]["tx_errors"] == 0 and s["ba"]["tx_errors"] == 0
    assert s["ab"]["dropped_big"] == 0 and s["ba"]["dropped_big"] == 0
