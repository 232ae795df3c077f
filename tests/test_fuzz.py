"""Parsers under fuzzing (issue 8), bounded for CI (hypothesis; raise
TAS_FUZZ_EXAMPLES for a longer run, e.g. ``TAS_FUZZ_EXAMPLES=20000 pytest
tests/test_fuzz.py``):

* the packet parser/validator: C (nicemu/csrc/wire.c) and its twin
  (nicemu/wire.py) agree on mutations of valid frames (flipped bytes,
  truncation, garbage tails, with and without fixed-up checksums), reading
  nothing past the frame (guard page);
* the same mutated frames thrown at a live stack from the Linux peer's
  namespace: the fast and slow path survive, drops are counted, a transfer
  afterwards is intact;
* the control-socket decoder (flextcp/ctlproto.py) on random and mutated
  requests and replies: a Request or ProtocolError, nothing else; and a
  live control socket fed the same stays up and keeps serving;
* the RESP parser (libtas/resp.py): random bytes in random pieces give
  commands or ProtocolError; encoded commands and replies round-trip
  however the bytes are split.

A crash found here becomes a directed regression test below the fuzzers.
"""

from __future__ import annotations

import json
import os
import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flextcp import ctlproto
from flextcp.ctlproto import ProtocolError

N = int(os.environ.get("TAS_FUZZ_EXAMPLES", "250"))
FUZZ = settings(max_examples=N, deadline=None, database=None, suppress_health_check=list(HealthCheck))
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, TAP)")

# ------------------------------------------------------------------ frames


def _corpus() -> list[bytes]:
    from scapy.all import ARP, ICMP, IP, TCP, Ether, Raw

    eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    ip = IP(src="198.18.0.1", dst="198.18.0.2")
    opts = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 0)), ("NOP", None), ("WScale", 7)]
    return [bytes(f) for f in (
        eth / ip / TCP(sport=40000, dport=7000, flags="S", seq=1, options=opts),
        eth / ip / TCP(sport=40000, dport=7000, flags="A", seq=2, ack=5,
                       options=[("Timestamp", (5, 9)), ("SAck", (10, 20, 30, 40))]) / Raw(b"x" * 100),
        eth / ip / TCP(sport=40000, dport=7000, flags="FA", seq=2, ack=5),
        eth / ip / TCP(sport=40000, dport=7000, flags="R", seq=2),
        eth / ip / ICMP(type=8, id=1, seq=1) / Raw(b"ping"),
        Ether(src="02:00:00:00:00:01", dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, psrc="198.18.0.1", pdst="198.18.0.2"),
    )]


CORPUS: list[bytes] = []


def corpus() -> list[bytes]:
    if not CORPUS:
        CORPUS.extend(_corpus())
    return CORPUS


@st.composite
def mutated_frames(draw) -> bytes:
    base = bytearray(corpus()[draw(st.integers(0, len(corpus()) - 1))])
    for _ in range(draw(st.integers(0, 8))):
        pos = draw(st.integers(0, len(base) - 1))
        base[pos] = draw(st.integers(0, 255))
    for _ in range(draw(st.integers(0, 2))):  # IP/TCP header fields that steer the parser
        pos = draw(st.sampled_from([14, 16, 17, 20, 23, 46, 47, 54, 55, 56, 57, 58, 59]))
        if pos < len(base):
            base[pos] = draw(st.sampled_from([0, 1, 5, 0x0F, 0x45, 0x50, 0xF0, 0xFF]))
    cut = draw(st.one_of(st.just(len(base)), st.integers(0, len(base))))
    out = bytes(base[:cut]) + draw(st.binary(max_size=16))
    if draw(st.booleans()):
        from test_wire import fix_csums

        out = fix_csums(out)
    return out[:1514]


@FUZZ
@given(mutated_frames())
def test_fuzz_packet_parser_c_and_twin_agree(frame):
    from test_wire import assert_same_parse

    assert_same_parse(frame)


# ------------------------------------------------------------ control decoder

OPS = ["hello", "ctx_create", "ctx_close", "listen", "listen_close", "connect", "shutdown", "close",
       "abort", "stats", "flows", "nope", ""]
