/*
 * sp_flow.c -- slow-path operations on shared flow records (spflow.h).
 */
#include <stddef.h>
#include <string.h>
#include <unistd.h>

#include "tas_abi.h"
#include "flowtab.h"
#include "spflow.h"
#include "ring.h"
#include "wire.h"
#include "tcp_common.h"

static struct tas_flow *get(struct tas_ft *ft, uint32_t id)
{
    return id < ft->n_flows ? &ft->flows[id] : NULL;
}

/* The flow, locked, if it is active; NULL (unlocked) otherwise. */
static struct tas_flow *lock_active(struct tas_ft *ft, uint32_t id)
{
    struct tas_flow *f = get(ft, id);
    if (!f)
        return NULL;
    tas_flow_lock(f);
    if (f->status != TAS_FLOW_ACTIVE) {
        tas_flow_unlock(f);
        return NULL;
    }
    return f;
}

/* The flow's side record (tas_abi.h struct tas_flow_cc). */
static struct tas_flow_cc *side(struct tas_ft *ft, const struct tas_flow *f)
{
    return &ft->side[f - ft->flows];
}

static uint32_t backed_off_rto(const struct tas_flow_cc *x)
{
    uint64_t rto = x->rto_us ? x->rto_us : TCP_RTO_INIT_US;
    rto <<= (x->rto_backoff > 12 ? 12 : x->rto_backoff);
    return rto > TCP_RTO_MAX_US ? TCP_RTO_MAX_US : (uint32_t)rto;
}

/* Probe timeout (RFC 8985 7.2): 2 SRTT, plus the peer's delayed-ACK
 * allowance when one segment is out, at least the scan's resolution; no
 * probe (UINT32_MAX) without an RTT sample, once one is out, against a
 * closed window or once the RTO has backed off.  In recovery the fast
 * path turns the probe into another pass over the holes (a lost
 * retransmission, RACK's job in RFC 8985 6.2). */
static uint32_t tlp_timeout(const struct tas_flow *f, const struct tas_flow_cc *x, uint32_t rto)
{
    if (!x->srtt_us || x->rto_backoff || f->snd_wnd == 0 ||
        (f->flags & (TAS_FF_TLP_OUT | TAS_FF_TLP_SEND)))
        return UINT32_MAX;
    uint32_t pto = 2u * x->srtt_us;
    if (f->tx_max - f->tx_una <= f->mss)
        pto += TCP_TLP_DELACK_US;
    if (pto < TCP_TLP_MIN_US)
        pto = TCP_TLP_MIN_US;
    return pto < rto ? pto : UINT32_MAX;
}

