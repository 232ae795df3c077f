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

void fp_txq_push(struct tas_fp *fp, uint32_t flow_id, struct tas_flow *f)
{
    if (f->flags & TAS_FF_IN_TXQ)
        return;
    uint32_t next = (fp->txq_tail + 1) % fp->txq_cap;
    if (next == fp->txq_head)
        return; /* cannot happen: capacity exceeds the number of flows */
    f->flags |= TAS_FF_IN_TXQ;
    fp->txq[fp->txq_tail] = flow_id;
    fp->txq_tail = next;
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
        /* RFC 2018: report the out-of-order ranges we hold */
        uint8_t n = 0;
        for (int i = 0; i < TAS_OOO_RANGES && n < 3; i++) {
            if (f->ooo_start[i] == f->ooo_end[i])
                continue;
            s->sack_start[n] = f->rx_seq0 + f->ooo_start[i];
            s->sack_end[n] = f->rx_seq0 + f->ooo_end[i];
            n++;
        }
        if (n) {
            s->opts |= TAS_OPT_SACK;
            s->n_sack = n;
        }
    }
}

static void after_send(struct tas_flow *f)
{
    f->flags &= ~TAS_FF_ACK_NOW;
    f->unacked_segs = 0;
    f->rx_adv = f->rx_tail + f->rx_len;
    f->cnt_tx_segs++;
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
    after_send(f);
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

static uint32_t seg_payload_max(const struct tas_flow *f);

/* Send one segment of f starting at absolute tx position pos with len
 * payload bytes (len may be 0 for a bare FIN). */
static int send_segment(struct tas_fp *fp, struct tas_flow *f, uint64_t pos,
                        uint32_t len, int fin)
{
    struct tas_seg s;
    uint8_t *buf = fp_buf(fp, f, 1);
    if (!buf)
        return -1;
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
    uint32_t smss = seg_payload_max(f);
    if (fp_write_gso(fp, fp->txbuf, n, len > smss ? smss : 0) != 0)
        return -1;
    if (pos < f->tx_max)
        fp->st->rexmit_segs++;
    fp->st->data_segs_sent++;
    after_send(f);
    return 0;
}

/* Effective payload per segment: the option bytes eat into the MSS. */
static uint32_t seg_payload_max(const struct tas_flow *f)
{
    uint32_t opts = (f->flags & TAS_FF_TS) ? 12u : 0u;
    if (f->flags & TAS_FF_SACK) {
        /* the SACK blocks seg_init adds (RFC 9293 3.7.1, RFC 6691) */
        uint32_t n = 0;
        for (int i = 0; i < TAS_OOO_RANGES && n < 3; i++)
            if (f->ooo_start[i] != f->ooo_end[i])
                n++;
        if (n)
            opts += 4 + 8 * n;
    }
    return f->mss > opts ? f->mss - opts : 1;
}

/* Transmit what flow f may send now.  Returns segments sent; *more is set
 * when the flow still has sendable data (caller requeues). */
static uint32_t tx_flow(struct tas_fp *fp, struct tas_flow *f, uint32_t budget, int *more,
                        uint64_t *due)
{
    uint32_t sent = 0;
    uint32_t smss = seg_payload_max(f);
    struct tas_flow_cc *cc = fp_cc(fp, f);
    *more = 0;
    *due = 0;

    if (f->flags & TAS_FF_REXMIT_HEAD) {
        f->flags &= ~TAS_FF_REXMIT_HEAD;
        uint64_t out = f->tx_max - f->tx_una;
        if (out > 0) {
            uint32_t len = (uint32_t)u64_min(out, smss);
            int fin = (f->flags & TAS_FF_FIN_SENT) && f->tx_una + len == f->tx_head &&
                      (f->flags & TAS_FF_TX_FIN);
            if (send_segment(fp, f, f->tx_una, len, fin) == 0) {
                f->cnt_rexmit++;
                sent++;
                if ((f->flags & TAS_FF_RECOVERY) &&
                    seq_lt(f->rexmit_nxt, (uint32_t)(f->tx_una + len)))
                    f->rexmit_nxt = (uint32_t)(f->tx_una + len);
            }
        } else if ((f->flags & TAS_FF_FIN_SENT) && !(f->flags & TAS_FF_FIN_ACKED)) {
            if (send_segment(fp, f, f->tx_una, 0, 1) == 0) {
                f->cnt_rexmit++;
                sent++;
            }
        }
    }

    if ((f->flags & TAS_FF_RECOVERY) && f->rexmit_len) {
        /* a hole the peer's SACK blocks revealed (fp_rx.c sack_holes) */
        uint32_t off = f->rexmit_nxt - (uint32_t)f->tx_una;
        uint64_t out = f->tx_max - f->tx_una;
        uint32_t len = f->rexmit_len;
        f->rexmit_len = 0;
        if (off < out && sent < budget) {
            if (len > out - off)
                len = (uint32_t)(out - off);
            if (len > smss)
                len = smss;
            uint64_t pos = f->tx_una + off;
            int fin = (f->flags & TAS_FF_FIN_SENT) && pos + len == f->tx_head &&
                      (f->flags & TAS_FF_TX_FIN);
            if (send_segment(fp, f, pos, len, fin) == 0) {
                f->cnt_rexmit++;
                fp->st->rexmit_sack++;
                f->rexmit_nxt = (uint32_t)(pos + len);
                sent++;
            }
        }
    }

    while (sent < budget) {
        uint64_t flight = f->tx_nxt - f->tx_una;
        /* limited transmit (RFC 3042): one new segment on each of the
         * first two duplicate ACKs */
        uint64_t lt = (f->flags & TAS_FF_RECOVERY) ? 0 : (uint64_t)(f->dupacks < 2 ? f->dupacks : 2) * smss;
        uint64_t wnd = u64_min((uint64_t)f->cwnd + lt, f->snd_wnd);
        uint64_t avail = f->tx_head - f->tx_nxt;
        uint64_t can = wnd > flight ? wnd - flight : 0;
        uint32_t len = (uint32_t)u64_min(u64_min(avail, can), fp_seg_max(fp, smss));

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
                    f->rto_start_us = (uint32_t)fp->now_us;
                if (send_segment(fp, f, f->tx_nxt, 0, 1) == 0) {
                    if (f->flags & TAS_FF_FIN_SENT)
                        f->cnt_rexmit++;
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
            f->rto_start_us = (uint32_t)fp->now_us;
        if (send_segment(fp, f, f->tx_nxt, len, fin) != 0)
            break;
        if (f->tx_nxt < f->tx_max)
            f->cnt_rexmit++;
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
    if (sent >= budget)
        *more = 1;
    return sent;
}

uint32_t fp_tx_run(struct tas_fp *fp, uint32_t budget)
{
    uint32_t total = 0;
    uint64_t first_due = 0;
    /* visit each queued flow at most once per run: round robin */
    uint32_t n = (fp->txq_tail + fp->txq_cap - fp->txq_head) % fp->txq_cap;
    while (n-- > 0 && total < budget) {
        uint32_t id = fp->txq[fp->txq_head];
        fp->txq_head = (fp->txq_head + 1) % fp->txq_cap;
        struct tas_flow *f = &fp->ft.flows[id];
        tas_flow_lock(f);
        f->flags &= ~TAS_FF_IN_TXQ;
        if (f->status == TAS_FLOW_ACTIVE) {
            int more = 0;
            uint64_t due = 0;
            uint32_t b = budget - total;
            if (b > FP_SEGS_PER_VISIT)
                b = FP_SEGS_PER_VISIT;
            total += tx_flow(fp, f, b, &more, &due);
            if (due && (!first_due || due < first_due))
                first_due = due;
            if (more || due)
                fp_txq_push(fp, id, f);
        }
        tas_flow_unlock(f);
    }
    fp->st->pace_due_us = first_due;
    return total;
}
