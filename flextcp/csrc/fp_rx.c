/*
 * fp_rx.c -- receive side of the fast path: one frame at a time, called in
 * batches from tas_fp_poll().  Handles data and ACK segments of
 * synchronised flows (RFC 9293 section 3.10.7.4, "SEGMENT ARRIVES",
 * otherwise-case); SYN, RST, URG, unknown flows and non-TCP frames go to
 * the slow path whole.
 */
#include "fp_internal.h"

static const uint8_t BCAST[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};

/* Copy payload into the rx ring at absolute position pos. */
static void rx_copy(struct tas_fp *fp, struct tas_flow *f, uint64_t pos,
                    const uint8_t *src, uint32_t len)
{
    uint8_t *buf = fp_buf(fp, f, 0);
    if (!buf || len == 0)
        return;
    uint32_t mask = f->rx_len - 1;
    uint32_t off = (uint32_t)pos & mask;
    uint32_t first = f->rx_len - off;
    if (first > len)
        first = len;
    memcpy(buf + off, src, first);
    if (len > first)
        memcpy(buf, src + first, len - first);
}

/* Move range i to slot 0 (shifting the others up): slots are kept in
 * order of the most recent update, so our SACK blocks report the range
 * holding the latest segment first (RFC 2018 section 4). */
static void ooo_front(struct tas_flow_cc *o, int i)
{
    uint32_t s = o->ooo_start[i], e = o->ooo_end[i];
    for (; i > 0; i--) {
        o->ooo_start[i] = o->ooo_start[i - 1];
        o->ooo_end[i] = o->ooo_end[i - 1];
    }
    o->ooo_start[0] = s;
    o->ooo_end[0] = e;
}

/* Record [start, end) (low 32 bits of absolute rx positions) as received
 * out of order, merging with overlapping or adjacent ranges.  Returns 0 if
 * there was no room (the caller drops the data). */
static int ooo_add(struct tas_flow_cc *o, uint32_t start, uint32_t end)
{
    int free_slot = -1;
    if (!o)
        return 0; /* no side table: nowhere to keep ranges */
    for (int i = 0; i < TAS_OOO_RANGES; i++) {
        uint32_t s = o->ooo_start[i], e = o->ooo_end[i];
        if (s == e) {
            if (free_slot < 0)
                free_slot = i;
            continue;
        }
        /* overlap or adjacency */
        if (seq_le(start, e) && seq_ge(end, s)) {
            if (seq_lt(start, s))
                s = start;
            if (seq_gt(end, e))
                e = end;
            o->ooo_start[i] = s;
            o->ooo_end[i] = e;
            /* the grown range may now touch others: fold them in */
            for (int j = 0; j < TAS_OOO_RANGES; j++) {
                if (j == i || o->ooo_start[j] == o->ooo_end[j])
                    continue;
                if (seq_le(o->ooo_start[j], o->ooo_end[i]) &&
                    seq_ge(o->ooo_end[j], o->ooo_start[i])) {
                    if (seq_lt(o->ooo_start[j], o->ooo_start[i]))
                        o->ooo_start[i] = o->ooo_start[j];
                    if (seq_gt(o->ooo_end[j], o->ooo_end[i]))
                        o->ooo_end[i] = o->ooo_end[j];
                    o->ooo_start[j] = o->ooo_end[j] = 0;
                }
            }
            ooo_front(o, i);
            return 1;
        }
    }
    if (free_slot < 0)
        return 0;
    o->ooo_start[free_slot] = start;
    o->ooo_end[free_slot] = end;
    ooo_front(o, free_slot);
    return 1;
}

/* Does [start, end) overlap or touch the most recently updated range
 * (slot 0, the first SACK block of our next ACK)? */
static int ooo_extends_latest(const struct tas_flow_cc *o, uint32_t start, uint32_t end)
{
    uint32_t s = o->ooo_start[0], e = o->ooo_end[0];
    return s != e && seq_le(start, e) && seq_ge(end, s);
}

/* A duplicate arrived: report [start, end) (low 32 bits of absolute rx
 * positions) first in our next SACK option (D-SACK, RFC 2883), so a sender
 * can tell a spurious retransmission and undo. */