uint32_t tas_sp_scan_timeouts(struct tas_ft *ft, uint32_t now_us, uint32_t budget,
                              uint32_t *cursor, uint32_t *ids, uint8_t *why, uint32_t max)
{
    uint32_t n = 0;
    uint32_t i = *cursor % ft->n_flows;
    if (budget > ft->n_flows)
        budget = ft->n_flows;
    for (uint32_t k = 0; k < budget && n < max; k++, i = i + 1 == ft->n_flows ? 0 : i + 1) {
        struct tas_flow *f = &ft->flows[i];
        if (__atomic_load_n(&f->status, __ATOMIC_ACQUIRE) != TAS_FLOW_ACTIVE)
            continue;
        /* Unlocked first look (issue 5: 65k mostly idle flows, every 10 ms):
         * a flow with nothing in flight and nothing waiting to be sent has
         * no timer to fire -- skip it without its lock and without touching
         * its side record.  One that turns busy right after this read has
         * an RTO at least TCP_RTO_MIN_US away: the next pass sees it. */
        uint32_t fl = __atomic_load_n(&f->flags, __ATOMIC_RELAXED);
        if (!(f->tx_max > f->tx_una) && !(f->tx_head > f->tx_nxt) &&
            !((fl & TAS_FF_FIN_SENT) && !(fl & TAS_FF_FIN_ACKED)))
            continue;
        struct tas_flow_cc *x = &ft->side[i];
        tas_flow_lock(f);
        int outstanding = f->tx_max > f->tx_una ||
                          ((f->flags & TAS_FF_FIN_SENT) && !(f->flags & TAS_FF_FIN_ACKED));
        uint32_t elapsed = now_us - x->rto_start_us;
        /* the fast path restarts the timer with its own clock reading, which
         * may be later than ours (an ACK processed after we read the time,
         * the slow path preempted in between): a start in the near future
         * is "just restarted", not 2^32 us ago -- else a spurious RTO or
         * probe fires while ACKs flow */
        if (elapsed > TAS_SP_CLOCK_SKEW_MAX)
            elapsed = 0;
        uint32_t rto = backed_off_rto(x);
        if (f->status == TAS_FLOW_ACTIVE && elapsed >= rto) {
            if (outstanding && f->snd_wnd == 0 && f->tx_head > f->tx_una) {
                /* the peer's window is shut and our probe byte is out:
                 * probe again (persist, backed off), never give up */
                ids[n] = i;
                why[n++] = TAS_TMO_PROBE;
            } else if (outstanding) {
                ids[n] = i;
                why[n++] = TAS_TMO_RTO;
            } else if (f->snd_wnd < f->mss && f->tx_head > f->tx_nxt) {
                ids[n] = i;
                why[n++] = TAS_TMO_PROBE;
            }
        } else if (f->status == TAS_FLOW_ACTIVE && outstanding && elapsed >= tlp_timeout(f, x, rto)) {
            ids[n] = i;
            why[n++] = TAS_TMO_TLP;
        }
        tas_flow_unlock(f);
    }
    *cursor = i;
    return n;
}

int tas_sp_rto_fire(struct tas_ft *ft, uint32_t id, uint32_t now_us)
{
    struct tas_flow *f = lock_active(ft, id);
    if (!f)
        return -1;
    struct tas_flow_cc *x = side(ft, f);
    uint64_t flight = f->tx_max - f->tx_una;
    uint32_t half = (uint32_t)(flight / 2);
    x->ssthresh = half > 2u * f->mss ? half : 2u * f->mss;
    f->cwnd = f->mss;
    f->tx_nxt = f->tx_una;
    /* no fast retransmit for what was in flight (RFC 6582 "recover") */
    x->tx_recover = f->tx_max;
    f->flags &= ~(TAS_FF_FIN_OUT | TAS_FF_RECOVERY | TAS_FF_REXMIT_HEAD | TAS_FF_TLP_SEND);
    x->dupacks = 0;
    if (x->rto_backoff < 15)
        x->rto_backoff++;
    x->rto_start_us = now_us;
    x->cnt_rexmit++;
    int b = x->rto_backoff;
    tas_flow_unlock(f);
    return b;
}

int tas_sp_tlp(struct tas_ft *ft, uint32_t id)
{
    struct tas_flow *f = lock_active(ft, id);
    if (!f)
        return -1;
    f->flags |= TAS_FF_TLP_SEND | TAS_FF_TLP_OUT;
    tas_flow_unlock(f);
    return 0;
}

int tas_sp_probe(struct tas_ft *ft, uint32_t id, uint32_t now_us)
{
    struct tas_flow *f = lock_active(ft, id);
    if (!f)
        return -1;
    struct tas_flow_cc *x = side(ft, f);
    f->flags |= TAS_FF_PROBE;
    if (f->snd_wnd == 0 && f->tx_nxt > f->tx_una) {
        /* resend the probe byte at tx_una (it was beyond the window) */
        f->tx_nxt = f->tx_una;
        f->flags &= ~TAS_FF_FIN_OUT;
    }
    if (x->rto_backoff < 15)
        x->rto_backoff++;
    x->rto_start_us = now_us;
    int b = x->rto_backoff;
    tas_flow_unlock(f);
    return b;
}

