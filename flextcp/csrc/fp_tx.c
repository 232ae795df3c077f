/*
 * fp_tx.c -- transmit side of the fast path: segmentation of the flows'
 * tx buffers within min(cwnd, peer window), retransmission of the head
 * segment in fast recovery, zero-window probes, FIN, and ACKs.
 */
#include <errno.h>
#include <unistd.h>

#include "fp_internal.h"

int fp_write_frame(struct tas_fp *fp, const uint8_t *frame, uint32_t len)
{
    return fp_write_gso(fp, (uint8_t *)frame, len, 0);
}

/* The scheduler slot of f's context (ids out of range share the last). */
static inline uint32_t txq_slot_of(const struct tas_flow *f)
{
    return f->ctx_id < TAS_MAX_CTX ? f->ctx_id : TAS_MAX_CTX;
}

/* Context slot s to the back of the ring of contexts with queued flows. */
static void ring_append(struct tas_fp *fp, uint32_t s)
{
    fp->txc[s].ring_next = FP_NIL;
    if (fp->ring_n++)
        fp->txc[fp->ring_tail].ring_next = s;
    else
        fp->ring_head = s;
    fp->ring_tail = s;
}

/* Context slot s to the head of the ring: a context joining it is served
 * first, for FP_TX_FRESH_BYTES (a turn in progress at the head resumes
 * after it without a new quantum). */
static void ring_prepend(struct tas_fp *fp, uint32_t s)
{
    fp->txc[s].ring_next = fp->ring_head;
    if (!fp->ring_n++)
        fp->ring_tail = s;
    fp->ring_head = s;
    fp->txc[s].in_turn = 1;
    fp->txc[s].deficit = FP_TX_FRESH_BYTES;
}

/* Queue flow_id for transmission: at the tail of its context's FIFO, the
 * context at the head of the ring if it was not on it.  O(1), no
 * allocation.  TAS_FF_IN_TXQ is the shared "queued" flag (the slow path
 * clears it after a fast-path restart); txq_slot is the private truth
 * about the links, so a flag cleared behind our back never links a flow
 * twice. */
void fp_txq_push(struct tas_fp *fp, uint32_t flow_id, struct tas_flow *f)
{
    if (f->flags & TAS_FF_IN_TXQ)
        return;
    f->flags |= TAS_FF_IN_TXQ;
    if (fp->txq_slot[flow_id])
        return; /* still linked: it will be visited */
    uint32_t s = txq_slot_of(f);
    struct fp_txctx *c = &fp->txc[s];
    fp->txq_slot[flow_id] = s + 1;
    fp->txq_next[flow_id] = FP_NIL;
    if (c->n++)
        fp->txq_next[c->tail] = flow_id;
    else
        c->head = flow_id;
    c->tail = flow_id;
    if (!c->in_ring) {
        c->in_ring = 1;
        ring_prepend(fp, s);
    }
}

void fp_need_ack(struct tas_fp *fp, uint32_t flow_id, struct tas_flow *f)
{
    f->flags |= TAS_FF_ACK_NOW;
    if (f->flags & TAS_FF_IN_ACKQ)
        return;
    if (fp->n_ack >= fp->cfg.n_flows)
        return;
    f->flags |= TAS_FF_IN_ACKQ;
    fp->ackq[fp->n_ack++] = flow_id;
}

/* Hold the ACK of a lone in-order segment for FP_DELACK_US: the app's
 * reply (or any data we send) carries it (after_send clears unacked_segs),
 * and request/response traffic then costs one frame per message instead
 * of two.  A flow already queued keeps its earlier deadline; with the
 * queue full the ACK goes out at the end of this poll. */
