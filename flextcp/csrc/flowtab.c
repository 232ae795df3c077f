/*
 * flowtab.c -- shared flow table.  See include/flowtab.h.
 *
 * Region layout (all offsets computed here, never read back from the
 * header): struct tas_ft_hdr (64 B), n_flows struct tas_flow (128 B each,
 * 64-B aligned), n_hash uint64_t hash slots, n_hash = next power of two
 * >= 2 * n_flows, then (64-B aligned) n_flows side records (struct
 * tas_flow_cc), struct tas_cc_news_hdr and the CC news bits, one per flow
 * id.  The index uses linear probing.  Slot values:
 * 0 empty, UINT64_MAX tombstone, else (hash << 32) | (flow_id + 1).
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

#include "tas_abi.h"
#include "flowtab.h"

#define FT_TOMB UINT64_MAX
#define FT_MAX_FLOWS (1u << 30)

_Static_assert(sizeof(struct tas_ft_hdr) == 64, "tas_ft_hdr size");
_Static_assert(sizeof(struct tas_cc_news_hdr) == 64, "tas_cc_news_hdr: one cache line");
_Static_assert(sizeof(struct tas_flow) == 128, "tas_flow size: two cache lines");
_Static_assert(sizeof(struct tas_flow_cc) == 320, "tas_flow_cc size: five cache lines");
_Static_assert(offsetof(struct tas_flow, rx_head) == 64, "tas_flow line 1");
_Static_assert(offsetof(struct tas_flow_cc, rx_adv) == 64 && offsetof(struct tas_flow_cc, cnt_ecn_bytes) == 128 &&
               offsetof(struct tas_flow_cc, sb_start) == 192 && offsetof(struct tas_flow_cc, ooo_start) == 256,
               "tas_flow_cc lines");

static uint32_t ft_n_hash(uint32_t n_flows)
{
    uint32_t n = 2;

    while (n < 2 * n_flows)
        n <<= 1;
    return n;
}

static uint64_t ft_flows_off(void)
{
    return sizeof(struct tas_ft_hdr);
}

static uint64_t ft_hash_off(uint32_t n_flows)
{
    return ft_flows_off() + (uint64_t)n_flows * sizeof(struct tas_flow);
}

static uint64_t ft_side_off(uint32_t n_flows)
{
    uint64_t end = ft_hash_off(n_flows) + (uint64_t)ft_n_hash(n_flows) * sizeof(uint64_t);
    return (end + 63u) & ~(uint64_t)63u;
}

/* the side records are 320 B each from a 64-byte boundary: they end on one */
static uint64_t ft_news_off(uint32_t n_flows)
{
    return ft_side_off(n_flows) + (uint64_t)n_flows * sizeof(struct tas_flow_cc);
}

static uint64_t ft_news_words(uint32_t n_flows)
{
    return ((uint64_t)n_flows + 63u) / 64u;
}

uint64_t tas_ft_news_off(uint32_t n_flows)
{
    if (n_flows == 0 || n_flows > FT_MAX_FLOWS)
        return 0;
    return ft_news_off(n_flows);
}

uint64_t tas_ft_bytes(uint32_t n_flows)
{
    if (n_flows == 0 || n_flows > FT_MAX_FLOWS)
        return 0;
    uint64_t end = ft_news_off(n_flows) + sizeof(struct tas_cc_news_hdr) + 8u * ft_news_words(n_flows);
    return (end + 63u) & ~(uint64_t)63u;
}

int tas_ft_cc_news_set(struct tas_cc_news_hdr *h, uint32_t id)
{
    uint64_t *w = (uint64_t *)(h + 1) + id / 64u;
    uint64_t bit = (uint64_t)1 << (id % 64u);
    if (!(__atomic_load_n(w, __ATOMIC_RELAXED) & bit))
        __atomic_fetch_or(w, bit, __ATOMIC_SEQ_CST);
    /* Dekker with the slow path's arm-then-look (tas_sp_cc_news_arm): one
     * of the two sees the other; the armed word is rarely set, so a plain
     * load keeps the line shared */
    if (__atomic_load_n(&h->armed, __ATOMIC_SEQ_CST) &&
        __atomic_exchange_n(&h->armed, 0u, __ATOMIC_SEQ_CST))
        return 1;
    return 0;
}

void tas_ft_cc_news_rearm(struct tas_cc_news_hdr *h)
{
    __atomic_store_n(&h->armed, 1u, __ATOMIC_SEQ_CST);
}

int tas_ft_init(void *mem, uint32_t n_flows)
{
    struct tas_ft_hdr *h = mem;
    uint64_t len = tas_ft_bytes(n_flows);

    if (mem == NULL || len == 0)
        return -1;
    memset(mem, 0, len);
    h->n_flows = n_flows;
    h->n_hash = ft_n_hash(n_flows);
    h->flows_off = ft_flows_off();
    h->hash_off = ft_hash_off(n_flows);
    h->abi_version = TAS_ABI_VERSION;
    __atomic_store_n(&h->magic, TAS_FT_MAGIC, __ATOMIC_RELEASE);
    return 0;
}

