/*
 * offload.c -- TUN offloads (IFF_VNET_HDR + TUNSETOFFLOAD).
 *
 * Send side: a TUN read starts with a 10-byte struct virtio_net_hdr (linux/virtio_net.h,
 * little-endian fields on a little-endian host, as the kernel's tun uses) and may carry a TCP
 * or UDP super-packet of up to 64 KB and/or a partial checksum.  wg_vnet_segment cuts it into
 * plain IP packets with complete checksums, ready to be sealed one by one.
 *
 * Receive side: wg_gro_coalesce merges consecutive in-order TCP segments of one flow into one
 * super-packet with a GSO vnet header, so the kernel takes a whole window of data per write();
 * with USO (Linux 6.2+), equal-sized UDP datagrams of one flow likewise, which the kernel
 * cuts up again only at the receiving socket.
 *
 * Checksums are summed in host byte order over 64-bit words (RFC 1071 section 2: the one's
 * complement sum is byte-order independent up to a final swap, and a 16-bit value stored back
 * in host order lands as the right network-order bytes).
 */
#include "wgfast_internal.h"

#include <string.h>
#include <arpa/inet.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define WG_HAVE_AVX2_PATH 1
#endif

#define IPPROTO_TCP_ 6
#define IPPROTO_UDP_ 17
#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_PSH 0x08
#define TCP_ACK 0x10
#define TCP_CWR 0x80
#define GRO_MAX_IP_LEN 65535u       /* IPv4 total length / what one TUN write may carry */
#define GRO_MAX_UDP_SEGS 64u        /* the kernel's UDP_MAX_SEGMENTS on older releases */

static inline uint16_t be16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline void put_be16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static inline void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}
static inline uint16_t le16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static inline void put_le16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }

/* ---- checksum ------------------------------------------------------------------------ */

static inline uint64_t add64(uint64_t a, uint64_t b)
{
    uint64_t s = a + b;
    return s + (s < a);             /* end-around carry */
}

static inline uint16_t fold(uint64_t s)
{
    s = (s & 0xffffffffu) + (s >> 32);
    s = (s & 0xffffffffu) + (s >> 32);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    return (uint16_t)s;
}

/* Sum of n bytes at p (host order), optionally copying them to dst on the way: one pass over
 * the data whether we only verify or also move it.  Any alignment, any length. */
#ifdef WG_HAVE_AVX2_PATH
/* The same lane sums 32 bytes wide, compiled for AVX2 and picked at run time (the build
 * targets baseline x86-64).  Handles n rounded down to 128; returns the bytes it took. */
__attribute__((target("avx2")))
static size_t sum_avx2(uint8_t *restrict dst, const uint8_t *restrict p, size_t n, int copy,
                       uint64_t *sum)
{
    const __m256i lo = _mm256_set1_epi64x(0xffffffff);
    __m256i s0 = _mm256_setzero_si256(), s1 = _mm256_setzero_si256();
    size_t done = 0;
    for (; n - done >= 128; done += 128) {
        __m256i v0 = _mm256_loadu_si256((const __m256i *)(p + done));
        __m256i v1 = _mm256_loadu_si256((const __m256i *)(p + done + 32));
        __m256i v2 = _mm256_loadu_si256((const __m256i *)(p + done + 64));
        __m256i v3 = _mm256_loadu_si256((const __m256i *)(p + done + 96));
        if (copy) {
            _mm256_storeu_si256((__m256i *)(dst + done), v0);
            _mm256_storeu_si256((__m256i *)(dst + done + 32), v1);
            _mm256_storeu_si256((__m256i *)(dst + done + 64), v2);
            _mm256_storeu_si256((__m256i *)(dst + done + 96), v3);
        }
        s0 = _mm256_add_epi64(s0, _mm256_and_si256(v0, lo));
        s1 = _mm256_add_epi64(s1, _mm256_srli_epi64(v0, 32));
        s0 = _mm256_add_epi64(s0, _mm256_and_si256(v1, lo));
        s1 = _mm256_add_epi64(s1, _mm256_srli_epi64(v1, 32));
        s0 = _mm256_add_epi64(s0, _mm256_and_si256(v2, lo));
        s1 = _mm256_add_epi64(s1, _mm256_srli_epi64(v2, 32));
        s0 = _mm256_add_epi64(s0, _mm256_and_si256(v3, lo));
        s1 = _mm256_add_epi64(s1, _mm256_srli_epi64(v3, 32));
    }
    uint64_t t[4];
    _mm256_storeu_si256((__m256i *)t, _mm256_add_epi64(s0, s1));
    *sum = t[0] + t[1] + t[2] + t[3];    /* < 2^52 for any packet: no overflow */
    _mm256_zeroupper();
    return done;
}