void fp_delay_ack(struct tas_fp *fp, uint32_t flow_id, struct tas_flow *f)
{
    fp->st->acks_delayed++;
    if (f->flags & TAS_FF_IN_DELQ)
        return;
    uint32_t cap = fp->cfg.n_flows;
    if (fp->delq_n >= cap) {
        fp_need_ack(fp, flow_id, f);
        return;
    }
    uint32_t i = fp->delq_head + fp->delq_n;
    if (i >= cap)
        i -= cap;
    f->flags |= TAS_FF_IN_DELQ;
    fp->delq[i] = flow_id;
    fp->delq_due[i] = fp->now_us + FP_DELACK_US;
    fp->delq_n++;
}

/* Send the delayed ACKs whose deadline passed and that no data segment
 * carried meanwhile (unacked_segs still set); tell the poll loop when the
 * next one is due (pace_due_us: it does not sleep past it).  An entry of a
 * flow whose flag was cleared (a reinstalled flow id) is skipped. */
void fp_flush_delacks(struct tas_fp *fp)
{
    uint32_t cap = fp->cfg.n_flows;
    while (fp->delq_n) {
        uint32_t i = fp->delq_head;
        if ((int64_t)(fp->delq_due[i] - fp->now_us) > 0)
            break;
        fp->delq_head = i + 1 == cap ? 0 : i + 1;
        fp->delq_n--;
        struct tas_flow *f = &fp->ft.flows[fp->delq[i]];
        tas_flow_lock(f);
        if (f->flags & TAS_FF_IN_DELQ) {
            f->flags &= ~TAS_FF_IN_DELQ;
            if (f->unacked_segs && f->status == TAS_FLOW_ACTIVE) {
                fp_send_ack(fp, f);
                fp->st->delacks_sent++;
            }
        }
        tas_flow_unlock(f);
    }
    if (fp->delq_n) {
        uint64_t due = fp->delq_due[fp->delq_head];
        if (!fp->st->pace_due_us || due < fp->st->pace_due_us)
            fp->st->pace_due_us = due;
    }
}

/* Fill the header fields every segment of f shares. */
static void seg_init(struct tas_fp *fp, struct tas_flow *f, struct tas_seg *s)
{
    memset(s, 0, sizeof(*s));
    memcpy(s->src_mac, fp->cfg.local_mac, 6);
    memcpy(s->dst_mac, f->remote_mac, 6);
    s->src_ip = f->local_ip;
    s->dst_ip = f->remote_ip;
    s->src_port = f->local_port;
    s->dst_port = f->remote_port;
    s->ack = flow_rcv_nxt(f);
    s->win = flow_win_field(f);
    s->flags = TAS_TCP_ACK;
    if (f->flags & TAS_FF_TS) {
        s->opts |= TAS_OPT_TS;
        s->tsval = (uint32_t)(fp->now_us / 1000);
        s->tsecr = f->ts_recent;
    }
    struct tas_flow_cc *cc = fp_cc(fp, f);
    if (cc && (f->flags & TAS_FF_ECN) && (cc->mode & TAS_CC_CE))
        s->flags |= TAS_TCP_ECE;
    if (f->flags & TAS_FF_SACK) {
        /* RFC 2018: report the out-of-order ranges we hold, after a
         * duplicate we were sent (D-SACK, RFC 2883), reported once */
        uint8_t n = 0;
        if (cc && cc->dsack_start != cc->dsack_end) {
            s->sack_start[n] = f->rx_seq0 + cc->dsack_start;
            s->sack_end[n] = f->rx_seq0 + cc->dsack_end;
            n++;
            cc->dsack_start = cc->dsack_end = 0;
        }
        for (int i = 0; cc && i < TAS_OOO_RANGES && n < 3; i++) {
            if (cc->ooo_start[i] == cc->ooo_end[i])
                continue;
            s->sack_start[n] = f->rx_seq0 + cc->ooo_start[i];
            s->sack_end[n] = f->rx_seq0 + cc->ooo_end[i];
            n++;
        }
        if (n) {
            s->opts |= TAS_OPT_SACK;
            s->n_sack = n;
        }
    }
}

