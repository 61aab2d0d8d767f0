/* allowedips.h -- the trie behind allowed IPs, shared by allowedips_trie.c (its nodes and
 * walks) and allowedips.c (the wg_aip_* calls: checks, locking, owner counts).
 *
 * Every node is a prefix (key/cidr).  A node either holds a peer (peer >= 0) or is a pure
 * branch point (peer < 0) with exactly two children; any other peerless node is pruned, so a
 * trie of n prefixes has at most 2n - 1 nodes.  A child's cidr is always greater than its
 * parent's, and the child hangs on the side given by the key's bit at the parent's cidr.
 *
 * Addresses are held as two host-order 64-bit words (IPv4 in the top half of the first), so a
 * prefix test is two xor-and-mask operations and the lookup loop never allocates or recurses.
 */
#ifndef WGFAST_ALLOWEDIPS_H
#define WGFAST_ALLOWEDIPS_H

#include "wgfast_internal.h"

struct aip_node {
    uint64_t key[2];                /* masked to cidr */
    uint64_t mask[2];
    struct aip_node *child[2];
    struct aip_node *parent;
    int32_t  peer;                  /* -1 = branch point only */
    uint8_t  cidr;
};

struct wg_aip {
    struct aip_node *root;
    uint32_t nodes;
};

/* Address bits of a family (WG_AF_INET 32, WG_AF_INET6 128), -1 for anything else. */
static inline int wg_aip_bits(int family)
{
    return family == WG_AF_INET ? 32 : family == WG_AF_INET6 ? 128 : -1;
}

static inline uint64_t aip_load_be64(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | (i < n ? p[i] : 0);
    return v;
}

static inline void wg_aip_load(int bits, const uint8_t *addr, uint64_t out[2])
{
    if (bits == 32) {
        out[0] = aip_load_be64(addr, 4);
        out[1] = 0;
    } else {
        out[0] = aip_load_be64(addr, 8);
        out[1] = aip_load_be64(addr + 8, 8);
    }
}

static inline void wg_aip_store(int bits, const uint64_t k[2], uint8_t *out)
{
    int n = bits / 8;
    for (int i = 0; i < n; i++)
        out[i] = (uint8_t)(k[i / 8] >> (56 - 8 * (i % 8)));
}

static inline void wg_aip_mask(unsigned cidr, uint64_t m[2])
{
    m[0] = cidr == 0 ? 0 : cidr >= 64 ? ~0ULL : ~0ULL << (64 - cidr);
    m[1] = cidr <= 64 ? 0 : cidr >= 128 ? ~0ULL : ~0ULL << (128 - cidr);
}

static inline int wg_aip_node_matches(const struct aip_node *n, const uint64_t a[2])
{
    return (((a[0] ^ n->key[0]) & n->mask[0]) | ((a[1] ^ n->key[1]) & n->mask[1])) == 0;
}

/* The bit following a cidr-long prefix: which child a longer prefix hangs under. */
static inline unsigned wg_aip_bit_at(const uint64_t a[2], unsigned cidr)
{
    return cidr < 64 ? (unsigned)(a[0] >> (63 - cidr)) & 1
                     : (unsigned)(a[1] >> (127 - cidr)) & 1;
}

/* ---- allowedips_trie.c: callers hold dp->lock (write for changes) ----------------------- */
/* Insert (or move) prefix a/cidr to peer; *prev = its owner before (-1 = new).  0 / -ENOMEM. */
int  wg_aip_trie_insert(struct wg_aip *t, const uint64_t a[2], unsigned cidr, int32_t peer,
                        int32_t *prev);
/* The node of exactly k/cidr (k masked), or NULL. */
struct aip_node *wg_aip_trie_find(struct wg_aip *t, const uint64_t k[2], unsigned cidr);
/* Drop n's peer and prune what no longer branches. */
void wg_aip_trie_remove(struct wg_aip *t, struct aip_node *n);
/* Remove every prefix of peer. */
void wg_aip_trie_remove_peer(struct wg_aip *t, int32_t peer);
/* Next node in pre-order, or NULL. */
struct aip_node *wg_aip_trie_next(struct aip_node *n);
/* n longest-prefix lookups, interleaved: addrs[i * stride ..] -> out[i]. */
void wg_aip_trie_lookup_lanes(const struct wg_aip *t, int bits, const uint8_t *addrs,
                              uint32_t stride, uint32_t n, int32_t *out);

#endif