static int have_avx2 = -1;
#endif

static inline uint64_t sum_bytes(uint8_t *restrict dst, const uint8_t *restrict p, size_t n,
                                 int copy)
{
    uint64_t a = 0, b = 0, c = 0, d = 0;
#ifdef WG_HAVE_AVX2_PATH
    if (n >= 256) {
        if (have_avx2 < 0)
            have_avx2 = __builtin_cpu_supports("avx2") ? 1 : 0;   /* benign race: same value */
        if (have_avx2) {
            size_t done = sum_avx2(dst, p, n, copy, &a);
            p += done;
            n -= done;
            if (copy)
                dst += done;
        }
    }
#endif
#ifdef __SSE2__
    /* SSE2 is part of x86-64: add the 32-bit halves of each 64-bit lane into 64-bit lanes,
     * which cannot overflow for any packet (2^32 adds of < 2^32), so no carries to chase. */
    if (n >= 64) {
        const __m128i lo = _mm_set1_epi64x(0xffffffff);
        __m128i s0 = _mm_setzero_si128(), s1 = _mm_setzero_si128();
        while (n >= 64) {
            __m128i v0 = _mm_loadu_si128((const __m128i *)p);
            __m128i v1 = _mm_loadu_si128((const __m128i *)(p + 16));
            __m128i v2 = _mm_loadu_si128((const __m128i *)(p + 32));
            __m128i v3 = _mm_loadu_si128((const __m128i *)(p + 48));
            if (copy) {
                _mm_storeu_si128((__m128i *)dst, v0);
                _mm_storeu_si128((__m128i *)(dst + 16), v1);
                _mm_storeu_si128((__m128i *)(dst + 32), v2);
                _mm_storeu_si128((__m128i *)(dst + 48), v3);
                dst += 64;
            }
            s0 = _mm_add_epi64(s0, _mm_and_si128(v0, lo));
            s1 = _mm_add_epi64(s1, _mm_srli_epi64(v0, 32));
            s0 = _mm_add_epi64(s0, _mm_and_si128(v1, lo));
            s1 = _mm_add_epi64(s1, _mm_srli_epi64(v1, 32));
            s0 = _mm_add_epi64(s0, _mm_and_si128(v2, lo));
            s1 = _mm_add_epi64(s1, _mm_srli_epi64(v2, 32));
            s0 = _mm_add_epi64(s0, _mm_and_si128(v3, lo));
            s1 = _mm_add_epi64(s1, _mm_srli_epi64(v3, 32));
            p += 64; n -= 64;
        }
        uint64_t t[4];
        _mm_storeu_si128((__m128i *)t, s0);
        _mm_storeu_si128((__m128i *)(t + 2), s1);
        /* Halves keep their place in the word: the low ones count 1x, the high ones 2^32x,
         * and 2^32 == 1 in one's complement arithmetic mod 2^16-1, so just add them all. */
        a = add64(a, t[0]); b = t[1]; c = t[2]; d = t[3];
    }
#endif
    /* Scalar: independent carry chains, so the adds of one block do not wait on each other. */
    while (n >= 32) {
        uint64_t w0, w1, w2, w3;
        memcpy(&w0, p, 8); memcpy(&w1, p + 8, 8); memcpy(&w2, p + 16, 8); memcpy(&w3, p + 24, 8);
        if (copy) {
            memcpy(dst, &w0, 8); memcpy(dst + 8, &w1, 8);
            memcpy(dst + 16, &w2, 8); memcpy(dst + 24, &w3, 8);
            dst += 32;
        }
        a = add64(a, w0); b = add64(b, w1); c = add64(c, w2); d = add64(d, w3);
        p += 32; n -= 32;
    }
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        if (copy) { memcpy(dst, &w, 8); dst += 8; }
        a = add64(a, w);
        p += 8; n -= 8;
    }
    if (n) {
        /* The tail, zero padded: every byte keeps its position within the 64-bit word (an odd
         * last byte is the high byte of its big-endian pair).  Built in registers: a memcpy of
         * n bytes into a word would stall store forwarding on every call. */
        uint64_t w = 0;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        unsigned shift = 0;
        if (n & 4) {
            uint32_t x;
            memcpy(&x, p, 4);
            if (copy) { memcpy(dst, &x, 4); dst += 4; }
            w = x; shift = 32; p += 4;
        }
        if (n & 2) {
            uint16_t x;
            memcpy(&x, p, 2);
            if (copy) { memcpy(dst, &x, 2); dst += 2; }
            w |= (uint64_t)x << shift; shift += 16; p += 2;
        }
        if (n & 1) {
            if (copy) *dst = *p;
            w |= (uint64_t)*p << shift;
        }
#else
        memcpy(&w, p, n);
        if (copy) memcpy(dst, p, n);
#endif
        a = add64(a, w);
    }
    return add64(add64(a, b), add64(c, d));
}

