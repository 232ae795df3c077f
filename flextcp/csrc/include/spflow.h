/*
 * spflow.h -- slow-path operations on shared flow records.  Each takes the
 * flow lock, so the slow path never holds it across Python code.
 */
#ifndef TAS_SPFLOW_H
#define TAS_SPFLOW_H
#include <stdint.h>
#include "tas_abi.h"
#include "flowtab.h"


#define TAS_TMO_RTO 1
#define TAS_TMO_PROBE 2

/* Scan up to `budget` flows starting at *cursor (wrapping) for expired
 * retransmission timers and due zero-window probes.  Writes up to max
 * ids/reasons; returns how many. */
uint32_t tas_sp_scan_timeouts(struct tas_ft *ft, uint32_t now_us, uint32_t budget,
                              uint32_t *cursor, uint32_t *ids, uint8_t *why, uint32_t max);
/* RTO expired (RFC 6298 5.4-5.7, RFC 5681 3.1): go back to tx_una,
 * cwnd = 1 MSS, back off.  Returns the new backoff count, -1 if gone. */
int tas_sp_rto_fire(struct tas_ft *ft, uint32_t id, uint32_t now_us);
/* Arm a one-byte zero-window probe and back off.  -1 if gone. */
int tas_sp_probe(struct tas_ft *ft, uint32_t id, uint32_t now_us);
/* Path MTU (ICMP fragmentation needed, RFC 1191): lower the flow's MSS to
 * mss (never below TAS_SP_MIN_MSS, never up) and resend what is in flight.
 * Returns the old MSS, -1 if nothing changed. */
#define TAS_SP_MIN_MSS 536
int tas_sp_set_mss(struct tas_ft *ft, uint32_t id, uint32_t mss);
/* Consistent copy of a flow record. */
int tas_sp_snapshot(struct tas_ft *ft, uint32_t id, struct tas_flow *out);
/* The app closed its send side after tx_head bytes: FIN follows them.
 * -1 if tx_head is not a valid position for this flow. */
int tas_sp_tx_close(struct tas_ft *ft, uint32_t id, uint64_t tx_head);
/* Set status and OR flags (e.g. TAS_FF_DETACHED) under the lock. */
int tas_sp_set_status(struct tas_ft *ft, uint32_t id, uint16_t status, uint32_t set_flags);

#endif /* TAS_SPFLOW_H */
