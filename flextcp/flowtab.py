"""The shared flow table: :class:`FlowTable` (C kernel) and
:class:`PyFlowTable` (pure-Python twin with the same hash and probing, over
the same memory).

Region layout: ``struct tas_ft_hdr`` (64 B), ``n_flows`` records of
``struct tas_flow`` (128 B, two cache lines), ``n_hash`` uint64 hash slots
with ``n_hash`` the next power of two >= ``2 * n_flows``, then (64-byte
aligned) ``n_flows`` side records ``struct tas_flow_cc`` (320 B: what does
not fit the record, tas_abi.h), then the CC news: ``struct tas_cc_news_hdr``
(64 B) and one bit per flow id in 64-bit words, the region rounded up to 64
bytes (:func:`news_off`; docs/CC.md).  Slot values: 0 empty, all-ones
tombstone, else ``(hash << 32) | (flow_id + 1)``.  Linear probing; lookups
stop at an empty slot and skip tombstones; insert reuses the first tombstone
on the probe path after checking the tuple is not already indexed further
along; remove writes a tombstone and turns a run of tombstones ending just
before an empty slot back into empty slots.

:func:`make_flowtable` picks the twin when ``TAS_PURE=1``.
"""

from __future__ import annotations

import struct

from flextcp.native import ffi, lib, use_pure
from flextcp.shm import Region

__all__ = ["FlowTable", "PyFlowTable", "flow_hash", "ft_bytes", "news_off", "flow_memory", "make_flowtable"]

FT_MAGIC = 0x54414654
ABI_VERSION = 1
HDR_SIZE = 64
FLOW_SIZE = 128  # sizeof(struct tas_flow)
SIDE_SIZE = 320  # sizeof(struct tas_flow_cc), the per-flow side record
NEWS_HDR_SIZE = 64  # sizeof(struct tas_cc_news_hdr), before the CC news bits
MAX_FLOWS = 1 << 30
EMPTY = 0
TOMB = (1 << 64) - 1
FLOW_FREE = 0

# struct tas_flow offsets used by the twin (tests/test_abi.py checks them).
_OFF_STATUS = 6
_OFF_LOCAL_IP = 16
_OFF_REMOTE_IP = 20
_OFF_LOCAL_PORT = 24
_OFF_REMOTE_PORT = 26

_HDR = struct.Struct("<IIIIQQ")
_U64 = struct.Struct("<Q")
_TUPLE = struct.Struct("<IIHH")  # local_ip, remote_ip, local_port, remote_port at offset 16
_U16 = struct.Struct("<H")
_M32 = 0xFFFFFFFF


def _n_hash(n_flows: int) -> int:
    n = 2
    while n < 2 * n_flows:
        n <<= 1
    return n


def side_off(n_flows: int) -> int:
    """Offset of the side records in the region (tas_cc_table_off)."""
    end = HDR_SIZE + n_flows * FLOW_SIZE + 8 * _n_hash(n_flows)
    return (end + 63) & ~63


def news_off(n_flows: int) -> int:
    """Offset of the CC news header (the bits follow it); tas_ft_news_off."""
    if not 0 < n_flows <= MAX_FLOWS:
        return 0
    return side_off(n_flows) + n_flows * SIDE_SIZE