static uint64_t csum_partial(const uint8_t *p, size_t n) { return sum_bytes(NULL, p, n, 0); }
static uint64_t csum_copy(uint8_t *dst, const uint8_t *src, size_t n) { return sum_bytes(dst, src, n, 1); }

/* Pseudo-header sum (RFC 793/768 for IPv4, RFC 8200 section 8.1 for IPv6), host order. */
static uint64_t pseudo_sum(const uint8_t *ip, int v6, uint8_t proto, uint32_t l4len)
{
    uint64_t s = v6 ? csum_partial(ip + 8, 32) : csum_partial(ip + 12, 8);
    s = add64(s, htons(proto));
    return add64(s, htons((uint16_t)l4len));   /* lengths here stay below 64 KB */
}

static void ipv4_fix_csum(uint8_t *ip, uint32_t ihl)
{
    ip[10] = ip[11] = 0;
    uint16_t c = (uint16_t)~fold(csum_partial(ip, ihl));
    memcpy(ip + 10, &c, 2);
}

uint16_t wg_inet_csum(const uint8_t *p, uint32_t len)
{
    uint16_t c = (uint16_t)~fold(csum_partial(p, len));
    return ntohs(c);
}

/* ---- segmentation -------------------------------------------------------------------- */

#define IPV6_HOPOPTS_ 0
#define IPV6_ROUTING_ 43
#define IPV6_DSTOPTS_ 60
#define SEG_HDR_MAX   512           /* IP header with extension headers + L4 header */

/* Walk the IPv6 extension headers TSO may carry (hop-by-hop first, routing, destination
 * options; a fragment header or anything else cannot be segmented) up to proto.  Returns the
 * L4 offset, or 0 / -WG_OFF_ERR_*.  *dst_off = where the final destination is (RFC 8200 8.1:
 * the pseudo-header takes it from a routing header with segments left). */
