/*
 * tas_abi.h -- the one shared-memory ABI of the stack.
 *
 * Every structure that crosses a process boundary is defined here, once.
 * The cffi builder (build_native.py) feeds this file to ffi.cdef() after
 * stripping preprocessor lines other than integer #defines, so it must stay
 * "cdef-clean": no macros with arguments, no attributes (padding is
 * explicit), no inline code.  tests/test_abi.py asserts sizes and offsets.
 *
 * Who writes what is said on every field: SP = slow path (kernel_slowpath),
 * FP = fast path (flextcp, one process per core), APP = libtas in an
 * application.  Anything an APP writes is untrusted by SP and FP.
 *
 * Positions in flow buffers are absolute 64-bit byte counts since the flow
 * opened ("bytes ever written/consumed"); a buffer offset is pos & (len-1).
 * Entries that carry positions are therefore idempotent: a replayed or
 * reordered update can never move a position backwards.
 */
#ifndef TAS_ABI_H
#define TAS_ABI_H
#include <stdint.h>


#define TAS_ABI_VERSION 1
#define TAS_CACHELINE 64
#define TAS_MAX_CORES 16
#define TAS_MAX_CTX 4096
#define TAS_CTX_MAGIC 0x54415343
#define TAS_FT_MAGIC 0x54414654

/* ------------------------------------------------------------------ */
/* SPSC ring: head and tail on their own cache lines.                  */
/* Slots follow the header; slots is a power of two.                   */
/* ------------------------------------------------------------------ */
struct tas_ring_hdr {
    uint64_t head;          /* producer: entries ever enqueued */
    uint8_t pad0[56];
    uint64_t tail;          /* consumer: entries ever dequeued */
    uint8_t pad1[56];
    uint32_t slots;         /* SP at creation */
    uint32_t entry_size;    /* SP at creation, multiple of 8 */
    uint8_t pad2[56];
};

/* Process-local view of a ring.  The index of the side this process owns
 * is kept privately in `own` so a hostile peer overwriting the shared
 * header cannot make us read or write outside the ring. */
struct tas_ring {
    struct tas_ring_hdr *hdr;
    uint8_t *slots;
    uint64_t own;           /* private head (producer) or tail (consumer) */
    uint64_t mask;
    uint32_t entry_size;
    uint32_t is_producer;
    uint64_t corrupt;       /* times the peer's index was out of range */
};

/* ------------------------------------------------------------------ */
/* Application context queue entries                                    */
/* ------------------------------------------------------------------ */
#define TAS_ATX_UPDATE 1    /* new rx_tail / tx_head positions */
#define TAS_ATX_ENTRY_SIZE 32

/* APP -> FP, one ring per (context, FP core). */
struct tas_atx {
    uint32_t flow_id;       /* global flow id as given at open */
    uint16_t gen;           /* flow generation as given at open */
    uint16_t kind;          /* TAS_ATX_* */
    uint64_t rx_tail;       /* bytes the app consumed (absolute) */
    uint64_t tx_head;       /* bytes the app wrote (absolute) */
    uint64_t rsvd;
};

#define TAS_ARX_RX 1        /* rx_head moved (data or FIN) */
#define TAS_ARX_TX 2        /* tx_acked moved: send space freed */
#define TAS_ARX_ENTRY_SIZE 16

/* FP -> APP, one ring per (context, FP core). */
struct tas_arx {
    uint32_t flow_id;
    uint16_t gen;
    uint16_t kind;          /* TAS_ARX_* bits */
    uint64_t rsvd;
};

/* Stack-written, app-read per-flow block inside the context region.
 * The app may scribble on it; the stack never reads it back. */
#define TAS_AF_RX_FIN 1     /* peer sent FIN: rx_head is final */
#define TAS_AF_RESET 2      /* connection reset */
#define TAS_AF_TX_FIN_ACKED 4

