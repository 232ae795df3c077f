"""Buddy allocator for the heap of a context region.

Blocks are powers of two between ``min_block`` (64 B: appflow blocks) and
``max_block`` (16 MiB: the largest flow buffer).  Offsets handed out are
absolute region offsets; a block of size 2**k is aligned to 2**k relative to
``heap_off`` (``heap_off`` is page aligned, so buffers of 4 KiB and more are
page aligned in the region too).

The heap ``[heap_off, region_len)`` need not be a power of two: it is cut at
creation into maximal aligned blocks.  alloc/free are O(log(max/min)): one
set per order holds the free blocks, a dict maps allocated offsets to their
order.  Freeing an offset that is not an allocated block raises
(``DoubleFreeError`` inside the heap, ``ForeignOffsetError`` outside it or
misaligned), and never corrupts the allocator.
"""

from __future__ import annotations


class BufAllocError(ValueError):
    pass


class DoubleFreeError(BufAllocError):
    pass


class ForeignOffsetError(BufAllocError):
    pass


def _log2_ceil(n: int) -> int:
    return (n - 1).bit_length()


class BuddyAllocator:
    def __init__(self, heap_off: int, heap_end: int, min_block: int = 64, max_block: int = 16 << 20):
        if min_block <= 0 or min_block & (min_block - 1) or max_block & (max_block - 1):
            raise ValueError("block sizes must be powers of two")
        if max_block < min_block:
            raise ValueError("max_block < min_block")
        if heap_off < 0 or heap_end < heap_off:
            raise ValueError("bad heap bounds")
        self.heap_off = heap_off
        self.heap_end = heap_end
        self.min_order = _log2_ceil(min_block)
        self.max_order = _log2_ceil(max_block)
        # free[k - min_order]: set of relative offsets of free blocks of order k
        self._free: list[set[int]] = [set() for _ in range(self.max_order - self.min_order + 1)]
        self._used: dict[int, int] = {}  # relative offset -> order
        self.used_bytes = 0
        # Carve [0, heap_len) (truncated to min_block) into maximal aligned blocks.
        length = (heap_end - heap_off) >> self.min_order << self.min_order
        self.capacity = length
        pos = 0
        while pos < length:
            k = self.max_order
            while k > self.min_order and (pos & ((1 << k) - 1) or pos + (1 << k) > length):
                k -= 1
            self._free[k - self.min_order].add(pos)
            pos += 1 << k

    @property
    def free_bytes(self) -> int:
        return self.capacity - self.used_bytes

    def block_size(self, off: int) -> int:
        """Size of the allocated block at ``off`` (raises if not allocated)."""
        return 1 << self._used[self._rel(off)]

    def size_of(self, off: int) -> int | None:
        """block_size(off), or None if off is not an allocated block (no
        exception: a quick check for callers that take the checked way,
        block_size/free, when this says None)."""
        order = self._used.get(off - self.heap_off) if type(off) is int else None
        return None if order is None else 1 << order

    def _rel(self, off: int) -> int:
        if not isinstance(off, int) or not self.heap_off <= off < self.heap_off + self.capacity:
            raise ForeignOffsetError(f"offset {off!r} outside the heap")
        rel = off - self.heap_off
        if rel & ((1 << self.min_order) - 1):
            raise ForeignOffsetError(f"offset {off} is not block aligned")
        return rel

    def alloc(self, nbytes: int) -> int | None:
        """Offset of a free block of at least ``nbytes`` (rounded up to a power
        of two, at least min_block), or None if none is available."""
        if nbytes <= 0:
            raise ValueError(f"bad allocation size {nbytes}")
        order = max(_log2_ceil(nbytes), self.min_order)
        if order > self.max_order:
            return None
        k = order
        while k <= self.max_order and not self._free[k - self.min_order]:
            k += 1
        if k > self.max_order:
            return None
        rel = self._free[k - self.min_order].pop()
        while k > order:  # split, keeping the lower half
            k -= 1
            self._free[k - self.min_order].add(rel + (1 << k))
        self._used[rel] = order
        self.used_bytes += 1 << order
        return self.heap_off + rel

    def free(self, off: int) -> None:
        rel = self._rel(off)
        order = self._used.pop(rel, None)
        if order is None:
            raise DoubleFreeError(f"offset {off} is not an allocated block (double free?)")
        self.used_bytes -= 1 << order
        k = order
        while k < self.max_order:  # merge with free buddies
            buddy = rel ^ (1 << k)
            peers = self._free[k - self.min_order]
            if buddy not in peers:
                break
            peers.remove(buddy)
            rel = min(rel, buddy)
            k += 1
        self._free[k - self.min_order].add(rel)
