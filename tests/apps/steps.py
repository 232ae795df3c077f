"""Shared by the interop apps (tests/apps/tas_app.py on the native API,
tests/apps/linux_peer.py on Linux sockets): a deterministic data pattern and
a tiny step interpreter, so both ends of a connection are driven the same
way and report the same JSON result.

A script is a comma-separated list of steps, run in order on one connection:

``send``          send the pattern (``--send-bytes``, ``--seed``), hashing it
``recv:N``        receive exactly N bytes (EOF before that is an error)
``recv_eof``      receive until EOF
``recv_eof_paced:N:S``  receive until EOF, at most N bytes per read, sleeping
                  S seconds between reads (a slow reader)
``shut_wr``       shutdown(SHUT_WR)
``close``         graceful close
``abort``         reset the connection (native: conn.abort(); Linux:
                  SO_LINGER 0 then close)
``expect_reset``  receive (counting data) until ConnectionResetError; EOF or
                  a timeout is an error
``sleep:S``       sleep S seconds

Every blocking call gets the time left until the app's deadline.  The last
line printed is a JSON object (see :meth:`Runner.result`).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Iterator

CHUNK = 1 << 20
RECV_CHUNK = 256 << 10


def pattern_chunks(nbytes: int, seed: int) -> Iterator[bytes]:
    """The bytes a sender with ``seed`` sends, in chunks of at most 1 MiB.
    Every chunk is different (a misplaced chunk changes the hash)."""
    i = 0
    left = nbytes
    while left > 0:
        n = min(CHUNK, left)
        yield hashlib.shake_128(b"tas-interop:%d:%d" % (seed, i)).digest(n)
        left -= n
        i += 1


def pattern_sha256(nbytes: int, seed: int) -> str:
    h = hashlib.sha256()
    for chunk in pattern_chunks(nbytes, seed):
        h.update(chunk)
    return h.hexdigest()


class StepError(Exception):
    pass


class Runner:
    """Runs a step script on ``conn`` (an adapter with ``recv_into(mv,
    timeout)``, ``send(mv, timeout)``, ``shut_wr()``, ``close()`` and
    ``abort()``)."""

    def __init__(self, conn, send_bytes: int, seed: int, deadline: float) -> None:
        self.conn = conn
        self.send_bytes = send_bytes
        self.seed = seed
        self.deadline = deadline
        self.t0 = time.monotonic()
        self.rx = hashlib.sha256()
        self.tx = hashlib.sha256()
        self.rx_bytes = 0
        self.tx_bytes = 0
        self.eof = False
        self.reset = False
        self.done: list[str] = []
        self.error: str | None = None
        self.buf = bytearray(RECV_CHUNK)
        self.times: dict[str, float] = {}

    def remaining(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("app deadline passed")
        return left

    # -- steps -----------------------------------------------------------------
    def _recv_some(self, limit: int) -> int:
        mv = memoryview(self.buf)[: min(limit, len(self.buf))]
        n = self.conn.recv_into(mv, self.remaining())
        if n:
            self.rx.update(mv[:n])
            self.rx_bytes += n
        return n

    def op_send(self, _arg: str) -> None:
        for chunk in pattern_chunks(self.send_bytes, self.seed):
            mv = memoryview(chunk)
            off = 0
            while off < len(mv):
                off += self.conn.send(mv[off:], self.remaining())
            self.tx.update(chunk)
            self.tx_bytes += len(chunk)

    def op_recv(self, arg: str) -> None:
        want = int(arg)
        got = 0
        while got < want:
            n = self._recv_some(want - got)
            if n == 0:
                raise StepError(f"EOF after {got} of {want} bytes")
            got += n

    def op_recv_eof(self, _arg: str) -> None:
        while self._recv_some(RECV_CHUNK):
            pass
        self.eof = True

    def op_recv_eof_paced(self, arg: str) -> None:
        n, _, delay = arg.partition(":")
        while self._recv_some(int(n)):
            time.sleep(min(float(delay), self.remaining()))
        self.eof = True

    def op_rr(self, arg: str) -> None:
        """``rr:N:SIZE``: N closed-loop exchanges against an echo server:
        send SIZE bytes of the pattern, read SIZE bytes back (the rx digest
        then equals the tx digest)."""
        n, _, size = arg.partition(":")
        size = int(size)
        stream = b"".join(pattern_chunks(int(n) * size, self.seed))
        for i in range(int(n)):
            req = memoryview(stream)[i * size : (i + 1) * size]
            off = 0
            while off < size:
                off += self.conn.send(req[off:], self.remaining())
            self.tx.update(req)
            self.tx_bytes += size
            self.op_recv(str(size))

    def op_shut_wr(self, _arg: str) -> None:
        self.conn.shut_wr()

    def op_close(self, _arg: str) -> None:
        self.conn.close()

    def op_abort(self, _arg: str) -> None:
        self.conn.abort()

    def op_expect_reset(self, _arg: str) -> None:
        try:
            while self._recv_some(RECV_CHUNK):
                pass
        except ConnectionResetError:
            self.reset = True
            return
        self.eof = True
        raise StepError("got EOF, expected a reset")

    def op_sleep(self, arg: str) -> None:
        time.sleep(min(float(arg), self.remaining()))

    def run(self, script: str) -> bool:
        try:
            for step in filter(None, script.split(",")):
                name, _, arg = step.partition(":")
                op = getattr(self, "op_" + name, None)
                if op is None:
                    raise StepError(f"unknown step {name!r}")
                op(arg)
                self.done.append(step)
                self.times[step] = round(time.monotonic() - self.t0, 3)
        except Exception as e:  # reported in the JSON result
            self.error = f"{type(e).__name__}: {e}"
            return False
        return True

    def result(self, **extra) -> dict:
        return {
            "ok": self.error is None,
            "error": self.error,
            "steps_done": self.done,
            "step_times": self.times,
            "rx_bytes": self.rx_bytes,
            "rx_sha256": self.rx.hexdigest(),
            "tx_bytes": self.tx_bytes,
            "tx_sha256": self.tx.hexdigest(),
            "eof": self.eof,
            "reset": self.reset,
            "elapsed": round(time.monotonic() - self.t0, 3),
            **extra,
        }


def emit(obj: dict) -> None:
    print("RESULT " + json.dumps(obj), flush=True)


def say(line: str) -> None:
    print(line, flush=True)


def fail(msg: str, **extra) -> None:
    emit({"ok": False, "error": msg, **extra})
    sys.exit(1)
