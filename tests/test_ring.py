"""SPSC rings: C kernel across processes, C/Python interop, twin equivalence,
hostile peer indices."""

from __future__ import annotations

import multiprocessing as mp
import os
import struct
import time
from array import array

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flextcp.native import ffi
from flextcp.ring import HDR_SIZE, PyRing, Ring, ring_bytes
from flextcp.shm import Region

ES = 16
KEY = 0x5DEECE66D


def _entries(a: int, b: int) -> bytes:
    """Entries a..b-1: (seq, seq ^ KEY) as two little-endian u64."""
    arr = array("Q", bytes(16 * (b - a)))
    arr[0::2] = array("Q", range(a, b))
    arr[1::2] = array("Q", (i ^ KEY for i in range(a, b)))
    return arr.tobytes()


def _producer(fd: int, size: int, slots: int, total: int, batch: int, use_c: bool) -> None:
    region = Region.attach(fd, size, owns_fd=False)
    r = (Ring if use_c else PyRing).attach(region, 0, slots, ES, True)
    sent = 0
    deadline = time.monotonic() + 60
    while sent < total:
        n = min(batch, total - sent)
        data = _entries(sent, sent + n)
        off = 0
        while off < n:
            k = r.enqueue_n(data[off * ES :], n - off)
            off += k
            if k == 0:
                if time.monotonic() > deadline:
                    os._exit(3)
                os.sched_yield()
        sent += n
    os._exit(0 if r.corrupt == 0 else 2)


def _run_pair(total: int, slots: int, batch: int, consumer_cls, producer_c: bool) -> bytes:
    size = ring_bytes(slots, ES)
    region = Region.create(size, "test-ring")
    Ring.create(region, 0, slots, ES, False)
    cons = consumer_cls.attach(region, 0, slots, ES, False)
    ctx = mp.get_context("fork")
    p = ctx.Process(target=_producer, args=(region.fd, size, slots, total, batch, producer_c))
    p.start()
    chunks = []
    got = 0
    deadline = time.monotonic() + 60
    try:
        while got < total:
            data = cons.dequeue_n(batch)
            if data:
                chunks.append(data)
                got += len(data) // ES
            else:
                assert time.monotonic() < deadline, f"stalled at {got}"
                os.sched_yield()
        p.join(30)
        assert p.exitcode == 0
    finally:
        if p.is_alive():
            p.kill()
            p.join()
    assert cons.corrupt == 0
    assert cons.count() == 0
    assert cons.dequeue_n(batch) == b""
    if isinstance(cons, PyRing):
        cons.close()
    region.close()
    return b"".join(chunks)


def _check_stream(out: bytes, total: int) -> None:
    assert len(out) == total * ES
    arr = array("Q")
    arr.frombytes(out)
    seqs = arr[0::2]
    assert len(seqs) == total
    assert sum(seqs) == total * (total - 1) // 2
    assert seqs == array("Q", range(total))  # in order, no loss, no duplicates
    assert out == _entries(0, total)  # payload intact


def test_c_ring_two_processes_1m():
    total = 1_000_000
    t0 = time.monotonic()
    out = _run_pair(total, slots=4096, batch=512, consumer_cls=Ring, producer_c=True)
    _check_stream(out, total)
    assert time.monotonic() - t0 < 20


def test_c_producer_python_consumer_100k():
    total = 100_000
    out = _run_pair(total, slots=1024, batch=128, consumer_cls=PyRing, producer_c=True)
    _check_stream(out, total)


def test_python_producer_c_consumer_100k():
    total = 100_000
    out = _run_pair(total, slots=256, batch=100, consumer_cls=Ring, producer_c=False)
    _check_stream(out, total)


def test_batch_buffers_and_wrap():
    region = Region.create(ring_bytes(8, 8), "test-ring")
    p = Ring.create(region, 0, 8, 8, True)
    c = Ring.attach(region, 0, 8, 8, False)
    buf = p.new_buffer(5)
    out = c.new_buffer(5)
    for rnd in range(10):  # indices walk over the wrap point many times
        ffi.buffer(buf)[:] = struct.pack("<5Q", *range(rnd * 5, rnd * 5 + 5))
        assert p.enqueue_n(buf) == 5
        assert p.free() == 3 and c.count() == 5
        assert c.dequeue_into(out) == 5
        assert struct.unpack("<5Q", ffi.buffer(out)) == tuple(range(rnd * 5, rnd * 5 + 5))
    assert p.enqueue_n(bytes(80)) == 8  # full: only 8 of 10 fit
    assert p.enqueue_n(bytes(8)) == 0
    assert p.free() == 0 and p.count() == 8
    ba = bytearray(24)
    assert c.dequeue_into(ba, 3) == 3
    assert c.dequeue_n(100) == bytes(40)
    # wrong roles do nothing
    assert p.dequeue_n(1) == b"" and c.enqueue_n(bytes(8)) == 0
    region.close()


