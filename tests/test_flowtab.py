"""Flow table: C kernel and Python twin against a dict oracle, on shared memory."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import struct
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flextcp import flowtab
from flextcp.flowtab import FLOW_SIZE, TOMB, FlowTable, PyFlowTable, flow_hash, ft_bytes
from flextcp.native import ffi, lib
from flextcp.shm import Region

ACTIVE = lib.TAS_FLOW_ACTIVE
SLOWPATH = lib.TAS_FLOW_SLOWPATH
FREE = lib.TAS_FLOW_FREE


def _murmur3_32(data: bytes, seed: int) -> int:
    """Independent reference MurmurHash3 x86_32."""
    m = 0xFFFFFFFF
    h = seed
    n = len(data) // 4
    for (k,) in struct.iter_unpack("<I", data[: 4 * n]):
        k = (k * 0xCC9E2D51) & m
        k = ((k << 15) | (k >> 17)) & m
        k = (k * 0x1B873593) & m
        h ^= k
        h = ((h << 13) | (h >> 19)) & m
        h = (h * 5 + 0xE6546B64) & m
    assert len(data) % 4 == 0
    h ^= len(data)
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & m
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & m
    h ^= h >> 16
    return h


@settings(max_examples=500, deadline=None)
@given(
    lip=st.integers(0, 2**32 - 1),
    lport=st.integers(0, 65535),
    rip=st.integers(0, 2**32 - 1),
    rport=st.integers(0, 65535),
)
def test_hash_c_equals_py(lip, lport, rip, rport):
    h = lib.tas_flow_hash(lip, lport, rip, rport)
    assert h == flow_hash(lip, lport, rip, rport) == FlowTable.hash(lip, lport, rip, rport)
    assert h == _murmur3_32(struct.pack("<III", lip, rip, (lport << 16) | rport), 0x9747B28C)


def _table(n_flows: int):
    region = Region.create(ft_bytes(n_flows), "test-ft")
    c = FlowTable.create(region, 0, n_flows)
    py = PyFlowTable.attach(region, 0, n_flows)
    return region, c, py


def _set(t, fid: int, tup, status=ACTIVE):
    f = t.flow(fid)
    f.local_ip, f.local_port, f.remote_ip, f.remote_port = tup
    f.status = status


def _hash_slots(region, n_flows):
    off = 64 + FLOW_SIZE * n_flows
    return list(struct.unpack_from(f"<{flowtab._n_hash(n_flows)}Q", region.mm, off))


def test_layout_and_header():
    region, c, py = _table(5)
    # header, 5 records of 128 B, 16 hash slots, 5 side records of 320 B,
    # then the CC news header (64 B) and one word of bits (rounded up to 64 B)
    assert ft_bytes(5) == 64 + 5 * 128 + 16 * 8 + 5 * 320 + 64 + 64 == lib.tas_ft_bytes(5)
    assert flowtab.news_off(5) == lib.tas_ft_news_off(5) == 64 + 5 * 128 + 16 * 8 + 5 * 320
    assert ffi.sizeof("struct tas_cc_news_hdr") == flowtab.NEWS_HDR_SIZE
    assert c.raw.news == py.news_hdr() and c.raw.news_bits == ffi.cast("uint64_t *", py.news_hdr() + 1)
    for n in (1, 63, 64, 65, 1000, 65536):
        assert ft_bytes(n) == lib.tas_ft_bytes(n) and ft_bytes(n) % 64 == 0
        assert ft_bytes(n) >= flowtab.news_off(n) + 64 + 8 * ((n + 63) // 64)
    assert FLOW_SIZE == ffi.sizeof("struct tas_flow") and flowtab.SIDE_SIZE == ffi.sizeof(
        "struct tas_flow_cc"
    )
    assert lib.tas_cc_table_off(5) == flowtab.side_off(5) == 64 + 5 * 128 + 16 * 8
    assert c.side(2) == py.side(2) == c.raw.side + 2
    assert int(ffi.cast("uintptr_t", c.side(0))) % 64 == 0
    assert c.n_hash == py.n_hash == 16
    h = region.cast("struct tas_ft_hdr")
    assert (h.magic, h.abi_version, h.n_flows, h.n_hash, h.flows_off, h.hash_off) == (
        lib.TAS_FT_MAGIC,
        lib.TAS_ABI_VERSION,
        5,
        16,
        64,
        64 + 5 * 128,
    )
    assert int(ffi.cast("uintptr_t", c.flow(1))) - int(ffi.cast("uintptr_t", c.flow(0))) == 128
    assert int(ffi.cast("uintptr_t", c.flow(0))) % 64 == 0
    assert c.flow(3) == py.flow(3)
    # Python-created table is byte-identical and attachable from C
    region2 = Region.create(ft_bytes(5), "test-ft")
    py2 = PyFlowTable.create(region2, 0, 5)
    assert bytes(region2.mm) == bytes(region.mm)
    FlowTable.attach(region2, 0, 5)
    # the slow path's snapshot: record then side record, C and twin alike
    c.flow(2).cwnd, c.side(2).ssthresh, c.side(2).ooo_end[7] = 1000, 2000, 3000
    sc, sp = c.snapshot(2), py.snapshot(2)
    assert (sc.cwnd, sc.ssthresh, sc.ooo_end[7]) == (1000, 2000, 3000)
    assert bytes(ffi.buffer(sc)) == bytes(ffi.buffer(sp))
    py.close()
    py2.close()


def test_attach_checks():
    region, c, py = _table(4)
    with pytest.raises(ValueError):
        FlowTable.attach(region, 0, 5)  # n_flows mismatch
    with pytest.raises(ValueError):
        PyFlowTable.attach(region, 0, 3)
    ft = ffi.new("struct tas_ft *")
    assert lib.tas_ft_attach(ft, region.addr, ft_bytes(4) - 1, 4) == -1  # region too small
    assert lib.tas_ft_attach(ft, region.addr, ft_bytes(4), 4) == 0
    assert lib.tas_ft_init(region.addr, 0) == -1
    struct.pack_into("<I", region.mm, 0, 0xDEAD)  # magic
    with pytest.raises(ValueError):
        FlowTable.attach(region, 0, 4)
    with pytest.raises(ValueError):
        PyFlowTable.attach(region, 0, 4)
    py.close()


tuple_st = st.tuples(
    st.sampled_from([0xC6120001, 0xC6120002]),
    st.sampled_from([80, 443]),
    st.sampled_from([0xC6130001, 0]),
    st.integers(1000, 1001),
)

N_FLOWS = 6
fid_st = st.integers(0, N_FLOWS)  # N_FLOWS itself is out of range
op_st = st.one_of(
    st.tuples(
        st.just("set"),
        fid_st.filter(lambda f: f < N_FLOWS),
        tuple_st,
        st.sampled_from([ACTIVE, SLOWPATH, FREE]),
    ),
    st.tuples(st.just("insert"), fid_st, st.none(), st.none()),
    st.tuples(st.just("remove"), fid_st, st.none(), st.none()),
    st.tuples(st.just("lookup"), st.none(), tuple_st, st.none()),
)


@settings(max_examples=400, deadline=None)
@given(ops=st.lists(st.tuples(op_st, st.booleans()), max_size=80))
def test_random_ops_vs_oracle(ops):
    """C and Python tables on the SAME memory, each op executed by a random
    one of them; both must agree with a dict oracle at every step."""
    region, c, py = _table(N_FLOWS)
    rec = {}  # fid -> (tuple, status) as written to the record
    indexed = set()
    try:
        for (op, fid, tup, status), use_c in ops:
            t = c if use_c else py
            if op == "set":
                if fid in indexed:
                    continue  # SP only rewrites records that are not indexed
                _set(c, fid, tup, status)
                rec[fid] = (tup, status)
            elif op == "insert":
                if fid < N_FLOWS:
                    rec.setdefault(fid, ((0, 0, 0, 0), FREE))
                live = {rec[f][0] for f in indexed if rec[f][1] != FREE}
                # refused: out of range, already indexed, or its tuple is
                # already indexed under a live (status != FREE) record
                ok = fid < N_FLOWS and fid not in indexed and rec[fid][0] not in live
                assert t.insert(fid) == (0 if ok else -1)
                if ok:
                    indexed.add(fid)
            elif op == "remove":
                ok = fid in indexed
                assert t.remove(fid) == (0 if ok else -1)
                indexed.discard(fid)
            for probe in [tup] if op == "lookup" else [r[0] for r in rec.values()]:
                if probe is None:
                    continue
                want = [f for f in indexed if rec[f][0] == probe and rec[f][1] != FREE]
                assert len(want) <= 1
                exp = want[0] if want else -1
                assert c.lookup(*probe) == exp
                assert py.lookup(*probe) == exp
        live = sum(1 for s in _hash_slots(region, N_FLOWS) if s not in (0, TOMB))
        assert live == len(indexed)
    finally:
        py.close()


@settings(max_examples=200, deadline=None)
@given(ops=st.lists(op_st, max_size=60))
def test_c_and_py_identical_memory(ops):
    """The same op sequence on two tables, one C-only and one Python-only,
    gives identical results and identical bytes."""
    ra, ca, pa = _table(N_FLOWS)
    rb, cb, pb = _table(N_FLOWS)
    indexed = set()
    try:
        for op, fid, tup, status in ops:
            if op == "set":
                if fid in indexed:
                    continue
                _set(ca, fid, tup, status)
                _set(cb, fid, tup, status)
            elif op == "insert":
                r = ca.insert(fid)
                assert pb.insert(fid) == r
                if r == 0:
                    indexed.add(fid)
            elif op == "remove":
                assert ca.remove(fid) == pb.remove(fid)
                indexed.discard(fid)
            else:
                assert ca.lookup(*tup) == pb.lookup(*tup)
            assert bytes(ra.mm) == bytes(rb.mm)
    finally:
        pa.close()
        pb.close()


def _colliding(n_hash: int, count: int, home: int | None = None):
    """Tuples whose home slot is equal."""
    out = []
    for port in range(1, 100000):
        tup = (0xC6120001, port, 0xC6130001, 80)
        hs = flow_hash(*tup) & (n_hash - 1)
        if home is None:
            home = hs
        if hs == home:
            out.append(tup)
            if len(out) == count:
                return home, out
    raise AssertionError("no collisions found")


@pytest.mark.parametrize("impl", ["c", "py"])
def test_tombstone_reuse(impl):
    n = 4
    region, c, py = _table(n)
    t = c if impl == "c" else py
    nh = t.n_hash
    home, (ta, tb, tc) = _colliding(nh, 3)
    for fid, tup in enumerate((ta, tb, tc)):
        _set(c, fid, tup)
    _set(c, 3, tb)  # same tuple as flow 1
    assert t.insert(0) == 0 and t.insert(1) == 0
    slots = _hash_slots(region, n)
    assert slots[home] & 0xFFFFFFFF == 1 and slots[(home + 1) % nh] & 0xFFFFFFFF == 2
    assert t.remove(0) == 0
    assert _hash_slots(region, n)[home] == TOMB  # next slot occupied: tombstone
    assert t.lookup(*ta) == -1
    assert c.lookup(*tb) == py.lookup(*tb) == 1  # found past the tombstone
    # duplicate tuple present after the tombstone: refused, tombstone kept
    assert t.insert(3) == -1
    assert _hash_slots(region, n)[home] == TOMB
    assert t.insert(1) == -1  # already indexed
    # a new tuple reuses the tombstone
    assert t.insert(2) == 0
    assert _hash_slots(region, n)[home] & 0xFFFFFFFF == 3
    assert c.lookup(*tc) == py.lookup(*tc) == 2
    # removing the last of a run clears trailing tombstones back to EMPTY
    assert t.remove(2) == 0
    assert _hash_slots(region, n)[home] == TOMB
    assert t.remove(1) == 0
    slots = _hash_slots(region, n)
    assert slots[home] == 0 and slots[(home + 1) % nh] == 0
    assert all(s == 0 for s in slots)
    assert t.remove(1) == -1
    py.close()


@pytest.mark.parametrize("impl", ["c", "py"])
def test_full_index(impl):
    n = 4
    region, c, py = _table(n)
    t = c if impl == "c" else py
    _set(c, 0, (1, 2, 3, 4))
    _set(c, 1, (9, 9, 9, 9))
    # fill every hash slot with entries for flow 1 under a foreign hash
    off = 64 + n * FLOW_SIZE
    for i in range(t.n_hash):
        struct.pack_into("<Q", region.mm, off + 8 * i, (0x12345678 << 32) | 2)
    assert t.insert(0) == -1
    assert c.lookup(1, 2, 3, 4) == py.lookup(1, 2, 3, 4) == -1  # bounded probe
    assert t.remove(0) == -1
    # one tombstone anywhere makes room
    struct.pack_into("<Q", region.mm, off + 8 * 5, TOMB)
    assert t.insert(0) == 0
    assert c.lookup(1, 2, 3, 4) == py.lookup(1, 2, 3, 4) == 0
    assert t.insert(n) == -1  # flow id out of range
    py.close()


@pytest.mark.parametrize("impl", ["c", "py"])
def test_fill_all_flows(impl):
    n = 64
    region, c, py = _table(n)
    t = c if impl == "c" else py
    for i in range(n):
        _set(c, i, (0xC6120001, 1000 + i, 0xC6130001, 80))
        assert t.insert(i) == 0
    for i in range(n):
        assert c.lookup(0xC6120001, 1000 + i, 0xC6130001, 80) == i
        assert py.lookup(0xC6120001, 1000 + i, 0xC6130001, 80) == i
    # a record going FREE hides it from lookups without touching the index
    c.flow(7).status = FREE
    assert c.lookup(0xC6120001, 1007, 0xC6130001, 80) == -1
    assert py.lookup(0xC6120001, 1007, 0xC6130001, 80) == -1
    py.close()


def _locker(fd: int, size: int, n: int) -> None:
    region = Region.attach(fd, size, owns_fd=False)
    t = FlowTable.attach(region, 0, 2)
    f = t.flow(1)
    for _ in range(n):
        t.lock(1)
        f.rx_head += 1
        t.unlock(1)
    os._exit(0)


def test_flow_lock_two_processes():
    n = 20000
    region = Region.create(ft_bytes(2), "test-lock")
    t = FlowTable.create(region, 0, 2)
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_locker, args=(region.fd, region.size, n)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert t.flow(1).rx_head == 2 * n
    assert t.flow(1).lock == 0
    region.close()


def test_flow_lock_of_a_dead_holder_is_taken_over():
    """A process that dies holding a flow lock (a fast path killed mid-poll)
    does not leave the others spinning for ever: a waiter that has spun for
    long looks whether the holder (whose pid the lock holds) still runs and
    takes the lock of a dead one -- here a zombie, as a dead fast path is
    until its parent, the slow path, reaps it."""
    region = Region.create(ft_bytes(2), "test-lock-dead")
    t = FlowTable.create(region, 0, 2)
    holder = os.fork()
    if holder == 0:  # takes the lock and dies with it
        t.lock(1)
        os._exit(0)
    deadline = time.monotonic() + 10
    while t.flow(1).lock != holder and time.monotonic() < deadline:
        time.sleep(0.01)
    assert t.flow(1).lock == holder
    waiter = os.fork()
    if waiter == 0:
        t.lock(1)
        ok = t.flow(1).lock == os.getpid()
        t.unlock(1)
        os._exit(0 if ok else 1)
    status = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        pid, status = os.waitpid(waiter, os.WNOHANG)
        if pid:
            break
        time.sleep(0.02)
    else:
        os.kill(waiter, signal.SIGKILL)
        os.waitpid(waiter, 0)
    os.waitpid(holder, 0)  # reaped only now: the waiter saw a zombie
    assert status is not None and os.waitstatus_to_exitcode(status) == 0
    assert t.flow(1).lock == 0
    region.close()