struct tas_appflow {
    uint64_t rx_head;       /* FP/SP: in-order bytes placed in rx buffer */
    uint64_t tx_acked;      /* FP/SP: bytes acknowledged by the peer */
    uint32_t flags;         /* FP/SP: TAS_AF_* */
    uint32_t flow_id;
    uint32_t rx_off;        /* SP: rx buffer offset in the region */
    uint32_t rx_len;        /* SP: power of two */
    uint32_t tx_off;
    uint32_t tx_len;
    uint16_t gen;
    uint8_t pad[18];
};

/* First page of each context region.  Written by SP at creation except
 * the armed words.  FP never trusts this header: it computes the layout
 * itself (tas_ctx_layout) from values SP handed it. */
struct tas_ctx_hdr {
    uint32_t magic;
    uint32_t abi_version;
    uint64_t region_len;
    uint32_t ctx_id;
    uint32_t n_cores;
    uint32_t atx_slots;
    uint32_t arx_slots;
    uint64_t heap_off;      /* first byte usable for flow buffers */
    uint8_t pad0[24];
    uint32_t app_armed;     /* APP: 1 while it sleeps on its eventfd */
    uint8_t pad1[60];
    uint32_t fp_armed[16];  /* FP core c: 1 while it sleeps */
};

/* ------------------------------------------------------------------ */
/* Flow table (SP and FP only; apps never map it)                       */
/* ------------------------------------------------------------------ */
#define TAS_FLOW_FREE 0
#define TAS_FLOW_ACTIVE 1     /* FP handles data/ACK segments */
#define TAS_FLOW_SLOWPATH 2   /* every segment goes to SP */

#define TAS_FF_TS 1           /* timestamps negotiated */
#define TAS_FF_SACK 2         /* SACK permitted both ways */
#define TAS_FF_WSCALE 4       /* window scaling negotiated */
#define TAS_FF_ECN 8          /* SP: ECN negotiated (RFC 3168), see struct tas_flow_cc */
#define TAS_FF_RX_FIN 16      /* FP: in-order FIN received */
#define TAS_FF_TX_FIN 32      /* SP: app closed its send side at tx_head */
#define TAS_FF_FIN_SENT 64    /* FP: FIN transmitted at least once */
#define TAS_FF_FIN_ACKED 128  /* FP: our FIN acknowledged */
#define TAS_FF_IN_TXQ 256     /* FP: flow is on its core's tx ready queue */
#define TAS_FF_NODELAY 512
#define TAS_FF_RECOVERY 1024  /* FP: in fast recovery (NewReno) */
#define TAS_FF_ACK_NOW 2048   /* FP: an ACK must go out at batch end */
#define TAS_FF_DETACHED 4096  /* SP: app closed; no more app notifications */
#define TAS_FF_FIN_OUT 8192   /* FP: FIN is outstanding beyond tx_nxt */
#define TAS_FF_PROBE 16384    /* SP: send one byte past a zero window */
#define TAS_FF_REXMIT_HEAD 32768 /* FP: retransmit one segment at tx_una */
#define TAS_FF_IN_ACKQ 65536  /* FP: on this poll's ACK queue */
#define TAS_FF_TLP_SEND 131072 /* SP: send a tail loss probe (RFC 8985 7) */
#define TAS_FF_TLP_OUT 262144  /* SP: a probe is out; no other until SND.UNA advances (FP clears) */
#define TAS_FF_IN_DELQ 524288  /* FP: on the delayed-ACK queue (fp_tx.c fp_delay_ack) */

#define TAS_OOO_RANGES 8       /* receiver out-of-order ranges (struct tas_flow_cc) */
#define TAS_SB_RANGES 5       /* sender scoreboard ranges (struct tas_flow_cc) */

