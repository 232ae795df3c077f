"""RESP2 (the Redis protocol), sans-I/O: an incremental request parser, a
reply encoder and an incremental reply parser (for clients and tests).

Nothing here does I/O or reads a clock: feed bytes in, take commands or
replies out.  The same code runs behind the native API (libtas/kvserver.py)
and behind plain Linux sockets.

Requests come in two forms, exactly as Redis accepts them:

* multi-bulk: ``*<n>\\r\\n`` then n times ``$<len>\\r\\n<len bytes>\\r\\n``;
* inline: one line of space-separated words (double quotes with C-like
  escapes and single quotes, as Redis' ``sdssplitargs``), ended by ``\\n``
  (an optional ``\\r`` before it is dropped).

Malformed input raises :class:`ProtocolError` (and only that); its message
is what Redis would say after ``-ERR Protocol error: ``.  A parser that
raised is poisoned: the connection must be answered and closed, since the
byte stream cannot be resynchronised (Redis does the same).
"""

from __future__ import annotations

__all__ = [
    "ProtocolError",
    "RespError",
    "SimpleString",
    "Error",
    "RequestParser",
    "ReplyParser",
    "encode",
    "encode_command",
    "OK",
    "PONG",
    "NULL_BULK",
    "MAX_BULK",
    "MAX_MULTIBULK",
    "MAX_INLINE",
]

MAX_BULK = 512 << 20  # Redis proto-max-bulk-len default
MAX_MULTIBULK = 1024 * 1024  # Redis: "invalid multibulk length" above this
MAX_INLINE = 64 << 10  # Redis PROTO_INLINE_MAX_SIZE: longest inline request / header line
_COMPACT = 64 << 10  # drop consumed bytes from the buffer once this many pile up


class RespError(Exception):
    """Base of every error this module raises."""


class ProtocolError(RespError):
    """Malformed RESP input.  str(e) is the text after 'Protocol error: '."""


class SimpleString(str):
    """A reply encoded as ``+text\\r\\n`` (no CR/LF inside)."""


class Error(str):
    """A reply encoded as ``-text\\r\\n``; by convention it starts with a code (ERR, WRONGTYPE, OOM)."""


OK = b"+OK\r\n"
PONG = b"+PONG\r\n"
NULL_BULK = b"$-1\r\n"


# -- encoding -------------------------------------------------------------------------------------


class Map(dict):
    """A reply that is a map: RESP3 `%`, a flat key/value array in RESP2."""


class Hello:
    """HELLO's reply: switches the connection to `proto` (2 or 3), then
    answers with `info` in that protocol."""

    __slots__ = ("proto", "info")

    def __init__(self, proto: int, info: Map) -> None:
        self.proto = proto
        self.info = info


def _encode_into(out: list, v, proto: int = 2) -> None:
    if isinstance(v, (bytes, bytearray, memoryview)):
        out.append(b"$%d\r\n" % len(v))
        out.append(bytes(v))
        out.append(b"\r\n")
    elif v is None:
        out.append(b"_\r\n" if proto == 3 else NULL_BULK)
    elif isinstance(v, Map):
        if proto == 3:
            out.append(b"%%%d\r\n" % len(v))
        else:
            out.append(b"*%d\r\n" % (2 * len(v)))
        for k, x in v.items():
            _encode_into(out, k, proto)
            _encode_into(out, x, proto)
    elif isinstance(v, bool):
        raise TypeError("RESP has no booleans: use 0/1")
    elif isinstance(v, int):
        out.append(b":%d\r\n" % v)
    elif isinstance(v, Error):
        out.append(b"-" + _line(v) + b"\r\n")
    elif isinstance(v, SimpleString):
        out.append(b"+" + _line(v) + b"\r\n")
    elif isinstance(v, str):
        _encode_into(out, v.encode())
    elif isinstance(v, (list, tuple)):
        out.append(b"*%d\r\n" % len(v))
        for x in v:
            _encode_into(out, x, proto)
    else:
        raise TypeError(f"cannot encode {type(v).__name__} as RESP")


def _line(s: str) -> bytes:
    # simple strings and errors must not contain CR/LF: replace them like Redis does
    return s.replace("\r", " ").replace("\n", " ").encode()


def encode(value, proto: int = 2) -> bytes:
    """A reply in RESP2 (default) or RESP3: bytes/str -> bulk string, None ->
    null (`$-1` / `_`), int -> integer, SimpleString -> +, Error -> -,
    list/tuple -> array (nested), Map -> flat array / `%` map."""
    out: list[bytes] = []
    _encode_into(out, value, proto)
    return b"".join(out)