int tas_sp_set_mss(struct tas_ft *ft, uint32_t id, uint32_t mss)
{
    struct tas_flow *f = get(ft, id);
    if (!f)
        return -1;
    tas_flow_lock(f);
    int old = -1;
    if (f->status == TAS_FLOW_ACTIVE && mss >= TAS_SP_MIN_MSS && mss < f->mss) {
        old = f->mss;
        f->mss = (uint16_t)mss;
        /* the segments in flight were too big and dropped on the way:
         * send them again at the new size (RFC 1191 section 6.5) */
        f->tx_nxt = f->tx_una;
        f->flags &= ~(TAS_FF_FIN_OUT | TAS_FF_REXMIT_HEAD);
    }
    tas_flow_unlock(f);
    return old;
}

/* struct tas_flow_snap is struct tas_flow followed by struct tas_flow_cc,
 * field for field (spflow.h; tests/test_abi.py compares every offset). */
_Static_assert(sizeof(struct tas_flow_snap) == sizeof(struct tas_flow) + sizeof(struct tas_flow_cc),
               "tas_flow_snap size");
_Static_assert(offsetof(struct tas_flow_snap, mode) == sizeof(struct tas_flow), "tas_flow_snap split");
_Static_assert(offsetof(struct tas_flow_snap, cwnd) == offsetof(struct tas_flow, cwnd), "tas_flow_snap cwnd");
_Static_assert(offsetof(struct tas_flow_snap, ooo_end) ==
               sizeof(struct tas_flow) + offsetof(struct tas_flow_cc, ooo_end), "tas_flow_snap ooo_end");

int tas_sp_snapshot(struct tas_ft *ft, uint32_t id, struct tas_flow_snap *out)
{
    struct tas_flow *f = get(ft, id);
    if (!f)
        return -1;
    tas_flow_lock(f);
    memcpy(out, f, sizeof(*f));
    memcpy((uint8_t *)out + sizeof(*f), side(ft, f), sizeof(struct tas_flow_cc));
    tas_flow_unlock(f);
    out->lock = 0;
    return 0;
}

int tas_sp_install(struct tas_ft *ft, uint32_t id, uint16_t gen, uint32_t flags, uint32_t ctx_id,
                   uint32_t local_ip, uint32_t remote_ip, uint16_t local_port, uint16_t remote_port,
                   const uint8_t *remote_mac, uint8_t snd_wscale, uint8_t rcv_wscale, uint16_t mss,
                   uint32_t ts_recent, uint32_t rx_off, uint32_t rx_len, uint32_t tx_off, uint32_t tx_len,
                   uint32_t appflow_off, uint32_t rx_seq0, uint32_t tx_seq0, uint32_t snd_wnd,
                   uint32_t wl1, uint32_t wl2, uint32_t rtt_us, uint32_t now_us, uint32_t core)
{
    struct tas_flow *f = get(ft, id);
    if (!f)
        return -1;
    struct tas_flow_cc *x = side(ft, f);
    /* a FREE record outside the index: no fast path touches it */
    memset(f, 0, sizeof(*f));
    memset(x, 0, sizeof(*x));
    f->gen = gen;
    f->status = TAS_FLOW_FREE;
    f->flags = flags;
    f->ts_recent = ts_recent;
    f->ctx_id = ctx_id;
    f->local_ip = local_ip;
    f->remote_ip = remote_ip;
    f->local_port = local_port;
    f->remote_port = remote_port;
    memcpy(f->remote_mac, remote_mac, 6);
    f->snd_wscale = snd_wscale;
    f->rcv_wscale = rcv_wscale;
    f->mss = mss;
    x->core = core;
    f->rx_off = rx_off;
    f->rx_len = rx_len;
    f->tx_off = tx_off;
    f->tx_len = tx_len;
    f->appflow_off = appflow_off;
    f->rx_seq0 = rx_seq0;
    f->tx_seq0 = tx_seq0;
    x->rx_adv = rx_len;
    f->snd_wnd = snd_wnd;
    x->snd_wl1 = wl1;
    x->snd_wl2 = wl2;
    f->cwnd = 10u * mss; /* RFC 6928 */
    x->ssthresh = 0x7FFFFFFF;
    x->rto_us = 1000000;
    if (rtt_us) {
        uint64_t rto = (uint64_t)rtt_us + 4u * (rtt_us / 2);
        x->srtt_us = rtt_us;
        x->rttvar_us = rtt_us / 2;
        x->rto_us = (uint32_t)(rto < 200000 ? 200000 : (rto > 0xFFFFFFFFu ? 0xFFFFFFFFu : rto));
    }
    x->rto_start_us = now_us;
    return 0;
}

