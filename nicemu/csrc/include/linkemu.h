/*
 * linkemu.h -- per-direction impairment engine of the userspace link
 * emulator (nicemu/linkemu.py drives it).  cdef-clean (see
 * flextcp/csrc/include/tas_abi.h).  Python twin: nicemu.linkemu.PyEngine
 * (same PRNG, same decisions, same departure times; tests compare).
 *
 * One engine models one direction of a link:
 *
 *   submit --> [loss] --> [bottleneck queue, rate_bps, queue_limit_bytes,
 *              CE mark above ecn_threshold_bytes] --> [delay + jitter,
 *              reorder] --> timed queue (heap by departure, then arrival)
 *              --> pop_ready
 *
 * Per submitted frame the engine draws exactly LE_DRAWS values from its
 * splitmix64 stream, in this order, whether or not a feature is enabled:
 *   r0 loss, r1 duplicate, r2 corrupt, r3 reorder, r4 jitter, r5 corrupt
 *   position.  A probability p (ppm) fires when r % 1000000 < p.
 * Decisions, in order:
 *   1. loss: dropped_loss, nothing else happens.
 *   2. frame larger than LE_SLOT_BYTES: dropped_big.
 *   3. backlog = bytes still waiting for serialisation at now (0 without a
 *      rate).  If queue_limit_bytes and backlog + len > limit: dropped_queue.
 *      If the timed queue has no free slot: dropped_full.
 *   4. corrupt: flip bit (r5 >> 32) & 7 of byte 14 + r5 % (len - 14)
 *      (byte r5 % len for frames of <= 14 bytes).
 *   5. CE mark: if ecn_threshold_bytes and backlog >= threshold and the
 *      frame is IPv4 (ethertype 0x0800, version 4) with ECN 01 or 10: set
 *      ECN to 11 and update the header checksum incrementally (RFC 1624).
 *   6. serialisation: with rate_bps, tx starts at max(now, busy) and takes
 *      len*8e9/rate_bps ns; busy_until advances; done = ceil(end / 1000) us.
 *      Without a rate, done = now.
 *   7. departure = done + delay_us + (jitter_us ? r4 % (jitter_us + 1) : 0).
 *      If reordered (r3): departure += reorder_us and the frame does not
 *      take part in ordering; otherwise departure = max(departure, last
 *      in-order departure), so jitter alone never reorders.
 *   8. duplicate (r1): an identical copy with the same departure, queued
 *      right after the original; it costs no serialisation time.  Skipped
 *      (not counted) if the timed queue has no second free slot.
 * Frames with equal departure times leave in submission order.
 */

#define LE_SLOT_BYTES 2048       /* largest frame the engine carries */
#define LE_DRAWS 6               /* PRNG draws per submitted frame */
#define LE_PPM 1000000

struct le_config {
    uint32_t loss_ppm;
    uint32_t dup_ppm;
    uint32_t corrupt_ppm;
    uint32_t reorder_ppm;
    uint32_t delay_us;
    uint32_t jitter_us;          /* uniform extra delay in [0, jitter_us] */
    uint32_t reorder_us;         /* extra delay of a reordered frame */
    uint32_t queue_limit_bytes;  /* bottleneck backlog bound; 0 = none */
    uint32_t ecn_threshold_bytes;/* CE-mark ECT frames at/above; 0 = off */
    uint32_t max_frames;         /* timed-queue slots; 0 means 4096 */
    uint64_t rate_bps;           /* 0 = unlimited */
    uint64_t seed;
};

struct le_counters {
    uint64_t frames_in;          /* submitted */
    uint64_t frames_out;         /* popped (duplicates included) */
    uint64_t bytes_in;
    uint64_t bytes_out;
    uint64_t dropped_loss;
    uint64_t dropped_queue;      /* bottleneck queue over its byte limit */
    uint64_t dropped_full;       /* no free slot in the timed queue */
    uint64_t dropped_big;        /* larger than LE_SLOT_BYTES */
    uint64_t duplicated;
    uint64_t corrupted;
    uint64_t reordered;
    uint64_t ce_marked;
    uint64_t skipped_outgoing;   /* le_pump: own transmissions seen */
    uint64_t tx_errors;          /* le_flush: send() failed, frame lost */
    uint64_t rx_errors;          /* le_pump: recv() failed */
    uint64_t max_backlog_bytes;  /* highest bottleneck backlog seen */
};

typedef struct le_engine le_engine;

/* NULL on allocation failure.  The config is copied. */
le_engine *le_create(const struct le_config *cfg);
void le_destroy(le_engine *e);

/* Offer one frame arriving at now_us.  Returns the number of copies queued
 * (0 dropped, 1, or 2 with a duplicate).  May modify nothing in `frame`. */
int le_submit(le_engine *e, const uint8_t *frame, uint32_t len, uint64_t now_us);

/* Departure time of the next queued frame, or -1 if none is queued. */
int64_t le_next_deadline(const le_engine *e);

/* Pop up to `max` frames with departure <= now_us, in departure order,
 * packed back to back into out_buf (capacity cap); out_lens[i] gets the
 * length of frame i.  Stops early when the next frame does not fit.
 * Returns the number of frames popped. */
uint32_t le_pop_ready(le_engine *e, uint64_t now_us, uint8_t *out_buf,
                      uint32_t cap, uint32_t *out_lens, uint32_t max);

uint32_t le_queued(const le_engine *e);                   /* frames held */
uint64_t le_backlog_bytes(const le_engine *e, uint64_t now_us);
void le_get_counters(const le_engine *e, struct le_counters *out);

/* Socket I/O batch helpers for an AF_PACKET socket bound to one port.
 * le_pump: read up to max frames without blocking and submit them at
 * now_us; frames with sll_pkttype PACKET_OUTGOING are skipped.  Returns the
 * number of frames read (skipped ones included), or -errno on an error
 * other than EAGAIN before anything was read.
 * le_flush: send every frame due at now_us (up to max) on fd.  Returns the
 * number of frames popped. */
int le_pump(le_engine *e, int fd, uint64_t now_us, uint32_t max);
int le_flush(le_engine *e, int fd, uint64_t now_us, uint32_t max);

/* Wait until fd_a or fd_b is readable or timeout_us passes (-1: forever),
 * with microsecond resolution (ppoll).  Returns a bit mask (1: fd_a,
 * 2: fd_b), 0 on timeout, -errno on error (-EINTR on a signal). */
int le_wait2(int fd_a, int fd_b, int64_t timeout_us);