def test_attach_rejects_bad_geometry():
    region = Region.create(ring_bytes(16, 16), "test-ring")
    for slots, es in [(0, 16), (1, 16), (3, 16), (12, 16), (16, 0), (16, 12), (32, 16)]:
        with pytest.raises(ValueError):
            Ring.create(region, 0, slots, es, True)
        with pytest.raises(ValueError):
            PyRing.create(region, 0, slots, es, True)
    region.close()


# ---------------------------------------------------------------------------
# Twin equivalence
# ---------------------------------------------------------------------------

SLOTS = [2, 4, 8, 16]
U64 = st.integers(0, 2**64 - 1)


def _near(v: int) -> st.SearchStrategy[int]:
    return st.integers(-40, 40).map(lambda d: (v + d) % 2**64)


op_st = st.one_of(
    st.tuples(st.just("enq"), st.integers(0, 20)),
    st.tuples(st.just("deq"), st.integers(0, 20)),
    st.tuples(st.just("count"), st.just(0)),
    st.tuples(st.just("reattach"), st.sampled_from(["p", "c"])),
    st.tuples(st.just("poke_head"), st.one_of(U64, st.integers(-40, 40))),
    st.tuples(st.just("poke_tail"), st.one_of(U64, st.integers(-40, 40))),
)


class _Side:
    def __init__(self, cls, slots: int, es: int, guard: int = 64):
        self.cls = cls
        self.slots, self.es = slots, es
        self.region = Region.create(ring_bytes(slots, es) + guard, "test-twin")
        self.region.mm[ring_bytes(slots, es) :] = b"\xa5" * guard
        self.p = cls.create(self.region, 0, slots, es, True)
        self.c = cls.attach(self.region, 0, slots, es, False)

    def state(self):
        return (self.p.own, self.c.own, self.p.corrupt, self.c.corrupt, bytes(self.region.mm))

    def poke(self, off: int, v: int, rel_to: int):
        if -40 <= v <= 40:  # relative to a private index: near-miss values
            v = (rel_to + v) % 2**64
        struct.pack_into("<Q", self.region.mm, off, v)

    def close(self):
        for r in (self.p, self.c):
            if isinstance(r, PyRing):
                r.close()
        self.region.close()


