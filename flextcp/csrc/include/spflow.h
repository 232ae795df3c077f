/*
 * spflow.h -- slow-path operations on shared flow records.  Each takes the
 * flow lock, so the slow path never holds it across Python code.
 */
#ifndef TAS_SPFLOW_H
#define TAS_SPFLOW_H
#include <stdint.h>
#include "tas_abi.h"
#include "flowtab.h"
#include "ring.h"
#include "wire.h"


#define TAS_TMO_RTO 1
#define TAS_TMO_PROBE 2
#define TAS_TMO_TLP 3

/* Scan up to `budget` flows starting at *cursor (wrapping) for expired
 * retransmission timers and due zero-window probes.  Writes up to max
 * ids/reasons; returns how many. */
/* A timer start up to this far after the scan's now (us, modulo 2^32)
 * counts as just restarted: the fast path's clock reading was later. */
#define TAS_SP_CLOCK_SKEW_MAX 4293967295 /* 2^32 - 1 - 1 s */
uint32_t tas_sp_scan_timeouts(struct tas_ft *ft, uint32_t now_us, uint32_t budget,
                              uint32_t *cursor, uint32_t *ids, uint8_t *why, uint32_t max);
/* RTO expired (RFC 6298 5.4-5.7, RFC 5681 3.1): go back to tx_una,
 * cwnd = 1 MSS, back off.  Returns the new backoff count, -1 if gone. */
int tas_sp_rto_fire(struct tas_ft *ft, uint32_t id, uint32_t now_us);
/* Tail loss probe due (RFC 8985 7): the fast path sends one segment
 * (new data, else the last one again) to draw a SACK.  -1 if gone. */
int tas_sp_tlp(struct tas_ft *ft, uint32_t id);
/* Arm a one-byte zero-window probe and back off.  -1 if gone. */
int tas_sp_probe(struct tas_ft *ft, uint32_t id, uint32_t now_us);
/* Path MTU (ICMP fragmentation needed, RFC 1191): lower the flow's MSS to
 * mss (never below TAS_SP_MIN_MSS, never up) and resend what is in flight.
 * Returns the old MSS, -1 if nothing changed. */
#define TAS_SP_MIN_MSS 536
int tas_sp_set_mss(struct tas_ft *ft, uint32_t id, uint32_t mss);
/* Fill flow `id`'s record and side record for a connection being
 * installed (engine.py _install): both zeroed, then the connection's
 * addresses, buffers, sequence bases, options and initial window (10 MSS,
 * RFC 6928), RTO 1 s or from the handshake's RTT sample (rtt_us, 0 for
 * none; RFC 6298 2.2 with a 200 ms floor).  The status stays FREE: the
 * caller sets up congestion control, then makes it ACTIVE and indexes it.
 * remote_mac: 6 bytes.  -1 for a bad id. */
int tas_sp_install(struct tas_ft *ft, uint32_t id, uint16_t gen, uint32_t flags, uint32_t ctx_id,
                   uint32_t local_ip, uint32_t remote_ip, uint16_t local_port, uint16_t remote_port,
                   const uint8_t *remote_mac, uint8_t snd_wscale, uint8_t rcv_wscale, uint16_t mss,
                   uint32_t ts_recent, uint32_t rx_off, uint32_t rx_len, uint32_t tx_off, uint32_t tx_len,
                   uint32_t appflow_off, uint32_t rx_seq0, uint32_t tx_seq0, uint32_t snd_wnd,
                   uint32_t wl1, uint32_t wl2, uint32_t rtt_us, uint32_t now_us, uint32_t core);
/* Install and activate flow `id` in one call (engine.py _install): what
 * tas_sp_install does, then the side record's congestion-control mode and
 * loss beta (as tas_sp_cc_init on the fresh side record: cc_mode & TAS_CC_SP,
 * loss_beta at most 1000), then -- if `af` is not NULL -- the app's flow
 * block there (struct tas_appflow: zeroed, then flow_id, gen and the buffer
 * offsets and lengths), then status ACTIVE (under the flow lock) and the flow
 * indexed under its 4-tuple (tas_ft_insert).  0; -1 for a bad id (nothing
 * written); -2 if the index refused the flow (the record is ACTIVE, not
 * indexed).  Twin: spflow_py.activate. */
