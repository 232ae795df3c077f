"""SPSC shared-memory rings: :class:`Ring` (C kernel) and :class:`PyRing`
(pure-Python twin over the same memory; the two interoperate).

Layout (``struct tas_ring_hdr`` in tas_abi.h, 192 B): ``head`` at 0 (written
by the producer: entries ever enqueued), ``tail`` at 64 (written by the
consumer: entries ever dequeued), ``slots``/``entry_size`` at 128/132 (written
at creation, never trusted by attachers), then ``slots * entry_size`` bytes.

Each side keeps its own index privately (``own``); the peer's shared index is
validated on every operation: a consumer requires ``head - own <= slots`` and
a producer ``own - tail <= slots`` (unsigned 64-bit); otherwise ``corrupt`` is
incremented and nothing is read or written.

:func:`make_ring` picks the twin when ``TAS_PURE=1``.
"""

from __future__ import annotations

import struct

from flextcp.native import ffi, lib, use_pure
from flextcp.shm import Region

__all__ = ["HDR_SIZE", "Ring", "PyRing", "make_ring", "ring_bytes"]

HDR_SIZE = 192
_HEAD_OFF = 0
_TAIL_OFF = 64
_SLOTS_OFF = 128
_U32X2 = struct.Struct("<II")
_M64 = (1 << 64) - 1


def _params_ok(slots: int, entry_size: int) -> bool:
    return (
        slots >= 2
        and slots & (slots - 1) == 0
        and slots < (1 << 32)
        and entry_size > 0
        and entry_size % 8 == 0
    )


def ring_bytes(slots: int, entry_size: int) -> int:
    """Bytes a ring of ``slots`` entries of ``entry_size`` bytes occupies."""
    return HDR_SIZE + slots * entry_size


def _check_room(region: Region, offset: int, slots: int, entry_size: int) -> None:
    if not _params_ok(slots, entry_size):
        raise ValueError(f"bad ring geometry slots={slots} entry_size={entry_size}")
    if offset < 0 or offset % 8 or offset + ring_bytes(slots, entry_size) > region.size:
        raise ValueError("ring does not fit in region at offset")


class Ring:
    """Process-local view of a ring, backed by the C kernel (``struct tas_ring``).

    ``Ring.create(region, offset, slots, entry_size, producer)`` initialises
    the shared header then attaches; ``Ring.attach(...)`` only attaches.
    """

    def __init__(self, region: Region, offset: int, slots: int, entry_size: int, producer: bool) -> None:
        _check_room(region, offset, slots, entry_size)
        self.region = region
        self.offset = offset
        self.slots = slots
        self.entry_size = entry_size
        self.producer = bool(producer)
        self._r = ffi.new("struct tas_ring *")
        if lib.tas_ring_attach(self._r, region.ptr(offset), slots, entry_size, int(self.producer)) != 0:
            raise ValueError("tas_ring_attach failed")

    @classmethod
    def create(cls, region: Region, offset: int, slots: int, entry_size: int, producer: bool) -> Ring:
        _check_room(region, offset, slots, entry_size)
        if lib.tas_ring_init(region.ptr(offset), slots, entry_size) != 0:
            raise ValueError("tas_ring_init failed")
        return cls(region, offset, slots, entry_size, producer)

    @classmethod
    def attach(cls, region: Region, offset: int, slots: int, entry_size: int, producer: bool) -> Ring:
        return cls(region, offset, slots, entry_size, producer)

    @property
    def raw(self):
        """The ``struct tas_ring *`` for passing to other C kernels."""
        return self._r

    @property
    def own(self) -> int:
        return int(self._r.own)

    @property
    def corrupt(self) -> int:
        return int(self._r.corrupt)

    def new_buffer(self, n: int):
        """A cffi ``uint8_t[n * entry_size]`` buffer for the *_into/enqueue APIs."""
        return ffi.new("uint8_t[]", n * self.entry_size)

    def enqueue_n(self, data, n: int | None = None) -> int:
        """Enqueue entries from ``data`` (bytes-like or cffi buffer holding
        ``n`` entries; ``n`` defaults to ``len(data) // entry_size``).
        Returns how many were enqueued."""
        if n is None:
            n = (
                len(data) // self.entry_size
                if not isinstance(data, ffi.CData)
                else ffi.sizeof(data) // self.entry_size
            )
        if n <= 0:
            return 0
        if isinstance(data, ffi.CData):
            if ffi.typeof(data).kind == "array" and ffi.sizeof(data) < n * self.entry_size:
                raise ValueError("buffer shorter than n entries")
            return lib.tas_ring_enqueue_n(self._r, data, n)
        if len(data) < n * self.entry_size:
            raise ValueError("buffer shorter than n entries")
        return lib.tas_ring_enqueue_n(self._r, ffi.from_buffer(data), n)

    def dequeue_n(self, max_n: int) -> bytes:
        """Dequeue up to ``max_n`` entries; returns their bytes (possibly empty)."""
        if max_n <= 0:
            return b""
        buf = ffi.new("uint8_t[]", max_n * self.entry_size)
        k = lib.tas_ring_dequeue_n(self._r, buf, max_n)
        return ffi.buffer(buf, k * self.entry_size)[:]

    def dequeue_into(self, buf, max_n: int | None = None) -> int:
        """Dequeue up to ``max_n`` entries into a preallocated buffer (cffi
        array or writable bytes-like).  Returns the count."""
        if isinstance(buf, ffi.CData):
            cap = ffi.sizeof(buf) // self.entry_size if ffi.typeof(buf).kind == "array" else None
            ptr = buf
        else:
            cap = len(buf) // self.entry_size
            ptr = ffi.from_buffer(buf, require_writable=True)
        if max_n is None:
            if cap is None:
                raise ValueError("max_n required for a pointer")
            max_n = cap
        elif cap is not None and max_n > cap:
            raise ValueError("buffer shorter than max_n entries")
        if max_n <= 0:
            return 0
        return lib.tas_ring_dequeue_n(self._r, ptr, max_n)

    def count(self) -> int:
        """Entries in the ring as seen from this side (0 if the peer is corrupt)."""
        return lib.tas_ring_count(self._r)

    def free(self) -> int:
        """Free slots as seen from this side (0 if the peer is corrupt)."""
        return lib.tas_ring_free(self._r)


