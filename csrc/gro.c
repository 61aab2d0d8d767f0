/* gro.c -- the receive side of the TUN offloads: wg_gro_coalesce merges consecutive in-order
 * TCP segments of one flow into one super-packet with a GSO vnet header, so the kernel takes a
 * whole window of data per write(); with USO (Linux 6.2+), equal-sized UDP datagrams of one
 * flow likewise, which the kernel cuts up again only at the receiving socket.  Checksums are
 * verified as the payloads are copied (csum.c); anything that may not be merged passes
 * through, in order, with a zero vnet header. */
#include "offload.h"

#include <string.h>

#define GRO_MAX_IP_LEN 65535u       /* IPv4 total length / what one TUN write may carry */
#define GRO_MAX_UDP_SEGS 64u        /* the kernel's UDP_MAX_SEGMENTS on older releases */

/* A candidate TCP segment or UDP datagram, parsed once. */
struct seginfo {
    uint32_t plen;          /* IP length (padding trimmed) */
    uint16_t iphl, tcphl;   /* tcphl: the L4 header, 8 for UDP */
    uint32_t seq;
    uint32_t payload;
    uint8_t  v6;
    uint8_t  udp;
};

/* An output super-packet in the making. */
struct group {
    uint32_t head;          /* index of the first packet */
    uint32_t slot;          /* its output index */
    uint32_t next_seq;
    uint32_t gso_size;
    uint32_t total;         /* IP length so far */
    uint32_t nmerged;       /* packets appended after the head */
    uint32_t hash;
    uint8_t *buf;           /* scratch area: vnet header + packet, once something merged */
    uint32_t cap;           /* bytes reserved at buf */
    uint8_t  open;
    uint8_t  v6;
    uint8_t  udp;
    uint16_t iphl, tcphl;
};

/* IP header length of p (parsed as ip) when it may head a merge: IPv4 without options or
 * fragmentation and with a good header checksum, or IPv6 without extension headers, carrying
 * TCP or UDP.  0 otherwise. */
static uint32_t merge_iphl(const uint8_t *p, const struct wg_ip *ip)
{
    if (ip->proto != IPPROTO_TCP && ip->proto != IPPROTO_UDP)
        return 0;
    if (ip->family == AF_INET6)
        return WG_IPV6_HDR_LEN;
    if (p[0] != WG_IPV4_VER_IHL5)
        return 0;
    if ((wg_ipv4_frag(p) & (WG_IPV4_MF | WG_IPV4_FRAG_OFF)) != 0)
        return 0;               /* MF or a fragment offset */
    if (wg_fold(wg_csum_partial(p, WG_IPV4_HDR_LEN)) != 0xffff)
        return 0;               /* bad header checksum: let the kernel drop it */
    return WG_IPV4_HDR_LEN;
}

/* 1 when p is a UDP datagram we may merge: a length field that matches the IP length, some
 * payload, and for IPv4 a checksum to verify (none: passed on as it is). */
static int udp_candidate(const uint8_t *p, uint32_t plen, uint32_t iphl, struct seginfo *si)
{
    if (iphl + WG_UDP_HDR_LEN >= plen)
        return 0;
    const uint8_t *u = p + iphl;
    if (wg_be16(u + 4) != plen - iphl || (!si->v6 && wg_be16(u + 6) == 0))
        return 0;
    si->plen = plen;
    si->iphl = (uint16_t)iphl;
    si->tcphl = WG_UDP_HDR_LEN;
    si->seq = 0;
    si->payload = plen - iphl - WG_UDP_HDR_LEN;
    si->udp = 1;
    return 1;
}

/* 1 when p is a segment we may merge: TCP in-order data with only ACK (and maybe PSH), or
 * (with udp_ok) a UDP datagram. */
static int merge_candidate(const uint8_t *p, uint32_t plen, const struct wg_ip *ip, int udp_ok,
                           struct seginfo *si)
{
    uint32_t iphl = merge_iphl(p, ip);
    if (!iphl)
        return 0;
    si->v6 = ip->family == AF_INET6;
    if (ip->proto == IPPROTO_UDP)
        return udp_ok && udp_candidate(p, plen, iphl, si);
    si->udp = 0;
    if (iphl + WG_TCP_HDR_LEN > plen)
        return 0;
    const uint8_t *t = p + iphl;
    uint32_t thl = (uint32_t)(t[12] >> 4) * 4;
    if (thl < WG_TCP_HDR_LEN || iphl + thl >= plen)     /* >= : no payload, nothing to merge */
        return 0;
    if ((t[TCP_FLAGS] & ~TCP_PSH) != TCP_ACK || (t[12] & 0x0f) != 0)
        return 0;               /* SYN/FIN/RST/URG/ECE/CWR or reserved bits: not merged */
    si->plen = plen;
    si->iphl = (uint16_t)iphl;
    si->tcphl = (uint16_t)thl;
    si->seq = wg_be32(t + 4);
    si->payload = plen - iphl - thl;
    return 1;
}

