/*
 * wire.c -- per-packet parse/validate/checksum/build kernels of the emulated
 * NIC (API in include/wire.h).  Python twin: nicemu/wire.py; the two must
 * agree field for field, including how far `out` is filled on a drop.
 *
 * Every load is a memcpy (frames sit at arbitrary offsets in TAP/ring
 * buffers) and every load is preceded by a bounds check against len, so a
 * hostile frame can never make us read past frame[len-1].
 */
#include <stdint.h>
#include <stddef.h>
#include <string.h>

#include "wire.h"

#define ETH_HLEN 14
#define ETH_P_IP 0x0800
#define ETH_P_ARP 0x0806
#define IP_HLEN 20
#define TCP_HLEN 20
#define ARP_LEN 28
#define ICMP_HLEN 8
#define IPPROTO_ICMP_ 1
#define IPPROTO_TCP_ 6
#define TCP_MAX_OPTS 40
#define MAX_SACK 4              /* sack_start/sack_end slots in tas_pkt and tas_seg */

static inline uint16_t ld16(const uint8_t *p)
{
    uint16_t v;
    memcpy(&v, p, 2);
    return __builtin_bswap16(v);
}

static inline uint32_t ld32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return __builtin_bswap32(v);
}

static inline void st16(uint8_t *p, uint16_t v)
{
    v = __builtin_bswap16(v);
    memcpy(p, &v, 2);
}

static inline void st32(uint8_t *p, uint32_t v)
{
    v = __builtin_bswap32(v);
    memcpy(p, &v, 4);
}

static inline uint32_t fold16(uint64_t s)
{
    s = (s & 0xffffffffu) + (s >> 32);
    s = (s & 0xffffffffu) + (s >> 32);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    return (uint32_t)s;
}

/* One's complement sum of native-order words, folded to 16 bits.  The
 * one's complement sum is byte-order independent up to a final byte swap
 * (RFC 1071 section 2(B)), so we add whole 32-bit native words into a
 * 64-bit accumulator (no carry handling needed below 2^32 words) and swap
 * once at the end. */
static uint32_t sum_native(const uint8_t *p, uint32_t len)
{
    uint64_t s = 0;
    uint32_t a, b, c, d;

    while (len >= 16) {
        memcpy(&a, p, 4);
        memcpy(&b, p + 4, 4);
        memcpy(&c, p + 8, 4);
        memcpy(&d, p + 12, 4);
        s += (uint64_t)a + b + c + d;
        p += 16;
        len -= 16;
    }
    while (len >= 4) {
        memcpy(&a, p, 4);
        s += a;
        p += 4;
        len -= 4;
    }
    if (len >= 2) {
        uint16_t h;
        memcpy(&h, p, 2);
        s += h;
        p += 2;
        len -= 2;
    }
    if (len) {
        /* Odd trailing byte: the high byte of a big-endian word padded
         * with zero, i.e. the first byte in memory of a native word. */
        uint8_t tail[2] = { p[0], 0 };
        uint16_t h;
        memcpy(&h, tail, 2);
        s += h;
    }
    return fold16(s);
}

/* Sum as big-endian 16-bit words (the value the twin computes). */
static inline uint32_t sum_be(const uint8_t *p, uint32_t len)
{
    uint32_t s = sum_native(p, len);
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    s = __builtin_bswap16((uint16_t)s);
#endif
    return s;
}

uint32_t tas_csum_partial(const uint8_t *data, uint32_t len, uint32_t initial)
{
    return fold16((uint64_t)initial + sum_be(data, len));
}

uint16_t tas_csum_fold(uint32_t sum)
{
    return (uint16_t)(~fold16(sum) & 0xffff);
}

static inline uint32_t pseudo_sum(uint32_t src, uint32_t dst, uint8_t proto,
                                  uint32_t l4len)
{
    return (src >> 16) + (src & 0xffff) + (dst >> 16) + (dst & 0xffff) +
           proto + l4len;
}

/* Options between opt and end (exclusive); fills the option fields. */
static int parse_tcp_opts(const uint8_t *p, uint32_t n, struct tas_pkt *o)
{
    uint32_t i = 0;

    while (i < n) {
        uint8_t kind = p[i];
        uint8_t olen;

        if (kind == 0)          /* EOL */
            break;
        if (kind == 1) {        /* NOP */
            i++;
            continue;
        }
        if (i + 1 >= n)
            return TAS_DROP_BAD_OPT;
        olen = p[i + 1];
        if (olen < 2 || olen > n - i)
            return TAS_DROP_BAD_OPT;
        const uint8_t *v = p + i + 2;
        switch (kind) {
        case 2:
            if (olen != 4)
                return TAS_DROP_BAD_OPT;
            o->mss = ld16(v);
            o->opts |= TAS_OPT_MSS;
            break;
        case 3:
            if (olen != 3)
                return TAS_DROP_BAD_OPT;
            o->wscale = v[0];
            o->opts |= TAS_OPT_WS;
            break;
        case 4:
            if (olen != 2)
                return TAS_DROP_BAD_OPT;
            o->opts |= TAS_OPT_SACKPERM;
            break;
        case 5:
            if ((olen - 2) % 8 != 0)
                return TAS_DROP_BAD_OPT;
            o->opts |= TAS_OPT_SACK;
            for (uint32_t k = 0; k < (uint32_t)(olen - 2) / 8u; k++) {
                if (o->n_sack >= MAX_SACK)
                    break;
                o->sack_start[o->n_sack] = ld32(v + 8 * k);
                o->sack_end[o->n_sack] = ld32(v + 8 * k + 4);
                o->n_sack++;
            }
            break;
        case 8:
            if (olen != 10)
                return TAS_DROP_BAD_OPT;
            o->tsval = ld32(v);
            o->tsecr = ld32(v + 4);
            o->opts |= TAS_OPT_TS;
            break;
        default:
            break;
        }
        i += olen;
    }
    return 0;
}