static void dsack_note(struct tas_fp *fp, struct tas_flow *f, uint32_t start, uint32_t end)
{
    struct tas_flow_cc *cc = fp_cc(fp, f);
    if (!cc || !(f->flags & TAS_FF_SACK) || start == end)
        return;
    cc->dsack_start = start;
    cc->dsack_end = end;
}

/* Is [start, end) all inside one out-of-order range already held? */
static int ooo_holds(const struct tas_flow_cc *o, uint32_t start, uint32_t end)
{
    if (!o)
        return 0;
    for (int i = 0; i < TAS_OOO_RANGES; i++)
        if (o->ooo_start[i] != o->ooo_end[i] && seq_ge(start, o->ooo_start[i]) &&
            seq_le(end, o->ooo_end[i]))
            return 1;
    return 0;
}

/* After in-order data advanced rx_head, absorb ranges it reached. */
static void ooo_merge(struct tas_flow *f, struct tas_flow_cc *o)
{
    int again = o != NULL;
    while (again) {
        again = 0;
        uint32_t head = (uint32_t)f->rx_head;
        for (int i = 0; i < TAS_OOO_RANGES; i++) {
            uint32_t s = o->ooo_start[i], e = o->ooo_end[i];
            if (s == e)
                continue;
            if (seq_le(s, head)) {
                if (seq_gt(e, head)) {
                    f->rx_head += (uint32_t)(e - head);
                    again = 1;
                }
                o->ooo_start[i] = o->ooo_end[i] = 0;
            }
        }
    }
}

static int ooo_empty(const struct tas_flow_cc *o)
{
    if (!o)
        return 1;
    for (int i = 0; i < TAS_OOO_RANGES; i++)
        if (o->ooo_start[i] != o->ooo_end[i])
            return 0;
    return 1;
}

/* The peer's SACK blocks (RFC 2018) of an ACK that is not old, as byte
 * offsets [s, e) above the cumulative ACK, clipped to what is outstanding
 * (out bytes).  A first block at or below the ACK, or inside the second
 * one, is a D-SACK (RFC 2883): counted (a spurious retransmission or a
 * network duplicate), reported in *dsack, not used.  Returns the number
 * of usable blocks. */
static uint32_t sack_parse(struct tas_fp *fp, struct tas_flow *f, const struct tas_pkt *p,
                           uint32_t ack, uint32_t out, uint32_t *s, uint32_t *e, int *dsack)
{
    struct tas_flow_cc *cc = fp_cc(fp, f);
    uint32_t n = 0;
    uint32_t ns = p->n_sack < 4 ? p->n_sack : 4;
    for (uint32_t i = 0; i < ns; i++) {
        int32_t so = seq_diff(p->sack_start[i], ack);
        int32_t eo = seq_diff(p->sack_end[i], ack);
        if (i == 0 && (eo <= 0 || (ns > 1 && seq_ge(p->sack_start[0], p->sack_start[1]) &&
                                   seq_le(p->sack_end[0], p->sack_end[1])))) {
            cc->cnt_dsack++;
            fp->st->rexmit_spurious++;
            *dsack = 1;
            continue;
        }
        if (eo <= 0 || so >= eo || (uint32_t)eo > out)
            continue;
        s[n] = so < 0 ? 0 : (uint32_t)so;
        e[n] = (uint32_t)eo;
        n++;
    }
    return n;
}

/* Something the slow path's control loop reads changed (cnt_acked,
 * cnt_ecn_bytes, cnt_loss, cnt_undo): mark the flow in the CC news bits so
 * the loop visits it (tas_abi.h struct tas_cc_news_hdr).  Only flows whose
 * algorithm runs there (TAS_CC_SP); the common case -- the bit is already
 * set, the loop has not taken it yet -- is one relaxed load. */
