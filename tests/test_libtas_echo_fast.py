"""Connection.echo() and splice_to(self)'s fast path (libtas) against the
general path they shortcut: the same result, error, positions, update and
bytes in the send buffer, over seeded random states (buffer wraps, full
send buffers, FIN, reset, closed, shutdown, bogus positions).  No stack:
a connection over plain buffers and a minimal context."""

from __future__ import annotations

import errno
import random
import threading
import types

import pytest

import libtas.api as api
from flextcp.native import ffi

BIG = 1 << 62  # splice_to(conn, BIG): the general path, same limit as none
STATES = [api._STATE_CONNECTED] * 6 + [api._STATE_CONNECTING, api._STATE_CLOSED, api._STATE_FAILED]


class _Ctx:
    """What a Connection's data path uses of its Context."""

    def __init__(self, closed: bool) -> None:
        self._lock = threading.RLock()
        self._updates: dict[int, api.Connection] = {}
        self._closed = closed
        self.flushes = 0

    def _flush(self) -> None:
        self.flushes += 1
        for c in self._updates.values():
            c._rx_posted = c._rx_tail
        self._updates = {}

    def _queue_update(self, conn) -> None:
        self._updates[conn.flow_id] = conn

    def _poll_locked(self) -> int:
        return 0


def _conn(st: dict) -> api.Connection:
    """A connection in state st (fresh buffers and appflow block)."""
    c = object.__new__(api.Connection)
    ctx = _Ctx(st["ctx_closed"])
    af = ffi.new("struct tas_appflow *")
    af.rx_head = st["rx_head"] & api._M64
    af.tx_acked = st["tx_acked"] & api._M64
    af.flags = st["flags"]
    rx = bytearray(st["rx_data"])
    tx = bytearray(st["tx_data"])
    rx_len, tx_len = len(rx), len(tx)
    c.__dict__.update(
        ctx=ctx,
        _info=types.SimpleNamespace(rx_len=rx_len, tx_len=tx_len, core=0, gen=1, flow=7),
        flow_id=7,
        _state=st["state"],
        _error=errno.ECONNREFUSED,
        _reset=st["reset"],
        _reset_reported=st["reset_reported"],
        _gone=st["gone"],
        _shut_rd=st["shut_rd"],
        _shut_wr=st["shut_wr"],
        _af=af,
        _afkeep=af,
        _rx=memoryview(rx),
        _tx=memoryview(tx),
        _rxbuf=rx,
        _txbuf=tx,
        _rx_mask=rx_len - 1,
        _tx_mask=tx_len - 1,
        _rx_len=rx_len,
        _tx_len=tx_len,
        _core=0,
        _gen=1,
    )
    # the positions live in the connection's struct tas_app_flow
    fl = c._fl = ffi.new("struct tas_app_flow *")
    fl.af = af
    fl.rx, fl.tx = ffi.from_buffer("uint8_t[]", rx), ffi.from_buffer("uint8_t[]", tx)
    c.__dict__["_rxkeep"], c.__dict__["_txkeep"] = fl.rx, fl.tx
    fl.rx_len, fl.tx_len, fl.flow_id, fl.gen, fl.core = rx_len, tx_len, 7, 1, 0
    c._rx_tail = st["rx_tail"]
    c._tx_head = st["tx_head"]
    c._rx_posted = st["rx_posted"]
    return c


def _random_state(rng: random.Random) -> dict:
    rx_len = rng.choice([8, 16, 64])
    tx_len = rng.choice([8, 16, 64])
    rx_tail = rng.randrange(0, 1 << 20)
    kind = rng.random()
    if kind < 0.05:  # a bogus head (beyond the buffer, or behind the tail)
        rx_head = rx_tail + rx_len + rng.randrange(1, 100)
    else:
        rx_head = rx_tail + rng.randrange(0, rx_len + 1)
    tx_head = rng.randrange(0, 1 << 20)
    used = rng.randrange(0, tx_len + 1) if rng.random() > 0.05 else tx_len + rng.randrange(1, 50)
    plain = rng.random() < 0.6  # most states plain: the fast path's
    return {
        "state": api._STATE_CONNECTED if plain else rng.choice(STATES),
        "ctx_closed": False if plain else rng.random() < 0.1,
        "reset": 0 if plain or rng.random() < 0.7 else errno.ECONNRESET,
        "reset_reported": rng.random() < 0.3,
        "gone": False if plain else rng.random() < 0.1,
        "shut_rd": False if plain else rng.random() < 0.15,
        "shut_wr": False if plain else rng.random() < 0.15,
        "flags": rng.choice(
            [0, 0, 0, api.TAS_AF_RX_FIN, api.TAS_AF_RESET, api.TAS_AF_RX_FIN | api.TAS_AF_RESET]
        ),
        "rx_tail": rx_tail,
        "rx_head": rx_head,
        "rx_posted": max(0, rx_tail - rng.randrange(0, rx_len + 1)),
        "tx_head": tx_head,
        "tx_acked": tx_head - used,
        "rx_data": bytes(rng.randrange(256) for _ in range(rx_len)),
        "tx_data": bytes(rng.randrange(256) for _ in range(tx_len)),
    }