int tas_parse_frame(const uint8_t *f, uint32_t len, struct tas_pkt *o)
{
    memset(o, 0, sizeof(*o));
    o->frame_len = (uint16_t)len;
    if (len < ETH_HLEN)
        return TAS_DROP_TRUNC_ETH;
    memcpy(o->dst_mac, f, 6);
    memcpy(o->src_mac, f + 6, 6);
    o->ethertype = ld16(f + 12);
    o->l3_off = ETH_HLEN;

    if (o->ethertype == ETH_P_ARP)
        return len - ETH_HLEN < ARP_LEN ? TAS_DROP_TRUNC_ARP : TAS_PK_ARP;
    if (o->ethertype != ETH_P_IP)
        return TAS_PK_OTHER;

    /* IPv4 */
    const uint8_t *ip = f + ETH_HLEN;
    uint32_t avail = len - ETH_HLEN;
    if (avail < IP_HLEN)
        return TAS_DROP_TRUNC_IP;
    o->ip_tos = ip[1];
    o->ip_ttl = ip[8];
    o->ip_proto = ip[9];
    o->src_ip = ld32(ip + 12);
    o->dst_ip = ld32(ip + 16);
    if ((ip[0] >> 4) != 4)
        return TAS_DROP_BAD_IP_VER;
    uint32_t ihl = (uint32_t)(ip[0] & 0xf) * 4;
    if (ihl < IP_HLEN)
        return TAS_DROP_BAD_IHL;
    if (ihl > avail)
        return TAS_DROP_TRUNC_IP;
    uint32_t tot = ld16(ip + 2);
    if (tot < ihl || tot > avail)
        return TAS_DROP_BAD_IP_LEN;
    if (ld16(ip + 6) & 0x3fff)
        return TAS_DROP_IP_FRAG;
    if (tas_csum_fold(tas_csum_partial(ip, ihl, 0)) != 0)
        return TAS_DROP_BAD_IP_CSUM;
    o->l4_off = (uint16_t)(ETH_HLEN + ihl);

    const uint8_t *l4 = ip + ihl;
    uint32_t l4len = tot - ihl;
    if (o->ip_proto == IPPROTO_ICMP_)
        return l4len < ICMP_HLEN ? TAS_DROP_TRUNC_ICMP : TAS_PK_ICMP;
    if (o->ip_proto != IPPROTO_TCP_)
        return TAS_PK_OTHER_IP;

    /* TCP */
    if (l4len < TCP_HLEN)
        return TAS_DROP_TRUNC_TCP;
    o->src_port = ld16(l4);
    o->dst_port = ld16(l4 + 2);
    o->seq = ld32(l4 + 4);
    o->ack = ld32(l4 + 8);
    o->tcp_flags = l4[13];
    o->win = ld16(l4 + 14);
    uint32_t doff = (uint32_t)(l4[12] >> 4) * 4;
    if (doff < TCP_HLEN || doff > l4len)
        return TAS_DROP_BAD_DOFF;
    uint32_t s = pseudo_sum(o->src_ip, o->dst_ip, IPPROTO_TCP_, l4len);
    if (tas_csum_fold(tas_csum_partial(l4, l4len, s)) != 0)
        return TAS_DROP_BAD_TCP_CSUM;
    o->payload_off = (uint16_t)(o->l4_off + doff);
    o->payload_len = (uint16_t)(l4len - doff);
    int r = parse_tcp_opts(l4 + TCP_HLEN, doff - TCP_HLEN, o);
    if (r < 0)
        return r;
    return TAS_PK_TCP;
}

void tas_parse_batch(const uint8_t *buf, const uint32_t *offs,
                     const uint32_t *lens, uint32_t n,
                     struct tas_pkt *out, int32_t *results)
{
    for (uint32_t i = 0; i < n; i++)
        results[i] = tas_parse_frame(buf + offs[i], lens[i], &out[i]);
}

/* SACK blocks that fit in the 40 option bytes after the other options
 * (Linux sends at most 3 with timestamps, 4 without). */
