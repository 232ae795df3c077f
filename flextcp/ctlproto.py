"""Control protocol codec (docs/CONTROL.md), shared by the slow path and libtas.

Messages are single UTF-8 JSON objects (at most :data:`MAX_MSG` bytes) sent
as one packet each on a Unix ``SOCK_SEQPACKET`` socket; file descriptors
travel with ``SCM_RIGHTS``.

* :func:`parse_request` is the slow path's strict decoder: unknown ``op``,
  missing, unknown or wrongly-typed fields and out-of-range values raise
  :class:`ProtocolError` (carrying the request id when it could be read and
  an errno, EINVAL unless said otherwise), which the server turns into an
  error reply.
* :func:`parse_message` / :func:`check_reply` are libtas's decoders for
  replies and events (required fields typed; extra fields tolerated).
* :func:`send_msg` / :func:`recv_msg` move one message plus fds.
"""

from __future__ import annotations

import array
import errno as _errno
import functools
import ipaddress
import json
import os
import socket
import struct
from dataclasses import asdict, dataclass, fields
from typing import Any

__all__ = [
    "MAX_MSG",
    "MAX_FDS",
    "ProtocolError",
    "FlowInfo",
    "Request",
    "REQUESTS",
    "REQUEST_FDS",
    "EVENTS",
    "REPLIES",
    "encode",
    "decode",
    "parse_request",
    "parse_message",
    "check_reply",
    "reply",
    "error_reply",
    "send_msg",
    "recv_msg",
    "BIN_EVENTS",
    "encode_event",
    "decode_events",
    "decode_events_raw",
    "record_flowinfo",
    "event_record",
    "BIN_CLOSE",
    "encode_close",
    "parse_closes",
]

MAX_MSG = 64 * 1024
MAX_FDS = 16
U64 = (0, (1 << 64) - 1)
U32 = (0, (1 << 32) - 1)
U16 = (0, (1 << 16) - 1)
PORT = U16
ID = (0, (1 << 63) - 1)


class ProtocolError(Exception):
    """A malformed message.  ``req_id`` is the request id if it could be
    read (else None), ``errno`` the errno for the error reply."""

    def __init__(self, message: str, req_id: int | None = None, errno: int = _errno.EINVAL) -> None:
        super().__init__(message)
        self.req_id = req_id
        self.errno = errno


# --------------------------------------------------------------------------
# Field validation


class _F:
    """Spec of one field: type, optional [lo, hi] range, required/default."""

    __slots__ = ("typ", "rng", "required", "default")

    def __init__(self, typ: type, rng: tuple[int, int] | None = None, *, default: Any = ...) -> None:
        self.typ = typ
        self.rng = rng
        self.required = default is ...
        self.default = default


def _check_value(name: str, spec: _F, value: Any) -> Any:
    """The checked value (a FlowInfo dict becomes a FlowInfo)."""
    typ = spec.typ
    if typ is int:
        # bool is a subclass of int; JSON true must not pass as 1
        if not isinstance(value, int) or isinstance(value, bool):
            raise ProtocolError(f"field {name!r} must be an integer")
        if spec.rng is not None and not spec.rng[0] <= value <= spec.rng[1]:
            raise ProtocolError(f"field {name!r} out of range [{spec.rng[0]}, {spec.rng[1]}]")
    elif typ is bool:
        if not isinstance(value, bool):
            raise ProtocolError(f"field {name!r} must be a boolean")
    elif typ is str:
        if not isinstance(value, str):
            raise ProtocolError(f"field {name!r} must be a string")
    elif typ is _IPv4:
        if not isinstance(value, str) or not _is_ipv4(value):
            raise ProtocolError(f"field {name!r} must be a dotted IPv4 address")
    elif typ is _FlowDict:
        if not isinstance(value, dict):
            raise ProtocolError(f"field {name!r} must be a FlowInfo object")
        return FlowInfo.from_dict(value)  # validates
    elif typ is list:
        if not isinstance(value, list):
            raise ProtocolError(f"field {name!r} must be a list")
    elif typ is dict:
        if not isinstance(value, dict):
            raise ProtocolError(f"field {name!r} must be an object")
    else:  # pragma: no cover - spec error
        raise AssertionError(typ)
    return value


