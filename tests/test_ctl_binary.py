"""Binary control messages (issue 5, crr/conns): events as fixed-size
records batched per slow-path loop pass, and the binary `close` request.

* The codec round-trips every event kind and is strict (unknown kind, a
  buffer length that is not a power of two, a bad errno: ProtocolError).
* An app that asked for binary events at hello gets the events of one loop
  pass as one message and each context's doorbell rung once; a reply sent
  in the same pass comes after the events emitted before it (no reordering).
* An app that did not ask still gets one JSON message per event.
* A binary close runs like a JSON `close` with noreply (engine call, no
  reply); an unknown flow still gets its EBADF error reply.
"""

from __future__ import annotations

import errno
import json
import os
import socket

import pytest
from test_control import ECHO_PORT, Harness, raw_call, raw_connect

import libtas
from flextcp import ctlproto
from flextcp.ctlproto import FlowInfo, ProtocolError
from kernel_slowpath.server import ACCEPT_BACKPRESSURE

INFO = {"flow": 5, "gen": 3, "ctx": 1, "core": 1, "appflow_off": 1 << 33, "rx_off": 69632, "rx_len": 4096,
        "tx_off": 73728, "tx_len": 8192, "local_ip": "198.18.0.2", "local_port": 7,
        "remote_ip": "198.18.0.1", "remote_port": 40000}


@pytest.fixture
def harness(tmp_path):
    h = Harness(tmp_path)
    yield h
    h.close()


def test_event_codec_roundtrip():
    evs = [
        {"ev": "newconn", "ctx": 1, "listener": 7, "flow": INFO},
        {"ev": "connected", "ctx": 2, "flow": 9},
        {"ev": "conn_failed", "ctx": 2, "flow": 9, "errno": errno.ECONNREFUSED},
        {"ev": "reset", "ctx": 2, "flow": 10, "errno": errno.ECONNRESET},
        {"ev": "closed", "ctx": 3, "flow": 11},
    ]
    data = ctlproto.BIN_EVENTS + b"".join(ctlproto.encode_event(e) for e in evs)
    out = ctlproto.decode_events(data)
    assert out[0] == {"ev": "newconn", "ctx": 1, "listener": 7, "flow": FlowInfo(**INFO)}
    assert out[1:] == evs[1:]
    # what the JSON form gives for the same events
    for e, o in zip(evs, out, strict=True):
        assert ctlproto.parse_message(ctlproto.encode(e)) == {**o, "flow": e["flow"]} or e["ev"] == "newconn"


@pytest.mark.parametrize("bad", [
    {"ev": "nope", "ctx": 1, "flow": 1},
    {"ev": "closed", "ctx": -1, "flow": 1},
    {"ev": "newconn", "ctx": 1, "listener": 7, "flow": {**INFO, "remote_ip": "not-an-ip"}},
    {"ev": "newconn", "ctx": 1, "listener": 7, "flow": {"flow": 1}},
])
def test_encode_event_rejects(bad):
    with pytest.raises(ProtocolError):
        ctlproto.encode_event(bad)


def _rec(**kw) -> bytes:
    return ctlproto.encode_event({"ev": "newconn", "ctx": 1, "listener": 7, "flow": {**INFO, **kw}})


@pytest.mark.parametrize("data", [
    ctlproto.BIN_EVENTS + _rec(rx_len=3000),
    ctlproto.BIN_EVENTS + _rec(tx_len=0),
    ctlproto.BIN_EVENTS + _rec(core=16),
    ctlproto.BIN_EVENTS + _rec()[:-1],
    ctlproto.BIN_EVENTS + b"\x09" + _rec()[1:],  # unknown kind
    ctlproto.BIN_EVENTS + ctlproto.encode_event({"ev": "reset", "ctx": 1, "flow": 2, "errno": 0}),
    b"\0X" + _rec(),
])
def test_decode_events_is_strict(data):
    with pytest.raises(ProtocolError):
        ctlproto.decode_events(data)
    with pytest.raises(ProtocolError):  # libtas's form: the same checks
        ctlproto.decode_events_raw(data)
    buf = bytearray(data) + b"\0" * 300  # in a receive buffer: the message is its first bytes
    with pytest.raises(ProtocolError):
        ctlproto.decode_events_raw(buf, len(data))


