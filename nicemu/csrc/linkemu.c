/*
 * linkemu.c -- per-direction impairment engine of the link emulator.
 * Semantics (and the exact order of PRNG draws) are specified in
 * include/linkemu.h; nicemu.linkemu.PyEngine is the Python twin.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/socket.h>
#include <linux/if_packet.h>

#include "linkemu.h"

#define LE_DEFAULT_FRAMES 4096u
#define LE_RXBUF 65536u

struct le_hent {
    uint64_t depart;  /* us */
    uint64_t seq;     /* submission order, tie break */
    uint32_t slot;
    uint32_t pad;
};

struct le_engine {
    struct le_config cfg;
    struct le_counters cnt;
    uint64_t rng;
    uint64_t busy_ns;       /* bottleneck transmitter busy until (ns) */
    uint64_t last_depart;   /* last in-order departure (us) */
    uint64_t seq;
    uint32_t nslots;
    uint32_t nheap;
    uint32_t nfree;
    uint32_t pad;
    struct le_hent *heap;
    uint32_t *freelist;
    uint16_t *lens;
    uint8_t *data;
    uint8_t *rxbuf;
};

static inline uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static inline int hent_less(const struct le_hent *a, const struct le_hent *b)
{
    return a->depart < b->depart || (a->depart == b->depart && a->seq < b->seq);
}

static void heap_push(le_engine *e, uint64_t depart, uint32_t slot)
{
    uint32_t i = e->nheap++;
    struct le_hent h = { depart, e->seq++, slot, 0 };
    while (i > 0) {
        uint32_t p = (i - 1) / 2;
        if (!hent_less(&h, &e->heap[p]))
            break;
        e->heap[i] = e->heap[p];
        i = p;
    }
    e->heap[i] = h;
}

static struct le_hent heap_pop(le_engine *e)
{
    struct le_hent top = e->heap[0];
    struct le_hent last = e->heap[--e->nheap];
    uint32_t n = e->nheap, i = 0;
    for (;;) {
        uint32_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && hent_less(&e->heap[c + 1], &e->heap[c]))
            c++;
        if (!hent_less(&e->heap[c], &last))
            break;
        e->heap[i] = e->heap[c];
        i = c;
    }
    if (n > 0)
        e->heap[i] = last;
    return top;
}

le_engine *le_create(const struct le_config *cfg)
{
    le_engine *e = calloc(1, sizeof(*e));
    if (!e)
        return NULL;
    e->cfg = *cfg;
    e->nslots = cfg->max_frames ? cfg->max_frames : LE_DEFAULT_FRAMES;
    e->rng = cfg->seed;
    e->heap = calloc(e->nslots, sizeof(*e->heap));
    e->freelist = calloc(e->nslots, sizeof(*e->freelist));
    e->lens = calloc(e->nslots, sizeof(*e->lens));
    e->data = malloc((size_t)e->nslots * LE_SLOT_BYTES);
    e->rxbuf = malloc(LE_RXBUF);
    if (!e->heap || !e->freelist || !e->lens || !e->data || !e->rxbuf) {
        le_destroy(e);
        return NULL;
    }
    /* Free list as a stack; slot 0 on top. */
    for (uint32_t i = 0; i < e->nslots; i++)
        e->freelist[i] = e->nslots - 1 - i;
    e->nfree = e->nslots;
    return e;
}

void le_destroy(le_engine *e)
{
    if (!e)
        return;
    free(e->heap);
    free(e->freelist);
    free(e->lens);
    free(e->data);
    free(e->rxbuf);
    free(e);
}

uint64_t le_backlog_bytes(const le_engine *e, uint64_t now_us)
{
    uint64_t now_ns = now_us * 1000;
    if (!e->cfg.rate_bps || e->busy_ns <= now_ns)
        return 0;
    unsigned __int128 b = (unsigned __int128)(e->busy_ns - now_ns) * e->cfg.rate_bps;
    return (uint64_t)(b / 8000000000ULL);
}