static void after_send(struct tas_fp *fp, struct tas_flow *f)
{
    struct tas_flow_cc *cc = fp_cc(fp, f);
    f->flags &= ~TAS_FF_ACK_NOW;
    f->unacked_segs = 0;
    cc->rx_adv = f->rx_tail + f->rx_len;
    cc->cnt_tx_segs++;
}

void fp_send_ack(struct tas_fp *fp, struct tas_flow *f)
{
    struct tas_seg s;
    seg_init(fp, f, &s);
    s.seq = f->tx_seq0 + (uint32_t)f->tx_nxt +
            ((f->flags & (TAS_FF_FIN_OUT | TAS_FF_FIN_ACKED)) ? 1u : 0u);
    uint32_t n = tas_build_tcp(fp->txbuf, sizeof(fp->txbuf), &s, NULL, 0, NULL, 0);
    if (n && fp_write_frame(fp, fp->txbuf, n) == 0)
        fp->st->acks_sent++;
    after_send(fp, f);
}

void fp_flush_acks(struct tas_fp *fp)
{
    for (uint32_t i = 0; i < fp->n_ack; i++) {
        uint32_t id = fp->ackq[i];
        struct tas_flow *f = &fp->ft.flows[id];
        tas_flow_lock(f);
        f->flags &= ~TAS_FF_IN_ACKQ;
        if ((f->flags & TAS_FF_ACK_NOW) && f->status == TAS_FLOW_ACTIVE)
            fp_send_ack(fp, f);
        tas_flow_unlock(f);
    }
    fp->n_ack = 0;
}

static uint32_t seg_payload_max(struct tas_fp *fp, const struct tas_flow *f);

/* Send one segment of f starting at absolute tx position pos with len
 * payload bytes (len may be 0 for a bare FIN). */
static int send_segment(struct tas_fp *fp, struct tas_flow *f, uint64_t pos,
                        uint32_t len, int fin)
{
    struct tas_seg s;
    uint8_t *buf = fp_buf(fp, f, 1);
    if (!buf)
        return -1;
    uint32_t smss = seg_payload_max(fp, f); /* before seg_init consumes a D-SACK */
    seg_init(fp, f, &s);
    s.seq = f->tx_seq0 + (uint32_t)pos;
    if (fin)
        s.flags |= TAS_TCP_FIN;
    if (len && pos + len == f->tx_head)
        s.flags |= TAS_TCP_PSH;
    struct tas_flow_cc *cc = fp_cc(fp, f);
    if (cc && (f->flags & TAS_FF_ECN) && len && pos >= f->tx_max) {
        /* ECT(0) on new data only, never on retransmissions (RFC 3168 6.1.5) */
        s.ip_tos = 0x02;
        if (cc->mode & TAS_CC_CWR) {
            s.flags |= TAS_TCP_CWR;
            cc->mode &= ~(uint32_t)TAS_CC_CWR;
        }
    }
    uint32_t mask = f->tx_len - 1;
    uint32_t off = (uint32_t)pos & mask;
    uint32_t first = f->tx_len - off;
    if (first > len)
        first = len;
    uint32_t n = tas_build_tcp(fp->txbuf, sizeof(fp->txbuf), &s, buf + off, first,
                               buf, len - first);
    if (!n)
        return -1;
    if (fp_write_gso(fp, fp->txbuf, n, len > smss ? smss : 0) != 0)
        return -1;
    if (pos < f->tx_max)
        fp->st->rexmit_segs++;
    fp->st->data_segs_sent++;
    after_send(fp, f);
    return 0;
}

/* Effective payload per segment: the option bytes eat into the MSS. */
static uint32_t seg_payload_max(struct tas_fp *fp, const struct tas_flow *f)
{
    uint32_t opts = (f->flags & TAS_FF_TS) ? 12u : 0u;
    if (f->flags & TAS_FF_SACK) {
        /* the SACK blocks seg_init adds (RFC 9293 3.7.1, RFC 6691) */
        uint32_t n = 0;
        const struct tas_flow_cc *cc = fp_cc(fp, f);
        if (cc && cc->dsack_start != cc->dsack_end)
            n++;
        for (int i = 0; cc && i < TAS_OOO_RANGES && n < 3; i++)
            if (cc->ooo_start[i] != cc->ooo_end[i])
                n++;
        if (n)
            opts += 4 + 8 * n;
    }
    return f->mss > opts ? f->mss - opts : 1;
}

