"""The shim's byte paths, C kernels (flextcp/csrc/shim_io.c) and their
Python twins (TAS_PURE=1; compared by tests/test_shim_io.py).

* ``send(conn, fd, data)``: an app thread's send() straight into the flow's
  tx buffer plus its ATX update (Runtime.send_direct), unless the pair's
  pump end fd still holds bytes the app wrote before (BUSY);
* ``fwd(conn, sock, maxn)``: the pump's move of the flow's readable
  bytes into the pump end of the app's socketpair, plus the window update
  when one is due (Runtime._service).

send runs with the context lock held (the positions are libtas's, the ATX
ring has one producer at a time); fwd without it (the pump alone advances a
shim flow's rx_tail) and reports DUE when the window update should be
posted, which the pump then does under the lock.  The C calls release the
GIL, so the pump's send() into the pair does not keep the
app thread it wakes waiting for the interpreter.  Both return (bytes,
status bits below); the caller queues the flow's update on UNPOSTED.
"""

from __future__ import annotations

import fcntl
import socket
import struct
import termios

from flextcp.native import ffi, lib
from libtas.api import _ATX, _M64, TAS_ATX_UPDATE

EMPTY, AGAIN, GONE, ODD, POSTED, UNPOSTED, DUE, BUSY = 1, 2, 4, 8, 16, 32, 64, 128
_RESET = 2  # TAS_AF_RESET
_SEND_FLAGS = socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL
_NULL_CTX = ffi.NULL


def _post_one(post, fl) -> int:
    """Post fl's update (rx_tail, tx_head) through post(data, cores)
    (tas_app_post's twin); POSTED, UNPOSTED (ring full) or 0 (dropped)."""
    data = _ATX.pack(fl.flow_id, fl.gen, TAS_ATX_UPDATE, fl.rx_tail, fl.tx_head, 0)
    _, done = post(data, bytes([fl.core]))
    if done[0] == 1:
        fl.rx_posted = fl.rx_tail
        return POSTED
    return UNPOSTED if done[0] == 0 else 0


def _unread(fd: int) -> int:
    """Bytes queued in fd for reading (FIONREAD, i.e. SIOCINQ)."""
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]


def send_twin(post, fl, fd: int, txmv, data) -> tuple[int, int]:
    """Python twin of tas_shim_send (txmv: the flow's tx buffer)."""
    if fd >= 0:
        try:
            if _unread(fd):
                return 0, BUSY
        except OSError:
            return 0, BUSY
    af = fl.af
    if af.flags & _RESET:
        return 0, ODD
    tx_len = fl.tx_len
    used = (fl.tx_head - af.tx_acked) & _M64
    if used > tx_len:
        return 0, ODD
    mv = memoryview(data).cast("B")
    want = min(len(mv), tx_len - used)
    if not want:
        return 0, 0
    out = fl.tx_head & (tx_len - 1)
    k = min(want, tx_len - out)
    txmv[out : out + k] = mv[:k]
    if k < want:
        txmv[: want - k] = mv[k:want]
    fl.tx_head += want
    return want, _post_one(post, fl)


def fwd_twin(post, fl, rxmv, sock: socket.socket, maxn: int) -> tuple[int, int]:
    """Python twin of tas_shim_fwd (rxmv: the flow's rx buffer; sock: the
    pump end, non-blocking; post None: report DUE instead of posting)."""
    af = fl.af
    rx_len = fl.rx_len
    moved = st = 0
    was_full = None
    while True:
        if af.flags & _RESET:
            if not moved:
                st = ODD
            break
        avail = (af.rx_head - fl.rx_tail) & _M64
        if avail > rx_len:  # never trust a bogus head
            if not moved:
                st = ODD
            break
        if was_full is None:
            was_full = avail >= rx_len
        if not avail:
            st |= EMPTY
            break
        if moved >= maxn:
            break
        pos = fl.rx_tail & (rx_len - 1)
        k = min(avail, rx_len - pos, maxn - moved)
        try:
            r = sock.send(rxmv[pos : pos + k], _SEND_FLAGS)
        except BlockingIOError:
            st |= AGAIN
            break
        except OSError:
            st |= GONE
            break
        fl.rx_tail += r
        moved += r
        if r < k:
            st |= AGAIN
            break
    if moved:
        freed = fl.rx_tail - fl.rx_posted
        if freed > 0 and (
            was_full or freed >= rx_len // 4 or ((af.rx_head - fl.rx_posted) & _M64) >= rx_len // 2
        ):
            st |= _post_one(post, fl) if post is not None else DUE
    return moved, st


class ShimIO:
    """The kernels bound to one context (C when it has C rings, else twins)."""

    def __init__(self, ctx) -> None:
        self.ctx = ctx
        self.actx = getattr(ctx, "_actx", None)
        self._st = ffi.new("uint32_t *")  # (one per thread: send's, the pump's)
        self._fst = ffi.new("uint32_t *")

    def send(self, conn, fd: int, data) -> tuple[int, int]:
        """fd: the pump end of the pair (BUSY if it holds bytes), or -1."""
        if self.actx is None:
            return send_twin(self.ctx._post_twin, conn._fl, fd, conn._tx, data)
        mv = memoryview(data).cast("B")
        n = lib.tas_shim_send(self.actx, conn._fl, fd, ffi.from_buffer("uint8_t[]", mv), len(mv), self._st)
        return n, self._st[0]

    def fwd(self, conn, sock: socket.socket, maxn: int) -> tuple[int, int]:
        """Without posting (the caller posts on DUE, under the lock)."""
        if self.actx is None:
            return fwd_twin(None, conn._fl, conn._rx, sock, maxn)
        n = lib.tas_shim_fwd(_NULL_CTX, conn._fl, sock.fileno(), maxn, self._fst)
        return n, self._fst[0]