int tas_sp_activate(struct tas_ft *ft, uint32_t id, uint16_t gen, uint32_t flags, uint32_t ctx_id,
                    uint32_t local_ip, uint32_t remote_ip, uint16_t local_port, uint16_t remote_port,
                    const uint8_t *remote_mac, uint8_t snd_wscale, uint8_t rcv_wscale, uint16_t mss,
                    uint32_t ts_recent, uint32_t rx_off, uint32_t rx_len, uint32_t tx_off, uint32_t tx_len,
                    uint32_t appflow_off, uint32_t rx_seq0, uint32_t tx_seq0, uint32_t snd_wnd,
                    uint32_t wl1, uint32_t wl2, uint32_t rtt_us, uint32_t now_us, uint32_t core,
                    uint32_t cc_mode, uint32_t loss_beta, void *af);
/* A flow the slow path forgets (engine.py _free): status FREE and
 * TAS_FF_DETACHED (as tas_sp_set_status), then out of the index
 * (tas_ft_remove).  0; -1 for a bad id or a flow not in the index.  Twin:
 * spflow_py.uninstall. */
int tas_sp_uninstall(struct tas_ft *ft, uint32_t id);
/* Send a control segment (no payload): fill `s` (the caller's template:
 * source MAC/address, IP fields kept) with these fields and options
 * (TAS_OPT_* in opts; mss, wscale, tsval/tsecr used only if named there),
 * build the frame (tas_build_tcp) into a KTX "send this frame" entry and
 * enqueue it on ktx.  Returns the frame length; 0 if it was not queued (ring
 * full).  The caller rings the fast path's doorbell.  Twin:
 * spflow_py.send_seg. */
uint32_t tas_sp_send_seg(struct tas_ring *ktx, struct tas_seg *s, const uint8_t *dst_mac, uint32_t dst_ip,
                         uint16_t sport, uint16_t dport, uint32_t seq, uint32_t ack, uint8_t flags,
                         uint16_t win, uint8_t opts, uint16_t mss, uint8_t wscale, uint32_t tsval,
                         uint32_t tsecr);
/* A flow as the slow path reads it: struct tas_flow followed by struct
 * tas_flow_cc, the same fields in the same order (process-local, never
 * shared; tests/test_abi.py checks every offset against the two). */
struct tas_flow_snap {
    uint32_t lock;
    uint16_t gen;
    uint16_t status;
    uint32_t flags;
    uint32_t ctx_id;
    uint32_t local_ip;
    uint32_t remote_ip;
    uint16_t local_port;
    uint16_t remote_port;
    uint8_t remote_mac[6];
    uint8_t snd_wscale;
    uint8_t rcv_wscale;
    uint16_t mss;
    uint16_t unacked_segs;
    uint32_t rx_off;
    uint32_t rx_len;
    uint32_t tx_off;
    uint32_t tx_len;
    uint32_t appflow_off;
    uint32_t ts_recent;
    uint64_t rx_head;
    uint64_t rx_tail;
    uint64_t tx_head;
    uint64_t tx_una;
    uint64_t tx_nxt;
    uint64_t tx_max;
    uint32_t rx_seq0;
    uint32_t tx_seq0;
    uint32_t snd_wnd;
    uint32_t cwnd;
    /* struct tas_flow_cc */
    uint32_t mode;
    uint32_t max_flight;
    uint32_t ssthresh;
    uint32_t srtt_us;
    uint32_t rttvar_us;
    uint32_t rto_us;
    uint32_t rto_start_us;
    uint32_t snd_wl1;
    uint32_t snd_wl2;
    uint16_t dupacks;
    uint16_t rto_backoff;
    uint32_t rexmit_nxt;
    uint64_t pace_rate;
    uint64_t pace_next_us;
    uint64_t rx_adv;
    uint64_t tx_recover;
    uint64_t cnt_acked;
    uint64_t cnt_rexmit;
    uint64_t cnt_rx_segs;
    uint64_t cnt_tx_segs;
    uint32_t last_rx_us;
    uint32_t dsack_start;
    uint32_t dsack_end;
    uint32_t cnt_dsack;
    uint64_t cnt_ecn_bytes;
    uint64_t cwr_until;
    uint32_t loss_beta;
    uint32_t cnt_loss;
    uint32_t cnt_ecn_acks;
    uint32_t cnt_ce_rx;
    uint16_t core;
    uint16_t rsvd0;
    uint32_t rsvd1[7];
    uint32_t sb_start[5];
    uint32_t sb_end[5];
    uint32_t prior_cwnd;
    uint32_t prior_ssthresh;
    uint32_t rexmit_ts;
    uint16_t undo_retrans;
    uint8_t reord;
    uint8_t reo_mult;
    uint32_t cnt_undo;
    uint32_t cnt_tlp;
    uint32_t ooo_start[8];
    uint32_t ooo_end[8];
};
/* Consistent copy of a flow record and its side record. */
int tas_sp_snapshot(struct tas_ft *ft, uint32_t id, struct tas_flow_snap *out);
/* The app closed its send side after tx_head bytes: FIN follows them.
 * -1 if tx_head is not a valid position for this flow. */
