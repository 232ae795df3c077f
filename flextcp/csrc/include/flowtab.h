/*
 * flowtab.h -- the shared flow table: fixed-size records (struct tas_flow)
 * plus an open-addressing hash index from 4-tuple to flow id.
 * The index has a single writer (SP); FP cores only read it.  A slot is
 * published with a release store after the record is complete, so a
 * reader that finds a slot sees a filled record (it still re-checks the
 * 4-tuple and status).  The side records (struct tas_flow_cc, one per
 * flow id) follow the hash in the same region.  Python twin:
 * flextcp/flowtab.py.
 */
#ifndef TAS_FLOWTAB_H
#define TAS_FLOWTAB_H
#include <stdint.h>
#include "tas_abi.h"


/* Hash slot values: 0 empty, all-ones tombstone, else
 * (hash << 32) | (flow_id + 1). */
#define TAS_HASH_EMPTY 0

struct tas_ft {
    struct tas_ft_hdr *hdr;
    struct tas_flow *flows;
    uint64_t *hash;
    struct tas_flow_cc *side;   /* side records, one per flow id (tas_abi.h) */
    struct tas_cc_news_hdr *news; /* CC news: header, then the bits (tas_abi.h) */
    uint64_t *news_bits;        /* (n_flows + 63) / 64 words */
    uint32_t n_flows;
    uint32_t hash_mask;
};

/* Region bytes for n_flows: header, records, hash, then (64-byte aligned)
 * the side records, then the CC news header and bits (rounded up to 64
 * bytes); 0 if n_flows is out of range. */
uint64_t tas_ft_bytes(uint32_t n_flows);
/* Offset of struct tas_cc_news_hdr in the region (the bits follow it). */
uint64_t tas_ft_news_off(uint32_t n_flows);
/* Mark flow `id` as having CC news (FP; relaxed load, atomic OR only if the
 * bit is clear).  Returns 1 if the slow path's loop was armed and this call
 * disarmed it: the caller posts TAS_EV_CC_NEWS (and calls
 * tas_ft_cc_news_rearm if it could not). */
int tas_ft_cc_news_set(struct tas_cc_news_hdr *h, uint32_t id);
void tas_ft_cc_news_rearm(struct tas_cc_news_hdr *h);
int tas_ft_init(void *mem, uint32_t n_flows);
/* n_flows is what the caller expects; fails if the region is too small. */
int tas_ft_attach(struct tas_ft *ft, void *mem, uint64_t len, uint32_t n_flows);

uint32_t tas_flow_hash(uint32_t local_ip, uint16_t local_port,
                       uint32_t remote_ip, uint16_t remote_port);
/* Flow id of an installed (status != FREE) flow with this 4-tuple, or -1. */
int64_t tas_ft_lookup(struct tas_ft *ft, uint32_t local_ip, uint16_t local_port,
                      uint32_t remote_ip, uint16_t remote_port);
/* Index flow_id under the 4-tuple stored in its record.  SP only.
 * 0, or -1 if the index is full or the tuple is already present. */
int tas_ft_insert(struct tas_ft *ft, uint32_t flow_id);
/* Remove flow_id from the index (tombstone).  SP only.  0 or -1. */
int tas_ft_remove(struct tas_ft *ft, uint32_t flow_id);

void tas_flow_lock(struct tas_flow *f);
void tas_flow_unlock(struct tas_flow *f);

#endif /* TAS_FLOWTAB_H */