int tas_sp_activate(struct tas_ft *ft, uint32_t id, uint16_t gen, uint32_t flags, uint32_t ctx_id,
                    uint32_t local_ip, uint32_t remote_ip, uint16_t local_port, uint16_t remote_port,
                    const uint8_t *remote_mac, uint8_t snd_wscale, uint8_t rcv_wscale, uint16_t mss,
                    uint32_t ts_recent, uint32_t rx_off, uint32_t rx_len, uint32_t tx_off, uint32_t tx_len,
                    uint32_t appflow_off, uint32_t rx_seq0, uint32_t tx_seq0, uint32_t snd_wnd,
                    uint32_t wl1, uint32_t wl2, uint32_t rtt_us, uint32_t now_us, uint32_t core,
                    uint32_t cc_mode, uint32_t loss_beta, void *af)
{
    if (tas_sp_install(ft, id, gen, flags, ctx_id, local_ip, remote_ip, local_port, remote_port, remote_mac,
                       snd_wscale, rcv_wscale, mss, ts_recent, rx_off, rx_len, tx_off, tx_len, appflow_off,
                       rx_seq0, tx_seq0, snd_wnd, wl1, wl2, rtt_us, now_us, core) != 0)
        return -1;
    struct tas_flow *f = get(ft, id);
    struct tas_flow_cc *x = side(ft, f);
    x->mode = cc_mode & TAS_CC_SP;
    x->loss_beta = loss_beta > 1000 ? 1000 : loss_beta;
    if (af) {
        struct tas_appflow *a = (struct tas_appflow *)af;
        memset(a, 0, sizeof(*a));
        a->flow_id = id;
        a->gen = gen;
        a->rx_off = rx_off;
        a->rx_len = rx_len;
        a->tx_off = tx_off;
        a->tx_len = tx_len;
    }
    tas_flow_lock(f);
    f->status = TAS_FLOW_ACTIVE;
    tas_flow_unlock(f);
    return tas_ft_insert(ft, id) == 0 ? 0 : -2;
}

int tas_sp_uninstall(struct tas_ft *ft, uint32_t id)
{
    if (tas_sp_set_status(ft, id, TAS_FLOW_FREE, TAS_FF_DETACHED) != 0)
        return -1;
    return tas_ft_remove(ft, id);
}

uint32_t tas_sp_send_seg(struct tas_ring *ktx, struct tas_seg *s, const uint8_t *dst_mac, uint32_t dst_ip,
                         uint16_t sport, uint16_t dport, uint32_t seq, uint32_t ack, uint8_t flags,
                         uint16_t win, uint8_t opts, uint16_t mss, uint8_t wscale, uint32_t tsval,
                         uint32_t tsecr)
{
    uint8_t e[TAS_KQ_ENTRY_SIZE];
    struct tas_ktx *k = (struct tas_ktx *)e;
    memcpy(s->dst_mac, dst_mac, 6);
    s->dst_ip = dst_ip;
    s->src_port = sport;
    s->dst_port = dport;
    s->seq = seq;
    s->ack = ack;
    s->win = win;
    s->flags = flags;
    s->opts = opts;
    if (opts & TAS_OPT_MSS)
        s->mss = mss;
    if (opts & TAS_OPT_WS)
        s->wscale = wscale;
    if (opts & TAS_OPT_TS) {
        s->tsval = tsval;
        s->tsecr = tsecr;
    }
    memset(e, 0, sizeof(e)); /* no stale stack bytes in the shared ring */
    uint32_t n = tas_build_tcp(k->data, sizeof(e) - offsetof(struct tas_ktx, data), s, NULL, 0, NULL, 0);
    if (!n)
        return 0;
    k->kind = TAS_KTX_FRAME;
    k->len = (uint16_t)n;
    return tas_ring_enqueue_n(ktx, e, 1) == 1 ? n : 0;
}