int tas_sp_tx_close(struct tas_ft *ft, uint32_t id, uint64_t tx_head);
/* Set status and OR flags (e.g. TAS_FF_DETACHED) under the lock. */
int tas_sp_set_status(struct tas_ft *ft, uint32_t id, uint16_t status, uint32_t set_flags);
/* The app closes flow `id` while it is ESTABLISHED or CLOSE-WAIT (engine.py
 * close): under the flow lock, *flags_out = the record's flags (the FIN
 * events the slow path may not have seen), then
 *  - unread data (rx_head beyond both the app's rx_tail and the record's):
 *    nothing changed, 1 (the caller resets: RFC 9293 3.10.4, RFC 2525);
 *  - as tas_sp_tx_close (FIN after tx_head) and TAS_FF_DETACHED (as
 *    tas_sp_set_status), 0; a flow not ACTIVE or a bad tx_head: nothing
 *    changed, -1.
 * -2 for a bad id.  Twin: spflow_py.app_close. */
int tas_sp_close(struct tas_ft *ft, uint32_t id, uint64_t tx_head, uint64_t rx_tail, uint32_t *flags_out);

/* ---- congestion control (issue 6, docs/CC.md) ---------------------- */
/* Byte offset of the side records (struct tas_flow_cc) from the start of
 * the flow-table region, and the region length that holds them: the same as
 * tas_ft_bytes(), which counts them (kept for older callers). */
uint64_t tas_cc_table_off(uint32_t n_flows);
uint64_t tas_ft_cc_bytes(uint32_t n_flows);
/* The side records inside a flow-table region of ft_len bytes, or NULL if
 * the region is too small (tas_ft_attach refuses such a region anyway). */
struct tas_flow_cc *tas_cc_table(void *ft_mem, uint64_t ft_len, uint32_t n_flows);

/* One flow as the control loop sees it (tas_sp_cc_read). */
struct tas_cc_sample {
    uint64_t acked;         /* cnt_acked (cumulative) */
    uint64_t ecn_bytes;     /* cnt_ecn_bytes (cumulative) */
    uint64_t rexmit;        /* cnt_rexmit (cumulative) */
    uint64_t in_flight;     /* tx_nxt - tx_una */
    uint64_t backlog;       /* tx_head - tx_nxt: bytes the app queued, not sent */
    uint32_t loss;          /* cnt_loss (cumulative) */
    uint32_t undo;          /* cnt_undo (cumulative): recoveries the fast path found
                               spurious and undone (cwnd/ssthresh restored) */
    uint32_t max_flight;    /* highest in-flight since the last read (reset) */
    uint32_t srtt_us;
    uint32_t cwnd;
    uint32_t snd_wnd;
    uint32_t mss;
    uint32_t flags;
    uint32_t status;        /* TAS_FLOW_*; anything but ACTIVE: skip */
};

/* Reset a flow's side-table entry and set its mode (TAS_CC_SP) and loss
 * beta (per mille); the fields the slow path sets at install (ssthresh,
 * srtt_us, rttvar_us, rto_us, rto_start_us, snd_wl1, snd_wl2, rx_adv,
 * core) are kept.  Call before the record becomes ACTIVE. */
int tas_sp_cc_init(struct tas_flow_cc *cc, uint32_t n_flows, uint32_t id, uint32_t mode,
                   uint32_t loss_beta);
/* Change an installed flow's congestion-control mode under its lock (a
 * per-socket algorithm choice, TCP_CONGESTION): TAS_CC_SP or 0 (NewReno in
 * the fast path), the loss beta (per mille); the fast path's own mode bits
 * (CE, CWR) are kept, the pacing rate is cleared when leaving TAS_CC_SP.
 * -1 if out of range. */
int tas_sp_cc_set_mode(struct tas_ft *ft, struct tas_flow_cc *cc, uint32_t id, uint32_t mode,
                       uint32_t loss_beta);
/* Snapshot n flows (ids[i]) under their locks into out[i]; resets
 * max_flight.  Returns n (ids out of range get status TAS_FLOW_FREE). */
