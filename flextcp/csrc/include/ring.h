/*
 * ring.h -- SPSC rings over shared memory (struct tas_ring_hdr in tas_abi.h).
 * Release/acquire ordering with __atomic builtins; batch operations so
 * Python crosses into C once per batch.  Python twin: flextcp/ring.py.
 */
#ifndef TAS_RING_H
#define TAS_RING_H
#include <stdint.h>
#include "tas_abi.h"


/* Bytes a ring with `slots` entries of `entry_size` bytes occupies. */
uint64_t tas_ring_bytes(uint32_t slots, uint32_t entry_size);

/* Initialise a ring in mem (creator only; zeroes indices). 0 or -1. */
int tas_ring_init(void *mem, uint32_t slots, uint32_t entry_size);

/* Attach a process-local view.  slots/entry_size are what the attaching
 * side EXPECTS (it never trusts the shared header's copy); mem must hold
 * tas_ring_bytes(slots, entry_size) bytes.  is_producer selects which
 * index is private.  The private index starts from the shared value. */
int tas_ring_attach(struct tas_ring *r, void *mem, uint32_t slots,
                    uint32_t entry_size, int is_producer);

/* Enqueue up to n entries of entry_size bytes from src.  Returns the
 * number enqueued (0..n).  If the consumer's tail is out of range the
 * ring is treated as full and r->corrupt is incremented. */
uint32_t tas_ring_enqueue_n(struct tas_ring *r, const void *src, uint32_t n);

/* Dequeue up to n entries into dst.  Returns the number dequeued.  If the
 * producer's head is out of range nothing is dequeued and r->corrupt is
 * incremented. */
uint32_t tas_ring_dequeue_n(struct tas_ring *r, void *dst, uint32_t n);

/* Entries ready to dequeue (consumer) or free slots (producer); 0 when the
 * peer's index is out of range. */
uint32_t tas_ring_count(struct tas_ring *r);
uint32_t tas_ring_free(struct tas_ring *r);

#endif /* TAS_RING_H */