int tas_sp_tx_close(struct tas_ft *ft, uint32_t id, uint64_t tx_head)
{
    struct tas_flow *f = get(ft, id);
    int rc = -1;
    if (!f)
        return -1;
    tas_flow_lock(f);
    if (f->status == TAS_FLOW_ACTIVE && tx_head >= f->tx_head &&
        tx_head - f->tx_una <= f->tx_len) {
        if (!(f->flags & TAS_FF_TX_FIN))
            f->tx_head = tx_head;
        f->flags |= TAS_FF_TX_FIN;
        rc = 0;
    }
    tas_flow_unlock(f);
    return rc;
}

int tas_sp_close(struct tas_ft *ft, uint32_t id, uint64_t tx_head, uint64_t rx_tail, uint32_t *flags_out)
{
    struct tas_flow *f = get(ft, id);
    if (!f)
        return -2;
    int rc = -1;
    tas_flow_lock(f);
    uint32_t flags = f->flags;
    *flags_out = flags;
    uint64_t rx_head = f->rx_head;
    if (rx_head > rx_tail && rx_head > f->rx_tail) {
        rc = 1;
    } else if (f->status == TAS_FLOW_ACTIVE && tx_head >= f->tx_head && tx_head - f->tx_una <= f->tx_len) {
        if (!(flags & TAS_FF_TX_FIN))
            f->tx_head = tx_head;
        f->flags = flags | TAS_FF_TX_FIN | TAS_FF_DETACHED;
        rc = 0;
    }
    tas_flow_unlock(f);
    return rc;
}

int tas_sp_set_status(struct tas_ft *ft, uint32_t id, uint16_t status, uint32_t set_flags)
{
    struct tas_flow *f = get(ft, id);
    if (!f)
        return -1;
    tas_flow_lock(f);
    f->status = status;
    f->flags |= set_flags;
    tas_flow_unlock(f);
    return 0;
}

/* ---- congestion control side table (issue 6) ----------------------- */

/* The side records are part of the flow-table region (tas_ft_bytes counts
 * them): these two remain for callers that predate that. */
uint64_t tas_cc_table_off(uint32_t n_flows)
{
    uint64_t news = tas_ft_news_off(n_flows);
    return news ? news - (uint64_t)n_flows * sizeof(struct tas_flow_cc) : 0;
}

uint64_t tas_ft_cc_bytes(uint32_t n_flows)
{
    return tas_ft_bytes(n_flows);
}

struct tas_flow_cc *tas_cc_table(void *ft_mem, uint64_t ft_len, uint32_t n_flows)
{
    if (!ft_mem || n_flows == 0 || ft_len < tas_ft_cc_bytes(n_flows))
        return NULL;
    return (struct tas_flow_cc *)((uint8_t *)ft_mem + tas_cc_table_off(n_flows));
}

int tas_sp_cc_init(struct tas_flow_cc *cc, uint32_t n_flows, uint32_t id, uint32_t mode,
                   uint32_t loss_beta)
{
    if (!cc || id >= n_flows)
        return -1;
    /* a clean entry, except what the slow path wrote into the side record
     * at install (engine.py _install: RTT/RTO, window update, rx_adv) */
    struct tas_flow_cc *c = &cc[id], keep = *c;
    memset(c, 0, sizeof(*c));
    c->ssthresh = keep.ssthresh;
    c->srtt_us = keep.srtt_us;
    c->rttvar_us = keep.rttvar_us;
    c->rto_us = keep.rto_us;
    c->rto_start_us = keep.rto_start_us;
    c->snd_wl1 = keep.snd_wl1;
    c->snd_wl2 = keep.snd_wl2;
    c->rx_adv = keep.rx_adv;
    c->core = keep.core;
    cc[id].mode = mode & TAS_CC_SP;
    cc[id].loss_beta = loss_beta > 1000 ? 1000 : loss_beta;
    return 0;
}

