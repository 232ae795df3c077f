/*
 * ring.c -- SPSC rings over shared memory.  See include/ring.h.
 *
 * Each side keeps its own index privately (r->own) and only ever trusts
 * that copy; the peer's shared index is loaded once per operation with
 * acquire ordering and validated before use, so a corrupt or hostile peer
 * can at worst make the ring look empty/full, never make us touch memory
 * outside the slot array.
 */
#include <stdint.h>
#include <stddef.h>
#include <string.h>

#include "tas_abi.h"
#include "ring.h"

uint64_t tas_ring_bytes(uint32_t slots, uint32_t entry_size)
{
    return (uint64_t)sizeof(struct tas_ring_hdr) + (uint64_t)slots * entry_size;
}

static int ring_params_ok(uint32_t slots, uint32_t entry_size)
{
    if (slots < 2 || (slots & (slots - 1)) != 0)
        return 0;
    if (entry_size == 0 || (entry_size & 7) != 0)
        return 0;
    return 1;
}

int tas_ring_init(void *mem, uint32_t slots, uint32_t entry_size)
{
    struct tas_ring_hdr *h = mem;

    if (mem == NULL || !ring_params_ok(slots, entry_size))
        return -1;
    memset(h, 0, sizeof(*h));
    h->slots = slots;
    h->entry_size = entry_size;
    __atomic_store_n(&h->head, 0, __ATOMIC_RELEASE);
    __atomic_store_n(&h->tail, 0, __ATOMIC_RELEASE);
    return 0;
}

int tas_ring_attach(struct tas_ring *r, void *mem, uint32_t slots,
                    uint32_t entry_size, int is_producer)
{
    struct tas_ring_hdr *h = mem;
    uint64_t head, tail;

    if (r == NULL || mem == NULL || !ring_params_ok(slots, entry_size))
        return -1;
    memset(r, 0, sizeof(*r));
    r->hdr = h;
    r->slots = (uint8_t *)mem + sizeof(struct tas_ring_hdr);
    r->mask = (uint64_t)slots - 1;
    r->entry_size = entry_size;
    r->is_producer = is_producer ? 1 : 0;

    head = __atomic_load_n(&h->head, __ATOMIC_ACQUIRE);
    tail = __atomic_load_n(&h->tail, __ATOMIC_ACQUIRE);
    if (r->is_producer) {
        /* own = head, must satisfy head - tail <= slots */
        r->own = (head - tail <= (uint64_t)slots) ? head : tail;
    } else {
        /* own = tail, must satisfy head - tail <= slots */
        r->own = (head - tail <= (uint64_t)slots) ? tail : head;
    }
    return 0;
}

/* Copy n entries between the slot array (starting at logical index idx)
 * and a flat buffer, in at most two pieces. */
static void copy_in(struct tas_ring *r, uint64_t idx, const void *src, uint32_t n)
{
    uint64_t slots = r->mask + 1;
    uint64_t pos = idx & r->mask;
    uint64_t first = slots - pos;
    size_t es = r->entry_size;

    if (first > n)
        first = n;
    memcpy(r->slots + pos * es, src, first * es);
    if (n > first)
        memcpy(r->slots, (const uint8_t *)src + first * es, (n - first) * es);
}

static void copy_out(struct tas_ring *r, uint64_t idx, void *dst, uint32_t n)
{
    uint64_t slots = r->mask + 1;
    uint64_t pos = idx & r->mask;
    uint64_t first = slots - pos;
    size_t es = r->entry_size;

    if (first > n)
        first = n;
    memcpy(dst, r->slots + pos * es, first * es);
    if (n > first)
        memcpy((uint8_t *)dst + first * es, r->slots, (n - first) * es);
}

uint32_t tas_ring_enqueue_n(struct tas_ring *r, const void *src, uint32_t n)
{
    uint64_t slots = r->mask + 1;
    uint64_t tail, used, room;

    if (!r->is_producer || n == 0)
        return 0;
    tail = __atomic_load_n(&r->hdr->tail, __ATOMIC_ACQUIRE);
    used = r->own - tail;
    if (used > slots) {
        r->corrupt++;
        return 0;
    }
    room = slots - used;
    if (n > room)
        n = (uint32_t)room;
    if (n == 0)
        return 0;
    copy_in(r, r->own, src, n);
    r->own += n;
    __atomic_store_n(&r->hdr->head, r->own, __ATOMIC_RELEASE);
    return n;
}

uint32_t tas_ring_dequeue_n(struct tas_ring *r, void *dst, uint32_t n)
{
    uint64_t slots = r->mask + 1;
    uint64_t head, avail;

    if (r->is_producer || n == 0)
        return 0;
    head = __atomic_load_n(&r->hdr->head, __ATOMIC_ACQUIRE);
    avail = head - r->own;
    if (avail > slots) {
        r->corrupt++;
        return 0;
    }
    if (n > avail)
        n = (uint32_t)avail;
    if (n == 0)
        return 0;
    copy_out(r, r->own, dst, n);
    r->own += n;
    __atomic_store_n(&r->hdr->tail, r->own, __ATOMIC_RELEASE);
    return n;
}

/* Entries currently in the ring as seen from our side, or -1 if the
 * peer's index is out of range. */
static int64_t ring_used(struct tas_ring *r)
{
    uint64_t slots = r->mask + 1;
    uint64_t used;

    if (r->is_producer)
        used = r->own - __atomic_load_n(&r->hdr->tail, __ATOMIC_ACQUIRE);
    else
        used = __atomic_load_n(&r->hdr->head, __ATOMIC_ACQUIRE) - r->own;
    if (used > slots)
        return -1;
    return (int64_t)used;
}

uint32_t tas_ring_count(struct tas_ring *r)
{
    int64_t used = ring_used(r);

    return used < 0 ? 0 : (uint32_t)used;
}

uint32_t tas_ring_free(struct tas_ring *r)
{
    int64_t used = ring_used(r);

    return used < 0 ? 0 : (uint32_t)(r->mask + 1 - (uint64_t)used);
}