/* Resend [pos, pos + len) (len 0: a bare FIN), the FIN too if it ends
 * there. */
static int resend(struct tas_fp *fp, struct tas_flow *f, uint64_t pos, uint32_t len)
{
    int fin = (f->flags & TAS_FF_FIN_SENT) && (f->flags & TAS_FF_TX_FIN) &&
              pos + len == f->tx_head;
    if (send_segment(fp, f, pos, len, fin) != 0)
        return -1;
    struct tas_flow_cc *cc = fp_cc(fp, f);
    cc->cnt_rexmit++;
    if (f->flags & TAS_FF_RECOVERY) {
        /* what undoing this recovery needs (fp_rx.c recovery_undo) */
        if (cc->undo_retrans == 0) {
            /* 0 means none: at ms 0 store a value no echo is below */
            uint32_t ms = (uint32_t)(fp->now_us / 1000);
            cc->rexmit_ts = ms ? ms : 0xffffffffu;
        }
        if (cc->undo_retrans < 0xffffu)
            cc->undo_retrans++;
    }
    return 0;
}

/* Tail loss probe (RFC 8985 7.3), asked for by the slow path's timer scan:
 * one new segment if the peer's window allows, else the last segment
 * again (the head if the peer SACKed the last one), so that the ACK it
 * draws reveals any loss through SACK instead of waiting for the RTO. */
static int send_tlp(struct tas_fp *fp, struct tas_flow *f, struct tas_flow_cc *cc,
                    const struct fp_sb *v, uint32_t smss)
{
    uint64_t out = f->tx_max - f->tx_una;
    uint64_t seq_flight = f->tx_nxt - f->tx_una;
    uint64_t avail = f->tx_head - f->tx_nxt;
    int r = -1;
    if (avail > 0 && f->tx_nxt == f->tx_max && f->snd_wnd > seq_flight) {
        uint32_t len = (uint32_t)u64_min(u64_min(avail, smss), f->snd_wnd - seq_flight);
        int fin = (f->flags & TAS_FF_TX_FIN) && f->tx_nxt + len == f->tx_head;
        if (f->tx_nxt == f->tx_una)
            cc->rto_start_us = (uint32_t)fp->now_us;
        r = send_segment(fp, f, f->tx_nxt, len, fin);
        if (r == 0) {
            f->tx_nxt += len;
            f->tx_max = f->tx_nxt;
            if (fin)
                f->flags |= TAS_FF_FIN_SENT | TAS_FF_FIN_OUT;
        }
    } else if (out > 0) {
        uint32_t len = (uint32_t)u64_min(out, smss);
        uint64_t pos = f->tx_max - len;
        if (v && v->n && v->e[v->n - 1] >= (uint32_t)out) {
            /* the last segment arrived: probe with the first hole */
            uint32_t hs = 0, he = 0;
            if (fp_sb_next_hole(v, 0, (uint32_t)out, &hs, &he)) {
                pos = f->tx_una + hs;
                len = he - hs < smss ? he - hs : smss;
            }
        }
        r = resend(fp, f, pos, len);
    } else if ((f->flags & TAS_FF_FIN_SENT) && !(f->flags & TAS_FF_FIN_ACKED)) {
        r = resend(fp, f, f->tx_una, 0);
    }
    if (r == 0) {
        if (cc)
            cc->cnt_tlp++;
        fp->st->tlp_probes++;
    }
    return r;
}

/* Recovery with a scoreboard (RFC 6675 section 5): retransmit the holes
 * counted lost, from the cursor rexmit_nxt up, while pipe < cwnd (the
 * first one regardless when TAS_FF_REXMIT_HEAD asks for it).  Returns
 * segments sent. */