int tas_sp_cc_set_mode(struct tas_ft *ft, struct tas_flow_cc *cc, uint32_t id, uint32_t mode,
                       uint32_t loss_beta)
{
    struct tas_flow *f = get(ft, id);
    if (!f || !cc)
        return -1;
    struct tas_flow_cc *c = &cc[id];
    tas_flow_lock(f);
    c->mode = (c->mode & ~(uint32_t)TAS_CC_SP) | (mode & TAS_CC_SP);
    c->loss_beta = loss_beta > 1000 ? 1000 : loss_beta;
    if (!(mode & TAS_CC_SP))
        c->pace_rate = 0;
    tas_flow_unlock(f);
    return 0;
}

uint32_t tas_sp_cc_read(struct tas_ft *ft, struct tas_flow_cc *cc, const uint32_t *ids,
                        uint32_t n, struct tas_cc_sample *out)
{
    for (uint32_t i = 0; i < n; i++) {
        struct tas_cc_sample *o = &out[i];
        memset(o, 0, sizeof(*o));
        struct tas_flow *f = get(ft, ids[i]);
        if (!f || !cc) {
            o->status = TAS_FLOW_FREE;
            continue;
        }
        struct tas_flow_cc *c = &cc[ids[i]];
        tas_flow_lock(f);
        o->acked = c->cnt_acked;
        o->ecn_bytes = c->cnt_ecn_bytes;
        o->rexmit = c->cnt_rexmit;
        o->in_flight = f->tx_nxt - f->tx_una;
        o->backlog = f->tx_head - f->tx_nxt;
        o->loss = c->cnt_loss;
        o->undo = c->cnt_undo;
        o->max_flight = c->max_flight;
        c->max_flight = (uint32_t)(o->in_flight > 0xffffffffu ? 0xffffffffu : o->in_flight);
        o->srtt_us = c->srtt_us;
        o->cwnd = f->cwnd;
        o->snd_wnd = f->snd_wnd;
        o->mss = f->mss;
        o->flags = f->flags;
        o->status = f->status;
        tas_flow_unlock(f);
    }
    return n;
}

uint32_t tas_sp_cc_write(struct tas_ft *ft, struct tas_flow_cc *cc, const uint32_t *ids,
                         uint32_t n, const uint32_t *cwnd, const uint64_t *rate,
                         const uint32_t *loss_seen)
{
    uint32_t done = 0;
    if (!cc)
        return 0;
    for (uint32_t i = 0; i < n; i++) {
        struct tas_flow *f = get(ft, ids[i]);
        if (!f)
            continue;
        struct tas_flow_cc *c = &cc[ids[i]];
        tas_flow_lock(f);
        if (f->status == TAS_FLOW_ACTIVE && (c->mode & TAS_CC_SP) && c->cnt_loss == loss_seen[i]) {
            uint32_t w = cwnd[i] < f->mss ? f->mss : cwnd[i];
            if (f->flags & TAS_FF_RECOVERY) {
                c->ssthresh = w;
            } else {
                f->cwnd = w;
                c->ssthresh = w;
            }
            c->pace_rate = rate[i];
            done++;
        }
        tas_flow_unlock(f);
    }
    return done;
}

