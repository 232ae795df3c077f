"""The socket shim's byte kernels (flextcp/csrc/shim_io.c: tas_shim_send,
tas_shim_fwd) against their Python twins (libtas.shim.shimio.send_twin,
fwd_twin) on the same states: positions across buffer wraps, full and
bogus positions, reset flags, a socketpair that takes everything, part or
nothing (or whose peer is gone), full ATX rings, armed/unarmed cores."""

from __future__ import annotations

import socket
import types

from hypothesis import given, settings
from hypothesis import strategies as st
from test_app_wait import _prepare, _ring_off, _states, flow_positions

import libtas.api as api
from flextcp.native import ffi, lib
from libtas.api import _post_atx_twin
from libtas.shim import shimio

FLOW_AREA = 64 + 2 * 64  # appflow block, rx and tx buffers of at most 64 bytes


def test_status_bits_match_the_header():
    assert (
        shimio.EMPTY, shimio.AGAIN, shimio.GONE, shimio.ODD, shimio.POSTED, shimio.UNPOSTED, shimio.DUE,
        shimio.BUSY,
    ) == (
        lib.TAS_SHIM_EMPTY, lib.TAS_SHIM_AGAIN, lib.TAS_SHIM_GONE, lib.TAS_SHIM_ODD,
        lib.TAS_SHIM_POSTED, lib.TAS_SHIM_UNPOSTED, lib.TAS_SHIM_DUE, lib.TAS_SHIM_BUSY,
    )  # fmt: skip


@st.composite
def _flow(draw):
    f = flow_positions(draw, 16)
    f["rx_posted"] = f["rx_tail"] - draw(st.integers(0, min(f["rx_tail"], 2 * f["rx_len"])))
    return f


def _side_flow(side, base: int, f: dict, core: int):
    mv = side.region.view()
    af = side.region.cast("struct tas_appflow", base)
    af.rx_head, af.tx_acked, af.flags = f["rx_head"], f["tx_acked"] & api._M64, f["flags"]
    rx_off, tx_off = base + 64, base + 128
    mv[rx_off : rx_off + f["rx_len"]] = f["rx_data"]
    fl = ffi.new("struct tas_app_flow *")
    fl.af = af
    fl.rx = side.region.cast("uint8_t", rx_off)
    fl.tx = side.region.cast("uint8_t", tx_off)
    fl.rx_tail, fl.tx_head, fl.rx_posted = f["rx_tail"], f["tx_head"], f["rx_posted"]
    fl.rx_len, fl.tx_len, fl.flow_id, fl.gen, fl.core = f["rx_len"], f["tx_len"], 7, 3, core
    views = types.SimpleNamespace(rx=mv[rx_off : rx_off + f["rx_len"]], tx=mv[tx_off : tx_off + f["tx_len"]])
    return fl, views, mv