static uint32_t tx_holes(struct tas_fp *fp, struct tas_flow *f, struct tas_flow_cc *cc,
                         const struct fp_sb *v, uint32_t smss, uint32_t budget)
{
    uint32_t sent = 0;
    uint32_t out = (uint32_t)u64_min(f->tx_max - f->tx_una, 0x7fffffffu);
    uint32_t nxt = (uint32_t)u64_min(f->tx_nxt - f->tx_una, out);
    uint32_t limit = fp_sb_lost_limit(fp, f, cc, v);
    int force = (f->flags & TAS_FF_REXMIT_HEAD) != 0;
    f->flags &= ~(uint32_t)TAS_FF_REXMIT_HEAD;
    int32_t c = seq_diff(cc->rexmit_nxt, (uint32_t)f->tx_una);
    uint32_t cur = c > 0 ? (uint32_t)c : 0;
    if (v->n == 0) {
        /* no SACK information (yet): NewReno, the head once when asked */
        if (force && out > 0 && budget > 0 && resend(fp, f, f->tx_una, out < smss ? out : smss) == 0)
            sent++;
        return sent;
    }
    if (limit > nxt)
        limit = nxt;
    if (force && cur > 0 && budget > 0) {
        /* the head once more (its last copy was lost), cursor unmoved */
        uint32_t hs, he;
        if (fp_sb_next_hole(v, 0, out, &hs, &he) && hs == 0 &&
            resend(fp, f, f->tx_una, he < smss ? he : smss) == 0) {
            fp->st->rexmit_sack++;
            sent++;
        }
        force = 0;
    }
    while (sent < budget) {
        uint32_t hs, he;
        if (!fp_sb_next_hole(v, cur, limit, &hs, &he))
            break;
        uint32_t pipe = nxt - fp_sb_sacked_below(v, nxt) - fp_sb_holes(v, hs, limit);
        uint32_t len = he - hs < smss ? he - hs : smss;
        if (!force && (uint64_t)pipe + len > f->cwnd)
            break;
        if (resend(fp, f, f->tx_una + hs, len) != 0)
            break;
        fp->st->rexmit_sack++;
        cur = hs + len;
        cc->rexmit_nxt = (uint32_t)f->tx_una + cur;
        force = 0;
        sent++;
    }
    return sent;
}

/* Transmit what flow f may send now, at most budget segments and about
 * bbudget wire bytes (retransmissions and new data; the segment that
 * crosses bbudget still goes).  Returns segments sent, *bytes the wire
 * bytes; *more is set when a budget ran out (caller requeues). */
