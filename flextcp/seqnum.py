"""TCP sequence-number arithmetic modulo 2**32 (RFC 793/1982 style).

Comparisons use the signed 32-bit difference, exactly like C's
``(int32_t)(a - b) < 0`` in the fast path, so the Python twins and the C
kernels agree on which of two sequence numbers is "later" even across the
wrap.  Two numbers exactly 2**31 apart are each "less" than the other
(the difference is -2**31 both ways), just as in C; windows never get that
large.
"""

from __future__ import annotations

from dataclasses import dataclass

MOD = 1 << 32
MASK = MOD - 1
_HALF = 1 << 31


def seq_diff(a: int, b: int) -> int:
    """Signed distance a - b in [-2**31, 2**31), i.e. (int32_t)(a - b)."""
    d = (a - b) & MASK
    return d - MOD if d >= _HALF else d


def seq_add(a: int, n: int) -> int:
    """a + n wrapped into [0, 2**32); n may be negative."""
    return (a + n) & MASK


def seq_lt(a: int, b: int) -> bool:
    return seq_diff(a, b) < 0


def seq_le(a: int, b: int) -> bool:
    return seq_diff(a, b) <= 0


def seq_gt(a: int, b: int) -> bool:
    return seq_diff(a, b) > 0


def seq_ge(a: int, b: int) -> bool:
    return seq_diff(a, b) >= 0


@dataclass(frozen=True, slots=True)
class SeqNum:
    """A sequence number whose operators use wrap-around arithmetic.

    ``SeqNum + int`` and ``SeqNum - int`` give a SeqNum; ``SeqNum - SeqNum``
    gives the signed int distance.  Ordering is not transitive across more
    than half the space, so this is deliberately not ``functools.total_ordering``.
    """

    value: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "value", self.value & MASK)

    def __int__(self) -> int:
        return self.value

    def __index__(self) -> int:
        return self.value

    def __add__(self, n: int) -> SeqNum:
        if isinstance(n, SeqNum):
            return NotImplemented
        return SeqNum(self.value + n)

    __radd__ = __add__

    def __sub__(self, other: SeqNum | int) -> SeqNum | int:  # type: ignore[override]
        if isinstance(other, SeqNum):
            return seq_diff(self.value, other.value)
        return SeqNum(self.value - other)

    @staticmethod
    def _v(other: SeqNum | int) -> int:
        return other.value if isinstance(other, SeqNum) else other & MASK

    def __lt__(self, other: SeqNum | int) -> bool:
        return seq_lt(self.value, self._v(other))

    def __le__(self, other: SeqNum | int) -> bool:
        return seq_le(self.value, self._v(other))

    def __gt__(self, other: SeqNum | int) -> bool:
        return seq_gt(self.value, self._v(other))

    def __ge__(self, other: SeqNum | int) -> bool:
        return seq_ge(self.value, self._v(other))

    def __repr__(self) -> str:
        return f"SeqNum({self.value})"