static uint32_t flow_hash(const uint8_t *p, uint32_t iphl, int v6)
{
    uint32_t h = 2166136261u;
    const uint8_t *a = v6 ? p + WG_IPV6_SRC : p + WG_IPV4_SRC;
    uint32_t n = v6 ? 32 : 8;       /* both addresses */
    for (uint32_t i = 0; i < n; i++)
        h = (h ^ a[i]) * 16777619u;
    for (uint32_t i = 0; i < 4; i++)
        h = (h ^ p[iphl + i]) * 16777619u;
    return h;
}

/* Same flow (addresses, ports), same IP header fields that must agree, same ACK, window and
 * TCP options: then the super-packet's single header speaks for every segment exactly. */
static int same_flow(const uint8_t *a, const uint8_t *b, const struct group *g,
                     const struct seginfo *si, uint32_t k)
{
    if (si->v6 != g->v6 || si->udp != g->udp || si->tcphl != g->tcphl)
        return 0;
    if (si->v6) {
        if (memcmp(a, b, 4) || a[7] != b[7] || memcmp(a + WG_IPV6_SRC, b + WG_IPV6_SRC, 32))
            return 0;       /* version/class/flow label, hop limit, addresses */
    } else {
        if (a[1] != b[1] || a[6] != b[6] || a[8] != b[8] ||
            memcmp(a + WG_IPV4_SRC, b + WG_IPV4_SRC, 8))
            return 0;       /* TOS, DF, TTL, addresses */
        /* IP IDs must count up one per segment (what segmentation will recreate), unless DF
         * is set, where the kernel's own GRO accepts any ID. */
        if (!(wg_ipv4_frag(a) & WG_IPV4_DF) && (uint16_t)(wg_be16(a + 4) + k) != wg_be16(b + 4))
            return 0;
    }
    const uint8_t *ta = a + g->iphl, *tb = b + si->iphl;
    if (g->udp)
        return !memcmp(ta, tb, 4);      /* ports */
    if (memcmp(ta, tb, 4) || memcmp(ta + 8, tb + 8, 5) || memcmp(ta + 14, tb + 14, 2))
        return 0;           /* ports; ack, data offset; window */
    if (ta[18] != tb[18] || ta[19] != tb[19])
        return 0;           /* urgent pointer */
    if (g->tcphl > 20 && memcmp(ta + 20, tb + 20, g->tcphl - 20u))
        return 0;           /* options, timestamps included (as the kernel's GRO) */
    return 1;
}

static int l4_csum_ok(const uint8_t *p, const struct seginfo *si, uint64_t payload_sum)
{
    uint64_t s = wg_pseudo_sum(p, si->v6, si->udp ? IPPROTO_UDP : IPPROTO_TCP,
                            si->plen - si->iphl);
    s = wg_add64(s, wg_csum_partial(p + si->iphl, si->tcphl));
    s = wg_add64(s, payload_sum);
    return wg_fold(s) == 0xffff;
}

/* Give back the tail of the scratch area if g was the last to take from it. */
static void group_close(struct group *g, uint8_t *scratch, uint32_t *used)
{
    g->open = 0;
    if (g->buf) {
        uint32_t end = (uint32_t)(g->buf - scratch) + g->cap;
        if (end == *used) {
            uint32_t real = (WG_VNET_HDR_LEN + g->total + 63u) & ~63u;
            if (real < g->cap) {
                *used -= g->cap - real;
                g->cap = real;
            }
        }
    }
}