static uint32_t tx_flow(struct tas_fp *fp, struct tas_flow *f, uint32_t budget, uint64_t bbudget,
                        uint64_t *bytes, int *more, uint64_t *due)
{
    const uint64_t wire0 = fp->st->tx_bytes; /* fp_write_gso counts every frame */
#define TX_WIRE() (fp->st->tx_bytes - wire0)
    uint32_t sent = 0;
    uint32_t smss = seg_payload_max(fp, f);
    struct tas_flow_cc *cc = fp_cc(fp, f);
    *more = 0;
    *due = 0;
    /* with a scoreboard (SACK and the side table) the window counts the
     * pipe (RFC 6675): bytes SACKed, and holes counted lost but not yet
     * resent, are out of the network */
    int sb = cc && (f->flags & TAS_FF_SACK);
    struct fp_sb v;
    if (sb) {
        if (cc->rto_backoff >= 2)
            fp_sb_clear(cc); /* repeated timeouts: trust no SACK (reneging, RFC 2018 8) */
        fp_sb_view(cc, f, &v);
    }

    if (f->flags & TAS_FF_TLP_SEND) {
        f->flags &= ~(uint32_t)TAS_FF_TLP_SEND;
        if (sb && (f->flags & TAS_FF_RECOVERY)) {
            /* recovery stalled (the head's copy lost with too few
             * segments behind it to tell): the head again, and every
             * hole after it (their copies are older than the probe
             * timeout: fp_rx.c, lost retransmissions) */
            f->flags |= TAS_FF_REXMIT_HEAD;
            cc->rexmit_nxt = (uint32_t)f->tx_una;
            cc->cnt_tlp++;
            fp->st->tlp_probes++;
        } else if (send_tlp(fp, f, cc, sb ? &v : NULL, smss) == 0) {
            sent++;
        }
    }

    if (sb && (f->flags & TAS_FF_RECOVERY)) {
        /* the byte budget as segments (holes are resent at most smss each) */
        uint32_t hb = budget > sent ? budget - sent : 0;
        uint64_t left = bbudget > TX_WIRE() ? bbudget - TX_WIRE() : 0;
        if ((left + smss - 1) / smss < hb)
            hb = (uint32_t)((left + smss - 1) / smss);
        sent += tx_holes(fp, f, cc, &v, smss, hb);
    } else if (f->flags & TAS_FF_REXMIT_HEAD) {
        f->flags &= ~TAS_FF_REXMIT_HEAD;
        uint64_t out = f->tx_max - f->tx_una;
        if (out > 0) {
            uint32_t len = (uint32_t)u64_min(out, smss);
            if (resend(fp, f, f->tx_una, len) == 0) {
                sent++;
                if ((f->flags & TAS_FF_RECOVERY) &&
                    seq_lt(cc->rexmit_nxt, (uint32_t)(f->tx_una + len)))
                    cc->rexmit_nxt = (uint32_t)(f->tx_una + len);
            }
        } else if ((f->flags & TAS_FF_FIN_SENT) && !(f->flags & TAS_FF_FIN_ACKED)) {
            if (resend(fp, f, f->tx_una, 0) == 0)
                sent++;
        }
    }

    while (sent < budget && TX_WIRE() < bbudget) {
        uint64_t seq_flight = f->tx_nxt - f->tx_una;
        uint64_t flight = seq_flight;
        uint64_t lt = 0;
        uint64_t seg_max = fp_seg_max(fp, f, smss);
        if (sb && v.n) {
            uint32_t nxt = (uint32_t)u64_min(seq_flight, 0x7fffffffu);
            if (f->tx_nxt < f->tx_max) {
                /* going back after an RTO: skip what the peer SACKed, and
                 * stop each segment at the next SACKed range */
                uint32_t skip = 0;
                for (uint32_t i = 0; i < v.n; i++) {
                    if (v.s[i] <= nxt && nxt < v.e[i]) {
                        skip = v.e[i] - nxt;
                        break;
                    }
                    if (v.s[i] > nxt) {
                        seg_max = u64_min(seg_max, v.s[i] - nxt);
                        break;
                    }
                }
                if (skip) {
                    f->tx_nxt += skip;
                    fp->st->sack_skipped += skip;
                    continue;
                }
            }
            flight = nxt - fp_sb_sacked_below(&v, nxt);
            if (f->flags & TAS_FF_RECOVERY) {
                int32_t c = seq_diff(cc->rexmit_nxt, (uint32_t)f->tx_una);
                uint32_t cur = c > 0 ? (uint32_t)c : 0;
                uint32_t limit = fp_sb_lost_limit(fp, f, cc, &v);
                if (limit > nxt)
                    limit = nxt;
                flight -= fp_sb_holes(&v, cur, limit);
            }
        } else if (!(f->flags & TAS_FF_RECOVERY)) {
            /* limited transmit (RFC 3042): one new segment on each of the
             * first two duplicate ACKs */
            lt = (uint64_t)(cc->dupacks < 2 ? cc->dupacks : 2) * smss;
        }
        if (f->tx_nxt < f->tx_max && cc && cc->prior_cwnd && !(f->flags & TAS_FF_RECOVERY))
            cc->prior_cwnd = 0; /* resending after an RTO: no undo of the last recovery */
        uint64_t cw = (uint64_t)f->cwnd + lt;
        uint64_t can_cw = cw > flight ? cw - flight : 0;
        uint64_t can_rw = f->snd_wnd > seq_flight ? f->snd_wnd - seq_flight : 0;
        uint64_t can = u64_min(can_cw, can_rw);
        uint64_t avail = f->tx_head - f->tx_nxt;
        uint32_t len = (uint32_t)u64_min(u64_min(avail, can), seg_max);
        if (len < smss && len < avail && flight > 0)
            len = 0; /* no runt cut by a window while ACKs will come (RFC 1122 4.2.3.4) */

        if (len == 0 && avail > 0 && (f->flags & TAS_FF_PROBE)) {
            /* zero-window probe: one byte past the window (RFC 9293 3.8.6.1) */
            f->flags &= ~TAS_FF_PROBE;
            len = 1;
        }
        if (len == 0) {
            int fin_due = (f->flags & TAS_FF_TX_FIN) && !(f->flags & TAS_FF_FIN_OUT) &&
                          !(f->flags & TAS_FF_FIN_ACKED) && f->tx_nxt == f->tx_head;
            if (fin_due && (can > 0 || f->snd_wnd == 0 || flight == 0)) {
                if (f->tx_nxt == f->tx_una)
                    cc->rto_start_us = (uint32_t)fp->now_us;
                if (send_segment(fp, f, f->tx_nxt, 0, 1) == 0) {
                    if (f->flags & TAS_FF_FIN_SENT)
                        cc->cnt_rexmit++;
                    f->flags |= TAS_FF_FIN_SENT | TAS_FF_FIN_OUT;
                    sent++;
                }
            }
            break;
        }
        if (cc && cc->pace_rate && fp->now_us < cc->pace_next_us) {
            /* paced (docs/CC.md): not due yet; stays queued */
            *due = cc->pace_next_us;
            fp->st->paced_waits++;
            break;
        }
        int fin = (f->flags & TAS_FF_TX_FIN) && f->tx_nxt + len == f->tx_head &&
                  !(f->flags & TAS_FF_FIN_ACKED);
        if (f->tx_nxt == f->tx_una)
            cc->rto_start_us = (uint32_t)fp->now_us;
        if (send_segment(fp, f, f->tx_nxt, len, fin) != 0)
            break;
        if (f->tx_nxt < f->tx_max)
            cc->cnt_rexmit++;
        f->tx_nxt += len;
        if (f->tx_nxt > f->tx_max)
            f->tx_max = f->tx_nxt;
        if (cc) {
            uint64_t flight_now = f->tx_nxt - f->tx_una;
            if (flight_now > cc->max_flight)
                cc->max_flight = flight_now > 0xffffffffu ? 0xffffffffu : (uint32_t)flight_now;
            if (cc->pace_rate) {
                /* next departure len/rate later; a flow that fell behind
                 * (idle, or a late poll) catches up at most the slack */
                uint64_t base = cc->pace_next_us;
                if (base + TAS_CC_PACE_SLACK_US < fp->now_us)
                    base = fp->now_us - TAS_CC_PACE_SLACK_US;
                cc->pace_next_us = base + (uint64_t)len * 1000000u / cc->pace_rate;
            }
        }
        if (fin)
            f->flags |= TAS_FF_FIN_SENT | TAS_FF_FIN_OUT;
        sent++;
    }
    *bytes = TX_WIRE();
    if (sent >= budget || *bytes >= bbudget)
        *more = 1;
    return sent;
#undef TX_WIRE
}

