"""The key-value store behind `tas kv-server`, sans-I/O.

:class:`KVStore` holds binary keys and values with optional expiry; time
comes from an injected clock (milliseconds, monotonic), so tests drive it
with a fake one.  :class:`Commands` executes parsed RESP commands (lists of
bytes, from libtas.resp.RequestParser) against a store and returns reply
values for libtas.resp.encode, with Redis' error texts.

Memory is accounted as key + value + a fixed per-key overhead; a write that
would take the total past ``max_memory`` is refused with Redis' OOM error
(no eviction, like ``maxmemory-policy noeviction``).  Expired keys are
removed lazily on access and by a bounded active sweep (``sweep``), which
the servers call on every batch.
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Callable

from libtas.resp import Error, Hello, Map, SimpleString

__all__ = ["KVStore", "Commands", "OOMError", "KEY_OVERHEAD", "QUIT"]

KEY_OVERHEAD = 64  # bytes charged per key besides key and value (dict slot, objects)
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
MAX_EXPIRE_MS = 1 << 46  # a few thousand years: larger expire times are "invalid"

E_SYNTAX = Error("ERR syntax error")
E_NOT_INT = Error("ERR value is not an integer or out of range")
E_OVERFLOW = Error("ERR increment or decrement would overflow")
E_OOM = Error("OOM command not allowed when used memory > 'maxmemory'.")
OK = SimpleString("OK")


class OOMError(Exception):
    """A write would exceed max_memory."""


class _Quit:
    """Reply marker: send +OK, then close the connection."""


QUIT = _Quit()


def monotonic_ms() -> float:
    return time.monotonic() * 1000.0


class KVStore:
    def __init__(self, max_memory: int = 0, clock: Callable[[], float] = monotonic_ms) -> None:
        self.max_memory = max_memory  # 0 = unlimited
        self.clock = clock
        self.data: dict[bytes, bytes] = {}
        self.expires: dict[bytes, float] = {}  # key -> absolute ms on self.clock
        self.used = 0
        self.expired_keys = 0

    @staticmethod
    def _cost(key: bytes, value: bytes) -> int:
        return len(key) + len(value) + KEY_OVERHEAD

    # -- expiry ---------------------------------------------------------------------------
    def _alive(self, key: bytes) -> bool:
        """False (and the key removed) if key is missing or expired."""
        if key not in self.data:
            return False
        exp = self.expires.get(key)
        if exp is not None and exp <= self.clock():
            self._remove(key)
            self.expired_keys += 1
            return False
        return True

    def _remove(self, key: bytes) -> None:
        self.used -= self._cost(key, self.data.pop(key))
        self.expires.pop(key, None)

    def sweep(self, limit: int = 20) -> int:
        """Remove up to ``limit`` expired keys; returns how many."""
        if not self.expires:
            return 0
        now = self.clock()
        gone = []
        for k, exp in self.expires.items():
            if exp <= now:
                gone.append(k)
                if len(gone) >= limit:
                    break
        for k in gone:
            self._remove(k)
        self.expired_keys += len(gone)
        return len(gone)

    # -- data -----------------------------------------------------------------------------
    def get(self, key: bytes) -> bytes | None:
        return self.data[key] if self._alive(key) else None

    def exists(self, key: bytes) -> bool:
        return self._alive(key)

    def check_room(self, key: bytes, value_len: int) -> None:
        """OOMError if storing value_len bytes at key would exceed max_memory."""
        if not self.max_memory:
            return
        old = self._cost(key, self.data[key]) if key in self.data else 0
        if self.used - old + len(key) + value_len + KEY_OVERHEAD > self.max_memory:
            raise OOMError

    def set(self, key: bytes, value: bytes, expire_at: float | None = None, keep_ttl: bool = False) -> None:
        """Store value (OOMError past max_memory); expire_at: absolute ms or
        None (persist, unless keep_ttl)."""
        self.check_room(key, len(value))
        if key in self.data:
            self.used -= self._cost(key, self.data[key])
        self.data[key] = value
        self.used += self._cost(key, value)
        if expire_at is not None:
            self.expires[key] = expire_at
        elif not keep_ttl:
            self.expires.pop(key, None)

    def delete(self, key: bytes) -> bool:
        if not self._alive(key):
            return False
        self._remove(key)
        return True

    def expire_at(self, key: bytes, when_ms: float) -> bool:
        if not self._alive(key):
            return False
        if when_ms <= self.clock():
            self._remove(key)
        else:
            self.expires[key] = when_ms
        return True

    def ttl_ms(self, key: bytes) -> int:
        """-2 missing, -1 no expiry, else milliseconds left."""
        if not self._alive(key):
            return -2
        exp = self.expires.get(key)
        return -1 if exp is None else max(0, int(round(exp - self.clock())))

    def __len__(self) -> int:
        return len(self.data)

    def flush(self) -> None:
        self.data.clear()
        self.expires.clear()
        self.used = 0


def _int(b: bytes) -> int | None:
    """Redis string2ll: strict decimal fitting int64."""
    if not b or len(b) > 20:
        return None
    body = b[1:] if b[:1] == b"-" else b
    if not body.isdigit() or (len(body) > 1 and body[:1] == b"0") or body == b"" or b == b"-0":
        return None
    v = int(b)
    return v if INT64_MIN <= v <= INT64_MAX else None


# name -> (handler name, arity) ; arity as Redis: n = exactly n, -n = at least n (incl. the name)
_TABLE: dict[bytes, tuple[str, int]] = {
    b"ping": ("ping", -1),
    b"echo": ("echo", 2),
    b"get": ("get", 2),
    b"set": ("set", -3),
    b"del": ("delete", -2),
    b"unlink": ("delete", -2),
    b"exists": ("exists", -2),
    b"incr": ("incr", 2),
    b"decr": ("decr", 2),
    b"incrby": ("incrby", 3),
    b"decrby": ("decrby", 3),
    b"mget": ("mget", -2),
    b"mset": ("mset", -3),
    b"append": ("append", 3),
    b"strlen": ("strlen", 2),
    b"expire": ("expire", 3),
    b"pexpire": ("pexpire", 3),
    b"ttl": ("ttl", 2),
    b"pttl": ("pttl", 2),
    b"persist": ("persist", 2),
    b"dbsize": ("dbsize", 1),
    b"flushall": ("flushall", -1),
    b"flushdb": ("flushall", -1),
    b"info": ("info", -1),
    b"quit": ("quit", -1),
    b"config": ("config", -2),
    b"select": ("select", 2),
    b"command": ("command", -1),
    b"client": ("client", -2),
    b"setnx": ("setnx", 3),
    b"getset": ("getset", 3),
    b"keys": ("keys", 2),
    b"type": ("type", 2),
    b"hello": ("hello", -1),
}


class Commands:
    """Execute RESP commands against a KVStore.  ``execute(args)`` returns a
    reply value (for resp.encode) or QUIT; it never raises for bad input."""

    def __init__(self, store: KVStore, info: Callable[[], dict] | None = None) -> None:
        self.store = store
        self.info_extra = info or (lambda: {})
        self.calls = 0
        self.errors = 0
        self.unknown = 0

    def execute(self, args: list[bytes]):
        self.calls += 1
        name = args[0].lower()
        ent = _TABLE.get(name)
        if ent is None:
            self.unknown += 1
            self.errors += 1
            shown = " ".join(f"'{_show(a)}'" for a in args[1:6])
            return Error(
                f"ERR unknown command '{_show(args[0])}', with args beginning with: {shown}"
                if shown
                else f"ERR unknown command '{_show(args[0])}', with args beginning with: "
            )
        handler, arity = ent
        if (arity > 0 and len(args) != arity) or (arity < 0 and len(args) < -arity):
            self.errors += 1
            return Error(f"ERR wrong number of arguments for '{name.decode(errors='replace')}' command")
        try:
            r = getattr(self, "c_" + handler)(args)
        except OOMError:
            r = Error(E_OOM)
        if isinstance(r, Error):
            self.errors += 1
        return r

    # -- commands -------------------------------------------------------------------------
    def c_ping(self, a):
        if len(a) > 2:
            return Error("ERR wrong number of arguments for 'ping' command")
        return a[1] if len(a) == 2 else SimpleString("PONG")

    def c_echo(self, a):
        return a[1]

    def c_get(self, a):
        return self.store.get(a[1])

    def c_set(self, a):
        key, value = a[1], a[2]
        nx = xx = keep = get = False
        expire_ms: int | None = None
        i = 3
        while i < len(a):
            opt = a[i].upper()
            if opt == b"NX" and not xx:
                nx = True
            elif opt == b"XX" and not nx:
                xx = True
            elif opt == b"KEEPTTL" and expire_ms is None:
                keep = True
            elif opt == b"GET":
                get = True
            elif (
                opt in (b"EX", b"PX", b"EXAT", b"PXAT") and expire_ms is None and not keep and i + 1 < len(a)
            ):
                v = _int(a[i + 1])
                if v is None:
                    return E_NOT_INT
                if v <= 0 or v > MAX_EXPIRE_MS // (1000 if opt in (b"EX", b"EXAT") else 1):
                    return Error("ERR invalid expire time in 'set' command")
                now = self.store.clock()
                if opt == b"EX":
                    expire_ms = now + v * 1000
                elif opt == b"PX":
                    expire_ms = now + v
                else:  # absolute Unix times: convert to our clock
                    unix_ms = v * 1000 if opt == b"EXAT" else v
                    expire_ms = now + (unix_ms - time.time() * 1000)
                i += 1
            else:
                return E_SYNTAX
            i += 1
        old = self.store.get(key)
        exists = old is not None or self.store.exists(key)
        if (nx and exists) or (xx and not exists):
            return old if get else None
        self.store.set(key, value, expire_ms, keep_ttl=keep)
        return old if get else OK

    def c_setnx(self, a):
        if self.store.exists(a[1]):
            return 0
        self.store.set(a[1], a[2])
        return 1

    def c_getset(self, a):
        old = self.store.get(a[1])
        self.store.set(a[1], a[2])
        return old

    def c_delete(self, a):
        return sum(self.store.delete(k) for k in a[1:])

    def c_exists(self, a):
        return sum(self.store.exists(k) for k in a[1:])

    def _incr(self, key: bytes, by: int):
        old = self.store.get(key)
        cur = 0
        if old is not None:
            cur = _int(old)
            if cur is None:
                return E_NOT_INT
        new = cur + by
        if not INT64_MIN <= new <= INT64_MAX:
            return E_OVERFLOW
        self.store.set(key, b"%d" % new, keep_ttl=True)
        return new

    def c_incr(self, a):
        return self._incr(a[1], 1)

    def c_decr(self, a):
        return self._incr(a[1], -1)

    def c_incrby(self, a):
        by = _int(a[2])
        return E_NOT_INT if by is None else self._incr(a[1], by)

    def c_decrby(self, a):
        by = _int(a[2])
        if by is None or by == INT64_MIN:
            return E_NOT_INT
        return self._incr(a[1], -by)

    def c_mget(self, a):
        return [self.store.get(k) for k in a[1:]]

    def c_mset(self, a):
        if len(a) % 2 == 0:
            return Error("ERR wrong number of arguments for 'mset' command")
        pairs = dict(zip(a[1::2], a[2::2], strict=True))
        if self.store.max_memory:  # all or nothing
            need = sum(len(k) + len(v) + KEY_OVERHEAD for k, v in pairs.items())
            have = sum(len(k) + len(self.store.data[k]) + KEY_OVERHEAD for k in pairs if k in self.store.data)
            if self.store.used - have + need > self.store.max_memory:
                raise OOMError
        for k, v in pairs.items():
            self.store.set(k, v)
        return OK

    def c_append(self, a):
        old = self.store.get(a[1]) or b""
        self.store.set(a[1], old + a[2], keep_ttl=True)
        return len(old) + len(a[2])

    def c_strlen(self, a):
        v = self.store.get(a[1])
        return 0 if v is None else len(v)

    def _expire(self, a, unit: int):
        v = _int(a[2])
        if v is None:
            return E_NOT_INT
        if abs(v) > MAX_EXPIRE_MS // unit:
            return Error(f"ERR invalid expire time in '{a[0].decode(errors='replace').lower()}' command")
        return int(self.store.expire_at(a[1], self.store.clock() + v * unit))

    def c_expire(self, a):
        return self._expire(a, 1000)

    def c_pexpire(self, a):
        return self._expire(a, 1)

    def c_ttl(self, a):
        t = self.store.ttl_ms(a[1])
        return t if t < 0 else (t + 500) // 1000

    def c_pttl(self, a):
        return self.store.ttl_ms(a[1])

    def c_persist(self, a):
        if not self.store.exists(a[1]):
            return 0
        return int(self.store.expires.pop(a[1], None) is not None)

    def c_dbsize(self, a):
        self.store.sweep(1000)
        return len(self.store)

    def c_flushall(self, a):
        if len(a) > 2 or (len(a) == 2 and a[1].upper() not in (b"ASYNC", b"SYNC")):
            return E_SYNTAX
        self.store.flush()
        return OK

    def c_keys(self, a):
        pat = a[1].decode("latin-1")
        return [
            k
            for k in list(self.store.data)
            if self.store.exists(k) and fnmatch.fnmatchcase(k.decode("latin-1"), pat)
        ]

    def c_type(self, a):
        return SimpleString("string" if self.store.exists(a[1]) else "none")

    def c_info(self, a):
        st = self.store
        sections = {
            "server": {"redis_version": "7.0.0", "tas_kv_version": "1", "redis_mode": "standalone"},
            "clients": {},
            "memory": {"used_memory": st.used, "maxmemory": st.max_memory, "maxmemory_policy": "noeviction"},
            "stats": {
                "total_commands_processed": self.calls,
                "expired_keys": st.expired_keys,
                "unknown_commands": self.unknown,
                "error_replies": self.errors,
            },
            "keyspace": ({"db0": f"keys={len(st)},expires={len(st.expires)},avg_ttl=0"} if len(st) else {}),
        }
        for sec, fields in self.info_extra().items():
            sections.setdefault(sec, {}).update(fields)
        want = a[1].decode(errors="replace").lower() if len(a) > 1 else "default"
        out = []
        for sec, fields in sections.items():
            if want not in ("default", "all", "everything", sec):
                continue
            out.append(f"# {sec.capitalize()}")
            out.extend(f"{k}:{v}" for k, v in fields.items())
            out.append("")
        return "\r\n".join(out).encode()

    def c_quit(self, a):
        return QUIT

    def c_config(self, a):
        sub = a[1].lower()
        if sub == b"get":
            if len(a) < 3:
                return Error("ERR wrong number of arguments for 'config|get' command")
            params = {
                b"maxmemory": b"%d" % self.store.max_memory,
                b"maxmemory-policy": b"noeviction",
                b"save": b"",
                b"appendonly": b"no",
                b"databases": b"1",
                b"proto-max-bulk-len": b"%d" % (512 << 20),
            }
            out = Map()
            for pat in a[2:]:
                p = pat.decode("latin-1").lower()
                for k, v in params.items():
                    if fnmatch.fnmatchcase(k.decode(), p):
                        out.setdefault(k, v)
            return out
        if sub in (b"set", b"resetstat", b"rewrite"):
            return Error(
                f"ERR CONFIG {sub.decode(errors='replace').upper()} is not supported by tas kv-server"
            )
        return Error(f"ERR unknown subcommand '{_show(a[1])}'. Try CONFIG HELP.")

    def c_hello(self, a):
        # HELLO [protover [AUTH user pass] [SETNAME name]]: RESP2 and RESP3
        # (redis-py >= 8 opens every connection with HELLO 3)
        proto = 2
        if len(a) >= 2:
            v = _int(a[1])
            if v is None:
                return Error("ERR Protocol version is not an integer or out of range")
            if v not in (2, 3):
                return Error("NOPROTO unsupported protocol version")
            proto = v
        info = Map({b"server": b"redis", b"version": b"7.0.0", b"proto": proto, b"id": 1,
                    b"mode": b"standalone", b"role": b"master", b"modules": []})
        return Hello(proto, info)

    def c_select(self, a):
        return OK if a[1] == b"0" else Error("ERR DB index is out of range")

    def c_command(self, a):
        # redis-cli asks for COMMAND DOCS at start: an empty answer makes it go without hints
        if len(a) >= 2 and a[1].lower() == b"count":
            return len(_TABLE)
        return []

    def c_client(self, a):
        sub = a[1].lower()
        if sub in (b"setname", b"setinfo", b"no-evict", b"no-touch"):
            return OK
        if sub == b"getname":
            return None
        if sub == b"id":
            return 1
        return Error(f"ERR unknown subcommand '{_show(a[1])}'. Try CLIENT HELP.")


def _show(b: bytes, limit: int = 128) -> str:
    s = b[:limit].decode("latin-1")
    return "".join(c if c.isprintable() and c != "'" else "?" for c in s)
