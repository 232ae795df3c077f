/*
 * fp_sack.c -- the sender's SACK scoreboard (RFC 2018, RFC 6675) kept in
 * the flow's side-table entry (struct tas_flow_cc, line 1).
 *
 * The peer's SACK blocks are merged into at most five ranges of absolute
 * tx positions (low 32 bits).  Losing a range when all five are taken only
 * costs a spurious retransmission, never correctness: the cumulative ACK
 * is the only thing that frees data.  Everything the transmit side needs
 * is computed from a sorted view relative to SND.UNA (struct fp_sb).
 */
#include "fp_internal.h"

void fp_sb_clear(struct tas_flow_cc *cc)
{
    memset(cc->sb_start, 0, sizeof(cc->sb_start));
    memset(cc->sb_end, 0, sizeof(cc->sb_end));
}

int fp_sb_empty(const struct tas_flow_cc *cc)
{
    for (int i = 0; i < TAS_SB_RANGES; i++)
        if (cc->sb_start[i] != cc->sb_end[i])
            return 0;
    return 1;
}

/* Forget what the cumulative ACK covered. */
void fp_sb_prune(struct tas_flow_cc *cc, uint32_t una)
{
    for (int i = 0; i < TAS_SB_RANGES; i++) {
        if (cc->sb_start[i] == cc->sb_end[i])
            continue;
        if (seq_le(cc->sb_end[i], una))
            cc->sb_start[i] = cc->sb_end[i] = 0;
        else if (seq_lt(cc->sb_start[i], una))
            cc->sb_start[i] = una;
    }
}

/* Merge [s, e) into the scoreboard.  With all ranges taken the board
 * keeps the lowest ranges (retransmission works upwards from SND.UNA) and
 * the highest one (its end is the forward-most SACKed byte, which the loss
 * rule measures from, fp_sb_lost_limit): a new range above the highest
 * replaces it, one below replaces the farthest of the others if it is
 * nearer, else it is dropped.  What a dropped range covered reads as a hole
 * and may be resent once more (a duplicate, never a correctness matter). */
void fp_sb_add(struct tas_flow_cc *cc, uint32_t una, uint32_t s, uint32_t e)
{
    int slot = -1;
    for (int i = 0; i < TAS_SB_RANGES; i++) {
        uint32_t rs = cc->sb_start[i], re = cc->sb_end[i];
        if (rs == re) {
            if (slot < 0)
                slot = i;
            continue;
        }
        if (seq_le(s, re) && seq_ge(e, rs)) {
            /* overlaps or touches: absorb it and look again */
            if (seq_lt(rs, s))
                s = rs;
            if (seq_gt(re, e))
                e = re;
            cc->sb_start[i] = cc->sb_end[i] = 0;
            i = -1; /* the grown range may touch others: rescan */
            slot = -1;
        }
    }
    if (slot < 0) {
        if (seq_diff(s, una) < 0)
            return;
        /* full: top is the highest range, far the highest of the others */
        int top = 0;
        for (int i = 1; i < TAS_SB_RANGES; i++)
            if (seq_gt(cc->sb_start[i], cc->sb_start[top]))
                top = i;
        int far = top == 0 ? 1 : 0;
        for (int i = 0; i < TAS_SB_RANGES; i++)
            if (i != top && seq_gt(cc->sb_start[i], cc->sb_start[far]))
                far = i;
        if (seq_gt(s, cc->sb_start[top]))
            slot = top;
        else if (seq_lt(s, cc->sb_start[far]))
            slot = far;
        else
            return;
    }
    cc->sb_start[slot] = s;
    cc->sb_end[slot] = e;
}

/* Sorted view of the scoreboard as offsets above SND.UNA, clipped to what
 * is outstanding. */