static uint32_t txq_pop(struct tas_fp *fp, struct fp_txctx *c)
{
    uint32_t id = c->head;
    c->head = fp->txq_next[id];
    c->n--;
    fp->txq_slot[id] = 0;
    return id;
}

/* Transmit scheduling: deficit round robin in bytes across contexts.  The
 * context at the head of the ring starts a turn with FP_TX_QUANTUM more
 * credit and serves its flows round robin (each visit at most
 * FP_TX_VISIT_BYTES and its remaining credit; a requeued flow goes to the
 * back of its context's FIFO) until its credit is spent, its FIFO is empty
 * or every flow left in it waits for its pacing time (now_us does not move
 * within a poll, so a waiting flow is not visited again); then it goes
 * to the back of the ring, or leaves it with no credit when it has no
 * flows queued.  A turn cut short by the poll's budget (budget segments,
 * FP_TX_POLL_BYTES) resumes at the next poll without a new quantum.  So a
 * context waits at most one quantum (+ one segment) per other active
 * context, whatever their flow counts.  A context joining the ring is
 * served first, for FP_TX_FRESH_BYTES (ring_prepend).  While two or more
 * contexts have had flows queued at once in the last FP_TX_SHARED_US, the
 * poll's byte budget is FP_TX_POLL_BYTES_SHARED.  Returns segments sent. */
