/*
 * app_wait.c -- libtas's per-wake-up kernels.  See include/app_wait.h.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "tas_abi.h"
#include "ring.h"
#include "app_wait.h"

#define ARX_BATCH 64

struct tas_app_flow;

static void evfd_clear(int32_t fd)
{
    uint64_t v;

    if (fd >= 0 && read(fd, &v, sizeof(v)) < 0) {
        /* EAGAIN: nothing pending (the wake-up was the socket or a timeout) */
    }
}

static void evfd_ring(int32_t fd)
{
    uint64_t one = 1;

    if (fd >= 0 && write(fd, &one, sizeof(one)) < 0) {
        /* EAGAIN: counter saturated, the sleeper is already signalled */
    }
}

uint32_t tas_app_drain(struct tas_app_ctx *c, uint32_t *ids, uint32_t cap, uint32_t flags)
{
    struct tas_arx batch[ARX_BATCH];
    uint32_t n = 0, i, k, want;
    uint32_t n_cores = c->n_cores > TAS_MAX_CORES ? TAS_MAX_CORES : c->n_cores;

    if (flags & TAS_APP_WAKE_DISARM)
        __atomic_store_n(c->app_armed, 0, __ATOMIC_RELAXED);
    if (flags & TAS_APP_WAKE_CLEAR)
        evfd_clear(c->evfd);
    if (!(flags & TAS_APP_DRAIN_MORE))
        memset(c->got, 0, sizeof(c->got));
    for (i = 0; i < n_cores; i++) {
        struct tas_ring *r = c->arx[i];

        if (r == NULL)
            continue;
        for (;;) {
            uint32_t j;

            want = cap - n < ARX_BATCH ? cap - n : ARX_BATCH;
            if (want == 0)
                goto out;
            k = tas_ring_dequeue_n(r, batch, want);
            for (j = 0; j < k; j++)
                ids[n + j] = batch[j].flow_id;
            n += k;
            c->got[i] += k;
            if (k < want)
                break;
        }
    }
out:
    c->overflows = 0;
    for (i = 0; i < n_cores; i++)
        if (c->got[i] >= c->arx_slots)
            c->overflows++;
    c->echo_n = 0;
    if (c->echo_on && n)
        c->echo_n = tas_app_echo(c, c->echo_tab, c->echo_tab_n, ids, n, c->echo_ids, c->echo_st);
    return n;
}

uint32_t tas_app_arm_drain(struct tas_app_ctx *c, uint32_t *ids, uint32_t cap)
{
    uint32_t n;

    /* the sleeper half of the protocol: store armed before loading the
     * rings' heads (tas_armed_set), so either this drain sees an entry
     * the fast path published or the fast path sees armed == 1 */
    __atomic_store_n(c->app_armed, 1, __ATOMIC_SEQ_CST);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    n = tas_app_drain(c, ids, cap, 0);
    if (n)
        __atomic_store_n(c->app_armed, 0, __ATOMIC_RELAXED);
    return n;
}

int32_t tas_app_sleep(int32_t evfd, int32_t sockfd, int64_t timeout_us)
{
    struct pollfd fds[2];
    struct timespec ts, *tp = NULL;
    nfds_t nfds = 1;
    int32_t ready = 0;
    int rc;

    fds[0].fd = evfd;
    fds[0].events = POLLIN;
    fds[0].revents = 0;
    if (sockfd >= 0) {
        fds[1].fd = sockfd;
        fds[1].events = POLLIN;
        fds[1].revents = 0;
        nfds = 2;
    }
    if (timeout_us >= 0) {
        ts.tv_sec = timeout_us / 1000000;
        ts.tv_nsec = (timeout_us % 1000000) * 1000;
        tp = &ts;
    }
    rc = ppoll(fds, nfds, tp, NULL);
    if (rc < 0)
        return errno == EINTR ? 0 : -errno;
    if ((fds[0].revents | (nfds > 1 ? fds[1].revents : 0)) & POLLNVAL)
        return -EBADF;
    /* as select(): an error or hang-up makes a descriptor readable */
    if (fds[0].revents & (POLLIN | POLLERR | POLLHUP))
        ready |= TAS_APP_READY_EVFD;
    if (nfds > 1 && (fds[1].revents & (POLLIN | POLLERR | POLLHUP)))
        ready |= TAS_APP_READY_SOCK;
    return ready;
}