static inline void cc_news(struct tas_fp *fp, uint32_t id, const struct tas_flow_cc *cc)
{
    if (!(cc->mode & TAS_CC_SP))
        return;
    uint64_t bit = (uint64_t)1 << (id % 64u);
    if (__atomic_load_n(&fp->ft.news_bits[id / 64u], __ATOMIC_RELAXED) & bit)
        return;
    if (tas_ft_cc_news_set(fp->ft.news, id)) {
        /* the loop sleeps with nothing scheduled: wake it, once */
        uint64_t full = fp->st->krx_full;
        fp_to_sp_event(fp, id, TAS_EV_CC_NEWS);
        if (fp->st->krx_full != full)
            tas_ft_cc_news_rearm(fp->ft.news); /* not posted: the next news tries again */
    }
}

/* Fast retransmit: enter recovery (RFC 5681 / 6582).  From the scoreboard
 * (SACK, RFC 6675) the window is ssthresh and the transmit side sends lost
 * holes, then new data, while pipe < cwnd (fp_tx.c), starting with the
 * head regardless (TAS_FF_REXMIT_HEAD); from three duplicate ACKs without
 * SACK information (newreno), NewReno's inflated window and one head
 * retransmission per partial ACK. */
static void enter_recovery(struct tas_fp *fp, uint32_t id, struct tas_flow *f, int newreno)
{
    uint64_t flight = f->tx_max - f->tx_una;
    uint32_t half = (uint32_t)(flight / 2);
    struct tas_flow_cc *cc = fp_cc(fp, f);
    if (cc) {
        /* a loss event for the slow path's control loop; with TAS_CC_SP the
         * window kept is the algorithm's beta (docs/CC.md) */
        cc->cnt_loss++;
        cc_news(fp, id, cc);
        if ((cc->mode & TAS_CC_SP) && cc->loss_beta)
            half = (uint32_t)(flight * cc->loss_beta / 1000u);
        cc->cwr_until = f->tx_max; /* one reduction per window (RFC 3168 6.1.2) */
        /* undo marker: the window to restore if this was reordering */
        cc->prior_cwnd = f->cwnd > f->mss ? f->cwnd : f->mss;
        cc->prior_ssthresh = cc->ssthresh;
        cc->rexmit_ts = 0;
        cc->undo_retrans = 0;
    }
    cc->ssthresh = half > 2u * f->mss ? half : 2u * f->mss;
    f->cwnd = newreno ? cc->ssthresh + 3u * f->mss : cc->ssthresh;
    cc->tx_recover = f->tx_max;
    f->flags |= TAS_FF_RECOVERY | TAS_FF_REXMIT_HEAD;
    cc->rexmit_nxt = (uint32_t)f->tx_una;
    fp->st->rexmit_fast++;
    fp_txq_push(fp, id, f);
}

/* The last recovery was spurious (the original segments arrived, only
 * late): restore the window it cut (RFC 3522 / RFC 2883 undo) and learn
 * the reordering, so the next loss detection waits longer (RFC 8985 6.2):
 * the DupThresh grows to the degree seen, the time window by SRTT/4. */
static void recovery_undo(struct tas_fp *fp, uint32_t id, struct tas_flow *f,
                          struct tas_flow_cc *cc, uint32_t degree)
{
    if (cc->prior_cwnd > f->cwnd)
        f->cwnd = cc->prior_cwnd;
    if (cc->prior_ssthresh > cc->ssthresh)
        cc->ssthresh = cc->prior_ssthresh;
    cc->prior_cwnd = 0;
    cc->rexmit_ts = 0;
    cc->undo_retrans = 0;
    f->flags &= ~(uint32_t)TAS_FF_RECOVERY;
    cc->tx_recover = f->tx_una; /* not a loss episode: the next loss starts a recovery */
    uint32_t mss = f->mss ? f->mss : 1u;
    uint32_t segs = (degree + mss - 1u) / mss + 1u; /* SACKed segments above it, plus one */
    uint32_t cur = cc->reord ? cc->reord : 3u;
    if (segs > cur)
        cc->reord = (uint8_t)(segs > 127u ? 127u : segs);
    uint32_t mult = cc->reo_mult ? cc->reo_mult : 1u;
    cc->reo_mult = (uint8_t)(mult < 16u ? mult + 1u : 16u);
    cc->cnt_undo++;
    cc_news(fp, id, cc);
    fp->st->recovery_undo++;
    fp_txq_push(fp, id, f);
}