/* The flow record: 128 bytes, two cache lines, what the fast path needs
 * for every segment of an established flow -- classifying it (4-tuple,
 * status, generation, context), building headers (MAC, window scales, MSS,
 * sequence bases, TS echo), placing data and acknowledging it (buffer
 * offsets, the absolute positions), the peer's window and cwnd.  Everything
 * else a flow has -- RTT/RTO and the other sender state an ACK updates,
 * counters, loss recovery, ECN, reassembly -- is in its side record
 * (struct tas_flow_cc below, 320 bytes per flow id), under this record's
 * lock.  tests/test_abi.py asserts the sizes and the line of every field. */
struct tas_flow {
    /* line 0: identity and setup (SP at install), receive-side scratch (FP) */
    uint32_t lock;          /* FP/SP: spinlock: 0 free, else the holder's pid (flowtab.c) */
    uint16_t gen;           /* SP: bumped on each install */
    uint16_t status;        /* SP: TAS_FLOW_* */
    uint32_t flags;         /* FP/SP under lock: TAS_FF_* */
    uint32_t ctx_id;        /* SP: owning context */
    uint32_t local_ip;      /* SP: host byte order */
    uint32_t remote_ip;
    uint16_t local_port;
    uint16_t remote_port;
    uint8_t remote_mac[6];
    uint8_t snd_wscale;     /* SP: shift applied to the peer's windows */
    uint8_t rcv_wscale;     /* SP: shift applied to our windows */
    uint16_t mss;           /* SP: max payload per segment we send */
    uint16_t unacked_segs;  /* FP: segments received since our last ACK */
    uint32_t rx_off;        /* SP: rx buffer offset in context region */
    uint32_t rx_len;        /* SP: power of two */
    uint32_t tx_off;
    uint32_t tx_len;
    uint32_t appflow_off;   /* SP: tas_appflow offset in context region */
    uint32_t ts_recent;     /* FP: peer's TSval to echo */

    /* line 1: positions (absolute), sequence bases, windows; FP, SP under
     * lock for RTO/probes */
    uint64_t rx_head;       /* in-order bytes received */
    uint64_t rx_tail;       /* bytes the app consumed (validated) */
    uint64_t tx_head;       /* bytes the app wrote (validated) */
    uint64_t tx_una;        /* bytes acknowledged */
    uint64_t tx_nxt;        /* next byte to send */
    uint64_t tx_max;        /* highest byte ever sent + 1 */
    uint32_t rx_seq0;       /* SP: sequence number of rx byte 0 (IRS+1) */
    uint32_t tx_seq0;       /* SP: sequence number of tx byte 0 (ISS+1) */
    uint32_t snd_wnd;       /* peer's window in bytes, scaled */
    uint32_t cwnd;          /* bytes; FP grows it on ACK, SP cuts on RTO */
};

/* The per-flow side record: one 320-byte entry (five cache lines) per flow
 * id, right after the flow table (and its hash) in the flow-table region
 * (tas_ft_bytes() counts it; struct tas_ft.side, tas_cc_table()), guarded
 * by the flow record's lock.  The name is historical: it began as the
 * congestion-control side table (issue 6) and now holds every per-flow field
 * that does not fit the 128-byte record.  By line:
 *   0  sender state an ACK updates (ssthresh, RTT estimator, RTO timer,
 *      SND.WL1/WL2, dupacks), CC mode and pacing -- FP on every ACK, SP's
 *      timer scan and RTO/probe helpers;
 *   1  the advertised window edge, the recovery point and the per-flow
 *      counters -- FP on every segment in or out;
 *   2  ECN and loss-event state, SP-only setup (core) -- rare;
 *   3  the sender's SACK scoreboard and undo state (issue 4) -- FP on ACKs
 *      of SACK flows;
 *   4  the receiver's out-of-order ranges (issue 4) -- FP on out-of-order
 *      segments.
 * Congestion control: the fast path counts, the slow path
 * (kernel_slowpath/ccloop.py) decides and writes cwnd and a pacing rate
 * back, see docs/CC.md. */
