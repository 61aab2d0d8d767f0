/* csum.c -- the Internet checksum (RFC 1071) for the TUN offloads: summing, and summing while
 * copying, any length at any alignment; AVX2 picked at run time, SSE2 (part of x86-64) and a
 * scalar loop with independent carry chains below it.  See offload.h for the byte order. */
#include "offload.h"

#include <string.h>
#include <arpa/inet.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define WG_HAVE_AVX2_PATH 1
#endif

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
        a = wg_add64(a, t[0]); b = t[1]; c = t[2]; d = t[3];
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
        a = wg_add64(a, w0); b = wg_add64(b, w1); c = wg_add64(c, w2); d = wg_add64(d, w3);
        p += 32; n -= 32;
    }
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        if (copy) { memcpy(dst, &w, 8); dst += 8; }
        a = wg_add64(a, w);
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
        a = wg_add64(a, w);
    }
    return wg_add64(wg_add64(a, b), wg_add64(c, d));
}

uint64_t wg_csum_partial(const uint8_t *p, size_t n)
{
    return sum_bytes(NULL, p, n, 0);
}

uint64_t wg_csum_copy(uint8_t *dst, const uint8_t *src, size_t n)
{
    return sum_bytes(dst, src, n, 1);
}

uint64_t wg_pseudo_sum(const uint8_t *ip, int v6, uint8_t proto, uint32_t l4len)
{
    uint64_t s = v6 ? wg_csum_partial(ip + WG_IPV6_SRC, 32) : wg_csum_partial(ip + WG_IPV4_SRC, 8);
    s = wg_add64(s, htons(proto));
    return wg_add64(s, htons((uint16_t)l4len));   /* lengths here stay below 64 KB */
}

void wg_ipv4_fix_csum(uint8_t *ip, uint32_t ihl)
{
    ip[IPV4_CSUM] = ip[IPV4_CSUM + 1] = 0;
    uint16_t c = (uint16_t)~wg_fold(wg_csum_partial(ip, ihl));
    memcpy(ip + IPV4_CSUM, &c, 2);
}

uint16_t wg_inet_csum(const uint8_t *p, uint32_t len)
{
    uint16_t c = (uint16_t)~wg_fold(wg_csum_partial(p, len));
    return ntohs(c);
}