uint32_t wg_gro_coalesce(uint8_t **pkts, const uint32_t *lens, uint32_t n,
                         uint8_t *scratch, uint32_t scratch_cap,
                         uint8_t **out_ptrs, uint32_t *out_lens, uint32_t max_out, int flags)
{
    int udp_ok = flags & WG_GRO_UDP;
    struct group groups[WG_MAX_BATCH];
    uint32_t ng = 0, nout = 0, used = 0;
    int32_t slot_group[WG_MAX_BATCH];       /* output slot -> group index, -1 = pass-through */

    /* Outputs never outnumber inputs: taking at most max_out inputs means none is left out. */
    if (n > max_out)
        n = max_out;
    if (n > WG_MAX_BATCH)
        n = WG_MAX_BATCH;
    /* Keep scratch areas 64-byte aligned relative to its start. */
    scratch_cap &= ~63u;

    for (uint32_t i = 0; i < n; i++) {
        uint8_t *p = pkts[i];
        struct wg_ip ip;
        uint32_t plen = wg_ip_parse(p, lens[i], &ip) ? wg_ip_len(&ip, lens[i]) : 0;
        struct seginfo si;
        int cand = plen && merge_candidate(p, plen, &ip, udp_ok, &si);

        if (cand) {
            uint32_t h = flow_hash(p, si.iphl, si.v6);
            struct group *g = NULL;
            /* The newest open group of the flow; older ones were closed when it opened. */
            for (uint32_t j = ng; j-- > 0;) {
                if (groups[j].open && groups[j].hash == h) {
                    g = &groups[j];
                    break;
                }
            }
            if (g && !same_flow(pkts[g->head], p, g, &si, g->nmerged + 1)) {
                /* Same hash but not mergeable: if it is the same 5-tuple, the flow moves on
                 * to a new group so its packets stay in order. */
                const uint8_t *a = pkts[g->head];
                uint32_t ao = si.v6 ? WG_IPV6_SRC : WG_IPV4_SRC;
                int same5 = si.v6 == g->v6 && si.udp == g->udp &&
                    !memcmp(a + ao, p + ao, si.v6 ? 32 : 8) &&
                    !memcmp(a + g->iphl, p + si.iphl, 4);
                if (same5)
                    group_close(g, scratch, &used);
                g = NULL;
            } else if (g) {
                int ok = si.seq == g->next_seq && si.payload <= g->gso_size &&
                         g->total + si.payload <= GRO_MAX_IP_LEN &&
                         (!g->udp || g->nmerged + 1 < GRO_MAX_UDP_SEGS);
                if (ok && !g->buf) {
                    /* First merge: reserve room for a whole super-packet and copy the head,
                     * verifying its checksum on the way. */
                    uint32_t want = (WG_VNET_HDR_LEN + GRO_MAX_IP_LEN + 63u) & ~63u;
                    uint32_t room = scratch_cap - used;
                    uint32_t cap = room < want ? room : want;
                    if (cap >= WG_VNET_HDR_LEN + g->total + si.payload) {
                        const uint8_t *hp = pkts[g->head];
                        struct seginfo hs = { g->total, g->iphl, g->tcphl, 0,
                                              g->total - g->iphl - g->tcphl, g->v6, g->udp };
                        uint8_t *b = scratch + used;
                        uint32_t hl = g->iphl + g->tcphl;
                        memcpy(b + WG_VNET_HDR_LEN, hp, hl);
                        uint64_t s = wg_csum_copy(b + WG_VNET_HDR_LEN + hl, hp + hl, hs.payload);
                        if (l4_csum_ok(hp, &hs, s)) {
                            g->buf = b;
                            g->cap = cap;
                            used += cap;
                        } else {
                            group_close(g, scratch, &used);   /* head stays as it is */
                            g = NULL;
                            ok = 0;
                        }
                    } else {
                        ok = 0;                 /* no scratch left: pass through */
                    }
                }
                if (g && ok && WG_VNET_HDR_LEN + g->total + si.payload <= g->cap) {
                    uint32_t hl = si.iphl + si.tcphl;
                    uint8_t *dst = g->buf + WG_VNET_HDR_LEN + g->total;
                    uint64_t s = wg_csum_copy(dst, p + hl, si.payload);
                    if (l4_csum_ok(p, &si, s)) {
                        g->total += si.payload;
                        if (!g->udp)
                            g->next_seq += si.payload;
                        g->nmerged++;
                        uint8_t psh = 0;
                        if (!g->udp) {
                            psh = p[si.iphl + TCP_FLAGS] & TCP_PSH;
                            g->buf[WG_VNET_HDR_LEN + g->iphl + TCP_FLAGS] |= psh;
                        }
                        /* A short segment or PSH ends the super-packet. */
                        if (psh || si.payload < g->gso_size ||
                            g->total + g->gso_size > GRO_MAX_IP_LEN ||
                            (g->udp && g->nmerged + 1 >= GRO_MAX_UDP_SEGS))
                            group_close(g, scratch, &used);
                        continue;
                    }
                    /* A corrupt segment passes through for the kernel to drop; the copied
                     * bytes are overwritten by the next append. */
                    goto pass;
                }
                if (g) {
                    group_close(g, scratch, &used);
                    g = NULL;
                }
            }
            /* Start a new group with this packet as head. */
            struct group *ng_ = &groups[ng];
            memset(ng_, 0, sizeof(*ng_));
            ng_->head = i;
            ng_->slot = nout;
            ng_->next_seq = si.udp ? 0 : si.seq + si.payload;   /* UDP: seq stays 0 */
            ng_->gso_size = si.payload;
            ng_->total = plen;
            ng_->hash = h;
            ng_->open = si.udp || !(p[si.iphl + TCP_FLAGS] & TCP_PSH);
            ng_->v6 = si.v6;
            ng_->udp = si.udp;
            ng_->iphl = si.iphl;
            ng_->tcphl = si.tcphl;
            slot_group[nout] = (int32_t)ng;
            out_ptrs[nout] = p;
            out_lens[nout] = plen;
            ng++;
            nout++;
            continue;
        }
        if (plen && !cand && (ip.proto == IPPROTO_TCP || (udp_ok && ip.proto == IPPROTO_UDP))) {
            /* A TCP packet we do not merge (pure ACK, FIN, ...) or a UDP datagram we do not:
             * later packets of its flow must not jump ahead of it into an earlier
             * super-packet. */
            uint32_t iphl = ip.hdr_len;
            if (iphl >= WG_IPV4_HDR_LEN && iphl + 4 <= plen) {
                uint32_t h = flow_hash(p, iphl, ip.family == AF_INET6);
                for (uint32_t j = 0; j < ng; j++)
                    if (groups[j].open && groups[j].hash == h)
                        group_close(&groups[j], scratch, &used);
            }
        }
    pass:
        slot_group[nout] = -1;
        out_ptrs[nout] = p;
        out_lens[nout] = plen ? plen : lens[i];
        nout++;
    }

    /* Headers: every output gets a vnet header in front of it. */
    for (uint32_t k = 0; k < nout; k++) {
        int32_t gi = slot_group[k];
        struct group *g = gi >= 0 ? &groups[gi] : NULL;
        if (!g || g->nmerged == 0) {
            uint8_t *h = out_ptrs[k] - WG_VNET_HDR_LEN;    /* headroom in front of the packet */
            memset(h, 0, WG_VNET_HDR_LEN);
            out_ptrs[k] = h;
            out_lens[k] += WG_VNET_HDR_LEN;
            continue;
        }
        uint8_t *h = g->buf, *ip = h + WG_VNET_HDR_LEN;
        h[VNET_FLAGS] = WG_VNET_F_NEEDS_CSUM;
        h[VNET_GSO_TYPE] = g->udp ? WG_VNET_GSO_UDP_L4 : g->v6 ? WG_VNET_GSO_TCPV6
                                                               : WG_VNET_GSO_TCPV4;
        wg_put_le16(h + VNET_HDR_LEN, (uint16_t)(g->iphl + g->tcphl));
        wg_put_le16(h + VNET_GSO_SIZE, (uint16_t)g->gso_size);
        wg_put_le16(h + VNET_CSUM_START, g->iphl);
        wg_put_le16(h + VNET_CSUM_OFFSET, g->udp ? UDP_CSUM : TCP_CSUM);
        if (g->v6) {
            wg_put_be16(ip + 4, (uint16_t)(g->total - WG_IPV6_HDR_LEN));
        } else {
            wg_put_be16(ip + 2, (uint16_t)g->total);
            wg_ipv4_fix_csum(ip, WG_IPV4_HDR_LEN);
        }
        /* CHECKSUM_PARTIAL: the field holds the folded pseudo-header sum, not inverted; the
         * kernel swaps the length in it for each segment's when it cuts the train. */
        uint16_t ps = wg_fold(wg_pseudo_sum(ip, g->v6, g->udp ? IPPROTO_UDP : IPPROTO_TCP,
                                      g->total - g->iphl));
        if (g->udp)
            wg_put_be16(ip + g->iphl + 4, (uint16_t)(g->total - g->iphl));
        memcpy(ip + g->iphl + (g->udp ? UDP_CSUM : TCP_CSUM), &ps, 2);
        out_ptrs[k] = h;
        out_lens[k] = WG_VNET_HDR_LEN + g->total;
    }
    return nout;
}