/* ACK field processing.  Returns 0 if the segment must be dropped. */
static int rx_ack(struct tas_fp *fp, uint32_t id, struct tas_flow *f,
                  const struct tas_pkt *p, uint32_t seg_len)
{
    /* once our FIN is acknowledged SND.UNA is past it (RFC 9293) */
    uint32_t una = flow_snd_una(f) + ((f->flags & TAS_FF_FIN_ACKED) ? 1u : 0u);
    uint32_t snd_max = flow_snd_max(f);
    uint32_t ack = p->ack;
    uint32_t events = 0;

    if (seq_gt(ack, snd_max)) {
        /* acks something not yet sent: ACK and drop (RFC 9293) */
        fp_need_ack(fp, id, f);
        return 0;
    }
    int32_t acked = seq_diff(ack, una);
    uint32_t win = (uint32_t)p->win << f->snd_wscale;
    struct tas_flow_cc *cc = fp_cc(fp, f);
    int sp_cc = cc && (cc->mode & TAS_CC_SP);
    int ece = cc && (f->flags & TAS_FF_ECN) && (p->tcp_flags & TAS_TCP_ECE);
    /* with the side table, SACK information goes to the scoreboard */
    int sb = cc && (f->flags & TAS_FF_SACK);
    uint32_t sack_s[4], sack_e[4], nsack = 0;
    int dsack = 0;
    if ((f->flags & TAS_FF_SACK) && p->n_sack && acked >= 0)
        nsack = sack_parse(fp, f, p, ack, (uint32_t)seq_diff(snd_max, ack), sack_s, sack_e,
                           &dsack);
    uint32_t degree = 0;     /* SACKed bytes above the head before this ACK */
    uint32_t first_end = 0;  /* end of the lowest SACKed range before it */
    if (sb) {
        struct fp_sb v;
        fp_sb_view(cc, f, &v);
        degree = v.sacked;
        first_end = v.n ? v.e[0] : 0;
    }

    if (acked > 0) {
        uint64_t bytes = (uint64_t)acked;
        uint64_t outstanding = f->tx_max - f->tx_una;
        if ((f->flags & TAS_FF_FIN_SENT) && ack == snd_max && bytes == outstanding + 1) {
            bytes = outstanding;
            f->flags |= TAS_FF_FIN_ACKED;
            f->flags &= ~TAS_FF_FIN_OUT;
            events |= TAS_EV_FIN_ACKED;
        }
        if (bytes > outstanding)
            bytes = outstanding;
        f->tx_una += bytes;
        if (f->tx_nxt < f->tx_una)
            f->tx_nxt = f->tx_una;
        cc->cnt_acked += bytes;
        if (ece)
            cc->cnt_ecn_bytes += bytes;
        if (sp_cc && bytes)
            cc_news(fp, id, cc);
        cc->rto_backoff = 0;
        cc->rto_start_us = (uint32_t)fp->now_us;
        f->flags &= ~(uint32_t)TAS_FF_TLP_OUT;
        if (sb)
            fp_sb_prune(cc, (uint32_t)f->tx_una);

        int ts = (f->flags & TAS_FF_TS) && (p->opts & TAS_OPT_TS) && p->tsecr != 0;
        if (ts) {
            uint32_t now_ms = (uint32_t)(fp->now_us / 1000);
            uint32_t r_ms = now_ms - p->tsecr;
            if (r_ms < 60000)
                flow_rtt_sample(cc, r_ms * 1000 + 500);
        }

        if (cc && cc->prior_cwnd && (f->flags & TAS_FF_RECOVERY)) {
            /* the first cumulative progress of a recovery: if nothing was
             * retransmitted yet, or the segment that filled the first hole
             * (and nothing after it: the echo must be that segment's, RFC
             * 7323 4.3) was sent before our first retransmission (Eifel,
             * RFC 3522), the loss was reordering */
            int filler = first_end == 0 || bytes <= first_end;
            if (cc->undo_retrans == 0 ||
                (filler && ts && cc->rexmit_ts && seq_lt(p->tsecr, cc->rexmit_ts))) {
                recovery_undo(fp, id, f, cc, degree);
            } else {
                if (filler && ts && cc->rexmit_ts && cc->reo_mult > 1) {
                    /* our copy filled it: a real loss -- the time window
                     * shrinks back by SRTT/4 (Linux resets its RACK window
                     * after recoveries without spurious ones); the learnt
                     * DupThresh stays */
                    cc->reo_mult--;
                }
                cc->rexmit_ts = 0; /* a retransmission filled it, or we cannot tell */
            }
        }

        /* window growth (NewReno, RFC 5681 / 6582) */
        uint32_t mss = f->mss;
        if (f->flags & TAS_FF_RECOVERY) {
            if (f->tx_una >= cc->tx_recover) {
                f->flags &= ~TAS_FF_RECOVERY;
                f->cwnd = cc->ssthresh;
            } else if (!sb) {
                /* partial ACK without a scoreboard: retransmit the head,
                 * deflate (RFC 6582) */
                f->flags |= TAS_FF_REXMIT_HEAD;
                f->cwnd = f->cwnd > bytes ? f->cwnd - (uint32_t)bytes : mss;
                f->cwnd += mss;
            } else if (!nsack && fp_sb_empty(cc)) {
                /* a peer that stopped sending SACK blocks: NewReno's head
                 * retransmission on a partial ACK */
                f->flags |= TAS_FF_REXMIT_HEAD;
            }
        } else if (sp_cc) {
            /* the slow path decides the window (kernel_slowpath/ccloop.py) */
        } else if (f->cwnd < cc->ssthresh) {
            f->cwnd += (uint32_t)u64_min(bytes, 2u * mss);
        } else {
            uint32_t inc = (uint32_t)(((uint64_t)mss * bytes) / (f->cwnd ? f->cwnd : 1));
            f->cwnd += inc ? inc : 1;
        }
        cc->dupacks = 0;
        if (!(f->flags & TAS_FF_DETACHED)) {
            struct tas_appflow *af = fp_appflow(fp, f);
            if (af) {
                __atomic_store_n(&af->tx_acked, f->tx_una, __ATOMIC_RELEASE);
                if (events & TAS_EV_FIN_ACKED)
                    af->flags |= TAS_AF_TX_FIN_ACKED;
            }
            fp_notify_app(fp, id, f, TAS_ARX_TX);
        }
        if (f->tx_head > f->tx_nxt || (f->flags & (TAS_FF_TX_FIN | TAS_FF_REXMIT_HEAD)))
            fp_txq_push(fp, id, f);
    } else if (acked == 0 && seg_len == 0 && !(p->tcp_flags & TAS_TCP_FIN) &&
               f->tx_max > f->tx_una && (win == f->snd_wnd || nsack)) {
        /* duplicate ACK (one carrying SACK blocks counts even if the
         * window changed, RFC 6675) */
        cc->dupacks++;
        if (sb && (nsack || !fp_sb_empty(cc))) {
            /* loss detection and sending are the scoreboard's (below) */
        } else if (cc->dupacks == 3 && !(f->flags & TAS_FF_RECOVERY)) {
            enter_recovery(fp, id, f, 1);
        } else if (cc->dupacks > 3 && (f->flags & TAS_FF_RECOVERY)) {
            f->cwnd += f->mss;
            fp_txq_push(fp, id, f);
        } else if (cc->dupacks < 3 && f->tx_head > f->tx_nxt) {
            fp_txq_push(fp, id, f); /* limited transmit (fp_tx.c) */
        }
    }

    if (sb && dsack && cc->prior_cwnd && cc->undo_retrans) {
        /* every retransmission of the episode came back as a duplicate
         * (RFC 2883 section 4.1): it was reordering or delay, undo */
        if (--cc->undo_retrans == 0)
            recovery_undo(fp, id, f, cc, degree);
    }
    if (sb && acked >= 0 && f->tx_max > f->tx_una) {
        uint32_t base = (uint32_t)f->tx_una;
        for (uint32_t i = 0; i < nsack; i++) {
            /* offsets were taken against this ACK, which is SND.UNA now */
            fp_sb_add(cc, base, base + sack_s[i], base + sack_e[i]);
        }
        struct fp_sb v;
        fp_sb_view(cc, f, &v);
        if (v.n) {
            /* repairing: in recovery, or going back after an RTO (until
             * SND.UNA passes what was out then, RFC 6582 "recover");
             * c > 0 once the head has been resent */
            int32_t c = -1;
            if (f->flags & TAS_FF_RECOVERY)
                c = seq_diff(cc->rexmit_nxt, (uint32_t)f->tx_una);
            else if (f->tx_una < cc->tx_recover)
                c = f->tx_nxt > f->tx_una;
            if (c >= 0) {
                /* lost retransmission: the head, resent, stays
                 * unacknowledged for 2 SRTT + 1 ms while SACKs arrive --
                 * resend it (RFC 8985 6.2 in spirit), and in recovery the
                 * other holes' copies, as old, with it (below) */
                if (c > 0 && cc->srtt_us &&
                    flow_timer_age(cc, fp->now_us) >= 2u * cc->srtt_us + 1000u) {
                    cc->rto_start_us = (uint32_t)fp->now_us;
                    f->flags |= TAS_FF_REXMIT_HEAD;
                    /* the other retransmissions are as old: those still
                     * not SACKed are lost too (a burst of them into a
                     * full queue) -- the cursor goes back to SND.UNA and
                     * every hole is resent within the window, not one
                     * head per 2 SRTT */
                    if (f->flags & TAS_FF_RECOVERY)
                        cc->rexmit_nxt = (uint32_t)f->tx_una;
                }
                fp_txq_push(fp, id, f);
            } else if (fp_sb_lost_limit(fp, f, cc, &v)) {
                enter_recovery(fp, id, f, 0);
            } else if (f->tx_head > f->tx_nxt) {
                fp_txq_push(fp, id, f); /* SACKed bytes left the pipe */
            }
        }
    }

    if (ece) {
        /* ECN-Echo (RFC 3168 6.1.2): counted for the control loop; once per
         * window the sender answers with CWR, and without TAS_CC_SP it
         * halves the window itself as on a loss */
        cc->cnt_ecn_acks++;
        if (f->tx_una > cc->cwr_until) {
            cc->cwr_until = f->tx_max;
            cc->mode |= TAS_CC_CWR;
            if (!sp_cc && !(f->flags & TAS_FF_RECOVERY)) {
                uint32_t half = (uint32_t)((f->tx_max - f->tx_una) / 2);
                cc->ssthresh = half > 2u * f->mss ? half : 2u * f->mss;
                f->cwnd = cc->ssthresh;
            }
        }
    }

    /* send window update (RFC 9293 SND.WL1/WL2 rule) */
    if (seq_lt(cc->snd_wl1, p->seq) ||
        (cc->snd_wl1 == p->seq && seq_le(cc->snd_wl2, ack))) {
        uint32_t old = f->snd_wnd;
        f->snd_wnd = win;
        cc->snd_wl1 = p->seq;
        cc->snd_wl2 = ack;
        if (win > old && f->tx_head > f->tx_nxt)
            fp_txq_push(fp, id, f);
    }
    if (events)
        fp_to_sp_event(fp, id, events);
    return 1;
}

