/*
 * sp_flow.c -- slow-path operations on shared flow records (spflow.h).
 */
#include <string.h>

#include "tas_abi.h"
#include "flowtab.h"
#include "spflow.h"
#include "tcp_common.h"

static struct tas_flow *get(struct tas_ft *ft, uint32_t id)
{
    return id < ft->n_flows ? &ft->flows[id] : NULL;
}

static uint32_t backed_off_rto(const struct tas_flow *f)
{
    uint64_t rto = f->rto_us ? f->rto_us : TCP_RTO_INIT_US;
    rto <<= (f->rto_backoff > 12 ? 12 : f->rto_backoff);
    return rto > TCP_RTO_MAX_US ? TCP_RTO_MAX_US : (uint32_t)rto;
}

uint32_t tas_sp_scan_timeouts(struct tas_ft *ft, uint32_t now_us, uint32_t budget,
                              uint32_t *cursor, uint32_t *ids, uint8_t *why, uint32_t max)
{
    uint32_t n = 0;
    uint32_t i = *cursor % ft->n_flows;
    if (budget > ft->n_flows)
        budget = ft->n_flows;
    for (uint32_t k = 0; k < budget && n < max; k++, i = (i + 1) % ft->n_flows) {
        struct tas_flow *f = &ft->flows[i];
        if (__atomic_load_n(&f->status, __ATOMIC_ACQUIRE) != TAS_FLOW_ACTIVE)
            continue;
        tas_flow_lock(f);
        int outstanding = f->tx_max > f->tx_una ||
                          ((f->flags & TAS_FF_FIN_SENT) && !(f->flags & TAS_FF_FIN_ACKED));
        uint32_t elapsed = now_us - f->rto_start_us;
        uint32_t rto = backed_off_rto(f);
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
        }
        tas_flow_unlock(f);
    }
    *cursor = i;
    return n;
}

int tas_sp_rto_fire(struct tas_ft *ft, uint32_t id, uint32_t now_us)
{
    struct tas_flow *f = get(ft, id);
    if (!f)
        return -1;
    tas_flow_lock(f);
    if (f->status != TAS_FLOW_ACTIVE) {
        tas_flow_unlock(f);
        return -1;
    }
    uint64_t flight = f->tx_max - f->tx_una;
    uint32_t half = (uint32_t)(flight / 2);
    f->ssthresh = half > 2u * f->mss ? half : 2u * f->mss;
    f->cwnd = f->mss;
    f->tx_nxt = f->tx_una;
    f->flags &= ~(TAS_FF_FIN_OUT | TAS_FF_RECOVERY | TAS_FF_REXMIT_HEAD);
    f->dupacks = 0;
    if (f->rto_backoff < 15)
        f->rto_backoff++;
    f->rto_start_us = now_us;
    f->cnt_rexmit++;
    int b = f->rto_backoff;
    tas_flow_unlock(f);
    return b;
}

int tas_sp_probe(struct tas_ft *ft, uint32_t id, uint32_t now_us)
{
    struct tas_flow *f = get(ft, id);
    if (!f)
        return -1;
    tas_flow_lock(f);
    if (f->status != TAS_FLOW_ACTIVE) {
        tas_flow_unlock(f);
        return -1;
    }
    f->flags |= TAS_FF_PROBE;
    if (f->snd_wnd == 0 && f->tx_nxt > f->tx_una) {
        /* resend the probe byte at tx_una (it was beyond the window) */
        f->tx_nxt = f->tx_una;
        f->flags &= ~TAS_FF_FIN_OUT;
    }
    if (f->rto_backoff < 15)
        f->rto_backoff++;
    f->rto_start_us = now_us;
    int b = f->rto_backoff;
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
        f->rexmit_len = 0;
    }
    tas_flow_unlock(f);
    return old;
}

int tas_sp_snapshot(struct tas_ft *ft, uint32_t id, struct tas_flow *out)
{
    struct tas_flow *f = get(ft, id);
    if (!f)
        return -1;
    tas_flow_lock(f);
    memcpy(out, f, sizeof(*out));
    tas_flow_unlock(f);
    out->lock = 0;
    return 0;
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