uint32_t fp_tx_run(struct tas_fp *fp, uint32_t budget)
{
    uint32_t segs = 0;
    uint64_t bytes = 0;
    uint64_t first_due = 0;
    uint32_t idle = 0; /* consecutive turns that ended with every flow waiting */
    if (fp->ring_n >= 2)
        fp->tx_shared_until_us = fp->now_us + FP_TX_SHARED_US;
    const uint64_t poll_bytes =
        fp->now_us < fp->tx_shared_until_us ? FP_TX_POLL_BYTES_SHARED : FP_TX_POLL_BYTES;
    while (fp->ring_n && idle < fp->ring_n && segs < budget && bytes < poll_bytes) {
        uint32_t s = fp->ring_head;
        struct fp_txctx *c = &fp->txc[s];
        if (!c->in_turn) {
            c->in_turn = 1;
            c->deficit += FP_TX_QUANTUM;
        }
        int owed = c->deficit <= 0; /* still paying a past overshoot */
        uint32_t stuck = 0; /* consecutive visits that left the flow waiting (paced) here */
        while (c->n && c->deficit > 0 && stuck < c->n && segs < budget && bytes < poll_bytes) {
            uint32_t id = txq_pop(fp, c);
            struct tas_flow *f = &fp->ft.flows[id];
            uint32_t sent = 0;
            uint64_t w = 0, due = 0;
            tas_flow_lock(f);
            f->flags &= ~TAS_FF_IN_TXQ;
            if (f->status == TAS_FLOW_ACTIVE) {
                int more = 0;
                uint32_t b = budget - segs;
                if (b > FP_SEGS_PER_VISIT)
                    b = FP_SEGS_PER_VISIT;
                uint64_t cap = (uint64_t)c->deficit;
                if (cap > FP_TX_VISIT_BYTES)
                    cap = FP_TX_VISIT_BYTES;
                if (cap > poll_bytes - bytes)
                    cap = poll_bytes - bytes;
                sent = tx_flow(fp, f, b, cap, &w, &more, &due);
                if (due && (!first_due || due < first_due))
                    first_due = due;
                if (more || due)
                    fp_txq_push(fp, id, f);
            }
            tas_flow_unlock(f);
            segs += sent;
            bytes += w;
            c->deficit -= (int64_t)w;
            if (fp->txq_slot[id] == s + 1 && (due || !w))
                stuck++; /* waiting (paced), back in this FIFO */
            else if (w)
                stuck = 0;
        }
        if (c->n && c->deficit > 0 && stuck < c->n)
            break; /* the poll's budget ran out mid-turn: resume it next poll */
        /* the turn is over */
        c->in_turn = 0;
        fp->ring_head = c->ring_next;
        fp->ring_n--;
        if (c->n == 0) {
            c->deficit = 0; /* nothing queued: no credit kept */
            c->in_ring = 0;
            continue;
        }
        if (c->deficit > 0 && !owed) {
            c->deficit = 0; /* what is left only waits (paced): no credit kept */
            idle++;
        } else {
            idle = 0;
        }
        ring_append(fp, s); /* to the back of the ring */
    }
    fp->st->pace_due_us = first_due;
    return segs;
}