static void ce_mark(uint8_t *f, uint32_t len)
{
    if (len < 14 + 20 || f[12] != 0x08 || f[13] != 0x00 || (f[14] >> 4) != 4)
        return;
    uint8_t tos = f[15];
    uint8_t ecn = tos & 3;
    if (ecn != 1 && ecn != 2)
        return;
    /* RFC 1624 eqn 3: HC' = ~(~HC + ~m + m') on the word (ver/ihl, tos). */
    uint16_t m = (uint16_t)((f[14] << 8) | tos);
    uint16_t m2 = (uint16_t)(m | 3);
    uint16_t hc = (uint16_t)((f[24] << 8) | f[25]);
    uint32_t sum = (uint16_t)~hc + (uint16_t)~m + (uint32_t)m2;
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    uint16_t nc = (uint16_t)~sum;
    f[15] = (uint8_t)(tos | 3);
    f[24] = (uint8_t)(nc >> 8);
    f[25] = (uint8_t)(nc & 0xff);
}

int le_submit(le_engine *e, const uint8_t *frame, uint32_t len, uint64_t now_us)
{
    const struct le_config *c = &e->cfg;
    uint64_t r[LE_DRAWS];
    for (int i = 0; i < LE_DRAWS; i++)
        r[i] = splitmix64(&e->rng);

    e->cnt.frames_in++;
    e->cnt.bytes_in += len;

    if (r[0] % LE_PPM < c->loss_ppm) {
        e->cnt.dropped_loss++;
        return 0;
    }
    if (len > LE_SLOT_BYTES) {
        e->cnt.dropped_big++;
        return 0;
    }
    uint64_t backlog = le_backlog_bytes(e, now_us);
    if (c->queue_limit_bytes && backlog + len > c->queue_limit_bytes) {
        e->cnt.dropped_queue++;
        return 0;
    }
    if (e->nfree == 0) {
        e->cnt.dropped_full++;
        return 0;
    }
    uint32_t slot = e->freelist[--e->nfree];
    uint8_t *f = e->data + (size_t)slot * LE_SLOT_BYTES;
    memcpy(f, frame, len);
    e->lens[slot] = (uint16_t)len;

    if (len > 0 && r[2] % LE_PPM < c->corrupt_ppm) {
        uint32_t pos = len > 14 ? 14 + (uint32_t)(r[5] % (len - 14)) : (uint32_t)(r[5] % len);
        f[pos] ^= (uint8_t)(1u << ((r[5] >> 32) & 7));
        e->cnt.corrupted++;
    }
    if (c->ecn_threshold_bytes && backlog >= c->ecn_threshold_bytes) {
        uint8_t before = len > 15 ? f[15] : 0;
        ce_mark(f, len);
        if (len > 15 && f[15] != before)
            e->cnt.ce_marked++;
    }

    uint64_t done = now_us;
    if (c->rate_bps) {
        uint64_t now_ns = now_us * 1000;
        uint64_t start = e->busy_ns > now_ns ? e->busy_ns : now_ns;
        uint64_t end = start + (uint64_t)len * 8000000000ULL / c->rate_bps;
        e->busy_ns = end;
        done = (end + 999) / 1000;
        uint64_t bl = le_backlog_bytes(e, now_us);
        if (bl > e->cnt.max_backlog_bytes)
            e->cnt.max_backlog_bytes = bl;
    }
    uint64_t depart = done + c->delay_us;
    if (c->jitter_us)
        depart += r[4] % ((uint64_t)c->jitter_us + 1);
    if (r[3] % LE_PPM < c->reorder_ppm) {
        depart += c->reorder_us;
        e->cnt.reordered++;
    } else {
        if (depart < e->last_depart)
            depart = e->last_depart;
        e->last_depart = depart;
    }
    heap_push(e, depart, slot);

    if (r[1] % LE_PPM < c->dup_ppm && e->nfree > 0) {
        uint32_t s2 = e->freelist[--e->nfree];
        memcpy(e->data + (size_t)s2 * LE_SLOT_BYTES, f, len);
        e->lens[s2] = (uint16_t)len;
        heap_push(e, depart, s2);
        e->cnt.duplicated++;
        return 2;
    }
    return 1;
}