class _IPv4:
    """Marker type: dotted-quad IPv4 string."""


class _FlowDict:
    """Marker type: a FlowInfo dict."""


@functools.lru_cache(maxsize=1024)  # the same few addresses, message after message
def _is_ipv4(s: str) -> bool:
    try:
        ipaddress.IPv4Address(s)
    except ValueError:
        return False
    return True


def _check_fields(where: str, spec: dict[str, _F], msg: dict, skip: tuple[str, ...], strict: bool) -> dict:
    out: dict[str, Any] = {}
    if strict:
        for k in msg:
            if k not in spec and k not in skip:
                unknown = set(msg) - set(spec) - set(skip)
                raise ProtocolError(f"{where}: unknown field(s) {sorted(unknown, key=str)}")
    for name, f in spec.items():
        if name in msg:
            v = msg[name]
            # the common case inline: an integer in range (bool is not int)
            if f.typ is int and type(v) is int and (f.rng is None or f.rng[0] <= v <= f.rng[1]):
                out[name] = v
            else:
                out[name] = _check_value(name, f, v)
        elif f.required:
            raise ProtocolError(f"{where}: missing field {name!r}")
        else:
            out[name] = f.default
    return out


# --------------------------------------------------------------------------
# FlowInfo


@dataclass(frozen=True)
class FlowInfo:
    """What an app needs to use a flow (docs/CONTROL.md)."""

    flow: int
    gen: int
    ctx: int
    core: int
    appflow_off: int
    rx_off: int
    rx_len: int
    tx_off: int
    tx_len: int
    local_ip: str
    local_port: int
    remote_ip: str
    remote_port: int

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> FlowInfo:
        """Strict: exactly the FlowInfo keys, typed, in range; buffer lengths
        powers of two.  Raises ProtocolError."""
        if isinstance(d, FlowInfo):
            return d
        if not isinstance(d, dict):
            raise ProtocolError("FlowInfo must be an object")
        vals = _check_fields("FlowInfo", _FLOWINFO_SPEC, d, (), strict=True)
        for name in ("rx_len", "tx_len"):
            n = vals[name]
            if n == 0 or n & (n - 1):
                raise ProtocolError(f"FlowInfo.{name} must be a power of two")
        return cls(**vals)


_FLOWINFO_SPEC = {
    "flow": _F(int, U32),
    "gen": _F(int, U16),
    "ctx": _F(int, U32),
    "core": _F(int, (0, 15)),
    "appflow_off": _F(int, U64),
    "rx_off": _F(int, U32),
    "rx_len": _F(int, U32),
    "tx_off": _F(int, U32),
    "tx_len": _F(int, U32),
    "local_ip": _F(_IPv4),
    "local_port": _F(int, PORT),
    "remote_ip": _F(_IPv4),
    "remote_port": _F(int, PORT),
}
assert list(_FLOWINFO_SPEC) == [f.name for f in fields(FlowInfo)]


# --------------------------------------------------------------------------
# Message specs

BUF = (0, 1 << 30)
# Congestion-control names a socket may ask for (TCP_CONGESTION; "" = the
# stack's default); kernel_slowpath.ccloop.CHOICES plus Linux's "reno" for
# newreno (tests check they agree).  Unknown names: ENOENT, as on Linux.
CC_NAMES = ("const", "cubic", "dctcp", "fp-newreno", "newreno", "reno")
CC_NAME_MAX = 15  # TCP_CA_NAME_MAX - 1

