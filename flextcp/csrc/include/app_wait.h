/*
 * app_wait.h -- libtas's per-wake-up kernels (APP side of a context).
 *
 * The app's fixed cost per wake-up in C, one call per step instead of a
 * dozen Python calls: drain the context's ARX rings into an array of flow
 * ids, arm the doorbell and re-check (the sleeper half of the armed-flag
 * protocol, docs/ARCHITECTURE.md "Doorbells"), block in ppoll(2) on the
 * context eventfd and the control socket, and post ATX updates ringing
 * the fast-path cores that sleep.  The sleep is its own call because
 * libtas releases the context lock around it (rings are drained only with
 * the lock held: they are single-consumer).  Python twin: the pure path of
 * libtas/api.py (Context._poll_arx_py/_flush_updates_py, _drain_arx_twin,
 * _post_atx_twin), compared by tests/test_app_wait.py.
 */
#ifndef TAS_APP_WAIT_H
#define TAS_APP_WAIT_H
#include <stdint.h>
#include "tas_abi.h"

#define TAS_APP_READY_EVFD 1   /* tas_app_sleep: the context eventfd */
#define TAS_APP_READY_SOCK 2   /* tas_app_sleep: the control socket */
#define TAS_APP_WAKE_DISARM 1  /* tas_app_drain: clear app_armed first */
#define TAS_APP_WAKE_CLEAR 2   /* tas_app_drain: and read the eventfd */
#define TAS_APP_DRAIN_MORE 4   /* tas_app_drain: continue a drain (keep got) */
#define TAS_ECHO_DONE 0        /* tas_app_echo: everything readable echoed (not reported) */
#define TAS_ECHO_SKIP 1        /* tas_app_echo: not an echo flow of the table: the caller looks */
#define TAS_ECHO_MORE 2        /* tas_app_echo: input left, reset or bogus positions: general path */
#define TAS_ECHO_EOF 3         /* tas_app_echo: everything echoed, peer's FIN, no reset: close */
#define TAS_ECHO_UNPOSTED 16   /* tas_app_echo (or-ed in): its update found the ring full */
#define TAS_APP_RUN_IDS 1      /* tas_app_echo_run: ids[] holds a drain's ids for the caller */
#define TAS_APP_RUN_SLEPT 2    /* tas_app_echo_run: run_ready holds a sleep's result (armed) */
#define TAS_APP_RUN_BUDGET 3   /* tas_app_echo_run: budget or timeout spent (disarmed) */

struct tas_app_flow;

/* One context as libtas sees it (process-local; filled by libtas). */
struct tas_app_ctx {
    uint32_t *app_armed;          /* tas_ctx_hdr.app_armed */
    uint32_t *fp_armed;           /* tas_ctx_hdr.fp_armed[0..n_cores) */
    struct tas_ring *atx[16];     /* APP -> FP, producer side, per core */
    struct tas_ring *arx[16];     /* FP -> APP, consumer side, per core */
    int32_t fp_evfd[16];          /* the fast-path cores' doorbells */
    int32_t evfd;                 /* this context's doorbell */
    uint32_t n_cores;
    uint32_t arx_slots;
    uint32_t overflows;           /* out: rings whose got >= arx_slots */
    uint32_t got[16];             /* out: entries drained per ring */
    /* echo_on: every drain (tas_app_drain, tas_app_arm_drain) passes the
     * ids it took to tas_app_echo(c, echo_tab, echo_tab_n, ids, n,
     * echo_ids, echo_st) and sets echo_n to its result (echo_ids/echo_st
     * hold as many entries as the drain's cap); 0: echo_n = 0 */
    uint32_t echo_on;
    uint32_t echo_tab_n;
    struct tas_app_flow **echo_tab;
    uint32_t *echo_ids;
    uint8_t *echo_st;
    uint32_t echo_n;              /* out */
    /* out of tas_app_echo_run */
    uint32_t run_why;             /* TAS_APP_RUN_* */
    int32_t run_ready;            /* RUN_SLEPT: tas_app_sleep's result */
    uint32_t run_wakes;           /* eventfd wake-ups served inside */
    uint64_t run_seen;            /* ids drained and served entirely inside */
};

/* One connection as libtas keeps it (process-local, one per Connection:
 * its positions live here, so the echo kernel and Python share them). */
struct tas_app_flow {
    struct tas_appflow *af;       /* the flow's appflow block (region) */
    uint8_t *rx;                  /* rx buffer (region), rx_len bytes */
    uint8_t *tx;                  /* tx buffer (region), tx_len bytes */
    uint64_t rx_tail;             /* bytes the app consumed */
    uint64_t tx_head;             /* bytes the app wrote */
    uint64_t rx_posted;           /* rx_tail of the last ATX update posted */
    uint32_t rx_len;              /* powers of two */
    uint32_t tx_len;
    uint32_t flow_id;
    uint16_t gen;
    uint8_t core;
    uint8_t echo;                 /* 1: tas_app_echo may serve it (plain state) */
};