@pytest.mark.parametrize("n", [1, 3])
def test_decode_events_raw_is_decode_events(n):
    """The records libtas takes (decode_events_raw, also out of a longer
    receive buffer) are decode_events' events; record_flowinfo and
    event_record convert between them."""
    evs = [
        {"ev": "newconn", "ctx": 1, "listener": 7, "flow": INFO},
        {"ev": "reset", "ctx": 2, "flow": 10, "errno": errno.ECONNRESET},
        {"ev": "closed", "ctx": 3, "flow": 11},
    ][:n]
    data = ctlproto.BIN_EVENTS + b"".join(ctlproto.encode_event(e) for e in evs)
    buf = bytearray(data) + b"\xff" * 500
    for recs in (ctlproto.decode_events_raw(data), ctlproto.decode_events_raw(buf, len(data))):
        assert len(recs) == n
        for r, e in zip(recs, ctlproto.decode_events(data), strict=True):
            assert ctlproto.event_record(e) == r
            if r[0] == 1:
                info = ctlproto.record_flowinfo(r)
                assert info == FlowInfo(**INFO) and hash(info) == hash(FlowInfo(**INFO))
                assert info.to_dict() == INFO


def test_close_codec():
    data = ctlproto.encode_close(7, 3, 1 << 40, 64)
    (req,) = ctlproto.parse_closes(data)
    assert (req.op, req.id, req.args) == ("close", 7, {"flow": 3, "tx_head": 1 << 40, "rx_tail": 64,
                                                       "noreply": True})
    two = data + data[2:]
    assert len(ctlproto.parse_closes(two)) == 2
    for bad in (data[:-1], ctlproto.BIN_CLOSE, ctlproto.BIN_CLOSE + b"\xff" * 8 + data[10:]):
        with pytest.raises(ProtocolError):
            ctlproto.parse_closes(bad)
    with pytest.raises(ProtocolError):
        ctlproto.parse_closes(data, nfds=1)


def _hello_ctx(s, binary: bool):
    rep, fds = raw_call(s, {"op": "hello", "id": 1, "abi": 1, **({"bin_events": 1} if binary else {})})
    assert rep["ok"]
    for fd in fds:
        os.close(fd)
    evfd = os.eventfd(0, os.EFD_NONBLOCK)
    rep, fds = raw_call(s, {"op": "ctx_create", "id": 2}, [evfd])
    assert rep["ok"]
    for fd in fds:
        os.close(fd)
    return rep["ctx_id"], evfd


def test_events_of_one_pass_are_one_message_and_one_ring(harness):
    s = raw_connect(harness)
    ctx_id, evfd = _hello_ctx(s, binary=True)
    ctx = harness.server.contexts[ctx_id]

    def burst():
        for fid in (40, 41, 42):
            ctx.event({"ev": "closed", "flow": fid})
        ctx.event({"ev": "reset", "flow": 43, "errno": errno.ECONNRESET})

    harness.call(burst)
    data, fds = ctlproto.recv_msg(s)
    assert not fds
    assert ctlproto.decode_events(data) == [
        {"ev": "closed", "ctx": ctx_id, "flow": 40}, {"ev": "closed", "ctx": ctx_id, "flow": 41},
        {"ev": "closed", "ctx": ctx_id, "flow": 42},
        {"ev": "reset", "ctx": ctx_id, "flow": 43, "errno": errno.ECONNRESET}]
    assert os.eventfd_read(evfd) == 1  # rung once for the four
    # a reply sent in the same pass as events goes after them
    app = next(iter(harness.server.apps.values()))

    def event_then_reply():
        ctx.event({"ev": "closed", "flow": 50})
        app.send(ctlproto.reply(99, x=1))

    harness.call(event_then_reply)
    data, _ = ctlproto.recv_msg(s)
    assert ctlproto.decode_events(data) == [{"ev": "closed", "ctx": ctx_id, "flow": 50}]
    data, _ = ctlproto.recv_msg(s)
    assert json.loads(data) == {"id": 99, "ok": True, "x": 1}
    assert app.backlog() == 0
    os.close(evfd)
    s.close()