REQUESTS: dict[str, dict[str, _F]] = {
    # per-app limits the app asks for (0: the stack's; never above them, EPERM), docs/CONTROL.md
    "hello": {"abi": _F(int, U32), "max_flows": _F(int, U32, default=0),
              "max_buf_bytes": _F(int, U64, default=0), "syn_backlog": _F(int, U32, default=0),
              # 1: events come as binary records, batched (see "Binary events" below)
              "bin_events": _F(int, (0, 1), default=0)},
    "ctx_create": {"rx_buf": _F(int, BUF, default=0), "tx_buf": _F(int, BUF, default=0)},
    "ctx_close": {"ctx": _F(int, U32)},
    "listen": {
        "ctx": _F(int, U32),
        "port": _F(int, PORT),
        "backlog": _F(int, (0, 1 << 16), default=128),
        "reuseaddr": _F(bool, default=False),
        "keepalive": _F(bool, default=False),  # SO_KEEPALIVE for accepted connections
        "cc": _F(str, default=""),  # TCP_CONGESTION for accepted connections ("" = the stack's)
    },
    "listen_close": {"listener": _F(int, U32)},
    "bind": {"ctx": _F(int, U32), "port": _F(int, PORT), "reuseaddr": _F(bool, default=False)},
    "unbind": {"ctx": _F(int, U32), "port": _F(int, (1, 65535))},
    "connect": {
        "ctx": _F(int, U32),
        "ip": _F(_IPv4),
        "port": _F(int, (1, 65535)),
        "local_port": _F(int, PORT, default=0),
        "rx_buf": _F(int, BUF, default=0),
        "tx_buf": _F(int, BUF, default=0),
        "keepalive": _F(bool, default=False),  # SO_KEEPALIVE
        "cc": _F(str, default=""),  # TCP_CONGESTION ("" = the stack's)
    },
    "keepalive": {"flow": _F(int, U32), "on": _F(bool)},  # setsockopt(SO_KEEPALIVE) on an open flow
    # setsockopt(TCP_CONGESTION) on an open flow or a listener (exactly one of them)
    "set_cc": {"flow": _F(int, U32, default=None), "listener": _F(int, U32, default=None), "cc": _F(str)},
    "shutdown": {"flow": _F(int, U32), "tx_head": _F(int, U64)},
    # noreply: the app does not wait (close(2) does not either); the stack
    # sends no reply when the request succeeds, an error reply otherwise
    "close": {"flow": _F(int, U32), "tx_head": _F(int, U64), "rx_tail": _F(int, U64),
              "noreply": _F(bool, default=False)},
    "abort": {"flow": _F(int, U32), "noreply": _F(bool, default=False)},
    "stats": {},
    "flows": {},
}

# Number of fds each request must carry.
REQUEST_FDS: dict[str, int] = {op: 0 for op in REQUESTS}
REQUEST_FDS["ctx_create"] = 1

REPLIES: dict[str, dict[str, _F]] = {
    "hello": {
        "app_id": _F(int, U32),
        "n_cores": _F(int, (1, 16)),
        "local_ip": _F(_IPv4),
        "local_mac": _F(str),
        "cc": _F(str, default=""),  # the stack's default congestion control (--cc)
    },
    "ctx_create": {
        "ctx_id": _F(int, U32),
        "region_len": _F(int, U64),
        "atx_slots": _F(int, U32),
        "arx_slots": _F(int, U32),
        "n_cores": _F(int, (1, 16)),
    },
    "ctx_close": {},
    "listen": {"listener": _F(int, U32), "port": _F(int, PORT)},
    "listen_close": {},
    "bind": {"port": _F(int, (1, 65535))},
    "unbind": {},
    "connect": {"flow": _F(_FlowDict)},
    "keepalive": {},
    "set_cc": {"cc": _F(str)},  # the algorithm now in force
    "shutdown": {},
    "close": {},
    "abort": {},
    "stats": {"stats": _F(dict)},
    "flows": {"flows": _F(list)},
}