FIELDS = ["op", "id", "abi", "ctx", "port", "backlog", "reuseaddr", "ip", "local_port", "rx_buf", "tx_buf",
          "flow", "tx_head", "rx_tail", "listener", "x"]
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(1 << 70), 1 << 70), st.floats(allow_nan=False),
                      st.text(max_size=20), st.sampled_from(OPS), st.just("198.18.0.1"))
json_val = st.recursive(json_leaf, lambda c: st.one_of(st.lists(c, max_size=4),
                                                       st.dictionaries(st.text(max_size=8), c, max_size=4)),
                        max_leaves=8)
requests = st.one_of(
    st.dictionaries(st.sampled_from(FIELDS), json_val, max_size=8),
    st.builds(lambda op, i, extra: {"op": op, "id": i, **extra}, st.sampled_from(OPS),
              st.one_of(st.integers(0, 1 << 63), json_leaf),
              st.dictionaries(st.sampled_from(FIELDS[2:]), st.one_of(st.integers(-5, 1 << 40), json_leaf),
                              max_size=6)),
)
raw_msgs = st.one_of(
    requests.map(lambda d: json.dumps(d).encode()),
    st.binary(max_size=200),
    requests.map(lambda d: json.dumps(d).encode()).flatmap(
        lambda b: st.integers(0, len(b)).map(lambda k: b[:k])),  # truncated JSON
    st.sampled_from([b"{}", b"[]", b"null", b'{"id": 1e999}', b'{"id": NaN}', b'{"op": "hello", "id": -1}',
                     b"\xff\xfe", b'{"op":"hello","id":1,"abi":1,"abi":2}', b"{" * 5000]),
)


@FUZZ
@given(raw_msgs, st.integers(0, 3))
def test_fuzz_control_decoder_only_protocol_errors(data, nfds):
    try:
        req = ctlproto.parse_request(data, nfds)
    except ProtocolError as e:
        assert isinstance(e.errno, int) and e.errno > 0
    else:
        assert req.op in OPS
        assert isinstance(req.id, int) and 0 <= req.id < 1 << 63
    # the app side: replies and events from a (hostile) stack
    try:
        msg = ctlproto.parse_message(data)
    except ProtocolError:
        return
    for op in OPS[:11]:
        try:
            ctlproto.check_reply(op, msg)
        except ProtocolError:
            pass


# ------------------------------------------------------------------ RESP

resp = pytest.importorskip("libtas.resp")  # written by someone else; skipped while absent


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    cuts = sorted({c % (len(data) + 1) for c in cuts})
    out, prev = [], 0
    for c in cuts:
        out.append(data[prev:c])
        prev = c
    out.append(data[prev:])
    return out


@FUZZ
@given(st.one_of(st.binary(max_size=300),
                 st.lists(st.binary(max_size=20), min_size=1, max_size=5).map(lambda a: resp.encode_command(*a))
                 .flatmap(lambda b: st.binary(max_size=8).map(lambda junk: b + junk))),
       st.lists(st.integers(0, 400), max_size=6))
def test_fuzz_resp_request_parser(data, cuts):
    p = resp.RequestParser(max_bulk=1 << 16, max_args=64, max_inline=1 << 12)
    try:
        for piece in _chunks(data, cuts):
            p.feed(piece)
            for cmd in p:
                assert isinstance(cmd, list) and cmd and all(isinstance(a, bytes) for a in cmd)
    except resp.RespError:
        pass


@FUZZ
@given(st.lists(st.lists(st.binary(max_size=40), min_size=1, max_size=6), min_size=1, max_size=4),
       st.lists(st.integers(0, 2000), max_size=8))
def test_fuzz_resp_commands_round_trip_in_any_pieces(cmds, cuts):
    data = b"".join(resp.encode_command(*c) for c in cmds)
    p = resp.RequestParser()
    got = []
    for piece in _chunks(data, cuts):
        p.feed(piece)
        got.extend(p)
    assert got == cmds


reply_vals = st.recursive(
    st.one_of(st.none(), st.integers(-(1 << 62), 1 << 62), st.binary(max_size=30)),
    lambda c: st.lists(c, max_size=4), max_leaves=10)


@FUZZ
@given(st.lists(reply_vals, min_size=1, max_size=3), st.lists(st.integers(0, 500), max_size=6),
       st.binary(max_size=40))