def _apply(side: _Side, op, arg, seq: int):
    if op == "enq":
        data = b"".join(struct.pack("<Q", seq + i) * (side.es // 8) for i in range(arg))
        return side.p.enqueue_n(data, arg)
    if op == "deq":
        return side.c.dequeue_n(arg)
    if op == "count":
        return (side.p.count(), side.p.free(), side.c.count(), side.c.free())
    if op == "reattach":
        old = side.p if arg == "p" else side.c
        new = side.cls.attach(side.region, 0, side.slots, side.es, arg == "p")
        if isinstance(old, PyRing):
            old.close()
        if arg == "p":
            side.p = new
        else:
            side.c = new
        return new.own
    if op == "poke_head":
        return side.poke(0, arg, side.c.own)
    if op == "poke_tail":
        return side.poke(64, arg, side.p.own)
    raise AssertionError(op)


@settings(max_examples=300, deadline=None)
@given(slots=st.sampled_from(SLOTS), es=st.sampled_from([8, 16, 24]), ops=st.lists(op_st, max_size=60))
def test_pyring_matches_cring(slots, es, ops):
    a = _Side(Ring, slots, es)
    b = _Side(PyRing, slots, es)
    try:
        assert a.state() == b.state()
        for i, (op, arg) in enumerate(ops):
            ra = _apply(a, op, arg, i * 100)
            rb = _apply(b, op, arg, i * 100)
            assert ra == rb, (i, op, arg)
            assert a.state() == b.state(), (i, op, arg)
            tail = bytes(a.region.mm[ring_bytes(slots, es) :])
            assert tail == b"\xa5" * 64  # nothing written past the ring
    finally:
        a.close()
        b.close()


@settings(max_examples=200, deadline=None)
@given(
    slots=st.sampled_from(SLOTS),
    c_is_producer=st.booleans(),
    ops=st.lists(st.tuples(st.sampled_from(["enq", "deq"]), st.integers(0, 20)), max_size=60),
)
def test_mixed_c_and_python_on_same_ring(slots, c_is_producer, ops):
    region = Region.create(ring_bytes(slots, 8), "test-mixed")
    pcls, ccls = (Ring, PyRing) if c_is_producer else (PyRing, Ring)
    p = pcls.create(region, 0, slots, 8, True)
    c = ccls.attach(region, 0, slots, 8, False)
    sent = got = 0
    for op, n in ops:
        if op == "enq":
            k = p.enqueue_n(array("Q", range(sent, sent + n)).tobytes())
            assert k == min(n, slots - (sent - got))
            sent += k
        else:
            out = array("Q")
            out.frombytes(c.dequeue_n(n))
            assert list(out) == list(range(got, got + len(out)))
            assert len(out) == min(n, sent - got)
            got += len(out)
    assert p.corrupt == c.corrupt == 0
    for r in (p, c):
        if isinstance(r, PyRing):
            r.close()
    region.close()


# ---------------------------------------------------------------------------
# Hostile peer
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [Ring, PyRing])
@pytest.mark.parametrize("bad_head_delta", [9, 1000, 2**63, 2**64 - 1])
def test_consumer_rejects_head_out_of_range(cls, bad_head_delta):
    slots = 8
    guard = 256
    region = Region.create(ring_bytes(slots, 8) + guard, "test-bad")
    region.mm[ring_bytes(slots, 8) :] = b"\xa5" * guard
    p = Ring.create(region, 0, slots, 8, True)
    c = cls.attach(region, 0, slots, 8, False)
    assert p.enqueue_n(bytes(range(24)), 3) == 3
    assert c.dequeue_n(2) == bytes(range(16))
    struct.pack_into("<Q", region.mm, 0, (c.own + bad_head_delta) % 2**64)  # head far ahead
    before = bytes(region.mm)
    for i in range(3):
        assert c.dequeue_n(1000) == b""
        assert c.corrupt == i + 1
    assert c.count() == 0
    assert bytes(region.mm) == before  # tail not published, nothing written
    assert c.own == 2
    # head exactly `slots` ahead is in range: a full ring, read within bounds
    struct.pack_into("<Q", region.mm, 0, c.own + slots)
    assert len(c.dequeue_n(1000)) == slots * 8
    assert bytes(region.mm[ring_bytes(slots, 8) :]) == b"\xa5" * guard
    if isinstance(c, PyRing):
        c.close()
    region.close()


@pytest.mark.parametrize("cls", [Ring, PyRing])
@pytest.mark.parametrize("tail_delta", [-9, -1000, 1, 2**63])
def test_producer_rejects_tail_out_of_range(cls, tail_delta):
    slots = 8
    guard = 256
    region = Region.create(ring_bytes(slots, 8) + guard, "test-bad")
    region.mm[ring_bytes(slots, 8) :] = b"\xa5" * guard
    Ring.create(region, 0, slots, 8, False)
    p = cls.attach(region, 0, slots, 8, True)
    c = Ring.attach(region, 0, slots, 8, False)
    assert p.enqueue_n(bytes(40)) == 5
    assert len(c.dequeue_n(5)) == 40
    # tail behind our head by more than slots, or ahead of it
    struct.pack_into("<Q", region.mm, 64, (p.own + tail_delta) % 2**64)
    before = bytes(region.mm)
    for i in range(3):
        assert p.enqueue_n(b"\xff" * 64) == 0
        assert p.corrupt == i + 1
    assert p.free() == 0 and p.count() == 0
    assert bytes(region.mm) == before
    if isinstance(p, PyRing):
        p.close()
    region.close()


@pytest.mark.parametrize("cls", [Ring, PyRing])
def test_attach_sanitises_initial_index(cls):
    slots = 8
    region = Region.create(ring_bytes(slots, 8), "test-bad")
    Ring.create(region, 0, slots, 8, True)
    struct.pack_into("<Q", region.mm, 0, 1000)  # head
    struct.pack_into("<Q", region.mm, 64, 10)  # tail: head - tail > slots
    p = cls.attach(region, 0, slots, 8, True)
    c = cls.attach(region, 0, slots, 8, False)
    assert p.own == 10  # producer restarts from tail
    assert c.own == 1000  # consumer restarts from head
    struct.pack_into("<Q", region.mm, 0, 14)
    p2 = cls.attach(region, 0, slots, 8, True)
    c2 = cls.attach(region, 0, slots, 8, False)
    assert (p2.own, c2.own) == (14, 10)
    for r in (p, c, p2, c2):
        if isinstance(r, PyRing):
            r.close()
    region.close()


def test_header_written_at_init():
    region = Region.create(ring_bytes(16, 24), "test-hdr")
    Ring.create(region, 0, 16, 24, True)
    c_hdr = bytes(region.mm[:HDR_SIZE])
    region2 = Region.create(ring_bytes(16, 24), "test-hdr")
    r = PyRing.create(region2, 0, 16, 24, True)
    assert bytes(region2.mm[:HDR_SIZE]) == c_hdr
    h = region.cast("struct tas_ring_hdr")
    assert (h.slots, h.entry_size, h.head, h.tail) == (16, 24, 0, 0)
    r.close()
    region.close()
    region2.close()


def test_doorbell_armed_protocol():
    import select

    from flextcp.doorbell import Doorbell

    region = Region.create(4096, "test-db")
    armed = region.cast("uint32_t", 64)
    with Doorbell() as db:
        assert db.drain() == 0
        assert db.ring_if_armed(armed) is False  # not armed: no syscall
        assert select.select([db], [], [], 0)[0] == []
        armed[0] = 1  # sleeper arms, re-checks queues, then blocks
        assert db.ring_if_armed(armed) is True
        assert select.select([db], [], [], 1)[0] == [db]
        armed[0] = 0  # sleeper clears armed on wake
        assert db.drain() == 1
        db.ring()
        db.ring()
        assert db.drain() == 2
        assert db.drain() == 0
    region.close()