uint32_t tas_sp_cc_read(struct tas_ft *ft, struct tas_flow_cc *cc, const uint32_t *ids,
                        uint32_t n, struct tas_cc_sample *out);
/* Write back the control loop's decisions for n flows: cwnd[i] (bytes; in
 * fast recovery it becomes ssthresh, the window recovery exits to) and
 * rate[i] (pacing, bytes/s, 0 = none).  A flow whose cnt_loss is no longer
 * loss_seen[i] (a loss since the read) keeps the fast path's window.
 * Returns how many flows were written. */
uint32_t tas_sp_cc_write(struct tas_ft *ft, struct tas_flow_cc *cc, const uint32_t *ids,
                         uint32_t n, const uint32_t *cwnd, const uint64_t *rate,
                         const uint32_t *loss_seen);

/* CC news (struct tas_cc_news_hdr): take up to max marked flow ids into
 * ids (lowest first; each taken bit is cleared atomically, bits set
 * meanwhile stay).  Returns how many. */
uint32_t tas_sp_cc_news(struct tas_ft *ft, uint32_t *ids, uint32_t max);
/* The CC loop is going to sleep with nothing scheduled (armed 1) or is
 * awake again (0).  Arming returns 1 if some bit is already set (the loop
 * should take it rather than sleep). */
uint32_t tas_sp_cc_news_arm(struct tas_ft *ft, uint32_t armed);

/* Active flows (among the first `budget`) with data or a FIN in flight or
 * unsent: the timer scan runs fast only while there are any. */
uint32_t tas_sp_count_busy(struct tas_ft *ft, uint32_t budget);

/* What tas_sp_krx_drain answered itself (added to, never reset). */
struct tas_sp_drain_stats {
    uint64_t echo_replies;  /* ICMP echo requests answered (replies queued on KTX) */
    uint64_t ktx_full;      /* replies dropped: KTX full */
};

/* Take up to `max` entries (TAS_KQ_ENTRY_SIZE bytes each) of a KRX ring
 * into `out` for the slow path's Python, answering on the way what needs no
 * decision: an ICMP echo request (RFC 792) to local_ip -- a frame that
 * tas_parse_frame classes TAS_PK_ICMP with type 8 -- gets its echo reply
 * (Ethernet back to the sender from `mac`, a 20-byte IPv4 header: the
 * request's with addresses swapped, TTL 64, no options; the ICMP message
 * with type 0, both checksums new) queued on `ktx` and is not returned.
 * Returns how many entries were written to out; fewer than max only when
 * the ring was found empty.  If it queued a reply it kicks fast-path core
 * `core` (the owner of both rings) as tas_sp_kick(ft, core, evfd) does
 * (ft NULL: always; evfd < 0: never).  Twin: spflow_py.krx_drain. */
uint32_t tas_sp_krx_drain(struct tas_ring *krx, struct tas_ring *ktx, uint8_t *out, uint32_t max,
                          const uint8_t *mac, uint32_t local_ip, struct tas_sp_drain_stats *st,
                          struct tas_ft *ft, uint32_t core, int evfd);

/* The slow path's doorbell word (struct tas_cc_news_hdr sp_armed):
 * store `state` (TAS_SP_ARMED before it may sleep, TAS_SP_AWAKE while it
 * drains), then a full fence; after arming, the caller looks at its KRX
 * rings once more.  Twin: spflow_py.doorbell. */
void tas_sp_doorbell(struct tas_ft *ft, uint32_t state);
/* After a KTX entry for fast-path core `core`: a full fence, then write
 * its eventfd `evfd` only if the core sleeps (fp_armed[core]; a core from
 * TAS_FP_ARMED_CORES on always).  Returns 1 if it wrote.  Twin:
 * spflow_py.kick. */
uint32_t tas_sp_kick(struct tas_ft *ft, uint32_t core, int evfd);

/* Queue one KTX entry (kind, flow_id, data[0:len], the rest of the slot
 * zero) on `ktx`, fast-path core `core`'s ring, then kick the core as
 * tas_sp_kick(ft, core, evfd) does (also when the ring was full: what is
 * queued already goes out).  1 queued, 0 not (ring full, or len beyond
 * TAS_KQ_DATA).  Twin: spflow_py.ktx_post. */
uint32_t tas_sp_ktx_post(struct tas_ring *ktx, uint16_t kind, uint32_t flow_id, const uint8_t *data,
                         uint32_t len, struct tas_ft *ft, uint32_t core, int evfd);

#endif /* TAS_SPFLOW_H */