def test_fuzz_resp_reply_parser(vals, cuts, junk):
    data = b"".join(resp.encode(v) for v in vals)
    p = resp.ReplyParser()
    got = []
    for piece in _chunks(data, cuts):
        p.feed(piece)
        got.extend(p)
    assert got == vals
    p2 = resp.ReplyParser()
    try:
        p2.feed(junk)
        list(p2)
    except resp.RespError:
        pass


# ------------------------------------------------------- live stack, fuzzed


@root_only
@pytest.mark.interop
def test_fuzz_live_stack_frames_and_control_socket():
    """Mutated frames from the peer namespace and garbage on the control
    socket against one running stack: nothing crashes or restarts, drops and
    bad requests are counted, and afterwards a transfer is intact and a
    regular app registers as usual."""
    from test_faults_util import FaultStack, check_transfer, wait_for
    from test_wire import fix_csums

    with FaultStack() as fs:
        fp = fs.fp_pids()[0]
        lst = fs.tas_app("fuzz-listener", listen=7000, script="recv_eof,close", timeout=120, ready="listening")
        mac = fs.log().split(" mac ")[1].split()[0]
        dst = bytes.fromhex(mac.replace(":", ""))
        with fs.topo.enter(fs.topo.peer_ns):
            raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        raw.bind((fs.topo.peer_veth, 0))
        src = raw.getsockname()[4][:6]
        sent = {"n": 0}

        @settings(max_examples=N, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(mutated_frames(), st.booleans())
        def frames(frame, fix):
            if len(frame) < 14:
                frame = frame + bytes(14 - len(frame))
            f = bytearray(dst + src + frame[12:])
            if fix:
                f = bytearray(fix_csums(bytes(f)))
            raw.send(bytes(f))
            sent["n"] += 1

        frames()
        raw.close()

        ctl_ok = {"n": 0}
        path = str(fs.state_dir / "control.sock")

        @settings(max_examples=N // 2, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(st.lists(raw_msgs, min_size=1, max_size=6), st.booleans())
        def control(msgs, hello_first):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            s.settimeout(5)
            s.connect(path)
            try:
                if hello_first:
                    s.send(json.dumps({"op": "hello", "id": 1, "abi": 1}).encode())
                    for fd in socket.recv_fds(s, 65536, 16)[1]:  # the reply carries doorbell fds
                        os.close(fd)
                for m in msgs:
                    try:
                        s.send(m)
                    except OSError:
                        break
                    data, fds, _, _ = socket.recv_fds(s, 65536, 16)
                    for fd in fds:
                        os.close(fd)
                    if not data:
                        break
                    rep = json.loads(data)
                    assert "id" in rep and ("ok" in rep or "ev" in rep)
                    ctl_ok["n"] += 1
            finally:
                s.close()

        control()
        assert fs.proc.poll() is None, fs.log()[-3000:]
        st_ = fs.stats()
        assert os.path.exists(f"/proc/{fp}") and st_["control"]["fp_restarts"] == 0
        assert sum(st_["drops"].values()) > 0
        assert st_["control"]["bad_requests"] + st_["control"]["errors"] > 0
        assert st_["slowpath"]["exceptions"] > 0  # punted frames reached the slow path's parser
        cli = fs.linux_peer("client", 7000, script="send,close", send_bytes=4 << 20, seed=81, timeout=60)
        check_transfer(cli.result(60), lst.result(60), 4 << 20, 81)
        wait_for(lambda: fs.stats()["control"]["contexts"] == 0, 10, "contexts released")
        print(f"\nfuzz: {sent['n']} frames, {ctl_ok['n']} control replies, drops {st_['drops']}")
        assert fs.stop() == 0


# ------------------------------------------------------- regressions found

def test_regression_control_decoder_deep_nesting():
    """Deeply nested JSON must be a ProtocolError, not a RecursionError."""
    with pytest.raises(ProtocolError):
        ctlproto.parse_request(b"[" * 100000 + b"]" * 100000)
    with pytest.raises(ProtocolError):
        ctlproto.parse_request(b'{"op": "hello", "id": 1, "abi": ' + b"[" * 50000 + b"]" * 50000 + b"}")


def test_regression_resp_huge_bulk_header_is_refused_without_allocating():
    p = resp.RequestParser(max_bulk=1 << 20)
    p.feed(b"*1\r\n$99999999999999999999\r\n")
    with pytest.raises(resp.RespError):
        list(p)