static void rx_segment(struct tas_fp *fp, uint32_t id, struct tas_flow *f,
                       const uint8_t *frame, const struct tas_pkt *p)
{
    const uint8_t *payload = frame + p->payload_off;
    uint32_t plen = p->payload_len;
    int fin = (p->tcp_flags & TAS_TCP_FIN) != 0;
    uint32_t rcv_nxt = flow_rcv_nxt(f);
    uint32_t wnd = flow_rcv_wnd(f);
    uint32_t seg_len = plen + (fin ? 1 : 0);
    struct tas_flow_cc *cc = fp_cc(fp, f);

    cc->cnt_rx_segs++;
    cc->last_rx_us = (uint32_t)fp->now_us;

    /* PAWS (RFC 7323 section 5) */
    if ((f->flags & TAS_FF_TS) && (p->opts & TAS_OPT_TS) &&
        seq_lt(p->tsval, f->ts_recent)) {
        fp->st->dup_segs++;
        fp_need_ack(fp, id, f);
        return;
    }

    /* acceptability test (RFC 9293 3.10.7.4, first check) */
    int32_t off = seq_diff(p->seq, rcv_nxt);
    int ok;
    if (seg_len == 0)
        ok = wnd == 0 ? off == 0 : (off >= 0 && (uint32_t)off < wnd) || off == 0;
    else if (wnd == 0)
        ok = 0;
    else
        ok = (off >= 0 && (uint32_t)off < wnd) ||
             (off < 0 && (int64_t)off + (int64_t)seg_len > 0);
    if (!ok) {
        if (off < 0) {
            fp->st->dup_segs++;
            if (plen)
                dsack_note(fp, f, (uint32_t)f->rx_head + (uint32_t)off,
                           (uint32_t)f->rx_head + (uint32_t)off + plen);
        } else {
            fp->st->beyond_window++;
        }
        /* an unacceptable segment still carries a usable ACK if it is just
         * a pure ACK probing a closed window; RFC says ACK and drop */
        if (seg_len > 0 || off != 0)
            fp_need_ack(fp, id, f);
        if (seg_len == 0 && (p->tcp_flags & TAS_TCP_ACK))
            rx_ack(fp, id, f, p, 0);
        return;
    }

    if (!rx_ack(fp, id, f, p, plen))
        return;

    if (seg_len == 0)
        return;
    if (f->flags & TAS_FF_ECN) {
        /* CE echo, one ACK state per data segment (RFC 8257 3.2): when the
         * CE state changes, what arrived before is ACKed at once with the
         * old state; ECE is set on ACKs while the state is CE */
        int ce = (p->ip_tos & 3) == 3;
        if (ce)
            cc->cnt_ce_rx++;
        if (ce != ((cc->mode & TAS_CC_CE) != 0)) {
            if (f->unacked_segs)
                fp_send_ack(fp, f);
            cc->mode ^= TAS_CC_CE;
            f->flags |= TAS_FF_ACK_NOW; /* the new state's first ACK is not delayed */
        }
    }
    if (f->flags & TAS_FF_RX_FIN) {
        /* data or FIN after the peer's FIN: retransmission, re-ACK */
        fp_need_ack(fp, id, f);
        return;
    }

    /* trim the front (already received bytes) */
    if (off < 0) {
        uint32_t cut = (uint32_t)(-off);
        dsack_note(fp, f, (uint32_t)f->rx_head + (uint32_t)off,
                   (uint32_t)f->rx_head + (uint32_t)off + (cut < plen ? cut : plen));
        if (cut >= plen) {
            payload += plen;
            plen = 0;
        } else {
            payload += cut;
            plen -= cut;
        }
        off = 0;
    }
    /* trim the tail to the window */
    if ((uint64_t)off + plen > wnd) {
        fp->st->beyond_window++;
        plen = (uint32_t)off >= wnd ? 0 : wnd - (uint32_t)off;
        fin = 0;
    }

    uint64_t old_head = f->rx_head;
    if (off == 0) {
        int filled = !ooo_empty(cc); /* this segment may fill a hole: ACK at once */
        if (plen > 0) {
            rx_copy(fp, f, f->rx_head, payload, plen);
            f->rx_head += plen;
            ooo_merge(f, cc);
        }
        if ((p->opts & TAS_OPT_TS) && (f->flags & TAS_FF_TS))
            f->ts_recent = p->tsval;
        f->unacked_segs++;
        if (fin && ooo_empty(cc) && (uint32_t)f->rx_head == (uint32_t)(old_head + plen)) {
            f->flags |= TAS_FF_RX_FIN;
            f->flags |= TAS_FF_ACK_NOW;
            fp_to_sp_event(fp, id, TAS_EV_FIN_RCVD);
        }
        if (f->rx_head != old_head || (f->flags & TAS_FF_RX_FIN)) {
            if (!(f->flags & TAS_FF_DETACHED)) {
                struct tas_appflow *af = fp_appflow(fp, f);
                if (af) {
                    if (f->flags & TAS_FF_RX_FIN)
                        af->flags |= TAS_AF_RX_FIN;
                    __atomic_store_n(&af->rx_head, f->rx_head, __ATOMIC_RELEASE);
                }
                fp_notify_app(fp, id, f, TAS_ARX_RX);
            }
        }
        fp->st->rx_fast++;
        if (plen > 0 && !filled && ooo_empty(cc) && f->unacked_segs < 2 &&
            !(f->flags & (TAS_FF_ACK_NOW | TAS_FF_DETACHED | TAS_FF_TX_FIN)))
            fp_delay_ack(fp, id, f); /* a lone segment: our reply may carry its ACK */
        else
            fp_need_ack(fp, id, f); /* every second segment, FIN, holes filled */
    } else {
        /* out of order: keep it if we have a range for it */
        if (plen > 0) {
            uint32_t s = (uint32_t)f->rx_head + (uint32_t)off;
            if (ooo_holds(cc, s, s + plen))
                dsack_note(fp, f, s, s + plen);
            else if ((f->flags & TAS_FF_ACK_NOW) && cc && (f->flags & TAS_FF_SACK) &&
                     !ooo_extends_latest(cc, s, s + plen))
                /* an ACK of this batch is pending and this segment starts
                 * or grows another range: send that ACK now, so each range
                 * the batch touches is reported (3 blocks per ACK; one
                 * ACK at batch end would hide all but the last three:
                 * RFC 5681 4.2 wants a duplicate ACK per out-of-order
                 * segment) */
                fp_send_ack(fp, f);
            if (ooo_add(cc, s, s + plen)) {
                rx_copy(fp, f, f->rx_head + (uint32_t)off, payload, plen);
                fp->st->ooo_segs++;
            } else {
                fp->st->ooo_dropped++;
            }
        }
        /* immediate duplicate ACK tells the sender about the hole */
        f->flags |= TAS_FF_ACK_NOW;
        fp_need_ack(fp, id, f);
    }
}