#define TAS_CC_SP 1           /* SP: slow path runs CC; FP never grows cwnd */
#define TAS_CC_CE 4           /* FP: receiver: the last data segment carried CE (ECE on ACKs) */
#define TAS_CC_CWR 8          /* FP: sender: set CWR on the next new data segment */
#define TAS_CC_PACE_SLACK_US 500 /* FP: pacing credit an idle/late flow may catch up */

struct tas_flow_cc {
    /* line 0: sender state updated per ACK, timers, CC mode, pacing */
    uint32_t mode;          /* SP (CE, CWR bits: FP): TAS_CC_* */
    uint32_t max_flight;    /* FP: highest in-flight bytes since SP last read (SP resets) */
    uint32_t ssthresh;
    uint32_t srtt_us;       /* 0 until the first sample */
    uint32_t rttvar_us;
    uint32_t rto_us;
    uint32_t rto_start_us;  /* FP: when the oldest unacked byte's timer began */
    uint32_t snd_wl1;       /* seq of segment used for last window update */
    uint32_t snd_wl2;       /* ack of that segment */
    uint16_t dupacks;
    uint16_t rto_backoff;   /* SP: consecutive RTO expirations */
    uint32_t rexmit_nxt;    /* FP: SACK recovery: low 32 bits of the absolute tx
                               position below which holes were retransmitted */
    uint64_t pace_rate;     /* SP: pacing rate in bytes/s; 0 = no pacing */
    uint64_t pace_next_us;  /* FP: earliest time the next new data segment may leave */

    /* line 1: receive window edge, recovery point, counters (FP) */
    uint64_t rx_adv;        /* right edge of the window we advertised (abs) */
    uint64_t tx_recover;    /* NewReno recovery point (abs) */
    uint64_t cnt_acked;     /* FP: bytes acknowledged (for CC) */
    uint64_t cnt_rexmit;    /* FP/SP: segments retransmitted */
    uint64_t cnt_rx_segs;
    uint64_t cnt_tx_segs;
    uint32_t last_rx_us;    /* FP: time of the last segment received */
    uint32_t dsack_start;   /* FP: receiver: a duplicate to report as the first SACK block */
    uint32_t dsack_end;     /* of our next segment (RFC 2883), low 32 bits of absolute rx
                               positions [start, end); start == end: none */
    uint32_t cnt_dsack;     /* FP: D-SACKs received (RFC 2883): spurious retransmissions */

    /* line 2: ECN and loss events, SP-only setup */
    uint64_t cnt_ecn_bytes; /* FP: bytes newly acked by ACKs carrying ECE */
    uint64_t cwr_until;     /* FP: no new ECN reaction/CWR until tx_una passes this */
    uint32_t loss_beta;     /* SP: with TAS_CC_SP, window kept on entering recovery,
                               per mille of in-flight (0: 500, NewReno) */
    uint32_t cnt_loss;      /* FP: loss events (fast-recovery entries) */
    uint32_t cnt_ecn_acks;  /* FP: ACKs carrying ECE */
    uint32_t cnt_ce_rx;     /* FP: data segments received with CE */
    uint16_t core;          /* SP: home FP core (TX); the fast path never reads it */
    uint16_t rsvd0;
    uint32_t rsvd1[7];      /* free */

    /* line 3: sender loss recovery (issue 4, docs/RELIABILITY.md), FP.
     * The scoreboard holds what the peer SACKed above SND.UNA as up to 5
     * ranges [start, end) of low 32 bits of absolute tx positions
     * (start == end: empty); RFC 6675 pipe, loss marking and the
     * SACK-skipping go-back-N after an RTO are computed from it. */
    uint32_t sb_start[5];
    uint32_t sb_end[5];
    uint32_t prior_cwnd;    /* FP: undo marker: cwnd before the last recovery, 0: none */
    uint32_t prior_ssthresh;
    uint32_t rexmit_ts;     /* FP: our TSval (ms) at the episode's first retransmission, 0: none */
    uint16_t undo_retrans;  /* FP: retransmissions of the episode not yet D-SACKed */
    uint8_t reord;          /* FP: reordering degree in segments, the DupThresh (0: 3) */
    uint8_t reo_mult;       /* FP: RACK reordering window in SRTT/4 units (0: 1) */
    uint32_t cnt_undo;      /* FP: recoveries found spurious and undone */
    uint32_t cnt_tlp;       /* FP: tail loss probes sent */