def _pair(room: int | None):
    """A non-blocking AF_UNIX pair whose first end takes about `room` more
    bytes (None: plenty; -1: its peer is closed)."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a.setblocking(False)
    if room == -1:
        b.close()
        return a, None
    if room is not None:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        try:
            while True:
                a.send(b"\0" * 4096)
        except BlockingIOError:
            pass
        got = 0
        while got < room:
            got += len(b.recv(room - got))
        # the kernel's accounting is per skb: fill again, then free exactly `room`
        try:
            while True:
                a.send(b"\0")
        except BlockingIOError:
            pass
        b.setblocking(False)
        try:
            while True:
                b.recv(65536)
        except BlockingIOError:
            pass
    return a, b


def _drain(b) -> bytes:
    if b is None:
        return b""
    b.setblocking(False)
    out = b""
    try:
        while True:
            d = b.recv(65536)
            if not d:
                break
            out += d
    except BlockingIOError:
        pass
    return out


def _run(state, f, op):
    n_cores, slots, per_core, armed, fp_armed = state
    base = _ring_off(0, n_cores, slots)
    c, py = _prepare(n_cores, slots, per_core, armed, fp_armed, FLOW_AREA)
    try:
        core = min(f.pop("core"), n_cores)  # n_cores: out of range (dropped)
        cfl, cv, cmv = _side_flow(c, base, f, core)
        pfl, pv, pmv = _side_flow(py, base, f, core)

        def post(d, cores):
            return _post_atx_twin(py.atx, py.fp_armed, py.doorbells, d, cores)

        got_c, got_py = op(c, cfl, cv, py, pfl, pv, post)
        assert got_c == got_py
        assert (cfl.rx_tail, cfl.tx_head, cfl.rx_posted) == (pfl.rx_tail, pfl.tx_head, pfl.rx_posted)
        for v in (cv.rx, cv.tx, pv.rx, pv.tx, cmv, pmv):
            v.release()
        assert bytes(c.region.view()) == bytes(py.region.view())
        assert [min(x, 1) for x in c.rang()] == [min(x, 1) for x in py.rang()]
    finally:
        c.close()
        py.close()


@settings(max_examples=300, deadline=None)
@given(
    state=_states(), f=_flow(), core=st.integers(0, 4), data=st.binary(max_size=80),
    pair=st.sampled_from(["none", "empty", "holds", "closed"]),
)  # fmt: skip
def test_send_matches_twin(state, f, core, data, pair):
    """tas_shim_send against send_twin: bytes taken, status, positions, tx
    bytes, ATX entries and doorbells; BUSY (nothing else) while the pair's
    end holds bytes or is not a socket any more."""
    f["core"] = core

    def op(c, cfl, cv, py, pfl, pv, post):
        a, b = socket.socketpair()
        if pair == "holds":
            b.send(b"x")
        fd = {"none": -1, "closed": 1 << 20}.get(pair, a.fileno())
        try:
            stp = ffi.new("uint32_t *")
            n = lib.tas_shim_send(c.actx, cfl, fd, ffi.from_buffer("uint8_t[]", data), len(data), stp)
            got = (n, stp[0]), shimio.send_twin(post, pfl, fd, pv.tx, data)
        finally:
            a.close()
            b.close()
        if pair in ("holds", "closed"):
            assert got[0] == (0, shimio.BUSY)
        return got

    _run(state, f, op)


@settings(max_examples=200, deadline=None)
@given(
    state=_states(), f=_flow(), core=st.integers(0, 4),
    room=st.sampled_from([None, None, -1, 0, 5, 20]), maxn=st.sampled_from([1, 7, 1 << 20]),
    nopost=st.booleans(),
)  # fmt: skip
def test_fwd_matches_twin(state, f, core, room, maxn, nopost):
    """tas_shim_fwd against fwd_twin: bytes moved, status, positions, the
    bytes the pair's other end reads, ATX entries and doorbells (nopost:
    the pump's call, context NULL, DUE instead of an update)."""
    f["core"] = core

    def op(c, cfl, cv, py, pfl, pv, post):
        a1, b1 = _pair(room)
        a2, b2 = _pair(room)
        try:
            stp = ffi.new("uint32_t *")
            n = lib.tas_shim_fwd(ffi.NULL if nopost else c.actx, cfl, a1.fileno(), maxn, stp)
            got_c = (n, stp[0], _drain(b1))
            n2, st2 = shimio.fwd_twin(None if nopost else post, pfl, pv.rx, a2, maxn)
            return got_c, (n2, st2, _drain(b2))
        finally:
            for s in (a1, b1, a2, b2):
                if s is not None:
                    s.close()

    _run(state, f, op)


def test_fwd_delivers_across_the_wrap():
    """The bytes the app reads are the flow's, in order, across the rx
    buffer's wrap, and rx_tail ends at rx_head (EMPTY)."""
    state = (1, 8, [(0, [], 0)], 0, [0])
    f = {
        "rx_len": 16, "tx_len": 16, "rx_tail": 10, "rx_head": 26, "rx_posted": 10, "tx_head": 0,
        "tx_acked": 0, "flags": 0, "rx_data": bytes(range(16)), "core": 0,
    }  # fmt: skip

    def op(c, cfl, cv, py, pfl, pv, post):
        a, b = _pair(None)
        stp = ffi.new("uint32_t *")
        n = lib.tas_shim_fwd(c.actx, cfl, a.fileno(), 1 << 20, stp)
        out = _drain(b)
        a.close()
        b.close()
        assert n == 16 and stp[0] & shimio.EMPTY and stp[0] & shimio.POSTED
        assert out == bytes(range(10, 16)) + bytes(range(10))
        assert cfl.rx_tail == 26 == cfl.rx_posted
        a, b = _pair(None)
        r = shimio.fwd_twin(post, pfl, pv.rx, a, 1 << 20)
        out2 = _drain(b)
        a.close()
        b.close()
        return (n, stp[0], out), (r[0], r[1], out2)

    _run(state, f, op)
