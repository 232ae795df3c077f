/*
 * shim_io.c -- the socket shim's per-request kernels.  See include/shim_io.h.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#include "tas_abi.h"
#include "app_wait.h"
#include "shim_io.h"

static uint32_t post_update(struct tas_app_ctx *c, struct tas_app_flow *f)
{
    struct tas_atx e;
    uint8_t core = f->core, done = 0;

    memset(&e, 0, sizeof(e));
    e.flow_id = f->flow_id;
    e.gen = f->gen;
    e.kind = TAS_ATX_UPDATE;
    e.rx_tail = f->rx_tail;
    e.tx_head = f->tx_head;
    tas_app_post(c, &e, &core, 1, &done);
    if (done == 1) {
        f->rx_posted = f->rx_tail;
        return TAS_SHIM_POSTED;
    }
    return done == 0 ? TAS_SHIM_UNPOSTED : 0;  /* 2: core out of range, dropped */
}

uint32_t tas_shim_send(struct tas_app_ctx *c, struct tas_app_flow *f, int32_t fd, const uint8_t *src,
                       uint32_t n, uint32_t *st)
{
    struct tas_appflow *af = f->af;
    uint64_t used, space, out, k;
    uint32_t want;
    int queued = 0;

    *st = 0;
    if (fd >= 0 && (ioctl(fd, FIONREAD, &queued) < 0 || queued != 0)) {
        *st = TAS_SHIM_BUSY;
        return 0;
    }
    if (__atomic_load_n(&af->flags, __ATOMIC_ACQUIRE) & TAS_AF_RESET) {
        *st = TAS_SHIM_ODD;
        return 0;
    }
    used = f->tx_head - __atomic_load_n(&af->tx_acked, __ATOMIC_ACQUIRE);
    if (used > f->tx_len) {
        *st = TAS_SHIM_ODD;
        return 0;
    }
    space = f->tx_len - used;
    want = n < space ? n : (uint32_t)space;
    if (!want)
        return 0;
    out = f->tx_head & (f->tx_len - 1);
    k = want < f->tx_len - out ? want : f->tx_len - out;
    memcpy(f->tx + out, src, k);
    if (k < want)
        memcpy(f->tx, src + k, want - k);
    f->tx_head += want;
    *st = post_update(c, f);
    return want;
}

uint64_t tas_shim_fwd(struct tas_app_ctx *c, struct tas_app_flow *f, int32_t fd, uint64_t max,
                      uint32_t *st)
{
    struct tas_appflow *af = f->af;
    uint64_t rx_head, avail, moved = 0, pos, k, freed;
    int was_full = -1;
    ssize_t r;

    *st = 0;
    for (;;) {
        if (__atomic_load_n(&af->flags, __ATOMIC_ACQUIRE) & TAS_AF_RESET) {
            if (!moved)
                *st = TAS_SHIM_ODD;
            break;
        }
        rx_head = __atomic_load_n(&af->rx_head, __ATOMIC_ACQUIRE);
        avail = rx_head - f->rx_tail;
        if (avail > f->rx_len) {  /* never trust a bogus head */
            if (!moved)
                *st = TAS_SHIM_ODD;
            break;
        }
        if (was_full < 0)
            was_full = avail >= f->rx_len;
        if (!avail) {
            *st |= TAS_SHIM_EMPTY;
            break;
        }
        if (moved >= max)
            break;
        pos = f->rx_tail & (f->rx_len - 1);
        k = avail < f->rx_len - pos ? avail : f->rx_len - pos;
        if (k > max - moved)
            k = max - moved;
        r = send(fd, f->rx + pos, k, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            *st |= (errno == EAGAIN || errno == EWOULDBLOCK) ? TAS_SHIM_AGAIN : TAS_SHIM_GONE;
            break;
        }
        f->rx_tail += (uint64_t)r;
        moved += (uint64_t)r;
        if ((uint64_t)r < k) {
            *st |= TAS_SHIM_AGAIN;
            break;
        }
    }
    if (moved) {
        freed = f->rx_tail - f->rx_posted;
        rx_head = __atomic_load_n(&af->rx_head, __ATOMIC_ACQUIRE);
        if (freed > 0 && (was_full == 1 || freed >= f->rx_len / 4 || rx_head - f->rx_posted >= f->rx_len / 2))
            *st |= c != NULL ? post_update(c, f) : TAS_SHIM_DUE;
    }
    return moved;
}