void fp_sb_view(const struct tas_flow_cc *cc, const struct tas_flow *f, struct fp_sb *v)
{
    uint32_t una = (uint32_t)f->tx_una;
    uint64_t out64 = f->tx_max - f->tx_una;
    uint32_t out = out64 > 0x7fffffffu ? 0x7fffffffu : (uint32_t)out64;
    v->n = 0;
    v->sacked = 0;
    for (int i = 0; i < TAS_SB_RANGES; i++) {
        if (cc->sb_start[i] == cc->sb_end[i])
            continue;
        int32_t s = seq_diff(cc->sb_start[i], una), e = seq_diff(cc->sb_end[i], una);
        if (s < 0)
            s = 0;
        if (e > (int32_t)out)
            e = (int32_t)out;
        if (e <= s)
            continue;
        /* insertion sort by start */
        uint32_t k = v->n++;
        while (k > 0 && v->s[k - 1] > (uint32_t)s) {
            v->s[k] = v->s[k - 1];
            v->e[k] = v->e[k - 1];
            k--;
        }
        v->s[k] = (uint32_t)s;
        v->e[k] = (uint32_t)e;
        v->sacked += (uint32_t)(e - s);
    }
}

/* SACKed bytes below offset off. */
uint32_t fp_sb_sacked_below(const struct fp_sb *v, uint32_t off)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < v->n && v->s[i] < off; i++)
        n += (v->e[i] < off ? v->e[i] : off) - v->s[i];
    return n;
}

/* Hole (not SACKed) bytes in [from, to). */
uint32_t fp_sb_holes(const struct fp_sb *v, uint32_t from, uint32_t to)
{
    if (to <= from)
        return 0;
    return (to - from) - (fp_sb_sacked_below(v, to) - fp_sb_sacked_below(v, from));
}

/* The first hole at or above off and below limit: [*hs, *he).  0 if none. */
int fp_sb_next_hole(const struct fp_sb *v, uint32_t off, uint32_t limit, uint32_t *hs, uint32_t *he)
{
    uint32_t pos = off;
    for (uint32_t i = 0; i < v->n; i++) {
        if (v->e[i] <= pos)
            continue;
        if (v->s[i] > pos) {
            if (pos >= limit)
                return 0;
            *hs = pos;
            *he = v->s[i] < limit ? v->s[i] : limit;
            return 1;
        }
        pos = v->e[i];
    }
    return 0; /* above the highest SACKed byte nothing is known lost */
}

/* Offset below which holes count as lost (RFC 6675 IsLost): enough
 * SACKed bytes above them ((DupThresh - 1) * SMSS + 1, DupThresh = the
 * reordering degree we learnt) -- with a full board, where ranges may have
 * been dropped (fp_sb_add), enough bytes up to the highest SACKed byte
 * instead (FACK, Mathis & Mahdavi 1996: after a burst loss, e.g. every
 * other segment of a slow-start overshoot, five ranges would otherwise
 * mark a few holes lost per round trip and the recovery would crawl for
 * seconds); or everything but one segment SACKed with
 * nothing new to send (early retransmit, RFC 5827); and, RACK-like (RFC
 * 8985), the head hole once it has been outstanding for longer than SRTT +
 * the reordering window (SRTT/4 per spurious recovery seen, at most SRTT)
 * with SACKed data above it.  Only the head: the send times of the later
 * holes are not kept, and under reordering they are mostly just late.
 * 0: nothing is lost. */
uint32_t fp_sb_lost_limit(const struct tas_fp *fp, const struct tas_flow *f,
                          const struct tas_flow_cc *cc, const struct fp_sb *v)
{
    if (v->n == 0)
        return 0;
    uint32_t top = v->s[v->n - 1];
    uint32_t reord = cc->reord ? cc->reord : 3u;
    uint64_t out = f->tx_max - f->tx_una;
    if (f->tx_head <= f->tx_nxt && (uint64_t)v->sacked + f->mss >= out)
        return top;
    uint32_t limit = 0;
    uint32_t need = (reord - 1u) * f->mss + 1u;
    uint32_t above = 0;
    for (uint32_t k = v->n; k-- > 0;) {
        above += v->e[k] - v->s[k];
        if (above >= need) {
            limit = v->s[k];
            break;
        }
    }
    uint32_t fack = v->e[v->n - 1];
    if (v->n == TAS_SB_RANGES && fack > need && fack - need > limit)
        limit = fack - need;
    if (limit < v->s[v->n - 1] && cc->srtt_us) {
        uint32_t mult = cc->reo_mult ? cc->reo_mult : 1u;
        uint32_t reo = (cc->srtt_us / 4u) * mult;
        uint32_t wait = cc->srtt_us + (reo < cc->srtt_us ? reo : cc->srtt_us);
        if (flow_timer_age(cc, fp->now_us) >= wait)
            limit = v->s[v->n - 1];
    }
    return limit;
}