void fp_rx_frame(struct tas_fp *fp, const uint8_t *frame, uint32_t len)
{
    struct tas_pkt p;
    int r = tas_parse_frame(frame, len, &p);
    fp->st->rx_frames++;
    fp->st->rx_bytes += len;
    if (r < 0) {
        if (-r < 16)
            fp->st->drops[-r]++;
        return;
    }
    if (r != TAS_PK_TCP) {
        fp_to_sp_frame(fp, frame, len);
        return;
    }
    if (memcmp(p.dst_mac, fp->cfg.local_mac, 6) != 0 && memcmp(p.dst_mac, BCAST, 6) != 0) {
        fp->st->drops[FP_DROP_WRONG_DST_MAC]++;
        return;
    }
    if (p.dst_ip != fp->cfg.local_ip) {
        fp->st->drops[FP_DROP_WRONG_DST_IP]++;
        return;
    }
    int64_t id = tas_ft_lookup(&fp->ft, p.dst_ip, p.dst_port, p.src_ip, p.src_port);
    if (id < 0 || (p.tcp_flags & (TAS_TCP_SYN | TAS_TCP_RST | TAS_TCP_URG)) ||
        !(p.tcp_flags & TAS_TCP_ACK)) {
        fp_to_sp_frame(fp, frame, len);
        return;
    }
    struct tas_flow *f = &fp->ft.flows[id];
    tas_flow_lock(f);
    if (f->status != TAS_FLOW_ACTIVE || f->remote_ip != p.src_ip ||
        f->remote_port != p.src_port || f->local_port != p.dst_port) {
        tas_flow_unlock(f);
        fp_to_sp_frame(fp, frame, len);
        return;
    }
    if (!fp_buf(fp, f, 0) || !fp_buf(fp, f, 1)) {
        /* context not (or no longer) mapped here: nothing to place data in */
        tas_flow_unlock(f);
        fp->st->drops[FP_DROP_NO_CTX]++;
        return;
    }
    rx_segment(fp, (uint32_t)id, f, frame, &p);
    tas_flow_unlock(f);
}
