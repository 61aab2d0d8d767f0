/* gso.c -- the send side of the TUN offloads: a TUN read with IFF_VNET_HDR starts with a
 * 10-byte struct virtio_net_hdr (linux/virtio_net.h, little-endian fields on a little-endian
 * host, as the kernel's tun uses) and may carry a TCP or UDP super-packet of up to 64 KB
 * and/or a partial checksum.  wg_vnet_segment cuts it into plain IP packets with complete
 * checksums, ready to be sealed one by one; wg_vnet_segment_from does it a few at a time. */
#include "offload.h"

#include <string.h>
#include <arpa/inet.h>

#define IPV6_RT_TYPE0 0             /* routing header types (RFC 2460, RFC 6275, RFC 8754) */
#define IPV6_RT_TYPE2 2
#define IPV6_RT_SRH   4
#define SEG_HDR_MAX   512           /* IP header with extension headers + L4 header */

/* Walk the IPv6 extension headers TSO may carry (hop-by-hop first, routing, destination
 * options; a fragment header or anything else cannot be segmented) up to proto.  Returns the
 * L4 offset, or 0 / -WG_OFF_ERR_*.  *dst_off = where the final destination is (RFC 8200 8.1:
 * the pseudo-header takes it from a routing header with segments left). */
static int ipv6_l4off(const uint8_t *ip, uint32_t plen, uint8_t proto, uint32_t *dst_off)
{
    uint32_t off = WG_IPV6_HDR_LEN;
    uint8_t nh = ip[6];
    *dst_off = WG_IPV6_DST;
    while (nh != proto) {
        if ((nh != IPPROTO_HOPOPTS || off != WG_IPV6_HDR_LEN) && nh != IPPROTO_ROUTING &&
            nh != IPPROTO_DSTOPTS)
            return -WG_OFF_ERR_PACKET;
        if (off + 8 > plen)
            return -WG_OFF_ERR_SHORT;
        uint32_t el = ((uint32_t)ip[off + 1] + 1) * 8;
        if (off + el > plen)
            return -WG_OFF_ERR_SHORT;
        if (nh == IPPROTO_ROUTING && ip[off + 3] != 0) {
            uint8_t type = ip[off + 2];
            uint32_t naddr = ip[off + 1] / 2;
            if (type == IPV6_RT_TYPE0 && naddr > 0)
                *dst_off = off + 8 + 16 * (naddr - 1);  /* RFC 2460 type 0: the last address */
            else if ((type == IPV6_RT_TYPE2 || type == IPV6_RT_SRH) && naddr > 0)
                *dst_off = off + 8;     /* type 2: home address; SRH: segment list[0] */
            else
                return -WG_OFF_ERR_PACKET;
        }
        nh = ip[off];
        off += el;
        if (off > SEG_HDR_MAX - 60)
            return -WG_OFF_ERR_PACKET;
    }
    return (int)off;
}