def _outcome(c: api.Connection, call) -> tuple:
    try:
        r = ("ok", call())
    except OSError as e:
        r = ("raise", type(e), e.errno)
    return (
        r,
        c._rx_tail,
        c._tx_head,
        c._rx_posted,
        bytes(c._txbuf),
        c._reset,
        c._reset_reported,
        sorted(c.ctx._updates),
    )


def _same_outcomes(seed: int, fast, general) -> list:
    """Run fast(conn) and general(conn) on twin connections in 4000 random
    states; assert equal outcomes; return the fast side's outcomes."""
    rng = random.Random(seed)
    outs = []
    for _ in range(4000):
        st = _random_state(rng)
        a, b = _conn(st), _conn(st)
        got = _outcome(a, lambda a=a: fast(a))
        assert got == _outcome(b, lambda b=b: general(b)), st
        outs.append(got)
    return outs


@pytest.mark.parametrize("flush", [False, True])
def test_echo_is_splice_then_readable(flush):
    def ref(c):
        c.splice_to(c, BIG, flush=flush)
        return c.readable()

    outs = _same_outcomes(20261206 + flush, lambda c: c.echo(flush=flush), ref)
    assert sum(o[0] == ("ok", False) for o in outs) > 500  # the common case (all echoed) was exercised


@pytest.mark.parametrize("flush", [False, True])
def test_splice_to_self_fast_path_is_the_general_path(flush):
    outs = _same_outcomes(
        61 + flush, lambda c: c.splice_to(c, flush=flush), lambda c: c.splice_to(c, BIG, flush=flush)
    )
    assert sum(o[0][0] == "ok" and o[0][1] > 0 for o in outs) > 500


def test_echo_wraps_both_buffers():
    st = {
        "state": api._STATE_CONNECTED, "ctx_closed": False, "reset": 0, "reset_reported": False,
        "gone": False, "shut_rd": False, "shut_wr": False, "flags": 0,
        "rx_tail": 12, "rx_head": 12 + 10, "rx_posted": 12, "tx_head": 30, "tx_acked": 30,
        "rx_data": bytes(range(16)), "tx_data": bytes(16),
    }  # fmt: skip
    c = _conn(st)
    assert c.echo(flush=False) is False
    assert c._rx_tail == 22 and c._tx_head == 40
    # rx bytes 12..15, 0..5 (the rx buffer wraps) land at tx 14, 15, 0..7 (so does tx)
    assert bytes(c._txbuf) == bytes([14, 15, 0, 1, 2, 3, 4, 5, 0, 0, 0, 0, 0, 0, 12, 13])
    assert list(c.ctx._updates) == [7]


def test_echo_kernel_twin_is_echo_status():
    """The echo kernel's twin (api._echo_twin, compared with tas_app_echo by
    tests/test_app_wait.py) does for a plain connection what the echo
    server's Python path does (Connection._echo_status): same outcome,
    positions and bytes; its update is posted instead of queued."""
    rng = random.Random(7)
    outcomes = set()
    for _ in range(4000):
        st = _random_state(rng)
        st.update(state=api._STATE_CONNECTED, ctx_closed=False, reset=0, gone=False, shut_rd=False, shut_wr=False)
        a, b = _conn(st), _conn(st)
        a._fl.echo = 1
        posted = []

        def post(data, cores, posted=posted):
            posted.append(data)
            return 1, bytearray([api._POSTED] * len(cores))

        got = api._echo_twin({7: a}, [7], post)
        want = b._echo_status(False)
        assert (got[0][1] if got else api.ECHO_DONE) == want, st
        assert (a._rx_tail, a._tx_head, bytes(a._txbuf)) == (b._rx_tail, b._tx_head, bytes(b._txbuf))
        assert bool(posted) == bool(b.ctx._updates)  # moved: one update (posted / queued)
        if posted:
            assert a._rx_posted == a._rx_tail
        outcomes.add(want)
    assert outcomes == {api.ECHO_DONE, api.ECHO_MORE, api.ECHO_EOF}