int64_t le_next_deadline(const le_engine *e)
{
    return e->nheap ? (int64_t)e->heap[0].depart : -1;
}

uint32_t le_queued(const le_engine *e)
{
    return e->nheap;
}

void le_get_counters(const le_engine *e, struct le_counters *out)
{
    *out = e->cnt;
}

uint32_t le_pop_ready(le_engine *e, uint64_t now_us, uint8_t *out_buf,
                      uint32_t cap, uint32_t *out_lens, uint32_t max)
{
    uint32_t n = 0, off = 0;
    while (n < max && e->nheap && e->heap[0].depart <= now_us) {
        uint32_t slot = e->heap[0].slot;
        uint32_t len = e->lens[slot];
        if (off + len > cap)
            break;
        heap_pop(e);
        memcpy(out_buf + off, e->data + (size_t)slot * LE_SLOT_BYTES, len);
        out_lens[n++] = len;
        off += len;
        e->freelist[e->nfree++] = slot;
        e->cnt.frames_out++;
        e->cnt.bytes_out += len;
    }
    return n;
}

int le_pump(le_engine *e, int fd, uint64_t now_us, uint32_t max)
{
    uint32_t n = 0;
    while (n < max) {
        struct sockaddr_ll sll;
        socklen_t sl = sizeof(sll);
        ssize_t got = recvfrom(fd, e->rxbuf, LE_RXBUF, MSG_DONTWAIT | MSG_TRUNC,
                               (struct sockaddr *)&sll, &sl);
        if (got < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            e->cnt.rx_errors++;
            if (n == 0)
                return -errno;
            break;
        }
        n++;
        if (sll.sll_pkttype == PACKET_OUTGOING) {
            e->cnt.skipped_outgoing++;
            continue;
        }
        /* MSG_TRUNC: got is the real length; le_submit drops it as big. */
        uint32_t len = (uint32_t)got;
        le_submit(e, e->rxbuf, len > LE_RXBUF ? LE_RXBUF : len, now_us);
    }
    return (int)n;
}

int le_flush(le_engine *e, int fd, uint64_t now_us, uint32_t max)
{
    uint32_t n = 0;
    while (n < max && e->nheap && e->heap[0].depart <= now_us) {
        struct le_hent h = heap_pop(e);
        uint32_t len = e->lens[h.slot];
        ssize_t sent;
        do {
            sent = send(fd, e->data + (size_t)h.slot * LE_SLOT_BYTES, len, 0);
        } while (sent < 0 && errno == EINTR);
        e->freelist[e->nfree++] = h.slot;
        n++;
        if (sent != (ssize_t)len) {
            e->cnt.tx_errors++;
            continue;
        }
        e->cnt.frames_out++;
        e->cnt.bytes_out += len;
    }
    return (int)n;
}

int le_wait2(int fd_a, int fd_b, int64_t timeout_us)
{
    struct pollfd p[2] = { { fd_a, POLLIN, 0 }, { fd_b, POLLIN, 0 } };
    struct timespec ts, *tsp = NULL;
    if (timeout_us >= 0) {
        ts.tv_sec = timeout_us / 1000000;
        ts.tv_nsec = (timeout_us % 1000000) * 1000;
        tsp = &ts;
    }
    int r = ppoll(p, 2, tsp, NULL);
    if (r < 0)
        return -errno;
    int mask = 0;
    if (p[0].revents)
        mask |= 1;
    if (p[1].revents)
        mask |= 2;
    return mask;
}
