"""libtas's wake-up kernels (flextcp/csrc/app_wait.c) against their Python
twins (libtas.api._drain_arx_twin, _post_atx_twin and the armed-flag steps
of Context._wait_locked) on the same ring states: random ARX contents,
wraps, empty and full rings, armed/unarmed cores, updates across cores."""

from __future__ import annotations

import errno
import os
import socket
import struct
import types

from hypothesis import given, settings
from hypothesis import strategies as st

import libtas.api as api
from flextcp.native import ffi, lib
from flextcp.ring import HDR_SIZE, PyRing, Ring
from flextcp.shm import Region
from libtas.api import _ARX, _ATX, _drain_arx_twin, _post_atx_twin

HDR = 512  # struct tas_ctx_hdr (app_armed, fp_armed[]) at offset 0
ATX_ES, ARX_ES = 32, 16
SLOTS = [2, 4, 8, 64, 128]


def _ring_off(kind: int, core: int, slots: int) -> int:
    es = ATX_ES if kind == 0 else ARX_ES
    per = HDR_SIZE + slots * max(ATX_ES, ARX_ES)
    assert per >= HDR_SIZE + slots * es
    return HDR + (2 * core + kind) * per


def _region(n_cores: int, slots: int, extra: int = 0) -> Region:
    return Region.create(_ring_off(0, n_cores, slots) + extra, "test_app_wait")


def _hdr(region: Region):
    return region.cast("struct tas_ctx_hdr")


class Side:
    """One copy of a context region: rings attached from the app's side,
    with C rings (for the kernels) or Python ones (for the twins)."""

    def __init__(self, region: Region, n_cores: int, slots: int, use_c: bool) -> None:
        cls = Ring if use_c else PyRing
        self.region = region
        self.atx = [cls.attach(region, _ring_off(0, c, slots), slots, ATX_ES, True) for c in range(n_cores)]
        self.arx = [cls.attach(region, _ring_off(1, c, slots), slots, ARX_ES, False) for c in range(n_cores)]
        self.hdr = _hdr(region)
        self.app_armed = ffi.addressof(self.hdr, "app_armed")
        self.fp_armed = ffi.cast("uint32_t *", ffi.addressof(self.hdr, "fp_armed"))
        self.doorbells = [_Bell() for _ in range(n_cores)]
        self.evfd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        if use_c:
            a = ffi.new("struct tas_app_ctx *")
            a.app_armed = self.app_armed
            a.fp_armed = self.fp_armed
            for c in range(n_cores):
                a.atx[c] = self.atx[c].raw
                a.arx[c] = self.arx[c].raw
                a.fp_evfd[c] = self.doorbells[c].fd
            a.evfd = self.evfd
            a.n_cores = n_cores
            a.arx_slots = slots
            self.actx = a

    def rang(self) -> list[int]:
        return [b.drain() for b in self.doorbells]

    def close(self) -> None:
        for b in self.doorbells:
            os.close(b.fd)
        os.close(self.evfd)
        self.region.close()


class _Bell:
    def __init__(self) -> None:
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

    def ring(self) -> None:
        os.eventfd_write(self.fd, 1)

    def drain(self) -> int:
        try:
            return os.eventfd_read(self.fd)
        except BlockingIOError:
            return 0