static int ipv6_l4off(const uint8_t *ip, uint32_t plen, uint8_t proto, uint32_t *dst_off)
{
    uint32_t off = 40;
    uint8_t nh = ip[6];
    *dst_off = 24;
    while (nh != proto) {
        if ((nh != IPV6_HOPOPTS_ || off != 40) && nh != IPV6_ROUTING_ && nh != IPV6_DSTOPTS_)
            return -WG_OFF_ERR_PACKET;
        if (off + 8 > plen)
            return -WG_OFF_ERR_SHORT;
        uint32_t el = ((uint32_t)ip[off + 1] + 1) * 8;
        if (off + el > plen)
            return -WG_OFF_ERR_SHORT;
        if (nh == IPV6_ROUTING_ && ip[off + 3] != 0) {
            uint8_t type = ip[off + 2];
            uint32_t naddr = ip[off + 1] / 2;
            if (type == 0 && naddr > 0)
                *dst_off = off + 8 + 16 * (naddr - 1);  /* RFC 2460 type 0: the last address */
            else if ((type == 2 || type == 4) && naddr > 0)
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
    uint8_t flags = pkt[0], gso_type = pkt[1];
    uint16_t hdr_len = le16(pkt + 2), gso_size = le16(pkt + 4);
    uint16_t csum_start = le16(pkt + 6), csum_offset = le16(pkt + 8);
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
            uint16_t c = (uint16_t)~fold(csum_partial(o + csum_start, plen - csum_start));
            if (c == 0 && csum_offset == 6)
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
        proto = IPPROTO_TCP_;
        v6 = gso == WG_VNET_GSO_TCPV6;
    } else if (gso == WG_VNET_GSO_UDP_L4) {
        proto = IPPROTO_UDP_;
        if (plen < 1)
            return -WG_OFF_ERR_SHORT;
        v6 = (ip[0] >> 4) == 6;
    } else {
        return -WG_OFF_ERR_GSO_TYPE;
    }
    if (gso_size == 0 || hdr_len > plen)
        return -WG_OFF_ERR_HEADER;

    uint32_t l4off, dst_off = 0;
    if (v6) {
        if (plen < 40)
            return -WG_OFF_ERR_SHORT;
        if ((ip[0] >> 4) != 6)
            return -WG_OFF_ERR_PACKET;
        int o = ipv6_l4off(ip, plen, proto, &dst_off);
        if (o <= 0)
            return o;
        l4off = (uint32_t)o;
    } else {
        if (plen < 20)
            return -WG_OFF_ERR_SHORT;
        if ((ip[0] >> 4) != 4 || ip[9] != proto)
            return -WG_OFF_ERR_PACKET;
        l4off = (uint32_t)(ip[0] & 15) * 4;
        if (l4off < 20)
            return -WG_OFF_ERR_PACKET;
        if ((be16(ip + 6) & 0x3fff) != 0)
            return -WG_OFF_ERR_PACKET;   /* a fragment cannot be a super-packet */
    }
    if (l4off > plen)
        return -WG_OFF_ERR_SHORT;
    if (csum_start != l4off || csum_offset != (proto == IPPROTO_TCP_ ? 16 : 6))
        return -WG_OFF_ERR_HEADER;

    uint32_t l4hl;
    if (proto == IPPROTO_TCP_) {
        if (l4off + 20 > plen)
            return -WG_OFF_ERR_SHORT;
        l4hl = (uint32_t)(ip[l4off + 12] >> 4) * 4;
        if (l4hl < 20)
            return -WG_OFF_ERR_PACKET;
    } else {
        l4hl = 8;
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
        hdr[10] = hdr[11] = 0;
    hdr[l4off + csum_offset] = hdr[l4off + csum_offset + 1] = 0;
    uint32_t seq0 = proto == IPPROTO_TCP_ ? be32(hdr + l4off + 4) : 0;
    uint16_t id0 = v6 ? 0 : be16(hdr + 4);
    uint8_t tflags = proto == IPPROTO_TCP_ ? hdr[l4off + 13] : 0;
    /* The pseudo-header sum without its length; each segment adds its own. */
    uint64_t ps = v6 ? add64(csum_partial(hdr + 8, 16), csum_partial(hdr + dst_off, 16))
                     : csum_partial(hdr + 12, 8);
    ps = add64(ps, htons(proto));

    const uint8_t *data = ip + hl;
    for (uint32_t k = first; k < end; k++) {
        uint32_t off = k * gso_size;
        uint32_t seg = payload - off < gso_size ? payload - off : gso_size;
        uint32_t total = hl + seg;
        uint8_t *o = out[k - first];
        memcpy(o, hdr, hl);
        if (v6) {
            put_be16(o + 4, (uint16_t)(total - 40));
        } else {
            put_be16(o + 2, (uint16_t)total);
            put_be16(o + 4, (uint16_t)(id0 + k));
            ipv4_fix_csum(o, l4off);
        }
        uint8_t *l4 = o + l4off;
        if (proto == IPPROTO_TCP_) {
            put_be32(l4 + 4, seq0 + off);
            uint8_t f = tflags;
            if (k + 1 < nseg)
                f &= (uint8_t)~(TCP_FIN | TCP_PSH);
            if (k > 0)
                f &= (uint8_t)~TCP_CWR;
            l4[13] = f;
        } else {
            put_be16(l4 + 4, (uint16_t)(l4hl + seg));
        }
        /* Header sum, then the payload copied and summed in one pass. */
        uint64_t s = add64(ps, htons((uint16_t)(l4hl + seg)));
        s = add64(s, csum_partial(l4, l4hl));
        if (o == ip && k == 0)
            s = add64(s, csum_partial(o + hl, seg));   /* already in place */
        else
            s = add64(s, csum_copy(o + hl, data + off, seg));
        uint16_t c = (uint16_t)~fold(s);
        if (c == 0 && proto == IPPROTO_UDP_)
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

/* ---- coalescing ---------------------------------------------------------------------- */

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

/* Trimmed IP length of a packet, 0 when it is not a well-formed IPv4/IPv6 packet. */
static uint32_t ip_len(const uint8_t *p, uint32_t len)
{
    if (len >= 20 && (p[0] >> 4) == 4) {
        uint32_t t = be16(p + 2);
        return t >= 20 && t <= len ? t : 0;
    }
    if (len >= 40 && (p[0] >> 4) == 6) {
        uint32_t t = 40u + be16(p + 4);
        return t <= len ? t : 0;
    }
    return 0;
}

/* IP header length of p when it may head a merge: IPv4 without options or fragmentation and
 * with a good header checksum, or IPv6 without extension headers; proto = TCP or UDP.
 * 0 otherwise. */
static uint32_t merge_iphl(const uint8_t *p, uint8_t *proto, uint8_t *v6)
{
    if ((p[0] >> 4) == 4) {
        *proto = p[9];
        if (p[0] != 0x45 || (*proto != IPPROTO_TCP_ && *proto != IPPROTO_UDP_))
            return 0;
        if ((be16(p + 6) & 0x3fff) != 0)
            return 0;               /* MF or a fragment offset */
        if (fold(csum_partial(p, 20)) != 0xffff)
            return 0;               /* bad header checksum: let the kernel drop it */
        *v6 = 0;
        return 20;
    }
    *proto = p[6];
    if (*proto != IPPROTO_TCP_ && *proto != IPPROTO_UDP_)
        return 0;
    *v6 = 1;
    return 40;
}

/* 1 when p is a UDP datagram we may merge: a length field that matches the IP length, some
 * payload, and for IPv4 a checksum to verify (none: passed on as it is). */
static int udp_candidate(const uint8_t *p, uint32_t plen, uint32_t iphl, struct seginfo *si)
{
    if (iphl + 8 >= plen)
        return 0;
    const uint8_t *u = p + iphl;
    if (be16(u + 4) != plen - iphl || (!si->v6 && be16(u + 6) == 0))
        return 0;
    si->plen = plen;
    si->iphl = (uint16_t)iphl;
    si->tcphl = 8;
    si->seq = 0;
    si->payload = plen - iphl - 8;
    si->udp = 1;
    return 1;
}

/* 1 when p is a segment we may merge: TCP in-order data with only ACK (and maybe PSH), or
 * (with udp_ok) a UDP datagram. */
static int merge_candidate(const uint8_t *p, uint32_t plen, int udp_ok, struct seginfo *si)
{
    uint8_t proto;
    uint32_t iphl = merge_iphl(p, &proto, &si->v6);
    if (!iphl)
        return 0;
    if (proto == IPPROTO_UDP_)
        return udp_ok && udp_candidate(p, plen, iphl, si);
    si->udp = 0;
    if (iphl + 20 > plen)
        return 0;
    const uint8_t *t = p + iphl;
    uint32_t thl = (uint32_t)(t[12] >> 4) * 4;
    if (thl < 20 || iphl + thl >= plen)     /* >= : no payload, nothing to merge */
        return 0;
    if ((t[13] & ~TCP_PSH) != TCP_ACK || (t[12] & 0x0f) != 0)
        return 0;               /* SYN/FIN/RST/URG/ECE/CWR or reserved bits: not merged */
    si->plen = plen;
    si->iphl = (uint16_t)iphl;
    si->tcphl = (uint16_t)thl;
    si->seq = be32(t + 4);
    si->payload = plen - iphl - thl;
    return 1;
}

static uint32_t flow_hash(const uint8_t *p, uint32_t iphl, int v6)
{
    uint32_t h = 2166136261u;
    const uint8_t *a = v6 ? p + 8 : p + 12;
    uint32_t n = v6 ? 32 : 8;
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
        if (memcmp(a, b, 4) || a[7] != b[7] || memcmp(a + 8, b + 8, 32))
            return 0;       /* version/class/flow label, hop limit, addresses */
    } else {
        if (a[1] != b[1] || a[6] != b[6] || a[8] != b[8] || memcmp(a + 12, b + 12, 8))
            return 0;       /* TOS, DF, TTL, addresses */
        /* IP IDs must count up one per segment (what segmentation will recreate), unless DF
         * is set, where the kernel's own GRO accepts any ID. */
        if (!(a[6] & 0x40) && (uint16_t)(be16(a + 4) + k) != be16(b + 4))
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
    uint64_t s = pseudo_sum(p, si->v6, si->udp ? IPPROTO_UDP_ : IPPROTO_TCP_,
                            si->plen - si->iphl);
    s = add64(s, csum_partial(p + si->iphl, si->tcphl));
    s = add64(s, payload_sum);
    return fold(s) == 0xffff;
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
        uint32_t plen = ip_len(p, lens[i]);
        struct seginfo si;
        int cand = plen && merge_candidate(p, plen, udp_ok, &si);

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
                int same5 = si.v6 == g->v6 && si.udp == g->udp &&
                    !memcmp(si.v6 ? a + 8 : a + 12, si.v6 ? p + 8 : p + 12, si.v6 ? 32 : 8) &&
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
                        uint64_t s = csum_copy(b + WG_VNET_HDR_LEN + hl, hp + hl, hs.payload);
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
                    uint64_t s = csum_copy(dst, p + hl, si.payload);
                    if (l4_csum_ok(p, &si, s)) {
                        g->total += si.payload;
                        if (!g->udp)
                            g->next_seq += si.payload;
                        g->nmerged++;
                        uint8_t psh = 0;
                        if (!g->udp) {
                            psh = p[si.iphl + 13] & TCP_PSH;
                            g->buf[WG_VNET_HDR_LEN + g->iphl + 13] |= psh;
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
            ng_->open = si.udp || !(p[si.iphl + 13] & TCP_PSH);
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
        int v4 = plen && (p[0] >> 4) == 4;
        uint8_t proto = v4 ? p[9] : p[6];
        if (plen && !cand && (proto == IPPROTO_TCP_ || (udp_ok && proto == IPPROTO_UDP_))) {
            /* A TCP packet we do not merge (pure ACK, FIN, ...) or a UDP datagram we do not:
             * later packets of its flow must not jump ahead of it into an earlier
             * super-packet. */
            uint32_t iphl = v4 ? (uint32_t)(p[0] & 15) * 4 : 40;
            if (iphl >= 20 && iphl + 4 <= plen) {
                uint32_t h = flow_hash(p, iphl, !v4);
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
        h[0] = WG_VNET_F_NEEDS_CSUM;
        h[1] = g->udp ? WG_VNET_GSO_UDP_L4 : g->v6 ? WG_VNET_GSO_TCPV6 : WG_VNET_GSO_TCPV4;
        put_le16(h + 2, (uint16_t)(g->iphl + g->tcphl));
        put_le16(h + 4, (uint16_t)g->gso_size);
        put_le16(h + 6, g->iphl);
        put_le16(h + 8, g->udp ? 6 : 16);
        if (g->v6) {
            put_be16(ip + 4, (uint16_t)(g->total - 40));
        } else {
            put_be16(ip + 2, (uint16_t)g->total);
            ipv4_fix_csum(ip, 20);
        }
        /* CHECKSUM_PARTIAL: the field holds the folded pseudo-header sum, not inverted; the
         * kernel swaps the length in it for each segment's when it cuts the train. */
        uint16_t ps = fold(pseudo_sum(ip, g->v6, g->udp ? IPPROTO_UDP_ : IPPROTO_TCP_,
                                      g->total - g->iphl));
        if (g->udp)
            put_be16(ip + g->iphl + 4, (uint16_t)(g->total - g->iphl));
        memcpy(ip + g->iphl + (g->udp ? 6 : 16), &ps, 2);
        out_ptrs[k] = h;
        out_lens[k] = WG_VNET_HDR_LEN + g->total;
    }
    return nout;
}
