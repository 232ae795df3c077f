/*
 * fp_main.c -- the fast-path engine's poll loop body, context registry and
 * the queues to the slow path and to applications.
 */
#include <errno.h>
#include <sched.h>
#include <sys/uio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "fp_internal.h"

#define PAGE 4096u

static uint64_t align_page(uint64_t v) { return (v + PAGE - 1) & ~(uint64_t)(PAGE - 1); }

void tas_ctx_layout(uint32_t n_cores, uint32_t atx_slots, uint32_t arx_slots,
                    struct tas_ctx_layout *out)
{
    memset(out, 0, sizeof(*out));
    uint64_t off = PAGE;
    for (uint32_t c = 0; c < n_cores && c < TAS_MAX_CORES; c++) {
        out->atx_off[c] = off;
        off = align_page(off + tas_ring_bytes(atx_slots, TAS_ATX_ENTRY_SIZE));
        out->arx_off[c] = off;
        off = align_page(off + tas_ring_bytes(arx_slots, TAS_ARX_ENTRY_SIZE));
    }
    out->heap_off = off;
}

uint64_t tas_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

struct tas_fp *tas_fp_create(const struct tas_fp_config *cfg)
{
    if (cfg->rx_batch == 0 || cfg->rx_batch > FP_RX_BATCH_MAX || cfg->n_flows == 0)
        return NULL;
    struct tas_fp *fp = calloc(1, sizeof(*fp));
    if (!fp)
        return NULL;
    fp->cfg = *cfg;
    fp->st = cfg->stats;
    if (tas_ft_attach(&fp->ft, cfg->ft_mem, cfg->ft_len, cfg->n_flows) != 0)
        goto fail;
    fp->cc = fp->ft.side; /* side records (tas_abi.h), always in the region */
    if (tas_ring_attach(&fp->krx, cfg->krx_mem, cfg->kq_slots, TAS_KQ_ENTRY_SIZE, 1) != 0)
        goto fail;
    if (tas_ring_attach(&fp->ktx, cfg->ktx_mem, cfg->kq_slots, TAS_KQ_ENTRY_SIZE, 0) != 0)
        goto fail;
    fp->txq_next = calloc(cfg->n_flows, sizeof(uint32_t));
    fp->txq_slot = calloc(cfg->n_flows, sizeof(uint32_t));
    fp->txc = calloc(FP_TXQ_SLOTS, sizeof(struct fp_txctx));
    fp->ackq = calloc(cfg->n_flows, sizeof(uint32_t));
    fp->notif_stamp = calloc(cfg->n_flows, sizeof(uint32_t));
    fp->notifq = calloc(cfg->n_flows, sizeof(uint32_t));
    fp->notifq_kind = calloc(cfg->n_flows, sizeof(uint16_t));
    fp->delq = calloc(cfg->n_flows, sizeof(uint32_t));
    fp->delq_due = calloc(cfg->n_flows, sizeof(uint64_t));
    if (!fp->txq_next || !fp->txq_slot || !fp->txc || !fp->ackq || !fp->notif_stamp ||
        !fp->notifq || !fp->notifq_kind || !fp->delq || !fp->delq_due)
        goto fail;
    fp->poll_stamp = 1;
    return fp;
fail:
    tas_fp_destroy(fp);
    return NULL;
}

void tas_fp_destroy(struct tas_fp *fp)
{
    if (!fp)
        return;
    for (uint32_t i = 0; i < TAS_MAX_CTX; i++)
        free(fp->ctx[i]);
    free(fp->txq_next);
    free(fp->txq_slot);
    free(fp->txc);
    free(fp->ackq);
    free(fp->notif_stamp);
    free(fp->notifq);
    free(fp->notifq_kind);
    free(fp->delq);
    free(fp->delq_due);
    free(fp);
}