def _prepare(n_cores: int, slots: int, per_core, armed, fp_armed, extra: int = 0) -> tuple[Side, Side]:
    """Two identical regions: ring c starts at index start (wraps), then
    holds the ARX entries ids and the ATX ring atx_fill entries (and extra
    bytes after the rings)."""
    region = _region(n_cores, slots, extra)
    for c in range(n_cores):
        start, ids, atx_fill = per_core[c]
        for kind, es, fill in ((0, ATX_ES, None), (1, ARX_ES, ids)):
            off = _ring_off(kind, c, slots)
            prod = Ring.create(region, off, slots, es, True)
            cons = Ring.attach(region, off, slots, es, False)
            buf = bytearray(es * slots)
            for _ in range(start // slots):
                prod.enqueue_n(bytes(es * slots), slots)
                cons.dequeue_into(buf, slots)
            prod.enqueue_n(bytes(es * (start % slots)), start % slots)
            cons.dequeue_into(buf, start % slots)
            if kind == 1:
                data = b"".join(_ARX.pack(f, f & 0xFFFF, 1, 0) for f in fill)
                assert prod.enqueue_n(data, len(fill)) == len(fill)
            else:
                assert prod.enqueue_n(bytes(es * atx_fill), atx_fill) == atx_fill
    hdr = _hdr(region)
    hdr.app_armed = armed
    for c in range(n_cores):
        hdr.fp_armed[c] = fp_armed[c]
    twin_region = Region.create(region.size, "test_app_wait")
    twin_region.view()[:] = region.view()
    return Side(region, n_cores, slots, True), Side(twin_region, n_cores, slots, False)


@st.composite
def _states(draw):
    n_cores = draw(st.integers(1, 4))
    slots = draw(st.sampled_from(SLOTS))
    per_core = []
    for _ in range(n_cores):
        start = draw(st.integers(0, 3 * slots))
        m = draw(st.one_of(st.just(0), st.just(slots), st.integers(0, slots)))
        ids = draw(st.lists(st.integers(0, 2**32 - 1), min_size=m, max_size=m))
        atx_fill = draw(st.one_of(st.just(0), st.just(slots), st.integers(0, slots)))
        per_core.append((start, ids, atx_fill))
    armed = draw(st.integers(0, 1))
    fp_armed = draw(st.lists(st.integers(0, 1), min_size=n_cores, max_size=n_cores))
    return n_cores, slots, per_core, armed, fp_armed


def _c_drain(side: Side, cap: int, first) -> tuple[list[int], list[int], int]:
    ids = ffi.new("uint32_t[]", cap)
    k = first(ids)
    out = list(ffi.unpack(ids, k))
    while k == cap:
        k = lib.tas_app_drain(side.actx, ids, cap, lib.TAS_APP_DRAIN_MORE)
        out += ffi.unpack(ids, k)
    n_cores = side.actx.n_cores
    return out, list(side.actx.got)[:n_cores], side.actx.overflows


@settings(max_examples=300, deadline=None)
@given(state=_states(), cap=st.sampled_from([1, 3, 64, 1024]), flags=st.integers(0, 3))
def test_drain_matches_twin(state, cap, flags):
    n_cores, slots, per_core, armed, fp_armed = state
    c, py = _prepare(n_cores, slots, per_core, armed, fp_armed)
    try:
        os.eventfd_write(c.evfd, 1)
        ids, got, overflows = _c_drain(c, cap, lambda b: lib.tas_app_drain(c.actx, b, cap, flags))
        ready: set[int] = set()
        twin_got = _drain_arx_twin(py.arx, bytearray(64 * ARX_ES), ready)
        if flags & lib.TAS_APP_WAKE_DISARM:
            py.hdr.app_armed = 0
        assert sorted(ids) == sorted(f for _, fl, _ in per_core for f in fl)
        assert set(ids) == ready
        assert got == twin_got
        assert overflows == sum(g >= slots for g in twin_got)
        assert bytes(c.region.view()) == bytes(py.region.view())
        cleared = not (flags & lib.TAS_APP_WAKE_CLEAR)
        assert _evfd_count(c.evfd) == (1 if cleared else 0)
    finally:
        c.close()
        py.close()


@settings(max_examples=200, deadline=None)
@given(state=_states())
def test_arm_drain_matches_twin(state):
    """Arm, fence, re-check; found something: disarm (no sleep)."""
    n_cores, slots, per_core, armed, fp_armed = state
    c, py = _prepare(n_cores, slots, per_core, armed, fp_armed)
    try:
        ids, got, _ = _c_drain(c, 1024, lambda b: lib.tas_app_arm_drain(c.actx, b, 1024))
        # the twin: Context._wait_locked's pure path
        lib.tas_armed_set(py.app_armed, 1)
        ready: set[int] = set()
        twin_got = _drain_arx_twin(py.arx, bytearray(64 * ARX_ES), ready)
        if sum(twin_got):
            py.hdr.app_armed = 0
        assert set(ids) == ready and got == twin_got
        assert c.hdr.app_armed == (0 if ids else 1)
        assert bytes(c.region.view()) == bytes(py.region.view())
    finally:
        c.close()
        py.close()


@settings(max_examples=300, deadline=None)
@given(
    state=_states(),
    updates=st.lists(
        st.tuples(st.integers(0, 5), st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1)), max_size=80
    ),
)
def test_post_matches_twin(state, updates):
    """ATX updates across cores (some out of range, some rings full),
    doorbells rung exactly for the armed cores that got entries."""
    n_cores, slots, per_core, armed, fp_armed = state
    c, py = _prepare(n_cores, slots, per_core, armed, fp_armed)
    try:
        data = b"".join(_ATX.pack(f, f & 0xFFFF, 1, pos, pos ^ 5, 0) for _, f, pos in updates)
        cores = bytes(core for core, _, _ in updates)
        done = ffi.new("uint8_t[]", max(1, len(updates)))
        posted = lib.tas_app_post(c.actx, data, cores, len(updates), done)
        twin_posted, twin_done = _post_atx_twin(py.atx, py.fp_armed, py.doorbells, data, cores)
        assert posted == twin_posted
        assert bytes(ffi.buffer(done, len(updates))) == bytes(twin_done)
        assert bytes(c.region.view()) == bytes(py.region.view())
        rang = [min(x, 1) for x in c.rang()]
        assert rang == [min(x, 1) for x in py.rang()]
        got = {core for (core, _, _), d in zip(updates, twin_done, strict=True) if d == 1}
        assert rang == [int(k in got and fp_armed[k] == 1) for k in range(n_cores)]
    finally:
        c.close()
        py.close()


