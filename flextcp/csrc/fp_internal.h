/*
 * fp_internal.h -- private state of the fast-path engine (not cdef'd).
 */
#ifndef FP_INTERNAL_H
#define FP_INTERNAL_H

#include <stdint.h>
#include <stddef.h>
#include <string.h>

#include "tas_abi.h"
#include "ring.h"
#include "flowtab.h"
#include "wire.h"
#include "fastpath.h"
#include "tcp_common.h"
#include "spflow.h"

#define FP_FRAME_MAX 2048
#define FP_RX_BATCH_MAX 64
#define FP_ATX_BATCH 64
#define FP_KTX_BATCH 32
#define FP_SEGS_PER_VISIT 16
/* Transmit scheduling (fp_tx.c fp_tx_run; docs/ARCHITECTURE.md "Transmit
 * scheduling"): deficit round robin in bytes across contexts, round robin
 * across a context's flows.  Bytes are wire bytes (frames as written,
 * headers included, a TSO super-segment once). */
#define FP_TX_QUANTUM 65536u        /* credit a context gets per round */
#define FP_TX_VISIT_BYTES 16384u    /* at most this per flow visit (one segment may overshoot) */
#define FP_TX_POLL_BYTES 262144u    /* at most this per poll (besides cfg.tx_batch segments) */
/* ... and at most this while transmit is shared: two or more contexts had
 * flows queued at once within the last FP_TX_SHARED_US (short polls, so a
 * request in the TAP queue and a reply in the ring wait less; one busy
 * context alone keeps the long polls) */
#define FP_TX_POLL_BYTES_SHARED 65536u
#define FP_TX_SHARED_US 50000u
/* a context joining the ring (no flows queued before) is served first,
 * with this much credit; what it has left then waits its DRR turn */
#define FP_TX_FRESH_BYTES 16384u
/* Delayed ACK (RFC 1122 4.2.3.2, RFC 5681 4.2): the ACK of a lone in-order
 * segment waits this long for data of ours to ride on (the app's reply to a
 * request); a second segment, a FIN, a hole or a window update is ACKed at
 * the end of the poll as before.  Far below the 200 ms the RFCs allow and
 * Linux's 40 ms minimum, so a Nagle sender waiting for it loses little. */
#define FP_DELACK_US 500u
#define FP_TXQ_SLOTS (TAS_MAX_CTX + 1) /* one per context id, the last for ids out of range */
#define FP_NIL 0xffffffffu
/* TAP offloads (IFF_VNET_HDR): every frame on the TAP fd is preceded by a
 * struct virtio_net_hdr; with TSO a data segment carries up to this many
 * payload bytes (the kernel cuts it into gso_size pieces). */
#define FP_VNET_HLEN 10
#define FP_TSO_MAX 65000u
#define FP_TXBUF_MAX (FP_TSO_MAX + 256u)

/* Drop reasons the fast path adds after the wire parser's (indices 14, 15). */
#define FP_DROP_WRONG_DST_IP 14
#define FP_DROP_WRONG_DST_MAC 15
#define FP_DROP_NO_CTX 0         /* flow whose context this core has not mapped */

struct fp_ctx {
    uint8_t *base;
    uint64_t len;
    int evfd;
    uint32_t id;
    struct tas_ring atx;        /* we consume */
    struct tas_ring arx;        /* we produce */
    uint32_t notify;            /* posted ARX entries since last kick */
    uint32_t listed;            /* on the active list */
    uint64_t strikes;           /* hostile ATX entries / ring corruptions seen */
    uint64_t strikes_reported;  /* value last posted to the slow path */
    uint64_t strike_us;         /* when it was posted */
};

/* One context's share of the transmit scheduler, indexed by the flows'
 * ctx_id (whether or not this core has the context mapped: a flow of an
 * unmapped context is still visited, it just cannot send). */
struct fp_txctx {
    uint32_t head, tail;        /* FIFO of queued flow ids, linked through tas_fp.txq_next */
    uint32_t n;                 /* flows in the FIFO */
    uint32_t ring_next;         /* next context slot in the round-robin ring */
    int64_t deficit;            /* DRR credit in bytes (negative: one segment's overshoot) */
    uint8_t in_ring;            /* on the ring (n > 0 or being served) */
    uint8_t in_turn;            /* its turn started (quantum granted), not finished */
};

/* At most one TAS_KRX_CTX_BAD report per context per this many us. */
#define FP_STRIKE_REPORT_US 1000

struct tas_fp {
    struct tas_fp_config cfg;
    struct tas_ft ft;
    struct tas_ring krx;        /* we produce */
    struct tas_ring ktx;        /* we consume */
    struct tas_fp_stats *st;
    struct fp_ctx *ctx[TAS_MAX_CTX];
    uint32_t active[TAS_MAX_CTX];   /* ids of registered contexts */
    uint32_t n_active;

    /* transmit ready queues (fp_tx.c): per flow, the next flow id in its
     * context's FIFO and the slot + 1 it is linked in (0: not linked);
     * per context slot its FIFO and DRR state; the ring of slots with
     * queued flows (FIFO, linked through fp_txctx.ring_next) */
    uint32_t *txq_next;
    uint32_t *txq_slot;
    struct fp_txctx *txc;
    uint32_t ring_head, ring_tail, ring_n;
    uint64_t tx_shared_until_us; /* transmit is shared until then (FP_TX_POLL_BYTES_SHARED) */