uint32_t tas_sp_count_busy(struct tas_ft *ft, uint32_t budget)
{
    /* A hint for the timer scan's pace, read without the locks: a flow
     * that becomes busy right after we looked has an RTO at least
     * TCP_RTO_MIN_US away, longer than the idle scan interval. */
    uint32_t busy = 0;
    if (budget > ft->n_flows)
        budget = ft->n_flows;
    for (uint32_t i = 0; i < budget; i++) {
        const struct tas_flow *f = &ft->flows[i];
        if (__atomic_load_n(&f->status, __ATOMIC_ACQUIRE) != TAS_FLOW_ACTIVE)
            continue;
        uint32_t fl = __atomic_load_n(&f->flags, __ATOMIC_RELAXED);
        if (f->tx_max > f->tx_una || f->tx_head > f->tx_nxt ||
            ((fl & TAS_FF_TX_FIN) && !(fl & TAS_FF_FIN_ACKED)))
            busy++;
    }
    return busy;
}

/* ---- CC news (tas_abi.h struct tas_cc_news_hdr) --------------------- */

uint32_t tas_sp_cc_news(struct tas_ft *ft, uint32_t *ids, uint32_t max)
{
    uint32_t n = 0;
    uint32_t words = (ft->n_flows + 63u) / 64u;
    for (uint32_t i = 0; i < words && n < max; i++) {
        uint64_t *w = &ft->news_bits[i];
        uint64_t v = __atomic_load_n(w, __ATOMIC_RELAXED);
        if (!v)
            continue;
        /* take only the bits seen (and no more than fit): a bit set
         * meanwhile stays for the next call */
        uint32_t room = max - n;
        if ((uint32_t)__builtin_popcountll(v) > room) {
            uint64_t keep = 0, rest = v;
            for (uint32_t k = 0; k < room; k++) {
                keep |= rest & -rest;
                rest &= rest - 1;
            }
            v = keep;
        }
        __atomic_fetch_and(w, ~v, __ATOMIC_ACQ_REL);
        while (v) {
            ids[n++] = i * 64u + (uint32_t)__builtin_ctzll(v);
            v &= v - 1;
        }
    }
    return n;
}

uint32_t tas_sp_cc_news_arm(struct tas_ft *ft, uint32_t armed)
{
    __atomic_store_n(&ft->news->armed, armed ? 1u : 0u, __ATOMIC_SEQ_CST);
    if (!armed)
        return 0;
    /* Dekker with tas_ft_cc_news_set: after arming, is anything marked? */
    uint32_t words = (ft->n_flows + 63u) / 64u;
    for (uint32_t i = 0; i < words; i++)
        if (__atomic_load_n(&ft->news_bits[i], __ATOMIC_SEQ_CST))
            return 1;
    return 0;
}

/* ---- KRX drain (spflow.h tas_sp_krx_drain) -------------------------- */

static inline uint16_t rd16(const uint8_t *p)
{
    return (uint16_t)((p[0] << 8) | p[1]);
}

static inline void wr16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

/* The echo reply to the KRX packet entry `k` if it is an echo request to
 * local_ip (as frames.icmp_echo_reply): 1 handled (reply queued or
 * dropped on a full KTX), 0 not an echo request for us. */
static int answer_echo(const struct tas_krx *k, struct tas_ring *ktx, const uint8_t *mac, uint32_t local_ip,
                       struct tas_sp_drain_stats *st)
{
    struct tas_pkt p;
    const uint8_t *f = k->data;
    uint32_t len = k->len;
    if (len > TAS_KQ_DATA || tas_parse_frame(f, len, &p) != TAS_PK_ICMP || p.dst_ip != local_ip ||
        f[p.l4_off] != 8)
        return 0;
    uint32_t l3 = p.l3_off, l4 = p.l4_off;
    uint32_t total = rd16(f + l3 + 2);
    /* (tas_parse_frame: l4 <= l3 + total <= len and at least 8 ICMP bytes) */
    uint32_t icmp_len = l3 + total - l4;
    uint8_t e[TAS_KQ_ENTRY_SIZE];
    struct tas_ktx *t = (struct tas_ktx *)e;
    memset(e, 0, sizeof(e)); /* no stale stack bytes in the shared ring */
    uint8_t *o = t->data;
    memcpy(o, f + 6, 6);
    memcpy(o + 6, mac, 6);
    wr16(o + 12, 0x0800);
    uint8_t *ip = o + 14;
    memcpy(ip, f + l3, 20);
    memcpy(ip + 12, f + l3 + 16, 4);
    memcpy(ip + 16, f + l3 + 12, 4);
    ip[0] = 0x45;
    ip[8] = 64;
    wr16(ip + 2, (uint16_t)(20 + icmp_len));
    wr16(ip + 10, 0);
    wr16(ip + 10, tas_csum_fold(tas_csum_partial(ip, 20, 0)));
    uint8_t *icmp = ip + 20;
    memcpy(icmp, f + l4, icmp_len);
    icmp[0] = 0;
    wr16(icmp + 2, 0);
    wr16(icmp + 2, tas_csum_fold(tas_csum_partial(icmp, icmp_len, 0)));
    t->kind = TAS_KTX_FRAME;
    t->len = (uint16_t)(34 + icmp_len);
    if (tas_ring_enqueue_n(ktx, e, 1) == 1)
        st->echo_replies++;
    else
        st->ktx_full++;
    return 1;
}