int tas_fp_add_ctx(struct tas_fp *fp, uint32_t ctx_id, void *base, uint64_t len,
                   int evfd, uint32_t atx_slots, uint32_t arx_slots)
{
    if (ctx_id >= TAS_MAX_CTX || fp->ctx[ctx_id])
        return -1;
    struct tas_ctx_layout lay;
    tas_ctx_layout(fp->cfg.n_cores, atx_slots, arx_slots, &lay);
    if (lay.heap_off > len)
        return -1;
    struct fp_ctx *c = calloc(1, sizeof(*c));
    if (!c)
        return -1;
    c->base = base;
    c->len = len;
    c->evfd = evfd;
    c->id = ctx_id;
    uint32_t core = fp->cfg.core;
    if (tas_ring_attach(&c->atx, c->base + lay.atx_off[core], atx_slots, TAS_ATX_ENTRY_SIZE, 0) != 0 ||
        tas_ring_attach(&c->arx, c->base + lay.arx_off[core], arx_slots, TAS_ARX_ENTRY_SIZE, 1) != 0) {
        free(c);
        return -1;
    }
    fp->ctx[ctx_id] = c;
    fp->active[fp->n_active++] = ctx_id;
    return 0;
}

int tas_fp_remove_ctx(struct tas_fp *fp, uint32_t ctx_id)
{
    if (ctx_id >= TAS_MAX_CTX || !fp->ctx[ctx_id])
        return -1;
    free(fp->ctx[ctx_id]);
    fp->ctx[ctx_id] = NULL;
    for (uint32_t i = 0; i < fp->n_active; i++) {
        if (fp->active[i] == ctx_id) {
            fp->active[i] = fp->active[--fp->n_active];
            break;
        }
    }
    return 0;
}

void tas_fp_set_armed(struct tas_fp *fp, uint32_t armed)
{
    for (uint32_t i = 0; i < fp->n_active; i++) {
        struct tas_ctx_hdr *h = (struct tas_ctx_hdr *)fp->ctx[fp->active[i]]->base;
        __atomic_store_n(&h->fp_armed[fp->cfg.core], armed, __ATOMIC_SEQ_CST);
    }
    if (fp->cfg.core < TAS_FP_ARMED_CORES) /* the slow path's KTX kicks (tas_sp_kick) */
        __atomic_store_n(&fp->ft.news->fp_armed[fp->cfg.core], armed, __ATOMIC_SEQ_CST);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
}

int tas_fp_set_offload(struct tas_fp *fp, uint32_t vnet_hdr, uint32_t tso)
{
    if (tso && !vnet_hdr)
        return -1;
    fp->vnet = vnet_hdr ? 1 : 0;
    fp->tso = tso ? 1 : 0;
    return 0;
}

/* struct virtio_net_hdr (linux/virtio_net.h), little-endian on the TAP */
struct fp_vnet_hdr {
    uint8_t flags;
    uint8_t gso_type;
    uint16_t hdr_len;
    uint16_t gso_size;
    uint16_t csum_start;
    uint16_t csum_offset;
} __attribute__((packed));

#define VNET_F_NEEDS_CSUM 1
#define VNET_GSO_TCPV4 1

int fp_write_gso(struct tas_fp *fp, uint8_t *frame, uint32_t len, uint32_t gso_size)
{
    ssize_t r;
    if (!fp->vnet) {
        if (gso_size)
            return -1;
        r = write(fp->cfg.tap_fd, frame, len);
    } else {
        struct fp_vnet_hdr h = {0};
        if (gso_size) {
            /* a TSO4 frame built by tas_build_tcp: Ethernet + IPv4 (no
             * options) + TCP; the kernel wants the pseudo-header sum in the
             * checksum field (CHECKSUM_PARTIAL) and fixes each piece */
            const uint32_t l3 = 14, l4 = 14 + 20;
            if (len < l4 + 20)
                return -1;
            uint8_t *ip = frame + l3, *t = frame + l4;
            uint32_t l4len = (uint32_t)((ip[2] << 8) | ip[3]) - 20;
            uint32_t sum = 6u + l4len;
            for (int i = 12; i < 20; i += 2)
                sum += (uint32_t)((ip[i] << 8) | ip[i + 1]);
            while (sum >> 16)
                sum = (sum & 0xffff) + (sum >> 16);
            t[16] = (uint8_t)(sum >> 8);
            t[17] = (uint8_t)sum;
            h.flags = VNET_F_NEEDS_CSUM;
            h.gso_type = VNET_GSO_TCPV4;
            h.hdr_len = (uint16_t)(l4 + (t[12] >> 4) * 4u);
            h.gso_size = (uint16_t)gso_size;
            h.csum_start = (uint16_t)l4;
            h.csum_offset = 16;
        }
        struct iovec iov[2] = {{&h, sizeof(h)}, {frame, len}};
        r = writev(fp->cfg.tap_fd, iov, 2);
        if (r >= (ssize_t)sizeof(h))
            r -= (ssize_t)sizeof(h);
    }
    if (r != (ssize_t)len) {
        fp->st->tap_errors++;
        return -1;
    }
    fp->st->tx_frames++;
    fp->st->tx_bytes += len;
    return 0;
}