    /* flows that need an ACK at the end of this poll */
    uint32_t *ackq;
    uint32_t n_ack;
    /* delayed ACKs: a FIFO (deadlines are now + FP_DELACK_US, so in
     * order) of flow ids and their deadlines, n_flows slots */
    uint32_t *delq;
    uint64_t *delq_due;
    uint32_t delq_head, delq_n;

    /* per-flow "notified in this poll" stamp to coalesce ARX entries, and
     * the poll's notifications (flow ids, first kind), posted at its end
     * (fp_post_notifs): after every position the poll moves, so an app
     * that drains an entry always finds what it announces */
    uint32_t *notif_stamp;
    uint32_t poll_stamp;
    uint32_t *notifq;
    uint16_t *notifq_kind;
    uint32_t n_notif;

    uint32_t krx_posted;
    uint64_t now_us;
    struct tas_flow_cc *cc;     /* side records (= ft.side) */
    uint8_t rxbuf[FP_RX_BATCH_MAX][FP_FRAME_MAX];
    uint32_t vnet;              /* TAP fd has IFF_VNET_HDR */
    uint32_t tso;               /* send TSO4 super-segments (needs vnet) */
    uint8_t txbuf[FP_TXBUF_MAX];
    uint8_t ktxbuf[FP_KTX_BATCH][TAS_KQ_ENTRY_SIZE];
};

/* The flow's side record (tas_abi.h struct tas_flow_cc), never NULL: the
 * flow-table region always holds them (tas_ft_bytes). */
static inline struct tas_flow_cc *fp_cc(const struct tas_fp *fp, const struct tas_flow *f)
{
    return &fp->ft.side[f - fp->ft.flows];
}

/* fp_sack.c: the sender's SACK scoreboard, viewed as sorted offsets above
 * SND.UNA */
struct fp_sb {
    uint32_t n;
    uint32_t sacked;            /* bytes */
    uint32_t s[TAS_SB_RANGES], e[TAS_SB_RANGES];
};
void fp_sb_clear(struct tas_flow_cc *cc);
int fp_sb_empty(const struct tas_flow_cc *cc);
void fp_sb_prune(struct tas_flow_cc *cc, uint32_t una);
void fp_sb_add(struct tas_flow_cc *cc, uint32_t una, uint32_t s, uint32_t e);
void fp_sb_view(const struct tas_flow_cc *cc, const struct tas_flow *f, struct fp_sb *v);
uint32_t fp_sb_sacked_below(const struct fp_sb *v, uint32_t off);
uint32_t fp_sb_holes(const struct fp_sb *v, uint32_t from, uint32_t to);
int fp_sb_next_hole(const struct fp_sb *v, uint32_t off, uint32_t limit, uint32_t *hs, uint32_t *he);
uint32_t fp_sb_lost_limit(const struct tas_fp *fp, const struct tas_flow *f,
                          const struct tas_flow_cc *cc, const struct fp_sb *v);

/* fp_rx.c */
void fp_rx_frame(struct tas_fp *fp, const uint8_t *frame, uint32_t len);
/* fp_tx.c */
void fp_txq_push(struct tas_fp *fp, uint32_t flow_id, struct tas_flow *f);
uint32_t fp_tx_run(struct tas_fp *fp, uint32_t budget);
void fp_send_ack(struct tas_fp *fp, struct tas_flow *f);
void fp_flush_acks(struct tas_fp *fp);
void fp_delay_ack(struct tas_fp *fp, uint32_t flow_id, struct tas_flow *f);
void fp_flush_delacks(struct tas_fp *fp);
void fp_need_ack(struct tas_fp *fp, uint32_t flow_id, struct tas_flow *f);
int fp_write_frame(struct tas_fp *fp, const uint8_t *frame, uint32_t len);
/* fp_main.c: write one frame (gso_size > 0: a TSO4 super-segment built in
 * fp->txbuf, its TCP checksum is rewritten to the partial one) */
int fp_write_gso(struct tas_fp *fp, uint8_t *frame, uint32_t len, uint32_t gso_size);
static inline uint32_t fp_seg_max(const struct tas_fp *fp, const struct tas_flow *f, uint32_t smss)
{
    if (!fp->tso || smss >= FP_TSO_MAX)
        return smss;
    /* TSO autosizing (as Linux's tcp_tso_autosize): about 1 ms of the
     * flow's rate (cwnd / SRTT) per super-segment, at least two segments,
     * so a slow path is not hit with 64 KB line-rate bursts that overflow
     * a small bottleneck queue */
    uint64_t lim = FP_TSO_MAX;
    uint32_t srtt = fp_cc(fp, f)->srtt_us;
    if (srtt) {
        uint64_t per_ms = (uint64_t)f->cwnd * 1000u / srtt;
        if (per_ms < lim)
            lim = per_ms;
    }
    if (lim < 2u * smss)
        lim = 2u * smss;
    return (uint32_t)(lim / smss) * smss;
}
/* fp_main.c */
void fp_notify_app(struct tas_fp *fp, uint32_t flow_id, struct tas_flow *f, uint16_t kind);
void fp_to_sp_frame(struct tas_fp *fp, const uint8_t *frame, uint32_t len);
void fp_to_sp_event(struct tas_fp *fp, uint32_t flow_id, uint32_t events);
struct tas_appflow *fp_appflow(struct tas_fp *fp, struct tas_flow *f);
uint8_t *fp_buf(struct tas_fp *fp, struct tas_flow *f, int tx);

#endif