EVENTS: dict[str, dict[str, _F]] = {
    "newconn": {"listener": _F(int, U32), "flow": _F(_FlowDict)},
    "connected": {"flow": _F(int, U32)},
    "conn_failed": {"flow": _F(int, U32), "errno": _F(int, (1, 4095))},
    "reset": {"flow": _F(int, U32), "errno": _F(int, (1, 4095))},
    "closed": {"flow": _F(int, U32)},
}


@dataclass
class Request:
    op: str
    id: int
    args: dict
    fds: list[int]


# --------------------------------------------------------------------------
# Encoding


# one encoder and one decoder (json.dumps/loads with options build new ones per call)
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def encode(msg: dict) -> bytes:
    """Compact JSON; raises ProtocolError(EMSGSIZE) above MAX_MSG bytes."""
    data = _ENCODER.encode(msg).encode()
    if len(data) > MAX_MSG:
        raise ProtocolError(f"message of {len(data)} bytes exceeds {MAX_MSG}", msg.get("id"), _errno.EMSGSIZE)
    return data


def _reject_constant(c: str) -> Any:
    raise ValueError(f"non-standard JSON constant {c}")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def decode(data: bytes) -> dict:
    """One JSON object; raises ProtocolError."""
    if len(data) > MAX_MSG:
        raise ProtocolError(f"message of {len(data)} bytes exceeds {MAX_MSG}")
    try:
        obj = _DECODER.decode(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ProtocolError(f"bad JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("message is not a JSON object")
    return obj


def parse_request(data: bytes, nfds: int = 0) -> Request:
    """Strictly decode a request carrying ``nfds`` file descriptors.

    Raises ProtocolError (with req_id set once the id was read)."""
    obj = decode(data)
    req_id = obj.get("id")
    if not isinstance(req_id, int) or isinstance(req_id, bool) or not ID[0] <= req_id <= ID[1]:
        raise ProtocolError("missing or bad request id")
    op = obj.get("op")
    if not isinstance(op, str) or op not in REQUESTS:
        raise ProtocolError(f"unknown op {op!r}", req_id)
    try:
        args = _check_fields(op, REQUESTS[op], obj, ("op", "id"), strict=True)
    except ProtocolError as e:
        e.req_id = req_id
        raise
    if nfds != REQUEST_FDS[op]:
        raise ProtocolError(f"{op}: expected {REQUEST_FDS[op]} fd(s), got {nfds}", req_id)
    return Request(op, req_id, args, [])


def request(op: str, req_id: int, **args: Any) -> dict:
    return {"op": op, "id": req_id, **args}


def reply(req_id: int, **fields_: Any) -> dict:
    return {"id": req_id, "ok": True, **fields_}


def error_reply(req_id: int | None, errno: int, error: str | None = None) -> dict:
    return {
        "id": -1 if req_id is None else req_id,
        "ok": False,
        "errno": int(errno),
        "error": error if error is not None else os.strerror(errno),
    }


def parse_message(data: bytes) -> dict:
    """Client side: a reply (``id``+``ok``) or an event (``ev``+``ctx``).

    Error replies are checked for ``errno``/``error``; events for their
    fields (FlowInfo dicts are converted to :class:`FlowInfo`).  Raises
    ProtocolError."""
    obj = decode(data)
    if "ev" in obj:
        ev = obj["ev"]
        if ev not in EVENTS:
            raise ProtocolError(f"unknown event {ev!r}")
        ctx = obj.get("ctx")
        if not isinstance(ctx, int) or isinstance(ctx, bool):
            raise ProtocolError("event without ctx")
        vals = _check_fields(ev, EVENTS[ev], obj, (), strict=False)
        if isinstance(vals.get("flow"), FlowInfo):  # checked once, converted there
            obj["flow"] = vals["flow"]
        return obj
    rid = obj.get("id")
    ok = obj.get("ok")
    if not isinstance(rid, int) or isinstance(rid, bool) or not isinstance(ok, bool):
        raise ProtocolError("message is neither a reply nor an event")
    if not ok:
        err = obj.get("errno")
        if not isinstance(err, int) or isinstance(err, bool) or not isinstance(obj.get("error"), str):
            raise ProtocolError("error reply without errno/error")
    return obj


def check_reply(op: str, msg: dict) -> dict:
    """Validate the fields of a successful reply to ``op``; FlowInfo dicts
    become :class:`FlowInfo`.  Raises ProtocolError."""
    vals = _check_fields(f"{op} reply", REPLIES[op], msg, (), strict=False)
    if op == "connect":
        msg["flow"] = vals["flow"]  # a FlowInfo (checked and converted once)
    return msg


# --------------------------------------------------------------------------
# Binary events (docs/CONTROL.md "Binary events"): an app that says
# ``bin_events: 1`` at hello gets its events as fixed-size records, many per
# message: no JSON to build or parse per connection, one message and one
# doorbell per slow-path pass instead of one per event.

BIN_EVENTS = b"\0E"  # message prefix: a JSON message cannot start with NUL
# kind, core, gen, ctx, flow, arg (newconn: listener; conn_failed/reset: errno),
# appflow_off, rx_off, rx_len, tx_off, tx_len, local_ip, remote_ip, local_port, remote_port
_EV_REC = struct.Struct("<BBHIIIQIIIIIIHH")
EV_REC_SIZE = _EV_REC.size
EV_BATCH_MAX = (MAX_MSG - len(BIN_EVENTS)) // EV_REC_SIZE  # records per message
_EV_KINDS = ("newconn", "connected", "conn_failed", "reset", "closed")  # kind = index + 1
_EV_KIND = {name: i + 1 for i, name in enumerate(_EV_KINDS)}
_inet_aton, _inet_ntoa = socket.inet_aton, socket.inet_ntoa


def encode_event(msg: dict) -> bytes:
    """One event dict (as the JSON form has it: ``ev``, ``ctx``, fields) as a
    binary record.  Raises ProtocolError for an unknown event or bad field."""
    try:
        kind = _EV_KIND[msg["ev"]]
        if kind == 1:
            f = msg["flow"]
            return _EV_REC.pack(
                1, f["core"], f["gen"], msg["ctx"], f["flow"], msg["listener"], f["appflow_off"],
                f["rx_off"], f["rx_len"], f["tx_off"], f["tx_len"],
                int.from_bytes(_inet_aton(f["local_ip"]), "big"), int.from_bytes(_inet_aton(f["remote_ip"]), "big"),
                f["local_port"], f["remote_port"])
        return _EV_REC.pack(kind, 0, 0, msg["ctx"], msg["flow"], msg.get("errno", 0), 0, 0, 0, 0, 0, 0, 0, 0, 0)
    except (KeyError, TypeError, struct.error, OSError) as e:
        raise ProtocolError(f"event not encodable: {e}") from None


def decode_events_raw(data, length: int | None = None) -> list[tuple]:
    """The records of one binary event message as ``_EV_REC`` tuples (kind,
    core, gen, ctx, flow, arg, appflow_off, rx_off, rx_len, tx_off, tx_len,
    local_ip, remote_ip, local_port, remote_port; addresses as integers),
    checked as decode_events checks them: a bad record (unknown kind,
    buffer length not a power of two, errno out of range) rejects the whole
    message with ProtocolError.  libtas's per-connection path: no dict and
    no FlowInfo per event (record_flowinfo() builds one when asked).
    ``length``: the message is data's first length bytes (a receive
    buffer)."""
    n = (len(data) if length is None else length) - 2
    if n < 0 or n % EV_REC_SIZE or data[0] != 0 or data[1] != 0x45:  # BIN_EVENTS
        raise ProtocolError("bad binary event message")
    if n == EV_REC_SIZE:  # one event (a connection set up): no iterator
        recs = [_EV_REC.unpack_from(data, 2)]
    else:
        recs = list(_EV_REC.iter_unpack(memoryview(data)[2 : n + 2]))
    for r in recs:
        kind = r[0]
        if kind == 1:
            rx_len, tx_len = r[8], r[10]
            if r[1] > 15 or not rx_len or rx_len & (rx_len - 1) or not tx_len or tx_len & (tx_len - 1):
                raise ProtocolError("newconn: bad FlowInfo")
        elif kind == 3 or kind == 4:
            if not 1 <= r[5] <= 4095:
                raise ProtocolError(f"{_EV_KINDS[kind - 1]}: bad errno {r[5]}")
        elif kind != 2 and kind != 5:
            raise ProtocolError(f"unknown binary event kind {kind}")
    return recs


@functools.lru_cache(maxsize=256)  # the same few addresses, connection after connection
def _ip_str(ip: int) -> str:
    return _inet_ntoa(ip.to_bytes(4, "big"))


_new_flowinfo = object.__new__


def record_flowinfo(r: tuple) -> FlowInfo:
    """The FlowInfo of a checked ``newconn`` record (decode_events_raw)."""
    # (a frozen dataclass: its fields straight into the instance dict, what
    # the generated __init__ does one object.__setattr__ at a time)
    info = _new_flowinfo(FlowInfo)
    info.__dict__.update(flow=r[4], gen=r[2], ctx=r[3], core=r[1], appflow_off=r[6], rx_off=r[7], rx_len=r[8],
                         tx_off=r[9], tx_len=r[10], local_ip=_ip_str(r[11]), local_port=r[13],
                         remote_ip=_ip_str(r[12]), remote_port=r[14])
    return info


def event_record(msg: dict) -> tuple:
    """An event as parse_message returns it (JSON, or a decode_events dict)
    as the record tuple decode_events_raw gives.  Raises ProtocolError."""
    try:
        kind = _EV_KIND[msg["ev"]]
        if kind == 1:
            f = msg["flow"]
            return (1, f.core, f.gen, msg["ctx"], f.flow, msg["listener"], f.appflow_off, f.rx_off, f.rx_len,
                    f.tx_off, f.tx_len, int.from_bytes(_inet_aton(f.local_ip), "big"),
                    int.from_bytes(_inet_aton(f.remote_ip), "big"), f.local_port, f.remote_port)
        return (kind, 0, 0, msg["ctx"], msg["flow"], msg.get("errno", 0), 0, 0, 0, 0, 0, 0, 0, 0, 0)
    except (KeyError, TypeError, AttributeError, OSError) as e:
        raise ProtocolError(f"event not convertible: {e}") from None


def decode_events(data: bytes) -> list[dict]:
    """The events of one binary message, as parse_message returns them
    (``newconn``'s flow a :class:`FlowInfo`).  Strict: a bad record (unknown
    kind, buffer length not a power of two, errno out of range) rejects the
    whole message with ProtocolError."""
    out = []
    for r in decode_events_raw(data):
        kind = r[0]
        if kind == 1:
            out.append({"ev": "newconn", "ctx": r[3], "listener": r[5], "flow": record_flowinfo(r)})
        else:
            msg = {"ev": _EV_KINDS[kind - 1], "ctx": r[3], "flow": r[4]}
            if kind == 3 or kind == 4:
                msg["errno"] = r[5]
            out.append(msg)
    return out


BIN_CLOSE = b"\0C"  # a binary `close` request with noreply, one or more records
_CLOSE_REC = struct.Struct("<QIQQ")  # id, flow, tx_head, rx_tail


CLOSE_REC_SIZE = _CLOSE_REC.size
close_record = _CLOSE_REC.pack  # (id, flow, tx_head, rx_tail): one record, without the BIN_CLOSE prefix


def encode_close(req_id: int, flow: int, tx_head: int, rx_tail: int) -> bytes:
    """`close` with noreply as one binary record (docs/CONTROL.md)."""
    try:
        return BIN_CLOSE + _CLOSE_REC.pack(req_id, flow, tx_head, rx_tail)
    except struct.error as e:
        raise ProtocolError(f"close not encodable: {e}", req_id) from None


def parse_closes(data: bytes, nfds: int = 0) -> list[Request]:
    """The `close` requests (noreply) of a binary close message, as
    parse_request would return them.  Raises ProtocolError."""
    body = memoryview(data)[len(BIN_CLOSE):]
    if data[: len(BIN_CLOSE)] != BIN_CLOSE or not body or len(body) % _CLOSE_REC.size:
        raise ProtocolError("bad binary close message")
    out = []
    for req_id, flow, tx_head, rx_tail in _CLOSE_REC.iter_unpack(body):
        if req_id > ID[1]:
            raise ProtocolError("missing or bad request id")
        if nfds:
            raise ProtocolError(f"close: expected 0 fd(s), got {nfds}", req_id)
        out.append(Request("close", req_id, {"flow": flow, "tx_head": tx_head, "rx_tail": rx_tail,
                                             "noreply": True}, []))
    return out


# --------------------------------------------------------------------------
# Transport


def send_msg(sock: socket.socket, msg: dict | bytes, fds: list[int] | tuple[int, ...] = ()) -> None:
    """Send one message (dict or pre-encoded bytes) with optional fds."""
    data = msg if isinstance(msg, bytes | bytearray) else encode(msg)
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.send(data)


def recv_msg(sock: socket.socket, maxfds: int = MAX_FDS, flags: int = 0) -> tuple[bytes, list[int]]:
    """Receive one packet and its fds.  ``b''`` means EOF.

    Raises ProtocolError for oversized packets or truncated fd lists (after
    closing whatever fds arrived), BlockingIOError when nothing is queued on
    a non-blocking call."""
    # socket.recv_fds() ignores its flags argument on Python 3.11, so a
    # MSG_DONTWAIT receive would block: call recvmsg ourselves.
    # (plain ints: or-ing the socket module's IntFlag members builds enum
    # objects, microseconds per message on the slow path's close path)
    anc_len = _ANC_LEN if maxfds == MAX_FDS else socket.CMSG_LEN(maxfds * 4)
    data, anc, msg_flags, _ = sock.recvmsg(MAX_MSG + 1, anc_len, flags)
    fds: list[int] = []
    if anc:
        fd_arr = array.array("i")
        for level, typ, cdata in anc:
            if level == _SOL_SOCKET and typ == _SCM_RIGHTS:
                fd_arr.frombytes(cdata[: len(cdata) - (len(cdata) % fd_arr.itemsize)])
        fds = list(fd_arr)
    if msg_flags & _TRUNC or len(data) > MAX_MSG:
        for fd in fds:
            _close_quiet(fd)
        if msg_flags & _CTRUNC:
            raise ProtocolError("too many file descriptors")
        raise ProtocolError(f"message exceeds {MAX_MSG} bytes")
    return data, fds


def fds_of(anc: list) -> list[int]:
    """The file descriptors of recvmsg()'s ancillary data (SCM_RIGHTS)."""
    fd_arr = array.array("i")
    for level, typ, cdata in anc:
        if level == _SOL_SOCKET and typ == _SCM_RIGHTS:
            fd_arr.frombytes(cdata[: len(cdata) - (len(cdata) % fd_arr.itemsize)])
    return list(fd_arr)


_ANC_LEN = socket.CMSG_LEN(MAX_FDS * 4)
_TRUNC = int(socket.MSG_TRUNC) | int(socket.MSG_CTRUNC)
_CTRUNC = int(socket.MSG_CTRUNC)
_SOL_SOCKET, _SCM_RIGHTS = int(socket.SOL_SOCKET), int(socket.SCM_RIGHTS)


def _close_quiet(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