def encode_command(*args) -> bytes:
    """A request in multi-bulk form; args are bytes, str or int."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, int) and not isinstance(a, bool):
            a = b"%d" % a
        elif isinstance(a, str):
            a = a.encode()
        out.append(b"$%d\r\n" % len(a))
        out.append(bytes(a))
        out.append(b"\r\n")
    return b"".join(out)


# -- inline argument splitting (Redis sdssplitargs) -----------------------------------------------

_ESC = {ord("n"): 10, ord("r"): 13, ord("t"): 9, ord("b"): 8, ord("a"): 7}
_HEX = b"0123456789abcdefABCDEF"
_SPACE = b" \t\r\n\v\f\x00"


def split_inline(line: bytes) -> list[bytes]:
    """Split an inline request like Redis: words, "double quoted" with
    \\xHH \\n \\r \\t \\b \\a escapes, 'single quoted' with \\'.  A closing quote
    must be followed by a space or the end.  ProtocolError('unbalanced
    quotes in request') otherwise."""
    args: list[bytes] = []
    i, n = 0, len(line)
    while True:
        while i < n and line[i] in _SPACE:
            i += 1
        if i >= n:
            return args
        cur = bytearray()
        inq = insq = False
        while True:
            if inq:
                if i >= n:
                    raise ProtocolError("unbalanced quotes in request")
                c = line[i]
                if (
                    c == 0x5C
                    and i + 3 < n
                    and line[i + 1] == ord("x")
                    and line[i + 2] in _HEX
                    and line[i + 3] in _HEX
                ):
                    cur.append(int(line[i + 2 : i + 4], 16))
                    i += 3
                elif c == 0x5C and i + 1 < n:
                    i += 1
                    cur.append(_ESC.get(line[i], line[i]))
                elif c == ord('"'):
                    if i + 1 < n and line[i + 1] not in _SPACE:
                        raise ProtocolError("unbalanced quotes in request")
                    inq = False
                    i += 1
                    break
                else:
                    cur.append(c)
            elif insq:
                if i >= n:
                    raise ProtocolError("unbalanced quotes in request")
                c = line[i]
                if c == 0x5C and i + 1 < n and line[i + 1] == ord("'"):
                    i += 1
                    cur.append(ord("'"))
                elif c == ord("'"):
                    if i + 1 < n and line[i + 1] not in _SPACE:
                        raise ProtocolError("unbalanced quotes in request")
                    insq = False
                    i += 1
                    break
                else:
                    cur.append(c)
            else:
                if i >= n:
                    break
                c = line[i]
                if c in _SPACE:
                    break
                if c == ord('"'):
                    inq = True
                elif c == ord("'"):
                    insq = True
                else:
                    cur.append(c)
            i += 1
        args.append(bytes(cur))


# -- request parser -------------------------------------------------------------------------------


class RequestParser:
    """Incremental RESP2 request parser.

    ``feed(data)`` appends bytes; ``next()`` returns the next complete
    command as a list of bytes (never empty), or None when more input is
    needed.  Empty inline lines and ``*0``/``*-1`` headers are skipped, as
    Redis does.  A bulk string is only copied out once it is complete, and
    headers are parsed once, so a large value arriving in many pieces costs
    linear time.

    ``max_bulk`` bounds a single argument (Redis: 512 MiB; a server with a
    memory limit passes less), ``max_args`` the arguments per command,
    ``max_inline`` an inline request or a header line.
    """

    def __init__(
        self, max_bulk: int = MAX_BULK, max_args: int = MAX_MULTIBULK, max_inline: int = MAX_INLINE
    ) -> None:
        self.max_bulk = max_bulk
        self.max_args = max_args
        self.max_inline = max_inline
        self._buf = bytearray()
        self._pos = 0
        self._args: list[bytes] | None = None  # multi-bulk in progress
        self._left = 0  # arguments still expected
        self._bulk = -1  # length of the bulk being read, -1 = header next
        self._error: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet consumed by a complete command."""
        return len(self._buf) - self._pos

    @property
    def pending_bulk(self) -> int:
        """Declared length of a bulk argument still arriving (else 0)."""
        return max(0, self._bulk)

    def feed(self, data) -> None:
        if self._error is not None:
            return
        if self._pos >= _COMPACT and self._pos * 2 >= len(self._buf):
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def __iter__(self):
        while (cmd := self.next()) is not None:
            yield cmd

    def _fail(self, msg: str):
        self._error = ProtocolError(msg)
        self._buf = bytearray()
        self._pos = 0
        raise self._error

    def _readline(self, what: str) -> bytes | None:
        """The next CRLF-terminated header line (without CRLF), or None."""
        buf, pos = self._buf, self._pos
        end = buf.find(b"\r\n", pos, pos + self.max_inline + 2)
        if end < 0:
            if len(buf) - pos > self.max_inline:
                self._fail(f"too big {what} count string")
            return None
        line = bytes(buf[pos + 1 : end])
        self._pos = end + 2
        return line

    def next(self) -> list[bytes] | None:
        if self._error is not None:
            raise self._error
        while True:
            if self._args is None:
                if self._pos >= len(self._buf):
                    return None
                if self._buf[self._pos] != ord("*"):
                    cmd = self._inline()
                    if cmd is None:
                        return None
                    if cmd:
                        return cmd
                    continue  # empty line
                line = self._readline("mbulk")
                if line is None:
                    return None
                n = _parse_int(line)
                if n is None or n > self.max_args:
                    self._fail("invalid multibulk length")
                if n <= 0:
                    continue
                self._args, self._left, self._bulk = [], n, -1
            # reading the arguments of a multi-bulk request
            while self._left:
                buf = self._buf
                if self._bulk < 0:
                    if self._pos >= len(buf):
                        return None
                    if buf[self._pos] != ord("$"):
                        c = chr(buf[self._pos])
                        self._fail(f"expected '$', got '{c if c.isprintable() else '?'}'")
                    line = self._readline("bulk")
                    if line is None:
                        return None
                    n = _parse_int(line)
                    if n is None or n < 0 or n > self.max_bulk:
                        self._fail("invalid bulk length")
                    self._bulk = n
                end = self._pos + self._bulk
                if len(buf) < end + 2:
                    return None
                if buf[end : end + 2] != b"\r\n":
                    self._fail("expected CRLF after bulk data")
                self._args.append(bytes(buf[self._pos : end]))
                self._pos = end + 2
                self._bulk = -1
                self._left -= 1
            cmd, self._args = self._args, None
            return cmd

    def _inline(self) -> list[bytes] | None:
        buf, pos = self._buf, self._pos
        end = buf.find(b"\n", pos, pos + self.max_inline + 1)
        if end < 0:
            if len(buf) - pos > self.max_inline:
                self._fail("too big inline request")
            return None
        line = bytes(buf[pos:end])
        self._pos = end + 1
        if line.endswith(b"\r"):
            line = line[:-1]
        try:
            return split_inline(line)
        except ProtocolError as e:
            self._fail(str(e))


def _parse_int(line: bytes) -> int | None:
    """Strict decimal (optional '-'), as Redis' string2ll: no spaces, no '+'."""
    if not line or len(line) > 20:
        return None
    body = line[1:] if line[:1] == b"-" else line
    if not body.isdigit() or (len(body) > 1 and body[:1] == b"0"):
        return None
    return int(line)


# -- reply parser (client side) -------------------------------------------------------------------


class ReplyParser:
    """Incremental RESP2 reply parser for clients: ``feed(data)``, then
    ``next()`` returns the next complete reply or the ``NEED`` sentinel.

    Decoded as: simple string -> SimpleString, error -> Error, integer ->
    int, bulk -> bytes (None for null), array -> list (None for null)."""

    NEED = object()

    def __init__(self, max_bulk: int = MAX_BULK) -> None:
        self.max_bulk = max_bulk
        self._buf = bytearray()
        self._pos = 0

    def feed(self, data) -> None:
        if self._pos >= _COMPACT and self._pos * 2 >= len(self._buf):
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def next(self):
        r = self._parse(self._pos, 0)
        if r is None:
            return self.NEED
        value, self._pos = r
        return value

    def __iter__(self):
        while (v := self.next()) is not self.NEED:
            yield v

    def _parse(self, pos: int, depth: int):
        buf = self._buf
        if depth > 64:
            raise ProtocolError("reply nested too deeply")
        end = buf.find(b"\r\n", pos)
        if end < 0:
            if len(buf) - pos > MAX_INLINE:
                raise ProtocolError("reply line too long")
            return None
        t, line, nxt = buf[pos : pos + 1], bytes(buf[pos + 1 : end]), end + 2
        if t == b"+":
            return SimpleString(line.decode(errors="replace")), nxt
        if t == b"-":
            return Error(line.decode(errors="replace")), nxt
        n = _parse_int(line)
        if t == b":":
            if n is None:
                raise ProtocolError(f"bad integer reply {line!r}")
            return n, nxt
        if t == b"$":
            if n is None or n < -1 or n > self.max_bulk:
                raise ProtocolError(f"bad bulk length {line!r}")
            if n == -1:
                return None, nxt
            if len(buf) < nxt + n + 2:
                return None
            if buf[nxt + n : nxt + n + 2] != b"\r\n":
                raise ProtocolError("bulk reply not followed by CRLF")
            return bytes(buf[nxt : nxt + n]), nxt + n + 2
        if t == b"*":
            if n is None or n < -1 or n > MAX_MULTIBULK:
                raise ProtocolError(f"bad array length {line!r}")
            if n == -1:
                return None, nxt
            items = []
            for _ in range(n):
                r = self._parse(nxt, depth + 1)
                if r is None:
                    return None
                v, nxt = r
                items.append(v)
            return items, nxt
        raise ProtocolError(f"unknown reply type {bytes(t)!r}")