def test_json_app_keeps_one_message_per_event(harness):
    s = raw_connect(harness)
    ctx_id, evfd = _hello_ctx(s, binary=False)
    ctx = harness.server.contexts[ctx_id]
    harness.call(lambda: [ctx.event({"ev": "closed", "flow": f}) for f in (1, 2)])
    for f in (1, 2):
        data, _ = ctlproto.recv_msg(s)
        assert json.loads(data) == {"ev": "closed", "flow": f, "ctx": ctx_id}
    os.close(evfd)
    s.close()


def _next_json(s) -> dict:
    """The next reply, skipping (binary) events: the fake engine's
    `connected` and `closed` come on their own time."""
    while True:
        data, _ = ctlproto.recv_msg(s)
        if data[:2] != ctlproto.BIN_EVENTS:
            return json.loads(data)


def test_binary_close(harness):
    s = raw_connect(harness)
    ctx_id, evfd = _hello_ctx(s, binary=True)
    rep, _ = raw_call(s, {"op": "connect", "id": 3, "ctx": ctx_id, "ip": "198.18.0.1", "port": 7})
    assert rep["ok"]
    fid = rep["flow"]["flow"]
    ctlproto.send_msg(s, ctlproto.encode_close(4, fid, 0, 0))
    harness.until(lambda: any(c[0] == "close" for c in harness.engine.calls))
    assert ("close", ctx_id, fid, 0, 0) in harness.engine.calls
    # the flow is no longer the app's: a second close is an error, with its id
    ctlproto.send_msg(s, ctlproto.encode_close(5, fid, 0, 0))
    rep = _next_json(s)
    assert rep["id"] == 5 and rep["errno"] == errno.EBADF
    # a malformed one gets an error reply, the app stays
    ctlproto.send_msg(s, ctlproto.BIN_CLOSE + b"\0" * 5)
    rep = _next_json(s)
    assert rep["id"] == -1 and rep["errno"] == errno.EINVAL
    ctlproto.send_msg(s, {"op": "stats", "id": 6})
    assert _next_json(s)["ok"]
    os.close(evfd)
    s.close()


def test_libtas_held_closes_go_out_together(harness):
    """Connection.close(flush=False) (the echo server's): held back until the
    context's next flush, then one message for all; a plain close() sends
    the held ones with its own; Stack.close() sends what is still held."""
    st = libtas.Stack(harness.state_dir)
    try:
        ctx = st.context()
        conns = [ctx.connect("198.18.0.1", ECHO_PORT, timeout=5) for _ in range(4)]
        requests = harness.call(lambda: harness.server.counters["requests"])

        def closes():
            return [c for c in harness.engine.calls if c[0] == "close"]

        conns[0].close(flush=False)
        conns[1].close(flush=False)
        assert st._closes and not harness.call(closes)
        ctx.flush()
        harness.until(lambda: len(closes()) == 2)
        conns[2].close(flush=False)
        conns[3].close()
        harness.until(lambda: len(closes()) == 4)
        assert [c[2] for c in harness.call(closes)] == [c.flow_id for c in conns]
        # 4 requests in 2 messages
        assert harness.call(lambda: harness.server.counters["requests"]) == requests + 4
        c5 = ctx.connect("198.18.0.1", ECHO_PORT, timeout=5)
        c5.close(flush=False)
    finally:
        st.close()
    harness.until(lambda: any(c[0] == "close" and c[2] == c5.flow_id for c in harness.engine.calls))


def test_a_big_pass_is_not_backlog(harness):
    """Thousands of events in one pass (a burst of handshakes) go out in full
    messages as they accumulate; they never count as the app being behind
    (which would drop the SYNs behind them)."""
    s = raw_connect(harness)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    ctx_id, evfd = _hello_ctx(s, binary=True)
    ctx = harness.server.contexts[ctx_id]
    n = ACCEPT_BACKPRESSURE + 100

    def burst():
        seen = []
        for fid in range(n):
            ctx.event({"ev": "closed", "flow": fid})
            seen.append(ctx.backlogged())
        return seen

    assert not any(harness.call(burst))
    got = []
    while len(got) < n:
        data, _ = ctlproto.recv_msg(s)
        evs = ctlproto.decode_events(data)
        assert len(evs) <= ctlproto.EV_BATCH_MAX
        got += [e["flow"] for e in evs]
    assert got == list(range(n))
    os.close(evfd)
    s.close()