def _evfd_count(fd: int) -> int:
    try:
        return os.eventfd_read(fd)
    except BlockingIOError:
        return 0


def test_sleep_ready_bits_and_timeout():
    evfd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    a, b = socket.socketpair()
    try:
        assert lib.tas_app_sleep(evfd, a.fileno(), 2000) == 0  # timeout
        assert lib.tas_app_sleep(evfd, -1, 0) == 0
        os.eventfd_write(evfd, 1)
        assert lib.tas_app_sleep(evfd, a.fileno(), -1) == lib.TAS_APP_READY_EVFD
        b.send(b"x")
        ready = lib.TAS_APP_READY_EVFD | lib.TAS_APP_READY_SOCK
        assert lib.tas_app_sleep(evfd, a.fileno(), 0) == ready
        os.eventfd_read(evfd)
        assert lib.tas_app_sleep(evfd, a.fileno(), 1_000_000) == lib.TAS_APP_READY_SOCK
        b.close()  # hang-up: readable, as select() says
        a.recv(1)
        assert lib.tas_app_sleep(evfd, a.fileno(), 0) & lib.TAS_APP_READY_SOCK
        closed = os.eventfd(0)
        os.close(closed)
        assert lib.tas_app_sleep(closed, -1, 0) == -errno.EBADF
    finally:
        a.close()
        os.close(evfd)


def test_entry_sizes():
    assert _ATX.size == ATX_ES == lib.TAS_ATX_ENTRY_SIZE
    assert _ARX.size == ARX_ES == ffi.sizeof("struct tas_arx")
    assert struct.calcsize("<I") == ffi.sizeof("uint32_t")


# -- tas_app_echo: the echo server's pass -------------------------------------------------------

FLOW_AREA = 64 + 2 * 64  # per flow: appflow block, rx and tx buffers of at most 64 bytes


def flow_positions(draw, one_in: int) -> dict:
    """A flow as an app's kernels see it: buffer sizes, positions, appflow
    flags and the rx buffer's bytes; about one draw in ``one_in`` gives
    positions no fast path would write (the kernels must refuse them)."""
    rx_len = draw(st.sampled_from([8, 16, 64]))
    tx_len = draw(st.sampled_from([8, 16, 64]))
    rx_tail = draw(st.integers(0, 1 << 20))
    bogus = draw(st.integers(0, one_in - 1)) == 0
    rx_head = rx_tail + (rx_len + draw(st.integers(1, 50)) if bogus else draw(st.integers(0, rx_len)))
    tx_head = draw(st.integers(0, 1 << 20))
    used = draw(st.integers(0, tx_len)) if draw(st.integers(0, one_in - 1)) else tx_len + draw(st.integers(1, 50))
    return {
        "rx_len": rx_len, "tx_len": tx_len, "rx_tail": rx_tail, "rx_head": rx_head,
        "tx_head": tx_head, "tx_acked": tx_head - used, "flags": draw(st.sampled_from([0, 0, 0, 1, 2, 3])),
        "rx_data": draw(st.binary(min_size=rx_len, max_size=rx_len)),
    }  # fmt: skip


@st.composite
def _echo_states(draw):
    n_cores, slots, per_core, armed, fp_armed = draw(_states())
    flows = []
    for fid in range(draw(st.integers(1, 6))):
        f = flow_positions(draw, 20)
        f.update({
            "fid": fid, "core": draw(st.integers(0, n_cores)),
            "in_table": draw(st.integers(0, 9)) > 0, "echo": draw(st.integers(0, 9)) > 0,
        })  # fmt: skip
        flows.append(f)
    ids = draw(st.lists(st.integers(0, len(flows) + 1), max_size=12))
    return n_cores, slots, per_core, armed, fp_armed, flows, ids