int tas_ft_attach(struct tas_ft *ft, void *mem, uint64_t len, uint32_t n_flows)
{
    struct tas_ft_hdr *h = mem;
    uint64_t need = tas_ft_bytes(n_flows);

    if (ft == NULL || mem == NULL || need == 0 || len < need)
        return -1;
    if (__atomic_load_n(&h->magic, __ATOMIC_ACQUIRE) != TAS_FT_MAGIC ||
        h->abi_version != TAS_ABI_VERSION || h->n_flows != n_flows ||
        h->n_hash != ft_n_hash(n_flows) || h->flows_off != ft_flows_off() ||
        h->hash_off != ft_hash_off(n_flows))
        return -1;
    ft->hdr = h;
    ft->flows = (struct tas_flow *)((uint8_t *)mem + ft_flows_off());
    ft->hash = (uint64_t *)((uint8_t *)mem + ft_hash_off(n_flows));
    ft->side = (struct tas_flow_cc *)((uint8_t *)mem + ft_side_off(n_flows));
    ft->news = (struct tas_cc_news_hdr *)((uint8_t *)mem + ft_news_off(n_flows));
    ft->news_bits = (uint64_t *)(ft->news + 1);
    ft->n_flows = n_flows;
    ft->hash_mask = ft_n_hash(n_flows) - 1;
    return 0;
}

static inline uint32_t rotl32(uint32_t x, int r)
{
    return (x << r) | (x >> (32 - r));
}

static inline uint32_t mm3_block(uint32_t h, uint32_t k)
{
    k *= 0xcc9e2d51u;
    k = rotl32(k, 15);
    k *= 0x1b873593u;
    h ^= k;
    h = rotl32(h, 13);
    return h * 5 + 0xe6546b64u;
}

/* MurmurHash3 x86_32 of the three 32-bit words (local_ip, remote_ip,
 * local_port << 16 | remote_port), seed 0x9747b28c. */
uint32_t tas_flow_hash(uint32_t local_ip, uint16_t local_port,
                       uint32_t remote_ip, uint16_t remote_port)
{
    uint32_t h = 0x9747b28cu;

    h = mm3_block(h, local_ip);
    h = mm3_block(h, remote_ip);
    h = mm3_block(h, ((uint32_t)local_port << 16) | remote_port);
    h ^= 12;
    h ^= h >> 16;
    h *= 0x85ebca6bu;
    h ^= h >> 13;
    h *= 0xc2b2ae35u;
    h ^= h >> 16;
    return h;
}

static int flow_matches(const struct tas_flow *f, uint32_t local_ip,
                        uint16_t local_port, uint32_t remote_ip,
                        uint16_t remote_port)
{
    return f->local_ip == local_ip && f->remote_ip == remote_ip &&
           f->local_port == local_port && f->remote_port == remote_port &&
           __atomic_load_n(&f->status, __ATOMIC_RELAXED) != TAS_FLOW_FREE;
}

int64_t tas_ft_lookup(struct tas_ft *ft, uint32_t local_ip, uint16_t local_port,
                      uint32_t remote_ip, uint16_t remote_port)
{
    uint32_t h = tas_flow_hash(local_ip, local_port, remote_ip, remote_port);
    uint64_t i = h & ft->hash_mask;
    uint64_t step;

    for (step = 0; step <= ft->hash_mask; step++, i = (i + 1) & ft->hash_mask) {
        uint64_t s = __atomic_load_n(&ft->hash[i], __ATOMIC_ACQUIRE);
        uint32_t fid;

        if (s == TAS_HASH_EMPTY)
            return -1;
        if (s == FT_TOMB || (uint32_t)(s >> 32) != h)
            continue;
        fid = (uint32_t)s - 1;
        if (fid < ft->n_flows &&
            flow_matches(&ft->flows[fid], local_ip, local_port, remote_ip,
                         remote_port))
            return fid;
    }
    return -1;
}

int tas_ft_insert(struct tas_ft *ft, uint32_t flow_id)
{
    const struct tas_flow *f;
    uint32_t h;
    uint64_t i, step, target = UINT64_MAX;

    if (flow_id >= ft->n_flows)
        return -1;
    f = &ft->flows[flow_id];
    h = tas_flow_hash(f->local_ip, f->local_port, f->remote_ip, f->remote_port);
    i = h & ft->hash_mask;
    for (step = 0; step <= ft->hash_mask; step++, i = (i + 1) & ft->hash_mask) {
        uint64_t s = ft->hash[i];    /* single writer: plain load */
        uint32_t fid;

        if (s == TAS_HASH_EMPTY) {
            if (target == UINT64_MAX)
                target = i;
            break;
        }
        if (s == FT_TOMB) {
            if (target == UINT64_MAX)
                target = i;
            continue;
        }
        fid = (uint32_t)s - 1;
        if (fid == flow_id)
            return -1;      /* already indexed */
        if ((uint32_t)(s >> 32) == h && fid < ft->n_flows &&
            flow_matches(&ft->flows[fid], f->local_ip, f->local_port,
                         f->remote_ip, f->remote_port))
            return -1;      /* tuple already present */
    }
    if (target == UINT64_MAX)
        return -1;          /* index full */
    __atomic_store_n(&ft->hash[target], ((uint64_t)h << 32) | (flow_id + 1),
                     __ATOMIC_RELEASE);
    return 0;
}