void tas_armed_set(uint32_t *flag, uint32_t value)
{
    __atomic_store_n(flag, value, __ATOMIC_SEQ_CST);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
}

uint32_t tas_armed_get(uint32_t *flag)
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    return __atomic_load_n(flag, __ATOMIC_SEQ_CST);
}

/* The context of a flow and bounds-checked pointers into its region.  The
 * offsets come from the slow path, but we still check them: a bug there
 * must not turn into a write outside the region. */
static struct fp_ctx *flow_ctx(struct tas_fp *fp, struct tas_flow *f)
{
    if (f->ctx_id >= TAS_MAX_CTX)
        return NULL;
    return fp->ctx[f->ctx_id];
}

struct tas_appflow *fp_appflow(struct tas_fp *fp, struct tas_flow *f)
{
    struct fp_ctx *c = flow_ctx(fp, f);
    if (!c || (uint64_t)f->appflow_off + sizeof(struct tas_appflow) > c->len)
        return NULL;
    return (struct tas_appflow *)(c->base + f->appflow_off);
}

uint8_t *fp_buf(struct tas_fp *fp, struct tas_flow *f, int tx)
{
    struct fp_ctx *c = flow_ctx(fp, f);
    uint32_t off = tx ? f->tx_off : f->rx_off;
    uint32_t len = tx ? f->tx_len : f->rx_len;
    if (!c || len == 0 || (len & (len - 1)) || (uint64_t)off + len > c->len)
        return NULL;
    return c->base + off;
}

void fp_notify_app(struct tas_fp *fp, uint32_t flow_id, struct tas_flow *f, uint16_t kind)
{
    (void)f;
    if (fp->notif_stamp[flow_id] == fp->poll_stamp)
        return; /* already queued in this poll: its entry comes after every move */
    fp->notif_stamp[flow_id] = fp->poll_stamp;
    fp->notifq[fp->n_notif] = flow_id; /* at most once per flow per poll: n_flows slots */
    fp->notifq_kind[fp->n_notif] = kind;
    fp->n_notif++;
}

/* The poll's notifications, in the order of their first notify: one ARX
 * entry per flow on its context's ring (the flow's context and generation
 * now, at the end of the poll), and the context marked for a kick. */
static void fp_post_notifs(struct tas_fp *fp)
{
    for (uint32_t i = 0; i < fp->n_notif; i++) {
        uint32_t id = fp->notifq[i];
        struct tas_flow *f = &fp->ft.flows[id];
        struct fp_ctx *c = flow_ctx(fp, f);
        if (!c)
            continue;
        struct tas_arx e = {.flow_id = id, .gen = f->gen, .kind = fp->notifq_kind[i]};
        if (tas_ring_enqueue_n(&c->arx, &e, 1) != 1)
            fp->st->arx_full++; /* the app still sees the positions when it polls; kick it */
        if (!c->notify++ && !c->listed)
            c->listed = 1;
    }
    fp->n_notif = 0;
}

void fp_to_sp_frame(struct tas_fp *fp, const uint8_t *frame, uint32_t len)
{
    if (len > TAS_KQ_DATA) {
        fp->st->krx_full++;
        return;
    }
    uint8_t slot[TAS_KQ_ENTRY_SIZE];
    struct tas_krx *k = (struct tas_krx *)slot;
    memset(k, 0, offsetof(struct tas_krx, data));
    k->kind = TAS_KRX_PACKET;
    k->len = (uint16_t)len;
    k->core = fp->cfg.core;
    k->now_us = fp->now_us;
    memcpy(k->data, frame, len);
    if (tas_ring_enqueue_n(&fp->krx, slot, 1) != 1) {
        fp->st->krx_full++;
        return;
    }
    fp->st->to_slowpath++;
    fp->krx_posted++;
}

