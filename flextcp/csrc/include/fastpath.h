/*
 * fastpath.h -- the per-core fast-path engine.  One `struct tas_fp` per
 * fast-path process; Python (flextcp/loop.py) calls tas_fp_spin_run() (which
 * polls with tas_fp_poll() and spins) and only sleeps and reads its control
 * socket.  All per-packet work happens inside.
 */
#ifndef TAS_FASTPATH_H
#define TAS_FASTPATH_H
#include <stdint.h>
#include "tas_abi.h"


struct tas_fp;

struct tas_fp_config {
    uint32_t core;
    uint32_t n_cores;
    int tap_fd;                 /* non-blocking TAP queue fd */
    int sp_evfd;                /* eventfd to kick the slow path */
    uint32_t local_ip;          /* host order */
    uint8_t local_mac[6];
    uint16_t pad;
    void *ft_mem;               /* flow table region */
    uint64_t ft_len;
    uint32_t n_flows;
    uint32_t kq_slots;          /* slots of the KRX/KTX rings */
    void *krx_mem;              /* FP -> SP ring */
    void *ktx_mem;              /* SP -> FP ring */
    struct tas_fp_stats *stats; /* shared counters */
    uint32_t rx_batch;          /* frames per poll (e.g. 32) */
    uint32_t tx_batch;          /* segments per poll (e.g. 64) */
};

struct tas_fp *tas_fp_create(const struct tas_fp_config *cfg);
void tas_fp_destroy(struct tas_fp *fp);

/* Register a context region (mapped by the caller).  The ring layout is
 * computed from n_cores/atx_slots/arx_slots with tas_ctx_layout, never read
 * from the region.  evfd is the app's doorbell.  0 or -1. */
int tas_fp_add_ctx(struct tas_fp *fp, uint32_t ctx_id, void *base, uint64_t len,
                   int evfd, uint32_t atx_slots, uint32_t arx_slots);
int tas_fp_remove_ctx(struct tas_fp *fp, uint32_t ctx_id);

/* One iteration: TAP rx batch, app queues, slow-path queue, transmit.
 * Returns the amount of work done (0 = idle). */
uint32_t tas_fp_poll(struct tas_fp *fp, uint64_t now_us);

/* Set (1) or clear (0) this core's armed flag in every context region.
 * After arming, the caller must poll once more before sleeping. */
void tas_fp_set_armed(struct tas_fp *fp, uint32_t armed);
/* TAP offloads: vnet_hdr = the TAP fd was opened with IFF_VNET_HDR (a
 * 10-byte virtio_net_hdr precedes every frame read and written); tso = send
 * TSO4 super-segments of up to ~64 KiB (needs vnet_hdr).  Returns 0, or -1
 * if tso is asked without vnet_hdr. */
int tas_fp_set_offload(struct tas_fp *fp, uint32_t vnet_hdr, uint32_t tso);

/* The busy-poll part of the fast path's loop (flextcp/loop.py FastPath.run;
 * pure twin: loop.py SpinPolicy + SpinLoop).  tas_fp_spin_run polls
 * (tas_fp_poll) while there is work and for poll_us after the last work,
 * then arms the doorbell (tas_fp_set_armed(1)) and polls once more: if that
 * poll finds work it disarms and spins on, else it returns
 * TAS_FP_SPIN_SLEEP with the doorbell armed (the caller sleeps in epoll,
 * then disarms and calls tas_fp_spin_woke).  It returns TAS_FP_SPIN_CHECK
 * (not armed) after max_polls polls or max_us us of spinning, so the caller
 * can read its control socket and see a SIGTERM.  The decision after each
 * poll is tas_fp_spin_decide (SpinPolicy.spin): spin while a poll did work
 * and for poll_us after it; a paced flow or delayed ACK due within
 * TAS_FP_PACE_SPIN_US keeps it polling; with gap_us >= 0 (TAS_FP_SPIN=yield)
 * two idle polls more than gap_us apart end the spin (another task had the
 * CPU).  yield_idle: sched_yield() after each idle poll that spins on.
 * Times are CLOCK_MONOTONIC us (tas_now_us). */
#define TAS_FP_SPIN_SLEEP 0
#define TAS_FP_SPIN_CHECK 1
#define TAS_FP_PACE_SPIN_US 1000
struct tas_fp_spin {
    /* set by the caller */
    int64_t poll_us;            /* spin this long after the last work */
    int64_t gap_us;             /* < 0: off */
    uint32_t yield_idle;
    uint32_t max_polls;         /* >= 1 */
    int64_t max_us;
    /* the policy's state (SpinPolicy) */
    uint64_t idle_since;
    uint64_t last_idle;         /* time of the previous poll if it found nothing, else 0 */
    uint64_t preempted_sleeps;  /* sleeps that ended a spin early (the gap rule) */
    /* counters */
    uint64_t polls;             /* tas_fp_poll calls (re-polls after arming included) */
    uint64_t yields;
    uint64_t runs;              /* tas_fp_spin_run calls */
};
/* Back from a sleep (or before the first poll) at t. */
void tas_fp_spin_woke(struct tas_fp_spin *s, uint64_t t);
/* After a poll at t that did `work`: 1 to poll again, 0 to arm and sleep.
 * pace_due: the stats' pace_due_us (0: none), read only when work is 0. */
int tas_fp_spin_decide(struct tas_fp_spin *s, uint64_t t, uint32_t work, uint64_t pace_due);
int tas_fp_spin_run(struct tas_fp *fp, struct tas_fp_spin *s);
/* The same loop over callbacks (tests: a fake engine and clock). */
struct tas_fp_spin_ops {
    uint64_t (*now)(void *arg);
    uint32_t (*poll)(void *arg, uint64_t now_us);
    uint64_t (*pace_due)(void *arg);
    void (*set_armed)(void *arg, uint32_t armed);
    void (*yield_cpu)(void *arg);
    void *arg;
};
int tas_fp_spin_run_ops(struct tas_fp_spin *s, const struct tas_fp_spin_ops *ops);

/* Microseconds on CLOCK_MONOTONIC: the clock every process uses. */
uint64_t tas_now_us(void);

/* Context region layout shared by SP, FP and libtas. */
struct tas_ctx_layout {
    uint64_t atx_off[16];
    uint64_t arx_off[16];
    uint64_t heap_off;
};
void tas_ctx_layout(uint32_t n_cores, uint32_t atx_slots, uint32_t arx_slots,
                    struct tas_ctx_layout *out);

/* Armed-flag doorbell protocol helpers: a sequentially consistent store
 * followed by a full fence (the sleeper arms, then re-checks its queues),
 * and a fenced load (the producer publishes, then reads the flag). */
void tas_armed_set(uint32_t *flag, uint32_t value);
uint32_t tas_armed_get(uint32_t *flag);

#endif /* TAS_FASTPATH_H */