int tas_ft_remove(struct tas_ft *ft, uint32_t flow_id)
{
    const struct tas_flow *f;
    uint32_t h;
    uint64_t i, step, want;

    if (flow_id >= ft->n_flows)
        return -1;
    f = &ft->flows[flow_id];
    h = tas_flow_hash(f->local_ip, f->local_port, f->remote_ip, f->remote_port);
    want = ((uint64_t)h << 32) | (flow_id + 1);
    i = h & ft->hash_mask;
    for (step = 0; step <= ft->hash_mask; step++, i = (i + 1) & ft->hash_mask) {
        uint64_t s = ft->hash[i];

        if (s == TAS_HASH_EMPTY)
            return -1;
        if (s != want)
            continue;
        __atomic_store_n(&ft->hash[i], FT_TOMB, __ATOMIC_RELEASE);
        /* If the next slot is empty no probe path runs through this one:
         * turn it and any tombstones right before it back into EMPTY so
         * tombstones do not accumulate.  Safe with concurrent readers: a
         * reader reaching these slots would stop at the empty one anyway. */
        if (ft->hash[(i + 1) & ft->hash_mask] == TAS_HASH_EMPTY) {
            uint64_t j = i, n;

            for (n = 0; n <= ft->hash_mask && ft->hash[j] == FT_TOMB; n++) {
                __atomic_store_n(&ft->hash[j], TAS_HASH_EMPTY, __ATOMIC_RELEASE);
                j = (j - 1) & ft->hash_mask;
            }
        }
        return 0;
    }
    return -1;
}

/* A flow lock holds its holder's pid (0: free).  Holders keep it for
 * microseconds, but a holder can die holding it: a fast path killed mid-
 * poll (the slow path restarts it, stack.py) would leave a slow-path call
 * that waits for the same flow spinning for ever -- before the slow path
 * ever got to restart the fast path.  So a waiter that has spun for a long
 * while (~2^22 pauses, tens of ms; far beyond any live holder, even one
 * the scheduler took the CPU from) looks whether the holder still runs, and
 * takes a dead holder's lock (a zombie counts as dead: the dead fast path
 * is the slow path's child and is reaped only after this). */
static uint32_t lock_owner; /* this process's pid, read once (0 again in a forked child) */
static pthread_once_t lock_once = PTHREAD_ONCE_INIT;

static void lock_owner_forget(void)
{
    __atomic_store_n(&lock_owner, 0, __ATOMIC_RELAXED);
}

static void lock_owner_init(void)
{
    pthread_atfork(NULL, NULL, lock_owner_forget);
}

static uint32_t my_lock_value(void)
{
    uint32_t v = __atomic_load_n(&lock_owner, __ATOMIC_RELAXED);
    if (!v) {
        pthread_once(&lock_once, lock_owner_init);
        v = (uint32_t)getpid();
        __atomic_store_n(&lock_owner, v, __ATOMIC_RELAXED);
    }
    return v;
}

static int holder_dead(uint32_t pid)
{
    if (kill((pid_t)pid, 0) != 0)
        return errno == ESRCH;
    char path[64], buf[256];
    snprintf(path, sizeof(path), "/proc/%u/stat", pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT;
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = 0;
    const char *p = strrchr(buf, ')'); /* "pid (comm) S ..." */
    return p && p[1] == ' ' && (p[2] == 'Z' || p[2] == 'X');
}

void tas_flow_lock(struct tas_flow *f)
{
    uint32_t me = my_lock_value();
    uint32_t spins = 0;
    for (;;) {
        uint32_t cur = 0;
        if (__atomic_compare_exchange_n(&f->lock, &cur, me, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
            return;
        while ((cur = __atomic_load_n(&f->lock, __ATOMIC_RELAXED)) != 0) {
#if defined(__x86_64__) || defined(__i386__)
            __builtin_ia32_pause();
#elif defined(__aarch64__) || defined(__arm__)
            __asm__ volatile("yield");
#endif
            if (++spins >= (1u << 22)) {
                spins = 0;
                if (cur != me && holder_dead(cur) &&
                    __atomic_compare_exchange_n(&f->lock, &cur, me, 0, __ATOMIC_ACQUIRE,
                                                __ATOMIC_RELAXED))
                    return;
            }
        }
    }
}

void tas_flow_unlock(struct tas_flow *f)
{
    __atomic_store_n(&f->lock, 0, __ATOMIC_RELEASE);
}
