/* ip.h -- the one parser of IPv4 and IPv6 headers, shared by send.c (routing by destination),
 * receive.c (the allowed-IPs check of the source), gso.c and gro.c.
 *
 * Inline: it runs once per packet on both paths.  It reads only the fixed header (RFC 791,
 * RFC 8200); what a caller needs beyond it (IPv4 options, IPv6 extension headers, fragments)
 * it checks itself. */
#ifndef WGFAST_IP_H
#define WGFAST_IP_H

#include "wgfast_internal.h"

#include <netinet/in.h>
#include <sys/socket.h>

#define WG_IPV4_HDR_LEN   20        /* without options */
#define WG_IPV6_HDR_LEN   40
#define WG_IPV4_SRC       12        /* field offsets: addresses (IPv4 4 bytes, IPv6 16) */
#define WG_IPV4_DST       16
#define WG_IPV6_SRC       8
#define WG_IPV6_DST       24
#define WG_IPV4_VER_IHL5  0x45      /* version 4, header of 5 words: no options */
#define WG_IPV4_DF        0x4000    /* flags and fragment offset (bytes 6-7) */
#define WG_IPV4_MF        0x2000
#define WG_IPV4_FRAG_OFF  0x1fff
#define WG_UDP_HDR_LEN    8
#define WG_TCP_HDR_LEN    20        /* without options */

struct wg_ip {
    int      family;                /* AF_INET or AF_INET6 */
    uint8_t  proto;                 /* IPv4 protocol, IPv6 next header */
    uint32_t hdr_len;               /* IPv4: IHL * 4, as it says (may be < 20); IPv6: 40 */
    uint32_t total_len;             /* the length the header claims (IPv6: 40 + payload) */
    const uint8_t *src, *dst;
};

/* 1 when p (len bytes) starts with a whole IPv4 or IPv6 fixed header, filling *ip. */
static inline int wg_ip_parse(const uint8_t *p, uint32_t len, struct wg_ip *ip)
{
    uint8_t version = len ? p[0] >> 4 : 0;
    if (version == 4 && len >= WG_IPV4_HDR_LEN) {
        ip->family = AF_INET;
        ip->proto = p[9];
        ip->hdr_len = (uint32_t)(p[0] & 15) * 4;
        ip->total_len = wg_be16(p + 2);
        ip->src = p + WG_IPV4_SRC;
        ip->dst = p + WG_IPV4_DST;
        return 1;
    }
    if (version == 6 && len >= WG_IPV6_HDR_LEN) {
        ip->family = AF_INET6;
        ip->proto = p[6];
        ip->hdr_len = WG_IPV6_HDR_LEN;
        ip->total_len = WG_IPV6_HDR_LEN + (uint32_t)wg_be16(p + 4);
        ip->src = p + WG_IPV6_SRC;
        ip->dst = p + WG_IPV6_DST;
        return 1;
    }
    return 0;
}

/* The packet's length per its header when that is sane and fits in len (the rest is padding:
 * WireGuard pads plaintexts to 16 bytes), else 0. */
static inline uint32_t wg_ip_len(const struct wg_ip *ip, uint32_t len)
{
    if (ip->total_len > len || (ip->family == AF_INET && ip->total_len < WG_IPV4_HDR_LEN))
        return 0;
    return ip->total_len;
}

/* Bytes of an address of the family: 4 or 16. */
static inline uint32_t wg_ip_addr_len(int family)
{
    return family == AF_INET ? 4 : 16;
}

/* IPv4 only: the flags/fragment field; a fragment other than the first has an offset. */
static inline uint16_t wg_ipv4_frag(const uint8_t *p)
{
    return wg_be16(p + 6);
}

#endif