uint32_t tas_sp_krx_drain(struct tas_ring *krx, struct tas_ring *ktx, uint8_t *out, uint32_t max,
                          const uint8_t *mac, uint32_t local_ip, struct tas_sp_drain_stats *st,
                          struct tas_ft *ft, uint32_t core, int evfd)
{
    uint64_t replies = st->echo_replies;
    uint32_t n = 0;
    while (n < max) {
        uint32_t want = max - n;
        uint32_t got = tas_ring_dequeue_n(krx, out + (size_t)n * TAS_KQ_ENTRY_SIZE, want);
        uint32_t kept = n;
        for (uint32_t i = n; i < n + got; i++) {
            uint8_t *e = out + (size_t)i * TAS_KQ_ENTRY_SIZE;
            const struct tas_krx *k = (const struct tas_krx *)e;
            if (k->kind == TAS_KRX_PACKET && answer_echo(k, ktx, mac, local_ip, st))
                continue;
            if (kept != i)
                memcpy(out + (size_t)kept * TAS_KQ_ENTRY_SIZE, e, TAS_KQ_ENTRY_SIZE);
            kept++;
        }
        n = kept;
        if (got < want)
            break; /* drained */
    }
    if (st->echo_replies != replies && evfd >= 0)
        tas_sp_kick(ft, core, evfd);
    return n;
}

/* ---- doorbells (tas_abi.h struct tas_cc_news_hdr) ------------------- */

void tas_sp_doorbell(struct tas_ft *ft, uint32_t state)
{
    __atomic_store_n(&ft->news->sp_armed, state, __ATOMIC_SEQ_CST);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
}

uint32_t tas_sp_kick(struct tas_ft *ft, uint32_t core, int evfd)
{
    /* Dekker with the core's arm-fence-poll-sleep: our KTX entry is
     * published before we read its armed word */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (ft && core < TAS_FP_ARMED_CORES && !__atomic_load_n(&ft->news->fp_armed[core], __ATOMIC_SEQ_CST))
        return 0;
    uint64_t one = 1;
    ssize_t r = write(evfd, &one, sizeof(one));
    (void)r;
    return 1;
}

uint32_t tas_sp_ktx_post(struct tas_ring *ktx, uint16_t kind, uint32_t flow_id, const uint8_t *data,
                         uint32_t len, struct tas_ft *ft, uint32_t core, int evfd)
{
    if (len > TAS_KQ_DATA)
        return 0;
    uint8_t e[TAS_KQ_ENTRY_SIZE];
    struct tas_ktx *k = (struct tas_ktx *)e;
    memset(e, 0, sizeof(e)); /* no stale stack bytes in the shared ring */
    k->kind = kind;
    k->len = (uint16_t)len;
    k->flow_id = flow_id;
    if (len)
        memcpy(k->data, data, len);
    uint32_t ok = tas_ring_enqueue_n(ktx, e, 1) == 1;
    if (evfd >= 0)
        tas_sp_kick(ft, core, evfd);
    return ok;
}