static uint32_t sack_blocks(const struct tas_seg *s, uint32_t base)
{
    uint32_t n;

    if (!(s->opts & TAS_OPT_SACK) || s->n_sack == 0)
        return 0;
    n = s->n_sack > MAX_SACK ? MAX_SACK : s->n_sack;
    if (base + 4 + 8 * n > TCP_MAX_OPTS)
        n = base + 4 >= TCP_MAX_OPTS ? 0 : (TCP_MAX_OPTS - base - 4) / 8;
    return n;
}

static uint32_t base_opts_len(const struct tas_seg *s)
{
    uint32_t l = 0;

    if (s->opts & TAS_OPT_MSS)
        l += 4;
    if (s->opts & TAS_OPT_TS)
        l += 12;
    else if (s->opts & TAS_OPT_SACKPERM)
        l += 4;
    if (s->opts & TAS_OPT_WS)
        l += 4;
    return l;
}

uint32_t tas_tcp_opts_len(const struct tas_seg *s)
{
    uint32_t l = base_opts_len(s);
    uint32_t n = sack_blocks(s, l);

    if (n)
        l += 4 + 8 * n;
    return (l + 3) & ~3u;
}

static uint32_t write_opts(uint8_t *p, const struct tas_seg *s)
{
    uint32_t i = 0;
    uint32_t n = sack_blocks(s, base_opts_len(s));

    if (s->opts & TAS_OPT_MSS) {
        p[i++] = 2;
        p[i++] = 4;
        st16(p + i, s->mss);
        i += 2;
    }
    if (s->opts & TAS_OPT_TS) {
        if (s->opts & TAS_OPT_SACKPERM) {
            p[i++] = 4;
            p[i++] = 2;
        } else {
            p[i++] = 1;
            p[i++] = 1;
        }
        p[i++] = 8;
        p[i++] = 10;
        st32(p + i, s->tsval);
        st32(p + i + 4, s->tsecr);
        i += 8;
    } else if (s->opts & TAS_OPT_SACKPERM) {
        p[i++] = 1;
        p[i++] = 1;
        p[i++] = 4;
        p[i++] = 2;
    }
    if (s->opts & TAS_OPT_WS) {
        p[i++] = 1;
        p[i++] = 3;
        p[i++] = 3;
        p[i++] = s->wscale;
    }
    if (n) {
        p[i++] = 1;
        p[i++] = 1;
        p[i++] = 5;
        p[i++] = (uint8_t)(2 + 8 * n);
        for (uint32_t k = 0; k < n; k++) {
            st32(p + i, s->sack_start[k]);
            st32(p + i + 4, s->sack_end[k]);
            i += 8;
        }
    }
    while (i & 3)
        p[i++] = 1;
    return i;
}

uint32_t tas_build_tcp(uint8_t *out, uint32_t cap, const struct tas_seg *s,
                       const uint8_t *p1, uint32_t l1,
                       const uint8_t *p2, uint32_t l2)
{
    uint32_t olen = tas_tcp_opts_len(s);
    uint32_t thl = TCP_HLEN + olen;
    uint64_t tot = (uint64_t)IP_HLEN + thl + l1 + l2;

    if (tot > 0xffff || ETH_HLEN + tot > cap)
        return 0;

    /* Ethernet */
    memcpy(out, s->dst_mac, 6);
    memcpy(out + 6, s->src_mac, 6);
    st16(out + 12, ETH_P_IP);

    /* IPv4 */
    uint8_t *ip = out + ETH_HLEN;
    ip[0] = 0x45;
    ip[1] = s->ip_tos;
    st16(ip + 2, (uint16_t)tot);
    st16(ip + 4, s->ip_id);
    st16(ip + 6, 0x4000);       /* DF */
    ip[8] = s->ip_ttl ? s->ip_ttl : 64;
    ip[9] = IPPROTO_TCP_;
    st16(ip + 10, 0);
    st32(ip + 12, s->src_ip);
    st32(ip + 16, s->dst_ip);
    st16(ip + 10, tas_csum_fold(tas_csum_partial(ip, IP_HLEN, 0)));

    /* TCP */
    uint8_t *t = ip + IP_HLEN;
    st16(t, s->src_port);
    st16(t + 2, s->dst_port);
    st32(t + 4, s->seq);
    st32(t + 8, s->ack);
    t[12] = (uint8_t)((thl / 4) << 4);
    t[13] = s->flags;
    st16(t + 14, s->win);
    st16(t + 16, 0);
    st16(t + 18, 0);
    write_opts(t + TCP_HLEN, s);
    if (l1)
        memcpy(t + thl, p1, l1);
    if (l2)
        memcpy(t + thl + l1, p2, l2);

    /* Checksum the contiguous copy: an odd l1 cannot misalign the sum. */
    uint32_t l4len = (uint32_t)tot - IP_HLEN;
    uint32_t ps = pseudo_sum(s->src_ip, s->dst_ip, IPPROTO_TCP_, l4len);
    st16(t + 16, tas_csum_fold(tas_csum_partial(t, l4len, ps)));
    return ETH_HLEN + (uint32_t)tot;
}
