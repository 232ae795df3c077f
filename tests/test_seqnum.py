"""flextcp.seqnum against a ctypes model of C's (int32_t)(a - b)."""

from __future__ import annotations

import ctypes

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flextcp.seqnum import SeqNum, seq_add, seq_diff, seq_ge, seq_gt, seq_le, seq_lt

u32 = st.integers(0, 2**32 - 1)
# Offsets kept inside the unambiguous half-space.
small = st.integers(-(2**31) + 1, 2**31 - 1)
# Values that straddle the wrap point.
near_wrap = st.integers(2**32 - 4096, 2**32 - 1) | st.integers(0, 4096)


def c_diff(a: int, b: int) -> int:
    return ctypes.c_int32((a - b) & 0xFFFFFFFF).value


@given(u32 | near_wrap, u32 | near_wrap)
def test_diff_matches_c(a: int, b: int) -> None:
    d = seq_diff(a, b)
    assert d == c_diff(a, b)
    assert seq_lt(a, b) == (d < 0)
    assert seq_le(a, b) == (d <= 0)
    assert seq_gt(a, b) == (d > 0)
    assert seq_ge(a, b) == (d >= 0)


@given(u32 | near_wrap, small)
def test_add_then_diff_roundtrips(a: int, n: int) -> None:
    b = seq_add(a, n)
    assert 0 <= b < 2**32
    assert seq_diff(b, a) == n
    assert seq_lt(a, b) == (n > 0)
    assert seq_gt(a, b) == (n < 0)


@given(near_wrap, st.integers(1, 2**31 - 1))
def test_later_across_wrap(a: int, n: int) -> None:
    b = seq_add(a, n)
    assert seq_lt(a, b) and seq_gt(b, a) and not seq_ge(a, b)


def test_wrap_examples() -> None:
    assert seq_lt(0xFFFFFFFF, 0)
    assert seq_gt(0, 0xFFFFFFFF)
    assert seq_diff(0, 0xFFFFFFFF) == 1
    assert seq_diff(0xFFFFFFF0, 0x10) == -0x20
    assert seq_add(0xFFFFFFFF, 2) == 1
    assert seq_add(0, -1) == 0xFFFFFFFF
    assert seq_le(5, 5) and seq_ge(5, 5)
    # Half the space apart: C says a - b == INT32_MIN, i.e. "less".
    assert seq_diff(0, 2**31) == -(2**31)
    assert seq_lt(0, 2**31) and seq_lt(2**31, 0)


@given(u32 | near_wrap, small)
def test_seqnum_class(a: int, n: int) -> None:
    x = SeqNum(a)
    y = x + n
    assert isinstance(y, SeqNum)
    assert int(y) == seq_add(a, n)
    assert y - x == n
    assert (y - n) == x
    assert (x < y) == (n > 0)
    assert (x <= y) == (n >= 0)
    assert (x > y) == (n < 0)
    assert (x >= y) == (n <= 0)
    assert (x < int(y)) == (n > 0)


def test_seqnum_normalises_and_is_frozen() -> None:
    assert SeqNum(2**32 + 3) == SeqNum(3)
    assert SeqNum(-1).value == 0xFFFFFFFF
    assert hash(SeqNum(7)) == hash(SeqNum(2**32 + 7))
    assert 1 + SeqNum(0xFFFFFFFF) == SeqNum(0)
    with pytest.raises(AttributeError):
        SeqNum(1).value = 2  # type: ignore[misc]
