"""Pure-Python twin of flextcp/csrc/fp_sack.c: the sender's SACK scoreboard.

The scoreboard lives in the flow's side-table entry (``struct tas_flow_cc``,
``sb_start``/``sb_end``) as up to five ranges of absolute tx positions (low
32 bits).  :class:`SbView` is the sorted view as offsets above SND.UNA that
the transmit side works from.  tests/test_fastpath_twin.py drives this and
the C kernel through the same segments.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flextcp.seqnum import seq_diff, seq_ge, seq_gt, seq_le, seq_lt

M32 = 0xFFFFFFFF
SB_RANGES = 5


@dataclass
class SbView:
    s: list[int] = field(default_factory=list)
    e: list[int] = field(default_factory=list)
    sacked: int = 0

    @property
    def n(self) -> int:
        return len(self.s)


def sb_clear(cc) -> None:
    for i in range(SB_RANGES):
        cc.sb_start[i] = 0
        cc.sb_end[i] = 0


def sb_empty(cc) -> bool:
    return all(cc.sb_start[i] == cc.sb_end[i] for i in range(SB_RANGES))


def sb_prune(cc, una: int) -> None:
    """Forget what the cumulative ACK covered."""
    for i in range(SB_RANGES):
        if cc.sb_start[i] == cc.sb_end[i]:
            continue
        if seq_le(cc.sb_end[i], una):
            cc.sb_start[i] = 0
            cc.sb_end[i] = 0
        elif seq_lt(cc.sb_start[i], una):
            cc.sb_start[i] = una


def sb_add(cc, una: int, s: int, e: int) -> None:
    """Merge [s, e); when full, the lowest ranges and the highest stay."""
    s &= M32
    e &= M32
    slot = -1
    i = 0
    while i < SB_RANGES:
        rs, re_ = cc.sb_start[i], cc.sb_end[i]
        if rs == re_:
            if slot < 0:
                slot = i
            i += 1
            continue
        if seq_le(s, re_) and seq_ge(e, rs):
            if seq_lt(rs, s):
                s = rs
            if seq_gt(re_, e):
                e = re_
            cc.sb_start[i] = 0
            cc.sb_end[i] = 0
            i = 0  # the grown range may touch others: rescan
            slot = -1
            continue
        i += 1
    if slot < 0:
        if seq_diff(s, una) < 0:
            return
        # full: keep the lowest ranges and the highest (fp_sb_add)
        top = 0
        for i in range(1, SB_RANGES):
            if seq_gt(cc.sb_start[i], cc.sb_start[top]):
                top = i
        far = 1 if top == 0 else 0
        for i in range(SB_RANGES):
            if i != top and seq_gt(cc.sb_start[i], cc.sb_start[far]):
                far = i
        if seq_gt(s, cc.sb_start[top]):
            slot = top
        elif seq_lt(s, cc.sb_start[far]):
            slot = far
        else:
            return
    cc.sb_start[slot] = s
    cc.sb_end[slot] = e


def sb_view(cc, f) -> SbView:
    """Sorted offsets above SND.UNA, clipped to what is outstanding."""
    una = f.tx_una & M32
    out = min(f.tx_max - f.tx_una, 0x7FFFFFFF)
    ranges = []
    for i in range(SB_RANGES):
        if cc.sb_start[i] == cc.sb_end[i]:
            continue
        s = max(seq_diff(cc.sb_start[i], una), 0)
        e = min(seq_diff(cc.sb_end[i], una), out)
        if e <= s:
            continue
        ranges.append((s, e))
    ranges.sort(key=lambda r: r[0])
    v = SbView([r[0] for r in ranges], [r[1] for r in ranges])
    v.sacked = sum(e - s for s, e in ranges)
    return v


def sb_sacked_below(v: SbView, off: int) -> int:
    n = 0
    for s, e in zip(v.s, v.e, strict=True):
        if s >= off:
            break
        n += min(e, off) - s
    return n


def sb_holes(v: SbView, frm: int, to: int) -> int:
    if to <= frm:
        return 0
    return (to - frm) - (sb_sacked_below(v, to) - sb_sacked_below(v, frm))


def sb_next_hole(v: SbView, off: int, limit: int) -> tuple[int, int] | None:
    pos = off
    for s, e in zip(v.s, v.e, strict=True):
        if e <= pos:
            continue
        if s > pos:
            if pos >= limit:
                return None
            return pos, min(s, limit)
        pos = e
    return None


def timer_age(x, now_us: int) -> int:
    """flow_timer_age (tcp_common.h): us since the retransmission timer
    restarted (x: the side record); a start up to 1 s ahead of now_us
    counts as 0."""
    d = (now_us - x.rto_start_us) & M32
    return 0 if d > 4293967295 else d


def sb_lost_limit(now_us: int, f, cc, v: SbView) -> int:
    """Offset below which holes count as lost (fp_sb_lost_limit): the
    DupThresh rule (FACK's distance with a full board), early retransmit,
    and the time rule for the head."""
    if not v.n:
        return 0
    top = v.s[-1]
    reord = cc.reord or 3
    out = f.tx_max - f.tx_una
    if f.tx_head <= f.tx_nxt and v.sacked + f.mss >= out:
        return top
    limit = 0
    need = ((reord - 1) * f.mss + 1) & M32
    above = 0
    for k in range(v.n - 1, -1, -1):
        above += v.e[k] - v.s[k]
        if above >= need:
            limit = v.s[k]
            break
    fack = v.e[-1]  # full board: the distance to the highest SACKed byte (FACK)
    if v.n == SB_RANGES and fack > need and fack - need > limit:
        limit = fack - need
    if limit < v.s[-1] and cc.srtt_us:
        mult = cc.reo_mult or 1
        reo = (cc.srtt_us // 4) * mult
        wait = (cc.srtt_us + min(reo, cc.srtt_us)) & M32
        if timer_age(cc, now_us) >= wait:
            limit = v.s[-1]
    return limit
