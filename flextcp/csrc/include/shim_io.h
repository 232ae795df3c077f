/*
 * shim_io.h -- the socket shim's per-request kernels (libtas/shim).
 *
 * The shim's two byte paths in C, one call each: an app thread's send()
 * straight into a flow's tx buffer (Runtime.send_direct) and the pump's
 * move of a flow's readable bytes into the pump end of the app's AF_UNIX
 * socketpair (Runtime._service).  Each posts the flow's ATX update itself
 * (tas_app_post) when one is due.  The callers hold the context lock (the
 * flow's positions are shared with libtas).  The GIL is released around
 * the call (cffi), so the pump's send() into the pair does not keep the
 * woken app thread waiting.  Python twins: libtas/shim/runtime.py
 * (_shim_send_twin, _shim_fwd_twin), compared by tests/test_shim_io.py.
 */
#ifndef TAS_SHIM_IO_H
#define TAS_SHIM_IO_H
#include <stdint.h>
#include "tas_abi.h"
#include "app_wait.h"

#define TAS_SHIM_EMPTY 1      /* tas_shim_fwd: nothing readable is left */
#define TAS_SHIM_AGAIN 2      /* tas_shim_fwd: the fd took less than offered (full) */
#define TAS_SHIM_GONE 4       /* tas_shim_fwd: send() failed (EPIPE, ECONNRESET, EBADF ...) */
#define TAS_SHIM_ODD 8        /* reset flag or a bogus position: nothing moved, look in Python */
#define TAS_SHIM_POSTED 16    /* an ATX update was posted */
#define TAS_SHIM_UNPOSTED 32  /* an update was due but its ring was full: the caller queues it */
#define TAS_SHIM_DUE 64       /* tas_shim_fwd with c NULL: an update is due, the caller posts it */
#define TAS_SHIM_BUSY 128     /* tas_shim_send: the pair holds bytes (FIONREAD), nothing copied */

/* If fd >= 0 and FIONREAD on it fails or is not 0 (the socketpair end
 * still holds bytes the app wrote earlier: they go first), BUSY and
 * nothing else.  Then copy as much of src[0..n) as the flow's tx buffer has room for (libtas
 * Connection.send with timeout=0 on a connected flow), advance tx_head and
 * post one ATX update (rx_tail, tx_head) on the flow's core, ringing it if
 * armed (tas_app_post).  Nothing is copied if the flow has TAS_AF_RESET
 * (ODD) or a bogus tx_acked.  Returns the bytes copied; *st gets
 * TAS_SHIM_ODD / POSTED / UNPOSTED (posted: rx_posted = rx_tail). */
uint32_t tas_shim_send(struct tas_app_ctx *c, struct tas_app_flow *f, int32_t fd, const uint8_t *src,
                       uint32_t n, uint32_t *st);

/* Move up to max readable bytes of the flow into fd with
 * send(MSG_DONTWAIT | MSG_NOSIGNAL) (libtas recv_view + send + consume),
 * until the rx buffer is empty (EMPTY), fd takes less than offered or
 * EAGAIN (AGAIN), send fails otherwise (GONE), or max bytes moved.  Then,
 * if bytes moved, post an ATX update when the fast path should learn of
 * the freed space (Connection._after_consume's rule, was_full taken at the
 * start: full buffer, a quarter of it freed since the last update, or the
 * advertised window shrunk to half).  Nothing moves if the flow has
 * TAS_AF_RESET or a bogus rx_head (ODD).  c NULL: post nothing, report
 * TAS_SHIM_DUE instead (the shim's pump moves bytes without the context
 * lock -- it alone advances a shim flow's rx_tail -- and takes the lock
 * only to post).  Returns the bytes moved. */
uint64_t tas_shim_fwd(struct tas_app_ctx *c, struct tas_app_flow *f, int32_t fd, uint64_t max,
                      uint32_t *st);

#endif /* TAS_SHIM_IO_H */
