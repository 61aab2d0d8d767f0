/* offload.h -- what the TUN offload files share: checksums (csum.c) for segmentation
 * (gso.c) and coalescing (gro.c), and the TCP and virtio_net_hdr fields both touch.
 *
 * Checksums are summed in host byte order over 64-bit words (RFC 1071 section 2: the one's
 * complement sum is byte-order independent up to a final swap, and a 16-bit value stored back
 * in host order lands as the right network-order bytes). */
#ifndef WGFAST_OFFLOAD_H
#define WGFAST_OFFLOAD_H

#include "ip.h"

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_PSH 0x08
#define TCP_ACK 0x10
#define TCP_CWR 0x80
#define TCP_FLAGS       13          /* offsets in the TCP header */
#define TCP_CSUM        16
#define UDP_CSUM        6
#define IPV4_CSUM       10          /* offset in the IPv4 header */

/* struct virtio_net_hdr field offsets (little-endian 16-bit fields after two bytes). */
#define VNET_FLAGS       0
#define VNET_GSO_TYPE    1
#define VNET_HDR_LEN     2
#define VNET_GSO_SIZE    4
#define VNET_CSUM_START  6
#define VNET_CSUM_OFFSET 8

static inline uint64_t wg_add64(uint64_t a, uint64_t b)
{
    uint64_t s = a + b;
    return s + (s < a);             /* end-around carry */
}

static inline uint16_t wg_fold(uint64_t s)
{
    s = (s & 0xffffffffu) + (s >> 32);
    s = (s & 0xffffffffu) + (s >> 32);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    return (uint16_t)s;
}

/* The unfolded one's complement sum of n bytes at p, host order; _copy also copies them to
 * dst on the way (one pass over the data whether we only verify or also move it). */
uint64_t wg_csum_partial(const uint8_t *p, size_t n);
uint64_t wg_csum_copy(uint8_t *dst, const uint8_t *src, size_t n);
/* Pseudo-header sum (RFC 793/768 for IPv4, RFC 8200 section 8.1 for IPv6), host order. */
uint64_t wg_pseudo_sum(const uint8_t *ip, int v6, uint8_t proto, uint32_t l4len);
/* Recompute the header checksum of the IPv4 header ip of ihl bytes. */
void     wg_ipv4_fix_csum(uint8_t *ip, uint32_t ihl);

#endif