void fp_to_sp_event(struct tas_fp *fp, uint32_t flow_id, uint32_t events)
{
    uint8_t slot[TAS_KQ_ENTRY_SIZE];
    struct tas_krx *k = (struct tas_krx *)slot;
    memset(k, 0, offsetof(struct tas_krx, data));
    k->kind = TAS_KRX_FLOW;
    k->flow_id = flow_id;
    k->events = events;
    k->core = fp->cfg.core;
    k->now_us = fp->now_us;
    if (tas_ring_enqueue_n(&fp->krx, slot, 1) != 1) {
        fp->st->krx_full++;
        return;
    }
    fp->krx_posted++;
}

static void kick(int fd)
{
    uint64_t one = 1;
    ssize_t r = write(fd, &one, sizeof(one));
    (void)r;
}

/* Tell the slow path how many hostile entries a context has made so far
 * (it disconnects repeat offenders); rate-limited per context. */
static void report_strikes(struct tas_fp *fp, struct fp_ctx *c)
{
    if (c->strikes == c->strikes_reported ||
        (c->strikes_reported && fp->now_us - c->strike_us < FP_STRIKE_REPORT_US))
        return;
    uint8_t slot[TAS_KQ_ENTRY_SIZE];
    struct tas_krx *k = (struct tas_krx *)slot;
    memset(k, 0, offsetof(struct tas_krx, data));
    k->kind = TAS_KRX_CTX_BAD;
    k->flow_id = c->id;
    k->events = c->strikes > UINT32_MAX ? UINT32_MAX : (uint32_t)c->strikes;
    k->core = fp->cfg.core;
    k->now_us = fp->now_us;
    if (tas_ring_enqueue_n(&fp->krx, slot, 1) != 1) {
        fp->st->krx_full++;
        return;
    }
    fp->krx_posted++;
    c->strikes_reported = c->strikes;
    c->strike_us = fp->now_us;
}

/* Application updates: validated, never trusted.  Entries for a flow that
 * is no longer the app's (closed, reset, reused: status, generation or
 * DETACHED differ) can be stale and are only counted (atx_bad); anything
 * no correct app can produce is also a strike against its context. */
static uint32_t poll_apps(struct tas_fp *fp)
{
    struct tas_atx ents[FP_ATX_BATCH];
    uint32_t work = 0;
    for (uint32_t i = 0; i < fp->n_active; i++) {
        struct fp_ctx *c = fp->ctx[fp->active[i]];
        uint64_t corrupt = c->atx.corrupt;
        uint32_t n = tas_ring_dequeue_n(&c->atx, ents, FP_ATX_BATCH);
        if (c->atx.corrupt != corrupt) {
            fp->st->ring_corrupt++;
            c->strikes++;
        }
        work += n;
        for (uint32_t j = 0; j < n; j++) {
            struct tas_atx *e = &ents[j];
            if (e->flow_id >= fp->cfg.n_flows || e->kind != TAS_ATX_UPDATE) {
                fp->st->atx_bad++;
                c->strikes++;
                continue;
            }
            struct tas_flow *f = &fp->ft.flows[e->flow_id];
            tas_flow_lock(f);
            if (f->status != TAS_FLOW_ACTIVE || f->ctx_id != c->id || f->gen != e->gen ||
                (f->flags & TAS_FF_DETACHED)) {
                if (f->status == TAS_FLOW_ACTIVE && f->gen == e->gen && f->ctx_id != c->id)
                    c->strikes++;  /* a live flow of another context */
                tas_flow_unlock(f);
                fp->st->atx_bad++;
                continue;
            }
            int bad = 0;
            if (e->tx_head > f->tx_head) {
                if (e->tx_head - f->tx_una <= f->tx_len && !(f->flags & TAS_FF_TX_FIN)) {
                    f->tx_head = e->tx_head;
                    fp_txq_push(fp, e->flow_id, f);
                } else {
                    bad = 1;
                }
            }
            if (e->rx_tail > f->rx_tail) {
                if (e->rx_tail <= f->rx_head) {
                    uint64_t adv = fp_cc(fp, f)->rx_adv;
                    uint32_t old_wnd = (uint32_t)(adv - f->rx_head);
                    f->rx_tail = e->rx_tail;
                    uint64_t right = f->rx_tail + f->rx_len;
                    uint64_t grow = right - adv;
                    uint32_t thresh = f->rx_len / 2;
                    if (thresh > 2u * f->mss)
                        thresh = 2u * f->mss;
                    /* window update when it opens meaningfully from small
                     * (RFC 1122 4.2.3.3 receiver SWS avoidance) */
                    if (right > adv && grow >= thresh && old_wnd < f->rx_len / 2)
                        fp_need_ack(fp, e->flow_id, f);
                } else {
                    bad = 1;
                }
            }
            if (bad) {
                fp->st->atx_bad++;
                c->strikes++;
            }
            tas_flow_unlock(f);
        }
        report_strikes(fp, c);
    }
    return work;
}

