"""Unit tests for the KV server's sans-I/O parts: libtas/resp.py (parser fed
whole, one byte at a time and at every split point; fuzzed with hypothesis,
only typed errors), libtas/kvstore.py (command semantics, expiry with a fake
clock, memory limit) and libtas/kvserver.Session (pipelining, protocol
errors close the session, QUIT)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from libtas.kvserver import OUT_LIMIT, Session, SocketKVServer
from libtas.kvstore import KEY_OVERHEAD, QUIT, Commands, KVStore
from libtas.resp import Error, ProtocolError, ReplyParser, RequestParser, SimpleString, encode, encode_command

# -- parser ---------------------------------------------------------------------------------------

STREAM = (
    b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nva\r\nl\r\n"  # CRLF inside a bulk is data
    b"PING\r\n"
    b"\r\n"  # empty inline line: skipped
    b"*0\r\n"  # empty multibulk: skipped
    b"*2\r\n$3\r\nGET\r\n$0\r\n\r\n"
    b'set "a b" \'c d\' "\\x41\\n"\n'  # inline, LF only, quotes and escapes
    b"*1\r\n$4\r\n\x00\xff\r\n\r\n"  # binary
)
EXPECTED = [
    [b"SET", b"key", b"va\r\nl"],
    [b"PING"],
    [b"GET", b""],
    [b"set", b"a b", b"c d", b"A\n"],
    [b"\x00\xff\r\n"],
]


def parse_all(chunks) -> list[list[bytes]]:
    p = RequestParser()
    out = []
    for c in chunks:
        p.feed(c)
        out.extend(p)
    assert p.buffered == 0
    return out


def test_parser_whole():
    assert parse_all([STREAM]) == EXPECTED


def test_parser_one_byte_at_a_time():
    assert parse_all([STREAM[i : i + 1] for i in range(len(STREAM))]) == EXPECTED


def test_parser_every_split_point():
    for i in range(len(STREAM) + 1):
        assert parse_all([STREAM[:i], STREAM[i:]]) == EXPECTED, i


def test_parser_large_bulk_in_pieces():
    val = bytes(range(256)) * (16 << 10)  # 4 MiB
    data = encode_command("SET", "big", val)
    p = RequestParser()
    got = []
    for i in range(0, len(data), 1460):
        p.feed(data[i : i + 1460])
        got.extend(p)
        if i + 1460 < len(data):
            assert got == [] and p.pending_bulk in (0, len(val))
    assert got == [[b"SET", b"big", val]]


@pytest.mark.parametrize(
    "data, msg",
    [
        (b"*1\r\n$1073741824\r\n", "invalid bulk length"),  # 1 GiB declared
        (b"*1\r\n$-1\r\n", "invalid bulk length"),
        (b"*1\r\n$x\r\n", "invalid bulk length"),
        (b"*1\r\n$01\r\n", "invalid bulk length"),
        (b"*abc\r\n", "invalid multibulk length"),
        (b"*99999999\r\n", "invalid multibulk length"),
        (b"*1\r\n:1\r\n", "expected '$', got ':'"),
        (b"*1\r\n$3\r\nabcXY", "expected CRLF after bulk data"),
        (b'SET a "b\r\n', "unbalanced quotes in request"),
        (b'SET a "b"c\r\n', "unbalanced quotes in request"),
        (b"x" * (70 << 10), "too big inline request"),
        (b"*" + b"1" * (70 << 10), "too big mbulk count string"),
    ],
)
def test_parser_errors(data, msg):
    p = RequestParser()
    p.feed(data)
    with pytest.raises(ProtocolError) as ei:
        list(p)
    assert str(ei.value) == msg
    with pytest.raises(ProtocolError):  # poisoned: stays failed
        p.next()


def test_parser_max_bulk_limit():
    p = RequestParser(max_bulk=100)
    p.feed(b"*2\r\n$3\r\nGET\r\n$101\r\n")
    with pytest.raises(ProtocolError, match="invalid bulk length"):
        p.next()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=40), max_size=12))
def test_parser_fuzz_only_typed_errors(chunks):
    p = RequestParser(max_bulk=1 << 16, max_inline=256)
    try:
        for c in chunks:
            p.feed(c)
            for cmd in p:
                assert cmd and all(isinstance(a, bytes) for a in cmd)
    except ProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.lists(st.binary(max_size=30), min_size=1, max_size=5), min_size=1, max_size=6),
    st.integers(min_value=1, max_value=17),
)
def test_parser_roundtrip_any_chunking(cmds, step):
    data = b"".join(encode_command(*c) for c in cmds)
    assert parse_all([data[i : i + step] for i in range(0, len(data), step)]) == cmds


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=8))
def test_session_fuzz_never_crashes(chunks):
    s = Session(Commands(KVStore(max_memory=1 << 16)), max_bulk=1 << 12)
    for c in chunks:
        s.feed(c)
        s.process()
    # every reply is well-formed RESP
    rp = ReplyParser()
    rp.feed(bytes(s.out))
    list(rp)
    assert rp._pos == len(s.out)


# -- encoder / reply parser -----------------------------------------------------------------------


def test_encode_and_reply_parser_roundtrip():
    vals = [SimpleString("OK"), Error("ERR x"), 42, -7, b"bin\x00\r\n", None, [b"a", [1, None], []], b""]
    data = b"".join(encode(v) for v in vals)
    assert encode(b"ab") == b"$2\r\nab\r\n" and encode(None) == b"$-1\r\n" and encode(3) == b":3\r\n"
    assert encode([b"a", 1]) == b"*2\r\n$1\r\na\r\n:1\r\n"
    for i in range(len(data) + 1):  # every split point
        rp = ReplyParser()
        rp.feed(data[:i])
        got = list(rp)
        rp.feed(data[i:])
        got += list(rp)
        assert got == vals
    assert encode(Error("ERR a\r\nb")) == b"-ERR a  b\r\n"


# -- store / commands -----------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def kv():
    clock = FakeClock()
    cmds = Commands(KVStore(clock=clock))

    def run(*args):
        return cmds.execute([a if isinstance(a, bytes) else str(a).encode() for a in args])

    run.clock = clock
    run.cmds = cmds
    return run


def test_basic_commands(kv):
    assert kv("PING") == "PONG" and kv("ping", "hi") == b"hi" and kv("ECHO", b"\x00") == b"\x00"
    assert kv("SET", "a", b"1\x00") == "OK" and kv("GET", "a") == b"1\x00" and kv("GET", "zz") is None
    assert kv("EXISTS", "a", "a", "zz") == 2 and kv("STRLEN", "a") == 2 and kv("STRLEN", "zz") == 0
    assert kv("APPEND", "a", "xy") == 4 and kv("GET", "a") == b"1\x00xy"
    assert kv("MSET", "k1", "v1", "k2", "v2") == "OK" and kv("MGET", "k1", "nope", "k2") == [
        b"v1",
        None,
        b"v2",
    ]
    assert kv("DBSIZE") == 3 and kv("DEL", "k1", "k2", "nope") == 2 and kv("DBSIZE") == 1
    assert kv("FLUSHALL") == "OK" and kv("DBSIZE") == 0
    assert kv("QUIT") is QUIT
    assert kv("CONFIG", "GET", "save") == {b"save": b""}
    assert kv("CONFIG", "GET", "appendonly") == {b"appendonly": b"no"}
    assert kv("CONFIG", "GET", "nonexistent") == {}
    assert kv("HELLO", "4") == "NOPROTO unsupported protocol version"
    assert kv("HELLO", "3").proto == 3 and kv("HELLO", "3").info[b"proto"] == 3
    assert kv("HELLO", "2").info[b"proto"] == 2 and kv("HELLO").proto == 2
    assert b"# Memory" in kv("INFO") and b"redis_version" in kv("INFO", "server")


def test_errors(kv):
    r = kv("LPUSH", "mylist", "x")
    assert isinstance(r, Error) and r.startswith("ERR unknown command 'LPUSH'")
    assert kv("GET") == "ERR wrong number of arguments for 'get' command"
    assert kv("MSET", "a") == "ERR wrong number of arguments for 'mset' command"
    assert kv("MSET", "a", "1", "b") == "ERR wrong number of arguments for 'mset' command"
    assert kv("SET", "a", "1", "BOGUS") == "ERR syntax error"
    assert kv("SET", "a", "1", "NX", "XX") == "ERR syntax error"
    assert kv("SET", "a", "1", "EX", "0") == "ERR invalid expire time in 'set' command"
    assert kv("SET", "a", "1", "EX", "x") == "ERR value is not an integer or out of range"
    assert kv("SET", "a", "1", "EX") == "ERR syntax error"


def test_incr_family(kv):
    assert kv("INCR", "n") == 1 and kv("INCRBY", "n", 10) == 11 and kv("DECR", "n") == 10
    assert kv("DECRBY", "n", 20) == -10 and kv("GET", "n") == b"-10"
    kv("SET", "s", "abc")
    assert kv("INCR", "s") == "ERR value is not an integer or out of range"
    assert kv("INCRBY", "n", "1.5") == "ERR value is not an integer or out of range"
    kv("SET", "big", str((1 << 63) - 1))
    assert kv("INCR", "big") == "ERR increment or decrement would overflow"
    kv("SET", "sp", " 1")
    assert isinstance(kv("INCR", "sp"), Error)


def test_set_nx_xx(kv):
    assert kv("SET", "a", "1", "XX") is None and kv("GET", "a") is None
    assert kv("SET", "a", "1", "NX") == "OK"
    assert kv("SET", "a", "2", "NX") is None and kv("GET", "a") == b"1"
    assert kv("SET", "a", "3", "XX") == "OK" and kv("GET", "a") == b"3"
    assert kv("SET", "a", "4", "GET") == b"3"


def test_expiry_with_fake_clock(kv):
    c = kv.clock
    assert kv("SET", "a", "1", "EX", 10) == "OK" and kv("TTL", "a") == 10 and kv("PTTL", "a") == 10000
    c.t += 9999
    assert kv("GET", "a") == b"1" and kv("PTTL", "a") == 1
    c.t += 1
    assert kv("GET", "a") is None and kv("TTL", "a") == -2 and kv("EXISTS", "a") == 0
    assert kv("SET", "b", "1", "PX", 50) == "OK"
    c.t += 49
    assert kv("EXISTS", "b") == 1
    c.t += 1
    assert kv("EXISTS", "b") == 0
    # EXPIRE / TTL / plain SET clears the TTL, INCR keeps it
    kv("SET", "c", "5")
    assert kv("TTL", "c") == -1 and kv("EXPIRE", "c", 5) == 1 and kv("TTL", "c") == 5
    assert kv("INCR", "c") == 6 and kv("TTL", "c") == 5
    kv("SET", "c", "7")
    assert kv("TTL", "c") == -1
    assert kv("EXPIRE", "nope", 5) == 0
    assert kv("EXPIRE", "c", -1) == 1 and kv("EXISTS", "c") == 0  # non-positive: deleted at once
    # NX on an expired key succeeds; KEEPTTL keeps it
    kv("SET", "d", "1", "PX", 10)
    c.t += 10
    assert kv("SET", "d", "2", "NX") == "OK"
    kv("SET", "e", "1", "EX", 100)
    kv("SET", "e", "2", "KEEPTTL")
    assert kv("TTL", "e") == 100
    # active sweep removes expired keys without access
    for i in range(30):
        kv("SET", f"x{i}", "v", "PX", 5)
    c.t += 5
    store = kv.cmds.store
    assert store.sweep(20) == 20 and store.sweep(20) == 10
    assert kv("DBSIZE") == 2


def test_max_memory():
    store = KVStore(max_memory=1000)
    cmds = Commands(store)
    assert cmds.execute([b"SET", b"a", b"x" * 500]) == "OK"
    r = cmds.execute([b"SET", b"b", b"x" * 500])
    assert isinstance(r, Error) and r.startswith("OOM")
    assert cmds.execute([b"SET", b"a", b"y" * 800]) == "OK"  # replacing frees the old value first
    assert store.used == 1 + 800 + KEY_OVERHEAD
    assert cmds.execute([b"APPEND", b"a", b"z" * 200]).startswith("OOM")
    assert cmds.execute([b"MSET", b"p", b"1", b"q", b"x" * 300]).startswith("OOM")
    assert cmds.execute([b"EXISTS", b"p"]) == 0  # MSET is all or nothing
    assert cmds.execute([b"DEL", b"a"]) == 1 and store.used == 0
    assert cmds.execute([b"SET", b"b", b"x" * 500]) == "OK"


# -- session ------------------------------------------------------------------------------------


def replies(out: bytes) -> list:
    rp = ReplyParser()
    rp.feed(out)
    return list(rp)


def test_session_pipelining_and_quit():
    s = Session(Commands(KVStore()))
    s.feed(b"PING\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\nGET k\r\nQUIT\r\nPING\r\n")
    s.process()
    assert replies(bytes(s.out)) == ["PONG", "OK", b"v", "OK"]
    assert s.closing  # the PING after QUIT is not answered


def test_session_protocol_error_closes_after_reply():
    s = Session(Commands(KVStore()))
    s.feed(b"PING\r\n*1\r\n$1073741824\r\nPING\r\n")
    s.process()
    assert replies(bytes(s.out)) == ["PONG", "ERR Protocol error: invalid bulk length"]
    assert s.closing


def test_session_output_limit_stops_parsing():
    s = Session(Commands(KVStore()))
    s.cmds.execute([b"SET", b"k", b"x" * (256 << 10)])
    s.feed(b"GET k\r\n" * 10)
    s.process()
    assert len(s.out) >= OUT_LIMIT and s.parser.buffered > 0 and s.blocked
    total = len(replies(bytes(s.out)))
    for _ in range(5):
        s.out.clear()
        s.process()
        total += len(replies(bytes(s.out)))
    assert total == 10 and s.parser.buffered == 0


def test_socket_server_roundtrip_loopback():
    """The Linux-socket variant in-process on loopback: pipelining and a protocol error."""
    import socket
    import threading

    srv = SocketKVServer(0, bind="127.0.0.1")
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as c:
            c.sendall(encode_command("SET", "k", b"\x00" * 100000) + b"GET k\r\n" + b"*1\r\n$-5\r\n")
            rp = ReplyParser()
            got = []
            while len(got) < 3:
                data = c.recv(65536)
                assert data, f"closed early after {got!r}"
                rp.feed(data)
                got += list(rp)
            assert got == ["OK", b"\x00" * 100000, "ERR Protocol error: invalid bulk length"]
            assert c.recv(10) == b""  # then the server closes
    finally:
        srv.stopping.set()
        t.join(5)
        srv.close()


def test_resp3_after_hello_3():
    """redis-py >= 8 opens connections with HELLO 3: maps and RESP3 nulls after it."""
    from libtas.kvserver import Session

    sess = Session(Commands(KVStore(clock=FakeClock())))
    sess.feed(b"GET nokey\r\nCONFIG GET save\r\n")
    sess.process()
    assert bytes(sess.out) == b"$-1\r\n*2\r\n$4\r\nsave\r\n$0\r\n\r\n"
    sess.out.clear()
    sess.feed(b"HELLO 3\r\nGET nokey\r\nCONFIG GET save\r\nMGET a b\r\n")
    sess.process()
    out = bytes(sess.out)
    assert out.startswith(b"%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n")
    assert out.endswith(b"_\r\n%1\r\n$4\r\nsave\r\n$0\r\n\r\n*2\r\n_\r\n_\r\n")
