/*
 * fastpath.h -- the per-core fast-path engine.  One `struct tas_fp` per
 * fast-path process; Python (flextcp/loop.py) calls tas_fp_poll() in a loop
 * and only decides when to sleep.  All per-packet work happens inside.
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