uint32_t tas_app_post(struct tas_app_ctx *c, const void *src, const uint8_t *cores,
                      uint32_t n, uint8_t *done)
{
    uint8_t batch[ARX_BATCH * TAS_ATX_ENTRY_SIZE];
    uint32_t idx[ARX_BATCH];
    const uint8_t *in = src;
    uint32_t posted = 0, i, core, touched = 0;
    uint32_t n_cores = c->n_cores > TAS_MAX_CORES ? TAS_MAX_CORES : c->n_cores;

    for (i = 0; i < n; i++)
        done[i] = cores[i] < n_cores && c->atx[cores[i]] != NULL ? 0 : 2;
    for (core = 0; core < n_cores; core++) {
        uint32_t k = 0, got, j, full = 0;

        for (i = 0; i <= n; i++) {
            if (i < n && done[i] == 0 && cores[i] == core && !full) {
                memcpy(batch + k * TAS_ATX_ENTRY_SIZE, in + (size_t)i * TAS_ATX_ENTRY_SIZE,
                       TAS_ATX_ENTRY_SIZE);
                idx[k++] = i;
            }
            if (k == ARX_BATCH || (i == n && k)) {
                got = tas_ring_enqueue_n(c->atx[core], batch, k);
                for (j = 0; j < got; j++)
                    done[idx[j]] = 1;
                posted += got;
                if (got)
                    touched |= 1u << core;
                if (got < k)
                    full = 1;  /* the rest of this core's entries wait */
                k = 0;
            }
        }
    }
    if (touched) {
        /* the producer half: publish (release store of head, above), fence,
         * then load armed (tas_armed_get) */
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        for (core = 0; core < n_cores; core++)
            if ((touched & (1u << core)) && __atomic_load_n(&c->fp_armed[core], __ATOMIC_SEQ_CST))
                evfd_ring(c->fp_evfd[core]);
    }
    return posted;
}

/* The plain-state echo of one flow (Connection._echo_locked + the status
 * of _echo_status): returns TAS_ECHO_* and sets *moved. */
static uint8_t echo_one(struct tas_app_flow *f, uint32_t *moved)
{
    struct tas_appflow *af = f->af;
    uint64_t rx_head, tx_acked, avail, used, n, src, out, left, k;
    uint32_t flags;

    *moved = 0;
    if (__atomic_load_n(&af->flags, __ATOMIC_ACQUIRE) & TAS_AF_RESET)
        return TAS_ECHO_MORE;
    rx_head = __atomic_load_n(&af->rx_head, __ATOMIC_ACQUIRE);
    tx_acked = __atomic_load_n(&af->tx_acked, __ATOMIC_ACQUIRE);
    avail = rx_head - f->rx_tail;
    if (avail > f->rx_len)  /* never trust a bogus head */
        return TAS_ECHO_MORE;
    used = f->tx_head - tx_acked;
    if (used > f->tx_len)  /* a bogus acked position: move nothing */
        n = 0;
    else
        n = avail < f->tx_len - used ? avail : f->tx_len - used;
    if (n) {
        src = f->rx_tail & (f->rx_len - 1);
        out = f->tx_head & (f->tx_len - 1);
        left = n;
        while (left) {  /* at most three pieces: each buffer wraps at most once */
            k = left;
            if (k > f->rx_len - src)
                k = f->rx_len - src;
            if (k > f->tx_len - out)
                k = f->tx_len - out;
            memcpy(f->tx + out, f->rx + src, k);
            src = (src + k) & (f->rx_len - 1);
            out = (out + k) & (f->tx_len - 1);
            left -= k;
        }
        f->rx_tail += n;
        f->tx_head += n;
        *moved = 1;
    }
    if (n < avail)
        return TAS_ECHO_MORE;
    flags = __atomic_load_n(&af->flags, __ATOMIC_ACQUIRE);
    /* input that arrived meanwhile: looked at by the general path */
    if (__atomic_load_n(&af->rx_head, __ATOMIC_ACQUIRE) != f->rx_tail)
        return TAS_ECHO_MORE;
    if (!(flags & (TAS_AF_RX_FIN | TAS_AF_RESET)))
        return TAS_ECHO_DONE;
    return flags & TAS_AF_RESET ? TAS_ECHO_MORE : TAS_ECHO_EOF;
}

