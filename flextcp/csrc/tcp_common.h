/*
 * tcp_common.h -- small TCP helpers shared by the fast path and the slow
 * path's C helpers.  Mirrors flextcp/seqnum.py and flextcp/tcpmath.py.
 */
#ifndef TCP_COMMON_H
#define TCP_COMMON_H

#include <stdint.h>
#include "tas_abi.h"


#define TCP_RTO_MIN_US 200000u
#define TCP_RTO_MAX_US 60000000u
#define TCP_RTO_INIT_US 1000000u
#define TCP_MAX_WIN 65535u
#define TCP_TLP_MIN_US 10000u    /* probe timeout floor: the slow path's busy scan interval */
#define TCP_TLP_DELACK_US 40000u /* peer's delayed-ACK allowance for a lone segment (Linux: 40 ms) */

static inline int seq_lt(uint32_t a, uint32_t b) { return (int32_t)(a - b) < 0; }
static inline int seq_le(uint32_t a, uint32_t b) { return (int32_t)(a - b) <= 0; }
static inline int seq_gt(uint32_t a, uint32_t b) { return (int32_t)(a - b) > 0; }
static inline int seq_ge(uint32_t a, uint32_t b) { return (int32_t)(a - b) >= 0; }
static inline int32_t seq_diff(uint32_t a, uint32_t b) { return (int32_t)(a - b); }

static inline uint64_t u64_min(uint64_t a, uint64_t b) { return a < b ? a : b; }
static inline uint64_t u64_max(uint64_t a, uint64_t b) { return a > b ? a : b; }

/* Sequence number of the next byte we expect (FIN counts one). */
static inline uint32_t flow_rcv_nxt(const struct tas_flow *f)
{
    return f->rx_seq0 + (uint32_t)f->rx_head + ((f->flags & TAS_FF_RX_FIN) ? 1u : 0u);
}

/* Highest sequence number sent + 1 (FIN counts one). */
static inline uint32_t flow_snd_max(const struct tas_flow *f)
{
    return f->tx_seq0 + (uint32_t)f->tx_max + ((f->flags & TAS_FF_FIN_SENT) ? 1u : 0u);
}

/* Sequence number of the next new byte we send; a FIN sent (outstanding or
 * acknowledged) occupies one.  Pure ACKs carry this. */
static inline uint32_t flow_snd_nxt(const struct tas_flow *f)
{
    return f->tx_seq0 + (uint32_t)f->tx_nxt +
           ((f->flags & (TAS_FF_FIN_OUT | TAS_FF_FIN_ACKED)) ? 1u : 0u);
}

static inline uint32_t flow_snd_una(const struct tas_flow *f)
{
    return f->tx_seq0 + (uint32_t)f->tx_una;
}

/* Receive window in bytes: free buffer space.  The right edge
 * rx_tail + rx_len never moves left, so the window never shrinks. */
static inline uint32_t flow_rcv_wnd(const struct tas_flow *f)
{
    uint64_t used = f->rx_head - f->rx_tail;
    if (f->flags & TAS_FF_RX_FIN)
        return 0;
    return used >= f->rx_len ? 0 : (uint32_t)(f->rx_len - used);
}

/* Raw 16-bit window field for a segment we send. */
static inline uint16_t flow_win_field(const struct tas_flow *f)
{
    uint32_t w = flow_rcv_wnd(f);
    if (f->flags & TAS_FF_RX_FIN)
        w = (uint32_t)(f->rx_len - (f->rx_head - f->rx_tail));
    w >>= f->rcv_wscale;
    return w > TCP_MAX_WIN ? TCP_MAX_WIN : (uint16_t)w;
}

/* Microseconds since the flow's retransmission timer (re)started.  The
 * slow path also restarts it, from its own clock read a moment earlier or
 * later than ours: a start up to 1 s "in the future" counts as just now,
 * not as 2^32 us ago (TAS_SP_CLOCK_SKEW_MAX, spflow.h). */
static inline uint32_t flow_timer_age(const struct tas_flow_cc *x, uint64_t now_us)
{
    uint32_t d = (uint32_t)now_us - x->rto_start_us;
    return d > 4293967295u ? 0 : d;
}

/* RFC 6298 update with one RTT sample in microseconds (the estimator is in
 * the flow's side record). */
static inline void flow_rtt_sample(struct tas_flow_cc *f, uint32_t r)
{
    if (f->srtt_us == 0) {
        f->srtt_us = r ? r : 1;
        f->rttvar_us = r / 2;
    } else {
        uint32_t d = r > f->srtt_us ? r - f->srtt_us : f->srtt_us - r;
        f->rttvar_us = f->rttvar_us - f->rttvar_us / 4 + d / 4;
        f->srtt_us = f->srtt_us - f->srtt_us / 8 + r / 8;
        if (f->srtt_us == 0)
            f->srtt_us = 1;
    }
    uint64_t rto = (uint64_t)f->srtt_us + (uint64_t)4 * f->rttvar_us;
    if (rto < TCP_RTO_MIN_US)
        rto = TCP_RTO_MIN_US;
    if (rto > TCP_RTO_MAX_US)
        rto = TCP_RTO_MAX_US;
    f->rto_us = (uint32_t)rto;
}

#endif