/* Fill a record for a flow whose appflow block and buffers are at these
 * offsets from base (positions 0, echo off). */
void tas_app_flow_init(struct tas_app_flow *f, uint8_t *base, uint64_t af_off, uint64_t rx_off,
                       uint32_t rx_len, uint64_t tx_off, uint32_t tx_len, uint32_t flow_id,
                       uint16_t gen, uint8_t core);

/* Drain every ARX ring (until a dequeue comes up short) and write the
 * flow id of each entry into ids; stops early when cap ids are written
 * (the caller takes them and calls again with TAS_APP_DRAIN_MORE).  got[]
 * accumulates per ring over a drain (zeroed unless DRAIN_MORE) and
 * overflows counts the rings that gave a whole ring's worth or more (the
 * fast path may have dropped hints).  flags may first disarm the doorbell
 * and clear the eventfd (after a sleep).  Returns the ids written. */
uint32_t tas_app_drain(struct tas_app_ctx *c, uint32_t *ids, uint32_t cap, uint32_t flags);

/* The sleeper's re-check: app_armed = 1, full fence, drain (as above).
 * Found something: disarm and return the count (no sleep needed).
 * Nothing: return 0 with the doorbell still armed; the caller then
 * sleeps (tas_app_sleep) or disarms. */
uint32_t tas_app_arm_drain(struct tas_app_ctx *c, uint32_t *ids, uint32_t cap);

/* Block in ppoll(2) on the context eventfd and sockfd (if >= 0) for at
 * most timeout_us (< 0: no limit).  Returns TAS_APP_READY_* bits (0 on
 * timeout or EINTR) or -errno (-EBADF for a closed fd).  Touches no
 * shared memory: the caller disarms and drains under its lock. */
int32_t tas_app_sleep(int32_t evfd, int32_t sockfd, int64_t timeout_us);

/* Post n ATX entries (TAS_ATX_ENTRY_SIZE bytes each, packed in src),
 * entry i on core cores[i]'s ring, in order within a core.  done[i]: 1
 * posted, 0 ring full (retry later), 2 core out of range (dropped).  Then,
 * for every core that got entries: full fence, and if fp_armed[core]
 * write its eventfd.  Returns the entries posted. */
uint32_t tas_app_post(struct tas_app_ctx *c, const void *src, const uint8_t *cores,
                      uint32_t n, uint8_t *done);

/* The echo server's pass over the flows the fast path named: for each of
 * the n ids (duplicates allowed), tab[id] (id < tab_n, non-NULL, echo
 * set) gets what is readable copied into its own tx buffer as far as it
 * fits (libtas Connection.echo(): rx_tail and tx_head advance), one ATX
 * update per flow that moved is posted (in id order per core, then the
 * armed cores rung, as tas_app_post; posted: rx_posted = rx_tail).  Every
 * id whose outcome is not TAS_ECHO_DONE is written to out_ids/out_st
 * (SKIP, MORE or EOF, | UNPOSTED when its update found the ring full: the
 * caller queues it); returns how many.  out_ids/out_st hold n entries. */
uint32_t tas_app_echo(struct tas_app_ctx *c, struct tas_app_flow *const *tab, uint32_t tab_n,
                      const uint32_t *ids, uint32_t n, uint32_t *out_ids, uint8_t *out_st);

/* The echo server's serve loop (echo_on set): repeat {tas_app_arm_drain;
 * if nothing, tas_app_sleep on c->evfd and sockfd; on the eventfd alone
 * tas_app_drain(DISARM | CLEAR)} for as long as every drain's ids were
 * served entirely by the echo kernel (echo_n == 0, fewer than cap ids, no
 * overflowed ring): those are counted in run_seen, nothing is left for
 * the caller.  Returns, with run_why:
 *   TAS_APP_RUN_IDS: a drain left work (outcomes in echo_ids/echo_st, the
 *     cap reached or a ring overflowed): ids[0..ret) and got/overflows/
 *     echo_n are that drain's, doorbell disarmed (as after tas_app_drain);
 *   TAS_APP_RUN_SLEPT: a sleep returned for anything but the eventfd alone
 *     (control socket readable, timeout, EINTR: run_ready = 0 or bits, or
 *     -errno): the doorbell is still armed, nothing drained since; the
 *     caller disarms and drains (as after tas_app_sleep);
 *   TAS_APP_RUN_BUDGET: budget_us (or timeout_us) passed after a served
 *     drain: disarmed, nothing pending.
 * Sleeps take at most what is left of timeout_us (< 0: no limit) since the
 * call.  The caller holds the context lock throughout (single consumer). */
uint32_t tas_app_echo_run(struct tas_app_ctx *c, uint32_t *ids, uint32_t cap, int32_t sockfd,
                          int64_t timeout_us, int64_t budget_us);

#endif /* TAS_APP_WAIT_H */