class PyRing:
    """Pure-Python twin of :class:`Ring` over the same memory and rules.

    Index words are read/written with single aligned 8-byte struct accesses;
    CPython gives no explicit release/acquire fences, which is adequate on
    x86-64 (TSO) and is what the twin is for (tests, reference semantics).
    """

    def __init__(self, region: Region, offset: int, slots: int, entry_size: int, producer: bool) -> None:
        _check_room(region, offset, slots, entry_size)
        self.region = region
        self.offset = offset
        self.slots = slots
        self.entry_size = entry_size
        self.producer = bool(producer)
        self.corrupt = 0
        self._mv = region.view(offset, ring_bytes(slots, entry_size))
        self._data = self._mv[HDR_SIZE:]
        # Native 'Q' items are accessed with one aligned 8-byte memcpy (a
        # single load/store), unlike struct's "<Q" which goes byte by byte
        # and can tear against the peer.
        self._idx = self._mv[:HDR_SIZE].cast("Q")
        head = self._load(_HEAD_OFF)
        tail = self._load(_TAIL_OFF)
        sane = (head - tail) & _M64 <= slots
        if self.producer:
            self.own = head if sane else tail
        else:
            self.own = tail if sane else head

    @classmethod
    def create(cls, region: Region, offset: int, slots: int, entry_size: int, producer: bool) -> PyRing:
        _check_room(region, offset, slots, entry_size)
        mv = region.view(offset, HDR_SIZE)
        try:
            mv[:] = bytes(HDR_SIZE)
            _U32X2.pack_into(mv, _SLOTS_OFF, slots, entry_size)
        finally:
            mv.release()
        return cls(region, offset, slots, entry_size, producer)

    @classmethod
    def attach(cls, region: Region, offset: int, slots: int, entry_size: int, producer: bool) -> PyRing:
        return cls(region, offset, slots, entry_size, producer)

    def close(self) -> None:
        """Release the memoryviews (needed before the region can be unmapped)."""
        self._idx.release()
        self._data.release()
        self._mv.release()

    def _load(self, off: int) -> int:
        return self._idx[off >> 3]

    def _store(self, off: int, value: int) -> None:
        self._idx[off >> 3] = value

    def _used(self) -> int:
        if self.producer:
            return (self.own - self._load(_TAIL_OFF)) & _M64
        return (self._load(_HEAD_OFF) - self.own) & _M64

    def _copy_in(self, idx: int, src, n: int) -> None:
        es = self.entry_size
        pos = idx & (self.slots - 1)
        first = min(n, self.slots - pos)
        self._data[pos * es : (pos + first) * es] = src[: first * es]
        if n > first:
            self._data[: (n - first) * es] = src[first * es : n * es]

    def _copy_out(self, idx: int, n: int) -> bytes:
        es = self.entry_size
        pos = idx & (self.slots - 1)
        first = min(n, self.slots - pos)
        out = bytes(self._data[pos * es : (pos + first) * es])
        if n > first:
            out += bytes(self._data[: (n - first) * es])
        return out

    def enqueue_n(self, data, n: int | None = None) -> int:
        if isinstance(data, ffi.CData):
            data = ffi.buffer(data, n * self.entry_size if n is not None else ffi.sizeof(data))
        src = memoryview(data).cast("B")
        if n is None:
            n = len(src) // self.entry_size
        if len(src) < n * self.entry_size:
            raise ValueError("buffer shorter than n entries")
        if not self.producer or n <= 0:
            return 0
        used = self._used()
        if used > self.slots:
            self.corrupt += 1
            return 0
        n = min(n, self.slots - used)
        if n == 0:
            return 0
        self._copy_in(self.own, src, n)
        self.own = (self.own + n) & _M64
        self._store(_HEAD_OFF, self.own)
        return n

    def dequeue_n(self, max_n: int) -> bytes:
        if self.producer or max_n <= 0:
            return b""
        avail = self._used()
        if avail > self.slots:
            self.corrupt += 1
            return b""
        n = min(max_n, avail)
        if n == 0:
            return b""
        out = self._copy_out(self.own, n)
        self.own = (self.own + n) & _M64
        self._store(_TAIL_OFF, self.own)
        return out

    def dequeue_into(self, buf, max_n: int | None = None) -> int:
        dst = memoryview(ffi.buffer(buf) if isinstance(buf, ffi.CData) else buf).cast("B")
        cap = len(dst) // self.entry_size
        if max_n is None:
            max_n = cap
        elif max_n > cap:
            raise ValueError("buffer shorter than max_n entries")
        out = self.dequeue_n(max_n)
        dst[: len(out)] = out
        return len(out) // self.entry_size

    def new_buffer(self, n: int):
        return bytearray(n * self.entry_size)

    def count(self) -> int:
        used = self._used()
        return 0 if used > self.slots else used

    def free(self) -> int:
        used = self._used()
        return 0 if used > self.slots else self.slots - used


def make_ring(
    region: Region, offset: int, slots: int, entry_size: int, producer: bool, *, create: bool = False
):
    """Ring or PyRing (TAS_PURE=1), created or attached."""
    cls = PyRing if use_pure() else Ring
    return (cls.create if create else cls.attach)(region, offset, slots, entry_size, producer)