/* Segments [first, first + max_out) of pkt; whole = all of them or -WG_OFF_ERR_TOO_MANY. */
static int segment(const uint8_t *pkt, uint32_t len, uint32_t first, uint8_t **out,
                   uint32_t out_cap, uint32_t *out_len, uint32_t max_out, int whole,
                   uint32_t *total_out)
{
    if (len < WG_VNET_HDR_LEN)
        return -WG_OFF_ERR_SHORT;
    uint8_t flags = pkt[VNET_FLAGS], gso_type = pkt[VNET_GSO_TYPE];
    uint16_t hdr_len = wg_le16(pkt + VNET_HDR_LEN), gso_size = wg_le16(pkt + VNET_GSO_SIZE);
    uint16_t csum_start = wg_le16(pkt + VNET_CSUM_START);
    uint16_t csum_offset = wg_le16(pkt + VNET_CSUM_OFFSET);
    const uint8_t *ip = pkt + WG_VNET_HDR_LEN;
    uint32_t plen = len - WG_VNET_HDR_LEN;
    uint8_t gso = gso_type & (uint8_t)~WG_VNET_GSO_ECN;

    if (gso == WG_VNET_GSO_NONE) {
        *total_out = 1;
        if (first > 0 || max_out == 0)
            return 0;
        if (plen > out_cap)
            return -WG_OFF_ERR_TOO_BIG;
        if (flags & WG_VNET_F_NEEDS_CSUM) {
            if ((uint32_t)csum_start + csum_offset + 2 > plen)
                return -WG_OFF_ERR_HEADER;
        }
        if (out[0] != ip)
            memmove(out[0], ip, plen);     /* out[0] may be ip itself: nothing to move */
        out_len[0] = plen;
        if (flags & WG_VNET_F_NEEDS_CSUM) {
            /* The field holds the kernel's pseudo-header sum: summing over it finishes it. */
            uint8_t *o = out[0];
            uint16_t c = (uint16_t)~wg_fold(wg_csum_partial(o + csum_start, plen - csum_start));
            if (c == 0 && csum_offset == UDP_CSUM)
                c = 0xffff;         /* UDP: 0 means "no checksum" (RFC 768) */
            memcpy(o + csum_start + csum_offset, &c, 2);
        }
        return 1;
    }

    /* A super-packet: parse the headers ourselves.  hdr_len from the kernel is the linear
     * head of the skb, which need not be the header length, so it is only range-checked. */
    uint8_t proto;
    int v6;
    if (gso == WG_VNET_GSO_TCPV4 || gso == WG_VNET_GSO_TCPV6) {
        proto = IPPROTO_TCP;
        v6 = gso == WG_VNET_GSO_TCPV6;
    } else if (gso == WG_VNET_GSO_UDP_L4) {
        proto = IPPROTO_UDP;
        if (plen < 1)
            return -WG_OFF_ERR_SHORT;
        v6 = (ip[0] >> 4) == 6;
    } else {
        return -WG_OFF_ERR_GSO_TYPE;
    }
    if (gso_size == 0 || hdr_len > plen)
        return -WG_OFF_ERR_HEADER;

    uint32_t l4off, dst_off = 0;
    struct wg_ip h;
    if (plen < (v6 ? WG_IPV6_HDR_LEN : WG_IPV4_HDR_LEN))
        return -WG_OFF_ERR_SHORT;
    if (!wg_ip_parse(ip, plen, &h) || h.family != (v6 ? AF_INET6 : AF_INET))
        return -WG_OFF_ERR_PACKET;
    if (v6) {
        int o = ipv6_l4off(ip, plen, proto, &dst_off);
        if (o <= 0)
            return o;
        l4off = (uint32_t)o;
    } else {
        if (h.proto != proto || h.hdr_len < WG_IPV4_HDR_LEN)
            return -WG_OFF_ERR_PACKET;
        l4off = h.hdr_len;
        if ((wg_ipv4_frag(ip) & (WG_IPV4_MF | WG_IPV4_FRAG_OFF)) != 0)
            return -WG_OFF_ERR_PACKET;   /* a fragment cannot be a super-packet */
    }
    if (l4off > plen)
        return -WG_OFF_ERR_SHORT;
    if (csum_start != l4off || csum_offset != (proto == IPPROTO_TCP ? TCP_CSUM : UDP_CSUM))
        return -WG_OFF_ERR_HEADER;

    uint32_t l4hl;
    if (proto == IPPROTO_TCP) {
        if (l4off + WG_TCP_HDR_LEN > plen)
            return -WG_OFF_ERR_SHORT;
        l4hl = (uint32_t)(ip[l4off + 12] >> 4) * 4;
        if (l4hl < WG_TCP_HDR_LEN)
            return -WG_OFF_ERR_PACKET;
    } else {
        l4hl = WG_UDP_HDR_LEN;
    }
    uint32_t hl = l4off + l4hl;
    if (hl > plen)
        return -WG_OFF_ERR_SHORT;
    uint32_t payload = plen - hl;
    if (payload == 0)
        return -WG_OFF_ERR_HEADER;
    uint32_t nseg = (payload + gso_size - 1) / gso_size;
    *total_out = nseg;
    if (first >= nseg)
        return 0;
    if (whole && nseg - first > max_out)
        return -WG_OFF_ERR_TOO_MANY;
    if (hl + (payload < gso_size ? payload : gso_size) > out_cap)
        return -WG_OFF_ERR_TOO_BIG;
    uint32_t end = nseg - first > max_out ? first + max_out : nseg;

    /* Keep the original headers: out[0] may be ip itself (segment 0 built in place). */
    uint8_t hdr[SEG_HDR_MAX];
    if (hl > sizeof(hdr))
        return -WG_OFF_ERR_PACKET;
    memcpy(hdr, ip, hl);
    if (!v6)
        hdr[IPV4_CSUM] = hdr[IPV4_CSUM + 1] = 0;
    hdr[l4off + csum_offset] = hdr[l4off + csum_offset + 1] = 0;
    uint32_t seq0 = proto == IPPROTO_TCP ? wg_be32(hdr + l4off + 4) : 0;
    uint16_t id0 = v6 ? 0 : wg_be16(hdr + 4);
    uint8_t tflags = proto == IPPROTO_TCP ? hdr[l4off + TCP_FLAGS] : 0;
    /* The pseudo-header sum without its length; each segment adds its own. */
    uint64_t ps = v6 ? wg_add64(wg_csum_partial(hdr + WG_IPV6_SRC, 16),
                                wg_csum_partial(hdr + dst_off, 16))
                     : wg_csum_partial(hdr + WG_IPV4_SRC, 8);
    ps = wg_add64(ps, htons(proto));

    const uint8_t *data = ip + hl;
    for (uint32_t k = first; k < end; k++) {
        uint32_t off = k * gso_size;
        uint32_t seg = payload - off < gso_size ? payload - off : gso_size;
        uint32_t total = hl + seg;
        uint8_t *o = out[k - first];
        memcpy(o, hdr, hl);
        if (v6) {
            wg_put_be16(o + 4, (uint16_t)(total - WG_IPV6_HDR_LEN));
        } else {
            wg_put_be16(o + 2, (uint16_t)total);
            wg_put_be16(o + 4, (uint16_t)(id0 + k));
            wg_ipv4_fix_csum(o, l4off);
        }
        uint8_t *l4 = o + l4off;
        if (proto == IPPROTO_TCP) {
            wg_put_be32(l4 + 4, seq0 + off);
            uint8_t f = tflags;
            if (k + 1 < nseg)
                f &= (uint8_t)~(TCP_FIN | TCP_PSH);
            if (k > 0)
                f &= (uint8_t)~TCP_CWR;
            l4[TCP_FLAGS] = f;
        } else {
            wg_put_be16(l4 + 4, (uint16_t)(l4hl + seg));
        }
        /* Header sum, then the payload copied and summed in one pass. */
        uint64_t s = wg_add64(ps, htons((uint16_t)(l4hl + seg)));
        s = wg_add64(s, wg_csum_partial(l4, l4hl));
        if (o == ip && k == 0)
            s = wg_add64(s, wg_csum_partial(o + hl, seg));   /* already in place */
        else
            s = wg_add64(s, wg_csum_copy(o + hl, data + off, seg));
        uint16_t c = (uint16_t)~wg_fold(s);
        if (c == 0 && proto == IPPROTO_UDP)
            c = 0xffff;
        memcpy(l4 + csum_offset, &c, 2);
        out_len[k - first] = total;
    }
    return (int)(end - first);
}

int wg_vnet_segment(const uint8_t *pkt, uint32_t len, uint8_t **out, uint32_t out_cap,
                    uint32_t *out_len, uint32_t max_out)
{
    uint32_t total = 0;
    if (max_out == 0)
        return -WG_OFF_ERR_TOO_MANY;
    return segment(pkt, len, 0, out, out_cap, out_len, max_out, 1, &total);
}

int wg_vnet_segment_from(const uint8_t *pkt, uint32_t len, uint32_t first, uint8_t **out,
                         uint32_t out_cap, uint32_t *out_len, uint32_t max_out,
                         uint32_t *nseg)
{
    uint32_t total = 0;
    int c = segment(pkt, len, first, out, out_cap, out_len, max_out, 0, &total);
    *nseg = total;
    return c;
}