    /* line 4: receiver reassembly (FP): out-of-order ranges [start, end) as
     * the low 32 bits of absolute rx positions (start == end: empty), most
     * recently updated first; their bytes sit in the rx buffer already */
    uint32_t ooo_start[8];
    uint32_t ooo_end[8];
};

/* CC news (issues 5/6, docs/CC.md "Work proportional to news"): after the
 * side records, 64-byte aligned, one header line and then one bit per flow
 * id in 64-bit words ((n_flows + 63) / 64 of them, the region rounded up to
 * 64 bytes).  The fast path sets a flow's bit when it counts something the
 * control loop reads (cnt_acked, cnt_ecn_bytes, cnt_loss, cnt_undo) for a
 * flow with TAS_CC_SP: a relaxed load first, an atomic OR only when the bit
 * is clear (several cores may share a word).  The slow path takes the set
 * bits atomically (tas_sp_cc_news) and runs the algorithm of those flows
 * only.  `armed`: the slow path's loop sleeps with nothing scheduled; the
 * fast path core that sets a bit and finds it armed clears it and posts one
 * TAS_KRX_FLOW event with TAS_EV_CC_NEWS (re-arming if the queue was full). */
/* The same line carries the doorbell words between the slow path and the
 * fast paths (the wake-up protocol of the apps' doorbells, DESIGN.md 7):
 * `sp_armed` -- TAS_SP_ARMED: the slow path may sleep, a core that posted
 * KRX entries exchanges it for TAS_SP_AWAKE and writes the slow path's
 * eventfd (one write per sleep); TAS_SP_AWAKE: it is draining or will look
 * at KRX again before it sleeps (no write); 0: it does not take part (a
 * write for every poll that posted, as before).  `fp_armed[c]`: fast-path
 * core c (< TAS_FP_ARMED_CORES) sleeps; the slow path writes its eventfd
 * after a KTX entry only then (tas_sp_kick; higher cores always). */
#define TAS_SP_ARMED 1
#define TAS_SP_AWAKE 2
#define TAS_FP_ARMED_CORES 14
struct tas_cc_news_hdr {
    uint32_t armed;         /* SP sets (sleeping), FP clears (posting the wake-up) */
    uint32_t sp_armed;      /* SP sets, FP exchanges (see above) */
    uint32_t fp_armed[14];  /* FP core c: 1 while it sleeps (tas_fp_set_armed) */
};

/* Flow table region header.  Hash slots follow the flow records. */
struct tas_ft_hdr {
    uint32_t magic;
    uint32_t abi_version;
    uint32_t n_flows;       /* SP */
    uint32_t n_hash;        /* SP: power of two, >= 2 * n_flows */
    uint64_t flows_off;
    uint64_t hash_off;
    uint8_t pad[32];
};

/* ------------------------------------------------------------------ */
/* Slow-path queues (one pair per FP core)                              */
/* ------------------------------------------------------------------ */
#define TAS_KQ_ENTRY_SIZE 2048
#define TAS_KQ_DATA 2016

#define TAS_KRX_PACKET 1      /* a frame the fast path does not handle */
#define TAS_KRX_FLOW 2        /* flow event(s), bits in `events` */
#define TAS_KRX_CTX_BAD 3     /* context `flow_id` made `events` hostile ATX entries (cumulative, this core) */