def _echo_side(side: Side, base: int, flows: list[dict], use_c: bool):
    """The flows in side's region at base: records (and, for the twin,
    connection-like objects over the same memory)."""
    recs, conns = {}, {}
    mv = side.region.view()
    for f in flows:
        off = base + f["fid"] * FLOW_AREA
        af = side.region.cast("struct tas_appflow", off)
        af.rx_head, af.tx_acked, af.flags = f["rx_head"], f["tx_acked"] & api._M64, f["flags"]
        rx_off, tx_off = off + 64, off + 64 + 64
        mv[rx_off : rx_off + f["rx_len"]] = f["rx_data"]
        fl = ffi.new("struct tas_app_flow *")
        fl.af = af
        fl.rx = side.region.cast("uint8_t", rx_off)
        fl.tx = side.region.cast("uint8_t", tx_off)
        fl.rx_tail, fl.tx_head, fl.rx_posted = f["rx_tail"], f["tx_head"], 0
        fl.rx_len, fl.tx_len, fl.flow_id, fl.gen, fl.core = f["rx_len"], f["tx_len"], f["fid"], 1, f["core"]
        fl.echo = f["echo"]
        recs[f["fid"]] = fl
        if f["in_table"]:
            conns[f["fid"]] = types.SimpleNamespace(
                _fl=fl, _af=af, _rx=mv[rx_off : rx_off + f["rx_len"]], _tx=mv[tx_off : tx_off + f["tx_len"]]
            )
    return recs, conns, mv


@settings(max_examples=300, deadline=None)
@given(state=_echo_states())
def test_echo_matches_twin(state):
    """tas_app_echo against libtas.api._echo_twin: same outcomes, positions,
    tx bytes, ATX entries (rings full included) and doorbells."""
    n_cores, slots, per_core, armed, fp_armed, flows, ids = state
    base = _ring_off(0, n_cores, slots)
    extra = len(flows) * FLOW_AREA
    c, py = _prepare(n_cores, slots, per_core, armed, fp_armed, extra)
    try:
        crecs, _, cmv = _echo_side(c, base, flows, True)
        precs, pconns, pmv = _echo_side(py, base, flows, False)
        tab = ffi.new("struct tas_app_flow *[]", len(flows))
        for f in flows:
            if f["in_table"]:
                tab[f["fid"]] = crecs[f["fid"]]
        cids = ffi.new("uint32_t[]", max(1, len(ids)))
        for i, fid in enumerate(ids):
            cids[i] = fid
        out_ids = ffi.new("uint32_t[]", max(1, len(ids)))
        out_st = ffi.new("uint8_t[]", max(1, len(ids)))
        k = lib.tas_app_echo(c.actx, tab, len(flows), cids, len(ids), out_ids, out_st)
        got = [(out_ids[i], out_st[i]) for i in range(k)]
        twin = api._echo_twin(
            pconns, ids, lambda d, cores: _post_atx_twin(py.atx, py.fp_armed, py.doorbells, d, cores)
        )
        assert got == twin
        for f in flows:
            a, b = crecs[f["fid"]], precs[f["fid"]]
            assert (a.rx_tail, a.tx_head, a.rx_posted) == (b.rx_tail, b.tx_head, b.rx_posted)
        cmv.release()
        pmv.release()
        assert bytes(c.region.view()) == bytes(py.region.view())
        assert [min(x, 1) for x in c.rang()] == [min(x, 1) for x in py.rang()]
    finally:
        c.close()
        py.close()


def test_flow_init_matches_twin():
    """tas_app_flow_init against libtas.api._flow_init_twin: the same record."""
    size = ffi.sizeof("struct tas_app_flow")
    buf = ffi.new("uint8_t[]", 1 << 16)
    base = ffi.cast("uint8_t *", buf)
    for args in ((64, 4096, 4096, 8192, 8192, 17, 3, 0), (0, 128, 8, 256, 16, 2**32 - 1, 65535, 15)):
        a, b = ffi.new("struct tas_app_flow *"), ffi.new("struct tas_app_flow *")
        ffi.memmove(a, b"\xaa" * size, size)  # (the kernel clears what it does not set)
        ffi.memmove(b, b"\x55" * size, size)
        lib.tas_app_flow_init(a, base, *args)
        api._flow_init_twin(b, base, *args)
        assert bytes(ffi.buffer(a)) == bytes(ffi.buffer(b))
        assert a.af == ffi.cast("struct tas_appflow *", base + args[0])
        assert (a.rx, a.tx, a.rx_len, a.tx_len) == (base + args[1], base + args[3], args[2], args[4])
        assert (a.flow_id, a.gen, a.core, a.echo, a.rx_tail, a.tx_head, a.rx_posted) == (*args[5:], 0, 0, 0, 0)