uint32_t tas_app_echo(struct tas_app_ctx *c, struct tas_app_flow *const *tab, uint32_t tab_n,
                      const uint32_t *ids, uint32_t n, uint32_t *out_ids, uint8_t *out_st)
{
    uint8_t entries[ARX_BATCH * TAS_ATX_ENTRY_SIZE];
    uint8_t cores[ARX_BATCH], done[ARX_BATCH];
    struct tas_app_flow *posted[ARX_BATCH];
    uint32_t idx[ARX_BATCH];  /* the out slot of each entry (or UINT32_MAX) */
    uint32_t i, j, k = 0, nout = 0, moved;
    uint8_t st;

    for (i = 0; i <= n; i++) {
        if (i < n) {
            struct tas_app_flow *f = ids[i] < tab_n ? tab[ids[i]] : NULL;

            if (f == NULL || !f->echo) {
                out_ids[nout] = ids[i];
                out_st[nout++] = TAS_ECHO_SKIP;
                continue;
            }
            st = echo_one(f, &moved);
            if (moved) {
                struct tas_atx *e = (struct tas_atx *)(entries + k * TAS_ATX_ENTRY_SIZE);

                e->flow_id = f->flow_id;
                e->gen = f->gen;
                e->kind = TAS_ATX_UPDATE;
                e->rx_tail = f->rx_tail;
                e->tx_head = f->tx_head;
                e->rsvd = 0;
                cores[k] = f->core;
                posted[k] = f;
                idx[k] = UINT32_MAX;
            }
            if (st != TAS_ECHO_DONE) {
                if (moved)
                    idx[k] = nout;
                out_ids[nout] = ids[i];
                out_st[nout++] = st;
            }
            if (moved)
                k++;
        }
        if (k == ARX_BATCH || (i == n && k)) {
            tas_app_post(c, entries, cores, k, done);
            for (j = 0; j < k; j++) {
                if (done[j] == 1) {
                    posted[j]->rx_posted = posted[j]->rx_tail;
                } else if (done[j] == 0) {  /* ring full: the caller queues it */
                    if (idx[j] == UINT32_MAX) {
                        idx[j] = nout;
                        out_ids[nout] = posted[j]->flow_id;
                        out_st[nout++] = TAS_ECHO_DONE;
                    }
                    out_st[idx[j]] |= TAS_ECHO_UNPOSTED;
                }
            }
            k = 0;
        }
    }
    return nout;
}

void tas_app_flow_init(struct tas_app_flow *f, uint8_t *base, uint64_t af_off, uint64_t rx_off,
                       uint32_t rx_len, uint64_t tx_off, uint32_t tx_len, uint32_t flow_id,
                       uint16_t gen, uint8_t core)
{
    memset(f, 0, sizeof(*f));
    f->af = (struct tas_appflow *)(base + af_off);
    f->rx = base + rx_off;
    f->tx = base + tx_off;
    f->rx_len = rx_len;
    f->tx_len = tx_len;
    f->flow_id = flow_id;
    f->gen = gen;
    f->core = core;
}

static int64_t now_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* a drain of n ids left nothing for the caller */
static int run_served(const struct tas_app_ctx *c, uint32_t n, uint32_t cap)
{
    return c->echo_on && c->echo_n == 0 && n < cap && c->overflows == 0;
}

uint32_t tas_app_echo_run(struct tas_app_ctx *c, uint32_t *ids, uint32_t cap, int32_t sockfd,
                          int64_t timeout_us, int64_t budget_us)
{
    int64_t t0 = now_us(), spent, left;
    int32_t ready;
    uint32_t n;

    c->run_seen = 0;
    c->run_wakes = 0;
    c->run_ready = 0;
    for (;;) {
        n = tas_app_arm_drain(c, ids, cap);  /* found something: disarmed */
        if (n == 0) {
            /* armed, and the re-check after the fence found nothing */
            left = -1;
            if (timeout_us >= 0) {
                left = timeout_us - (now_us() - t0);
                if (left < 0)
                    left = 0;
            }
            ready = tas_app_sleep(c->evfd, sockfd, left);
            if (ready != TAS_APP_READY_EVFD) {
                c->run_ready = ready;
                c->run_why = TAS_APP_RUN_SLEPT;
                return 0;
            }
            c->run_wakes++;
            n = tas_app_drain(c, ids, cap, TAS_APP_WAKE_DISARM | TAS_APP_WAKE_CLEAR);
        }
        if (n) {
            if (!run_served(c, n, cap)) {
                c->run_why = TAS_APP_RUN_IDS;
                return n;
            }
            c->run_seen += n;
        }
        /* disarmed here: tas_app_arm_drain found something or tas_app_drain disarmed */
        spent = now_us() - t0;
        if (spent >= budget_us || (timeout_us >= 0 && spent >= timeout_us)) {
            c->run_why = TAS_APP_RUN_BUDGET;
            return 0;
        }
    }
}
