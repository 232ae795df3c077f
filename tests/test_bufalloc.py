"""Buddy allocator (kernel_slowpath/bufalloc.py) against a simple oracle."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel_slowpath.bufalloc import BuddyAllocator, DoubleFreeError, ForeignOffsetError


def test_basic_alignment_and_reuse():
    a = BuddyAllocator(8192, 8192 + (1 << 20))
    x = a.alloc(4096)
    assert x is not None and (x - 8192) % 4096 == 0
    assert a.block_size(x) == 4096
    y = a.alloc(1)
    assert a.block_size(y) == 64
    assert a.used_bytes == 4096 + 64
    a.free(x)
    a.free(y)
    assert a.used_bytes == 0
    # everything merged back: the whole 1 MiB is one block again
    z = a.alloc(1 << 20)
    assert z == 8192


def test_errors():
    a = BuddyAllocator(4096, 4096 + 65536)
    with pytest.raises(ValueError):
        a.alloc(0)
    assert a.alloc(1 << 17) is None  # larger than the heap
    assert a.alloc(32 << 20) is None  # larger than max_block
    x = a.alloc(100)
    a.free(x)
    with pytest.raises(DoubleFreeError):
        a.free(x)
    with pytest.raises(ForeignOffsetError):
        a.free(0)
    with pytest.raises(ForeignOffsetError):
        a.free(4096 + 65536)
    with pytest.raises(ForeignOffsetError):
        a.free(x + 3)
    # the allocator still works after bad frees
    assert a.alloc(65536) == 4096
    assert a.alloc(64) is None


def test_non_power_of_two_heap():
    a = BuddyAllocator(4096, 4096 + 3 * 4096 + 100, max_block=1 << 20)
    assert a.capacity == 3 * 4096 + 64
    got = [a.alloc(4096) for _ in range(3)]
    assert None not in got and a.alloc(4096) is None
    assert a.alloc(64) is not None
    assert a.alloc(64) is None


ops = st.lists(
    st.one_of(
        st.tuples(st.just("alloc"), st.integers(1, 1 << 18)),
        st.tuples(st.just("free"), st.integers(0, 1 << 30)),
    ),
    max_size=200,
)


@settings(max_examples=200, deadline=None)
@given(ops=ops, heap_pages=st.integers(1, 300), heap_off_pages=st.integers(1, 8))
def test_against_oracle(ops, heap_pages, heap_off_pages):
    heap_off = heap_off_pages * 4096
    heap_end = heap_off + heap_pages * 4096
    a = BuddyAllocator(heap_off, heap_end, min_block=64, max_block=1 << 18)
    live: dict[int, int] = {}  # off -> size
    freed: list[int] = []
    for op, arg in ops:
        if op == "alloc":
            off = a.alloc(arg)
            size = max(64, 1 << (arg - 1).bit_length())
            if off is None:
                # only allowed to fail if no aligned free run of that size exists
                free_runs = _free_aligned(live, heap_off, heap_end, size)
                assert not free_runs, (arg, live)
                continue
            assert a.block_size(off) == size
            assert heap_off <= off and off + size <= heap_end
            assert (off - heap_off) % size == 0
            for o, s in live.items():
                assert off + size <= o or o + s <= off, "overlap"
            live[off] = size
        else:
            if live and arg % 2 == 0:
                off = sorted(live)[arg % len(live)]
                a.free(off)
                freed.append(off)
                del live[off]
            else:
                off = arg
                if off in live:
                    continue
                with pytest.raises((DoubleFreeError, ForeignOffsetError)):
                    a.free(off)
        assert a.used_bytes == sum(live.values())
    for off in list(live):
        a.free(off)
    assert a.used_bytes == 0
    # after freeing everything, every block merged back: as many maximal
    # blocks fit as in a fresh allocator
    first = min(1 << 18, 1 << ((heap_end - heap_off).bit_length() - 1))
    fresh = BuddyAllocator(heap_off, heap_end, min_block=64, max_block=1 << 18)
    assert _count(a, first) == _count(fresh, first) >= 1


def _count(a, size):
    n = 0
    while a.alloc(size) is not None:
        n += 1
    return n


def _free_aligned(live, heap_off, heap_end, size):
    """Any size-aligned (relative to heap_off) run of `size` bytes free of live blocks."""
    runs = []
    for rel in range(0, heap_end - heap_off - size + 1, size):
        start = heap_off + rel
        if all(start + size <= o or o + s <= start for o, s in live.items()):
            runs.append(start)
    return runs