def ft_bytes(n_flows: int) -> int:
    """Bytes of a table for ``n_flows`` flows, side records and CC news bits
    included (0 if n_flows is out of range); tas_ft_bytes."""
    if not 0 < n_flows <= MAX_FLOWS:
        return 0
    end = news_off(n_flows) + NEWS_HDR_SIZE + 8 * ((n_flows + 63) // 64)
    return (end + 63) & ~63


APPFLOW_SIZE = 64  # sizeof(struct tas_appflow), one per flow in its context's heap


def flow_memory(n_flows: int, buffers: list[tuple[int, int]]) -> dict[str, int]:
    """Per-flow memory for ``tas stats`` (docs/STATS.md): the fixed cost of a
    flow slot in the flow-table region -- its record, its side record and
    its share of the hash index (rounded up) -- and the buffers of the flows
    that hold some (``buffers``: (rx_len, tx_len) per flow; each also has a
    64-byte appflow block in its context's heap)."""
    n = max(n_flows, 1)
    hash_share = -(-8 * _n_hash(n) // n)
    buf = sum(rx + tx + APPFLOW_SIZE for rx, tx in buffers)
    fixed = FLOW_SIZE + SIDE_SIZE + hash_share
    return {
        "flow_record_bytes": FLOW_SIZE,
        "flow_side_bytes": SIDE_SIZE,
        "flow_hash_bytes": hash_share,
        "flow_fixed_bytes": fixed,
        "flow_slots": n_flows,
        "flow_table_bytes": ft_bytes(n_flows),
        "flow_buffer_bytes": buf,
        "flow_bytes_avg": (fixed + buf // len(buffers)) if buffers else fixed,
    }


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (32 - r))) & _M32


def _mm3_block(h: int, k: int) -> int:
    k = (k * 0xCC9E2D51) & _M32
    k = _rotl(k, 15)
    k = (k * 0x1B873593) & _M32
    h ^= k
    h = _rotl(h, 13)
    return (h * 5 + 0xE6546B64) & _M32


def flow_hash(local_ip: int, local_port: int, remote_ip: int, remote_port: int) -> int:
    """Twin of tas_flow_hash: MurmurHash3 x86_32 (seed 0x9747b28c) of the
    words local_ip, remote_ip, local_port << 16 | remote_port."""
    h = 0x9747B28C
    h = _mm3_block(h, local_ip & _M32)
    h = _mm3_block(h, remote_ip & _M32)
    h = _mm3_block(h, ((local_port & 0xFFFF) << 16) | (remote_port & 0xFFFF))
    h ^= 12
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _M32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _M32
    h ^= h >> 16
    return h


class FlowTable:
    """Flow table backed by the C kernel (``struct tas_ft``)."""

    def __init__(self, region: Region, offset: int, n_flows: int) -> None:
        self.region = region
        self.offset = offset
        self.n_flows = n_flows
        self._ft = ffi.new("struct tas_ft *")
        if offset < 0 or offset % 64 or offset >= region.size:
            raise ValueError("bad flow table offset")
        if lib.tas_ft_attach(self._ft, region.ptr(offset), region.size - offset, n_flows) != 0:
            raise ValueError("tas_ft_attach failed")

    @classmethod
    def create(cls, region: Region, offset: int, n_flows: int) -> FlowTable:
        need = ft_bytes(n_flows)
        if need == 0 or offset < 0 or offset % 64 or offset + need > region.size:
            raise ValueError("flow table does not fit")
        if lib.tas_ft_init(region.ptr(offset), n_flows) != 0:
            raise ValueError("tas_ft_init failed")
        return cls(region, offset, n_flows)

    @classmethod
    def attach(cls, region: Region, offset: int, n_flows: int) -> FlowTable:
        return cls(region, offset, n_flows)

    @property
    def raw(self):
        """The ``struct tas_ft *`` for passing to other C kernels."""
        return self._ft

    @property
    def n_hash(self) -> int:
        return int(self._ft.hash_mask) + 1

    @staticmethod
    def hash(local_ip: int, local_port: int, remote_ip: int, remote_port: int) -> int:
        return lib.tas_flow_hash(local_ip, local_port, remote_ip, remote_port)

    def flow(self, i: int):
        """``struct tas_flow *`` of flow ``i``."""
        if not 0 <= i < self.n_flows:
            raise IndexError(i)
        return self._ft.flows + i

    def side(self, i: int):
        """``struct tas_flow_cc *``: flow ``i``'s side record."""
        if not 0 <= i < self.n_flows:
            raise IndexError(i)
        return self._ft.side + i

    def snapshot(self, i: int, out=None):
        """Consistent copy of flow ``i``'s record and side record (under its
        lock) into ``out`` (a ``struct tas_flow_snap *``, new if None)."""
        if out is None:
            out = ffi.new("struct tas_flow_snap *")
        lib.tas_sp_snapshot(self._ft, i, out)
        return out

    def lookup(self, local_ip: int, local_port: int, remote_ip: int, remote_port: int) -> int:
        return lib.tas_ft_lookup(self._ft, local_ip, local_port, remote_ip, remote_port)

    def insert(self, flow_id: int) -> int:
        return lib.tas_ft_insert(self._ft, flow_id)

    def remove(self, flow_id: int) -> int:
        return lib.tas_ft_remove(self._ft, flow_id)

    def lock(self, i: int) -> None:
        lib.tas_flow_lock(self.flow(i))

    def unlock(self, i: int) -> None:
        lib.tas_flow_unlock(self.flow(i))


class PyFlowTable:
    """Pure-Python twin of :class:`FlowTable` over the same memory."""

    def __init__(self, region: Region, offset: int, n_flows: int) -> None:
        need = ft_bytes(n_flows)
        if need == 0 or offset < 0 or offset % 64 or offset + need > region.size:
            raise ValueError("flow table does not fit")
        mv = region.view(offset, need)
        magic, ver, nf, nh, foff, hoff = _HDR.unpack_from(mv, 0)
        nh_exp = _n_hash(n_flows)
        hoff_exp = HDR_SIZE + n_flows * FLOW_SIZE
        if (magic, ver, nf, nh, foff, hoff) != (FT_MAGIC, ABI_VERSION, n_flows, nh_exp, HDR_SIZE, hoff_exp):
            mv.release()
            raise ValueError("flow table header mismatch")
        self.region = region
        self.offset = offset
        self.n_flows = n_flows
        self.n_hash = nh_exp
        self._mask = nh_exp - 1
        self._mv = mv
        self._flows = mv[HDR_SIZE:hoff_exp]
        self._hash = mv[hoff_exp : hoff_exp + 8 * nh_exp].cast("Q")

    @classmethod
    def create(cls, region: Region, offset: int, n_flows: int) -> PyFlowTable:
        need = ft_bytes(n_flows)
        if need == 0 or offset < 0 or offset % 64 or offset + need > region.size:
            raise ValueError("flow table does not fit")
        mv = region.view(offset, need)
        try:
            mv[:] = bytes(need)
            _HDR.pack_into(
                mv,
                0,
                FT_MAGIC,
                ABI_VERSION,
                n_flows,
                _n_hash(n_flows),
                HDR_SIZE,
                HDR_SIZE + n_flows * FLOW_SIZE,
            )
        finally:
            mv.release()
        return cls(region, offset, n_flows)

    @classmethod
    def attach(cls, region: Region, offset: int, n_flows: int) -> PyFlowTable:
        return cls(region, offset, n_flows)

    def close(self) -> None:
        self._hash.release()
        self._flows.release()
        self._mv.release()

    hash = staticmethod(flow_hash)

    def flow(self, i: int):
        """``struct tas_flow *`` of flow ``i`` (a cffi pointer into the region)."""
        if not 0 <= i < self.n_flows:
            raise IndexError(i)
        return self.region.cast("struct tas_flow", self.offset + HDR_SIZE + i * FLOW_SIZE)

    def side(self, i: int):
        """``struct tas_flow_cc *``: flow ``i``'s side record."""
        if not 0 <= i < self.n_flows:
            raise IndexError(i)
        return self.region.cast("struct tas_flow_cc", self.offset + side_off(self.n_flows) + i * SIDE_SIZE)

    def news_hdr(self):
        """``struct tas_cc_news_hdr *``: the CC news header (the bits follow)."""
        return self.region.cast("struct tas_cc_news_hdr", self.offset + news_off(self.n_flows))

    def cc_news_set(self, i: int) -> bool:
        """tas_ft_cc_news_set: mark flow ``i`` as having CC news; True if the
        slow path's loop was armed and this call disarmed it (post
        TAS_EV_CC_NEWS).  The relaxed first look is here; the atomic OR and
        the armed exchange are C's (the twin has no atomics)."""
        off = self.offset + news_off(self.n_flows) + NEWS_HDR_SIZE + 8 * (i // 64)
        if _U64.unpack_from(self._mv, off - self.offset)[0] >> (i % 64) & 1:
            return False
        return bool(lib.tas_ft_cc_news_set(self.news_hdr(), i))

    def snapshot(self, i: int, out=None):
        """Copy of flow ``i``'s record and side record (struct tas_flow_snap),
        taken under the flow's lock."""
        if out is None:
            out = ffi.new("struct tas_flow_snap *")
        self.lock(i)
        try:
            ffi.memmove(out, self.flow(i), FLOW_SIZE)
            ffi.memmove(ffi.cast("uint8_t *", out) + FLOW_SIZE, self.side(i), SIDE_SIZE)
        finally:
            self.unlock(i)
        out.lock = 0
        return out

    def _tuple(self, fid: int) -> tuple[int, int, int, int]:
        lip, rip, lport, rport = _TUPLE.unpack_from(self._flows, fid * FLOW_SIZE + _OFF_LOCAL_IP)
        return lip, lport, rip, rport

    def _matches(self, fid: int, tup: tuple[int, int, int, int]) -> bool:
        if self._tuple(fid) != tup:
            return False
        return _U16.unpack_from(self._flows, fid * FLOW_SIZE + _OFF_STATUS)[0] != FLOW_FREE

    def lookup(self, local_ip: int, local_port: int, remote_ip: int, remote_port: int) -> int:
        tup = (local_ip, local_port, remote_ip, remote_port)
        h = flow_hash(*tup)
        i = h & self._mask
        for _ in range(self.n_hash):
            s = self._hash[i]
            if s == EMPTY:
                return -1
            if s != TOMB and s >> 32 == h:
                fid = (s & _M32) - 1
                if fid < self.n_flows and self._matches(fid, tup):
                    return fid
            i = (i + 1) & self._mask
        return -1

    def insert(self, flow_id: int) -> int:
        if not 0 <= flow_id < self.n_flows:
            return -1
        tup = self._tuple(flow_id)
        h = flow_hash(*tup)
        i = h & self._mask
        target = None
        for _ in range(self.n_hash):
            s = self._hash[i]
            if s == EMPTY:
                if target is None:
                    target = i
                break
            if s == TOMB:
                if target is None:
                    target = i
            else:
                fid = (s & _M32) - 1
                if fid == flow_id:
                    return -1
                if s >> 32 == h and fid < self.n_flows and self._matches(fid, tup):
                    return -1
            i = (i + 1) & self._mask
        if target is None:
            return -1
        self._hash[target] = (h << 32) | (flow_id + 1)
        return 0

    def remove(self, flow_id: int) -> int:
        if not 0 <= flow_id < self.n_flows:
            return -1
        h = flow_hash(*self._tuple(flow_id))
        want = (h << 32) | (flow_id + 1)
        i = h & self._mask
        for _ in range(self.n_hash):
            s = self._hash[i]
            if s == EMPTY:
                return -1
            if s == want:
                self._hash[i] = TOMB
                if self._hash[(i + 1) & self._mask] == EMPTY:
                    j = i
                    for _ in range(self.n_hash):
                        if self._hash[j] != TOMB:
                            break
                        self._hash[j] = EMPTY
                        j = (j - 1) & self._mask
                return 0
            i = (i + 1) & self._mask
        return -1

    def lock(self, i: int) -> None:  # the twin has no atomics: delegate to C
        lib.tas_flow_lock(self.flow(i))

    def unlock(self, i: int) -> None:
        lib.tas_flow_unlock(self.flow(i))


def make_flowtable(region: Region, offset: int, n_flows: int, *, create: bool = False):
    """FlowTable or PyFlowTable (TAS_PURE=1), created or attached."""
    cls = PyFlowTable if use_pure() else FlowTable
    return (cls.create if create else cls.attach)(region, offset, n_flows)