#define TAS_EV_FIN_RCVD 1     /* in-order FIN received */
#define TAS_EV_FIN_ACKED 2    /* our FIN was acknowledged */
#define TAS_EV_APP_GONE 4
#define TAS_EV_CC_NEWS 8      /* a flow has CC news and the slow path's CC loop was asleep (struct tas_cc_news_hdr) */

/* FP -> SP */
struct tas_krx {
    uint16_t kind;
    uint16_t len;           /* frame bytes in data[] */
    uint32_t flow_id;       /* TAS_KRX_FLOW */
    uint32_t events;        /* TAS_EV_* */
    uint32_t core;
    uint64_t now_us;
    uint64_t rsvd;
    uint8_t data[2016];
};

#define TAS_KTX_FRAME 1       /* transmit data[0:len] as is */
#define TAS_KTX_KICK 2        /* flow_id needs transmit attention */
#define TAS_KTX_RX 4          /* process data[0:len] as a received frame */

/* SP -> FP */
struct tas_ktx {
    uint16_t kind;
    uint16_t len;
    uint32_t flow_id;
    uint32_t rsvd0;
    uint32_t rsvd1;
    uint64_t rsvd2;
    uint64_t rsvd3;
    uint8_t data[2016];
};

/* ------------------------------------------------------------------ */
/* Per-FP-core counters, in a shared region SP reads for `tas stats`.   */
/* ------------------------------------------------------------------ */
struct tas_fp_stats {
    uint64_t polls;           /* loop iterations */
    uint64_t busy_polls;      /* iterations that did work */
    uint64_t sleeps;          /* times the core blocked */
    uint64_t rx_frames;
    uint64_t rx_bytes;
    uint64_t tx_frames;
    uint64_t tx_bytes;
    uint64_t rx_fast;         /* segments handled entirely on the fast path */
    uint64_t to_slowpath;     /* frames handed to SP */
    uint64_t krx_full;        /* frames dropped: SP queue full */
    uint64_t acks_sent;
    uint64_t data_segs_sent;
    uint64_t rexmit_fast;     /* fast retransmits */
    uint64_t rexmit_segs;     /* segments sent again (any cause) */
    uint64_t ooo_segs;        /* segments kept out of order */
    uint64_t ooo_dropped;     /* out-of-order segments we had no range for */
    uint64_t dup_segs;        /* segments entirely old */
    uint64_t beyond_window;   /* segments (parts) beyond our window */
    uint64_t atx_bad;         /* invalid application entries dropped */
    uint64_t arx_full;        /* app notifications not posted (ring full) */
    uint64_t ring_corrupt;    /* app ring indices out of range */
    uint64_t tap_errors;
    uint64_t drops[16];       /* malformed frames by -TAS_DROP_* reason */
    uint64_t rexmit_sack;     /* holes retransmitted from the peer's SACK blocks (RFC 6675) */
    uint64_t rexmit_spurious; /* D-SACKs received (RFC 2883): retransmissions (or network
                                 duplicates) the peer already had */
    uint64_t pace_due_us;     /* earliest timed work: a paced flow waiting in the tx queue may
                                 send, or a delayed ACK is due (0: none); the poll loop does
                                 not sleep past it */
    uint64_t paced_waits;     /* tx queue visits that found the flow not yet due (pacing) */
    uint64_t tlp_probes;      /* tail loss probes sent (RFC 8985 7) */
    uint64_t recovery_undo;   /* recoveries undone: the retransmissions were spurious
                                 (timestamps, Eifel RFC 3522, or D-SACKs) */
    uint64_t sack_skipped;    /* bytes not resent after an RTO because the peer SACKed them */
    uint64_t acks_delayed;    /* lone in-order segments whose ACK was held for the app's reply */
    uint64_t delacks_sent;    /* of those, ACKs sent alone when the delay ran out */
};

#endif /* TAS_ABI_H */