static uint32_t poll_sp(struct tas_fp *fp)
{
    uint32_t n = tas_ring_dequeue_n(&fp->ktx, fp->ktxbuf, FP_KTX_BATCH);
    for (uint32_t i = 0; i < n; i++) {
        struct tas_ktx *k = (struct tas_ktx *)fp->ktxbuf[i];
        if (k->kind == TAS_KTX_FRAME && k->len <= TAS_KQ_DATA) {
            fp_write_frame(fp, k->data, k->len);
        } else if (k->kind == TAS_KTX_RX && k->len <= TAS_KQ_DATA) {
            /* a segment the slow path handed back once it installed the
             * flow (e.g. data riding on the handshake's last ACK) */
            fp_rx_frame(fp, k->data, k->len);
        } else if (k->kind == TAS_KTX_KICK && k->flow_id < fp->cfg.n_flows) {
            struct tas_flow *f = &fp->ft.flows[k->flow_id];
            tas_flow_lock(f);
            if (f->status == TAS_FLOW_ACTIVE)
                fp_txq_push(fp, k->flow_id, f);
            tas_flow_unlock(f);
        }
    }
    return n;
}

uint32_t tas_fp_poll(struct tas_fp *fp, uint64_t now_us)
{
    uint32_t work = 0;
    fp->now_us = now_us;
    fp->poll_stamp++;
    if (fp->poll_stamp == 0)
        fp->poll_stamp = 1;
    fp->st->polls++;

    /* 1. frames from the TAP */
    for (uint32_t i = 0; i < fp->cfg.rx_batch; i++) {
        ssize_t r = read(fp->cfg.tap_fd, fp->rxbuf[i], FP_FRAME_MAX);
        if (r <= 0) {
            if (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                fp->st->tap_errors++;
            break;
        }
        if (fp->vnet) {
            /* no TUN_F_* offloads were offered for reads: the kernel hands
             * us complete, checksummed frames after the (zero) header */
            if (r <= FP_VNET_HLEN) {
                fp->st->tap_errors++;
                continue;
            }
            fp_rx_frame(fp, fp->rxbuf[i] + FP_VNET_HLEN, (uint32_t)r - FP_VNET_HLEN);
            work++;
            continue;
        }
        fp_rx_frame(fp, fp->rxbuf[i], (uint32_t)r);
        work++;
    }
    /* 2. slow path commands, 3. application updates */
    work += poll_sp(fp);
    work += poll_apps(fp);
    /* 4. transmit */
    work += fp_tx_run(fp, fp->cfg.tx_batch);
    /* 5. ACKs not piggybacked on data, delayed ACKs whose time is up */
    fp_flush_acks(fp);
    fp_flush_delacks(fp);

    fp_post_notifs(fp);
    /* 6. notifications, then doorbells: apps (only if they sleep) and the slow path.  The
     * fence orders our ring publication before reading the armed flags
     * (the sleeper does the mirror image: arm, fence, re-check). */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    for (uint32_t i = 0; i < fp->n_active; i++) {
        struct fp_ctx *c = fp->ctx[fp->active[i]];
        if (c->notify) {
            struct tas_ctx_hdr *h = (struct tas_ctx_hdr *)c->base;
            if (__atomic_load_n(&h->app_armed, __ATOMIC_SEQ_CST))
                kick(c->evfd);
            c->notify = 0;
            c->listed = 0;
        }
    }
    if (fp->krx_posted) {
        /* only if the slow path may sleep (tas_abi.h struct tas_cc_news_hdr) */
        uint32_t *spa = &fp->ft.news->sp_armed;
        uint32_t a = __atomic_load_n(spa, __ATOMIC_SEQ_CST);
        if (a == TAS_SP_ARMED ? __atomic_exchange_n(spa, TAS_SP_AWAKE, __ATOMIC_SEQ_CST) == TAS_SP_ARMED
                              : a != TAS_SP_AWAKE)
            kick(fp->cfg.sp_evfd);
        fp->krx_posted = 0;
    }
    if (work)
        fp->st->busy_polls++;
    return work;
}

/* -- the busy-poll loop (fastpath.h tas_fp_spin_run; twin: loop.py
 * SpinPolicy + SpinLoop).  Signed differences as in Python, so a clock
 * sequence that goes backwards (tests) decides the same. */

void tas_fp_spin_woke(struct tas_fp_spin *s, uint64_t t)
{
    s->idle_since = t;
    s->last_idle = 0;
}

int tas_fp_spin_decide(struct tas_fp_spin *s, uint64_t t, uint32_t work, uint64_t pace_due)
{
    if (work) {
        s->idle_since = t;
        s->last_idle = 0;
        return 1;
    }
    uint64_t last = s->last_idle;
    s->last_idle = t;
    if (pace_due && (int64_t)(pace_due - t) < TAS_FP_PACE_SPIN_US)
        return 1;
    if (s->gap_us >= 0 && last && (int64_t)(t - last) > s->gap_us) {
        s->preempted_sleeps++;
        return 0;
    }
    return (int64_t)(t - s->idle_since) < s->poll_us;
}

/* The loop, inlined into each caller so tas_fp_spin_run's constant ops
 * become direct calls. */
static inline __attribute__((always_inline)) int
spin_loop(struct tas_fp_spin *s, const struct tas_fp_spin_ops *o)
{
    void *arg = o->arg;
    uint32_t n = 0;
    uint64_t start = 0;
    s->runs++;
    for (;;) {
        uint64_t t = o->now(arg);
        uint32_t work = o->poll(arg, t);
        s->polls++;
        if (n++ == 0)
            start = t;
        if (tas_fp_spin_decide(s, t, work, work ? 0 : o->pace_due(arg))) {
            if (!work && s->yield_idle) {
                o->yield_cpu(arg);
                s->yields++;
            }
        } else {
            /* arm, then poll once more: an entry published before the
             * producer saw the flag is found here (fastpath.h) */
            o->set_armed(arg, 1);
            s->polls++;
            if (!o->poll(arg, o->now(arg)))
                return TAS_FP_SPIN_SLEEP;
            o->set_armed(arg, 0);
            tas_fp_spin_woke(s, o->now(arg));
        }
        if (n >= s->max_polls || (int64_t)(t - start) >= s->max_us)
            return TAS_FP_SPIN_CHECK;
    }
}

static uint64_t fp_ops_now(void *arg)
{
    (void)arg;
    return tas_now_us();
}

static uint32_t fp_ops_poll(void *arg, uint64_t now_us) { return tas_fp_poll(arg, now_us); }

static uint64_t fp_ops_pace_due(void *arg) { return ((struct tas_fp *)arg)->st->pace_due_us; }

static void fp_ops_set_armed(void *arg, uint32_t armed) { tas_fp_set_armed(arg, armed); }

static void fp_ops_yield(void *arg)
{
    (void)arg;
    sched_yield();
}

int tas_fp_spin_run(struct tas_fp *fp, struct tas_fp_spin *s)
{
    const struct tas_fp_spin_ops ops = {
        .now = fp_ops_now,
        .poll = fp_ops_poll,
        .pace_due = fp_ops_pace_due,
        .set_armed = fp_ops_set_armed,
        .yield_cpu = fp_ops_yield,
        .arg = fp,
    };
    return spin_loop(s, &ops);
}

int tas_fp_spin_run_ops(struct tas_fp_spin *s, const struct tas_fp_spin_ops *ops)
{
    return spin_loop(s, ops);
}
