/*
 * wire.h -- per-packet parse, validate, checksum and header build kernels
 * of the emulated NIC.  cdef-clean (see flextcp/csrc/include/tas_abi.h).
 * Python twin: nicemu/wire.py (same names, same results; tests compare).
 *
 * All multi-byte values in struct tas_pkt and struct tas_seg are in HOST
 * byte order; the kernels do the byte swapping.
 */
#ifndef TAS_WIRE_H
#define TAS_WIRE_H
#include <stdint.h>
#include "tas_abi.h"


/* tas_parse_frame() result classes (>= 0) and drop reasons (< 0). */
#define TAS_PK_TCP 1
#define TAS_PK_ARP 2
#define TAS_PK_ICMP 3
#define TAS_PK_OTHER_IP 4     /* IPv4, protocol other than TCP/ICMP */
#define TAS_PK_OTHER 5        /* other ethertype (IPv6, ...) */

#define TAS_DROP_TRUNC_ETH -1     /* shorter than an Ethernet header */
#define TAS_DROP_TRUNC_IP -2      /* shorter than the IPv4 header claims */
#define TAS_DROP_BAD_IP_VER -3
#define TAS_DROP_BAD_IHL -4       /* IHL < 5 */
#define TAS_DROP_BAD_IP_LEN -5    /* total length < header or > frame */
#define TAS_DROP_IP_FRAG -6       /* MF set or fragment offset != 0 */
#define TAS_DROP_BAD_IP_CSUM -7
#define TAS_DROP_TRUNC_TCP -8     /* fewer than 20 bytes of TCP */
#define TAS_DROP_BAD_DOFF -9      /* data offset < 5 or past the IP payload */
#define TAS_DROP_BAD_TCP_CSUM -10
#define TAS_DROP_BAD_OPT -11      /* malformed TCP option (length 0/1, overrun) */
#define TAS_DROP_TRUNC_ARP -12
#define TAS_DROP_TRUNC_ICMP -13
#define TAS_DROP_REASONS 14       /* number of reason slots (index = -reason) */

/* TCP flag bits as on the wire. */
#define TAS_TCP_FIN 1
#define TAS_TCP_SYN 2
#define TAS_TCP_RST 4
#define TAS_TCP_PSH 8
#define TAS_TCP_ACK 16
#define TAS_TCP_URG 32
#define TAS_TCP_ECE 64
#define TAS_TCP_CWR 128

/* Option presence bits in tas_pkt.opts / tas_seg.opts. */
#define TAS_OPT_MSS 1
#define TAS_OPT_WS 2
#define TAS_OPT_SACKPERM 4
#define TAS_OPT_TS 8
#define TAS_OPT_SACK 16

struct tas_pkt {
    uint8_t dst_mac[6];
    uint8_t src_mac[6];
    uint16_t ethertype;
    uint16_t frame_len;
    uint16_t l3_off;          /* offset of the IPv4 header (14) */
    uint16_t l4_off;          /* offset of the TCP/ICMP header */
    uint16_t payload_off;     /* offset of TCP payload */
    uint16_t payload_len;     /* TCP payload bytes (IP total length based) */
    uint8_t ip_proto;
    uint8_t ip_tos;           /* low two bits are ECN */
    uint8_t ip_ttl;
    uint8_t tcp_flags;
    uint32_t src_ip;
    uint32_t dst_ip;
    uint16_t src_port;
    uint16_t dst_port;
    uint32_t seq;
    uint32_t ack;
    uint16_t win;             /* raw, unscaled */
    uint16_t mss;             /* valid if opts & TAS_OPT_MSS */
    uint8_t wscale;           /* valid if opts & TAS_OPT_WS */
    uint8_t opts;             /* TAS_OPT_* present */
    uint8_t n_sack;           /* SACK blocks parsed (<= 4) */
    uint8_t pad;
    uint32_t tsval;           /* valid if opts & TAS_OPT_TS */
    uint32_t tsecr;
    uint32_t sack_start[4];
    uint32_t sack_end[4];
};

/* Parse and validate one Ethernet frame.  Checks IPv4 header checksum and,
 * for TCP, the TCP checksum over the pseudo header.  Returns a TAS_PK_*
 * class (>= 0) or a TAS_DROP_* reason (< 0); `out` is filled as far as
 * parsing got.  Never reads past frame[len-1]. */
int tas_parse_frame(const uint8_t *frame, uint32_t len, struct tas_pkt *out);

/* Parse n frames packed back to back, frame i at buf + offs[i] with length
 * lens[i]; results[i] gets the return value of tas_parse_frame. */
void tas_parse_batch(const uint8_t *buf, const uint32_t *offs,
                     const uint32_t *lens, uint32_t n,
                     struct tas_pkt *out, int32_t *results);

/* Internet checksum (RFC 1071) of data, folded, NOT complemented, added to
 * `initial` (a partial 32-bit sum).  Complement the fold yourself. */
uint32_t tas_csum_partial(const uint8_t *data, uint32_t len, uint32_t initial);
uint16_t tas_csum_fold(uint32_t sum);   /* ~fold(sum) & 0xffff */

/* A TCP segment to build.  Options are emitted in Linux's order:
 * MSS, SACK-permitted+TS (or NOP NOP TS), NOP WS, SACK blocks; padded
 * with NOPs to a multiple of 4. */
struct tas_seg {
    uint8_t src_mac[6];
    uint8_t dst_mac[6];
    uint32_t src_ip;
    uint32_t dst_ip;
    uint16_t src_port;
    uint16_t dst_port;
    uint32_t seq;
    uint32_t ack;
    uint16_t win;             /* already scaled down, raw on the wire */
    uint8_t flags;            /* TAS_TCP_* */
    uint8_t opts;             /* TAS_OPT_* to emit */
    uint16_t mss;
    uint8_t wscale;
    uint8_t n_sack;
    uint32_t tsval;
    uint32_t tsecr;
    uint32_t sack_start[4];
    uint32_t sack_end[4];
    uint8_t ip_tos;
    uint8_t ip_ttl;           /* 0 means 64 */
    uint16_t ip_id;
};

/* Write Ethernet+IPv4+TCP headers and payload into out (capacity cap),
 * computing both checksums.  The payload is p1[0:l1] followed by p2[0:l2]
 * (either may be NULL with length 0) so a wrapped ring buffer needs no
 * extra copy.  Returns the frame length, or 0 if it would not fit. */
uint32_t tas_build_tcp(uint8_t *out, uint32_t cap, const struct tas_seg *s,
                       const uint8_t *p1, uint32_t l1,
                       const uint8_t *p2, uint32_t l2);

/* Length of the TCP options tas_build_tcp would emit for s. */
uint32_t tas_tcp_opts_len(const struct tas_seg *s);

#endif /* TAS_WIRE_H */
