/* allowedips.c -- allowed IPs: a path-compressed binary trie per address family.
 *
 * Every node is a prefix (key/cidr).  A node either holds a peer (peer >= 0) or is a pure
 * branch point (peer < 0) with exactly two children; any other peerless node is pruned, so a
 * trie of n prefixes has at most 2n - 1 nodes.  A child's cidr is always greater than its
 * parent's, and the child hangs on the side given by the key's bit at the parent's cidr.
 *
 * Addresses are held as two host-order 64-bit words (IPv4 in the top half of the first), so a
 * prefix test is two xor-and-mask operations and the lookup loop never allocates or recurses.
 */
#include "wgfast_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

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

static int family_bits(int family)
{
    return family == 2 ? 32 : family == 10 ? 128 : -1;
}

static uint64_t load_be64(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | (i < n ? p[i] : 0);
    return v;
}

static void load_addr(int bits, const uint8_t *addr, uint64_t out[2])
{
    if (bits == 32) {
        out[0] = load_be64(addr, 4);
        out[1] = 0;
    } else {
        out[0] = load_be64(addr, 8);
        out[1] = load_be64(addr + 8, 8);
    }
}

static void store_addr(int bits, const uint64_t k[2], uint8_t *out)
{
    int n = bits / 8;
    for (int i = 0; i < n; i++)
        out[i] = (uint8_t)(k[i / 8] >> (56 - 8 * (i % 8)));
}

static void make_mask(unsigned cidr, uint64_t m[2])
{
    m[0] = cidr == 0 ? 0 : cidr >= 64 ? ~0ULL : ~0ULL << (64 - cidr);
    m[1] = cidr <= 64 ? 0 : cidr >= 128 ? ~0ULL : ~0ULL << (128 - cidr);
}

static inline int node_matches(const struct aip_node *n, const uint64_t a[2])
{
    return (((a[0] ^ n->key[0]) & n->mask[0]) | ((a[1] ^ n->key[1]) & n->mask[1])) == 0;
}

/* The bit following a cidr-long prefix: which child a longer prefix hangs under. */
static inline unsigned bit_at(const uint64_t a[2], unsigned cidr)
{
    return cidr < 64 ? (unsigned)(a[0] >> (63 - cidr)) & 1
                     : (unsigned)(a[1] >> (127 - cidr)) & 1;
}

static unsigned common_bits(const uint64_t a[2], const uint64_t b[2])
{
    uint64_t x = a[0] ^ b[0];
    if (x)
        return (unsigned)__builtin_clzll(x);
    x = a[1] ^ b[1];
    return x ? 64 + (unsigned)__builtin_clzll(x) : 128;
}

static struct aip_node *node_new(struct wg_aip *t, const uint64_t a[2], unsigned cidr,
                                 int32_t peer)
{
    struct aip_node *n = calloc(1, sizeof(*n));
    if (!n)
        return NULL;
    make_mask(cidr, n->mask);
    n->key[0] = a[0] & n->mask[0];
    n->key[1] = a[1] & n->mask[1];
    n->cidr = (uint8_t)cidr;
    n->peer = peer;
    t->nodes++;
    return n;
}

static void node_free(struct wg_aip *t, struct aip_node *n)
{
    free(n);
    t->nodes--;
}

/* Put `n` where `old` hung (under old->parent, or as the root). */
static void replace_in_parent(struct wg_aip *t, struct aip_node *old, struct aip_node *n)
{
    struct aip_node *p = old->parent;
    if (n)
        n->parent = p;
    if (!p)
        t->root = n;
    else
        p->child[p->child[1] == old] = n;
}

static void attach(struct aip_node *parent, struct aip_node *n)
{
    parent->child[bit_at(n->key, parent->cidr)] = n;
    n->parent = parent;
}

struct wg_aip *wg_aip_new(void)
{
    return calloc(1, sizeof(struct wg_aip));
}

static void free_all(struct wg_aip *t)
{
    /* Iterative post-order via parent pointers: no recursion, no stack. */
    struct aip_node *n = t->root;
    while (n) {
        if (n->child[0]) {
            n = n->child[0];
        } else if (n->child[1]) {
            n = n->child[1];
        } else {
            struct aip_node *p = n->parent;
            if (p)
                p->child[p->child[1] == n] = NULL;
            node_free(t, n);
            n = p;
        }
    }
    t->root = NULL;
}

void wg_aip_free(struct wg_aip *t)
{
    if (!t)
        return;
    free_all(t);
    free(t);
}

int wg_aip_lookup_nolock(struct wg_aip *t, int family, const uint8_t *addr)
{
    int bits = family_bits(family);
    if (bits < 0)
        return -1;
    uint64_t a[2];
    load_addr(bits, addr, a);
    int best = -1;
    const struct aip_node *n = t->root;
    while (n && node_matches(n, a)) {
        if (n->peer >= 0)
            best = n->peer;
        if (n->cidr >= bits)
            break;
        n = n->child[bit_at(a, n->cidr)];
    }
    return best;
}

static int tree_insert(struct wg_aip *t, int bits, const uint64_t a[2], unsigned cidr,
                       int32_t peer, int32_t *prev)
{
    *prev = -1;
    uint64_t m[2], k[2];
    make_mask(cidr, m);
    k[0] = a[0] & m[0];
    k[1] = a[1] & m[1];

    struct aip_node *parent = NULL, *n = t->root;
    while (n && n->cidr <= cidr && node_matches(n, k)) {
        if (n->cidr == cidr) {
            *prev = n->peer;
            n->peer = peer;         /* an existing prefix moves to the new peer */
            return 0;
        }
        parent = n;
        n = n->child[bit_at(k, n->cidr)];
    }
    struct aip_node *leaf = node_new(t, k, cidr, peer);
    if (!leaf)
        return -ENOMEM;
    if (!n) {
        if (parent)
            attach(parent, leaf);
        else
            t->root = leaf;
        return 0;
    }
    /* n hangs where the new prefix belongs but is not inside it: split at the common part. */
    unsigned c = common_bits(n->key, k);
    if (c > cidr)
        c = cidr;
    if (c > n->cidr)
        c = n->cidr;
    if (c == cidr) {
        /* The new prefix contains n: it takes n's place, n goes below it. */
        replace_in_parent(t, n, leaf);
        attach(leaf, n);
        return 0;
    }
    struct aip_node *branch = node_new(t, k, c, -1);
    if (!branch) {
        node_free(t, leaf);
        return -ENOMEM;
    }
    replace_in_parent(t, n, branch);
    attach(branch, n);
    attach(branch, leaf);
    (void)bits;
    return 0;
}

static struct aip_node *find_exact(struct wg_aip *t, const uint64_t k[2], unsigned cidr)
{
    struct aip_node *n = t->root;
    while (n && n->cidr <= cidr && node_matches(n, k)) {
        if (n->cidr == cidr)
            return n->key[0] == k[0] && n->key[1] == k[1] ? n : NULL;
        n = n->child[bit_at(k, n->cidr)];
    }
    return NULL;
}

/* Drop n's peer and prune: a peerless node with fewer than two children goes away. */
static void remove_node(struct wg_aip *t, struct aip_node *n)
{
    n->peer = -1;
    while (n && n->peer < 0) {
        struct aip_node *c0 = n->child[0], *c1 = n->child[1];
        if (c0 && c1)
            return;
        struct aip_node *only = c0 ? c0 : c1;
        struct aip_node *p = n->parent;
        replace_in_parent(t, n, only);
        node_free(t, n);
        if (only)
            return;         /* the parent keeps its two children */
        n = p;              /* the parent lost a child: it may now be prunable */
    }
}

static int prep(wg_dp *dp, int family, uint8_t cidr, struct wg_aip **t, int *bits)
{
    *bits = family_bits(family);
    if (*bits < 0 || cidr > *bits)
        return -EINVAL;
    *t = family == 2 ? dp->aip4 : dp->aip6;
    return 0;
}

/* Owner counts after an insert that moved a prefix from prev (-1 = new) to peer. */
static void count_move(wg_dp *dp, int32_t prev, uint32_t peer)
{
    if (prev >= 0 && dp->aip_count[prev])
        dp->aip_count[prev]--;
    dp->aip_count[peer]++;
}

int wg_aip_insert(wg_dp *dp, int family, const uint8_t *addr, uint8_t cidr, uint32_t peer)
{
    struct wg_aip *t;
    int bits, rc = prep(dp, family, cidr, &t, &bits);
    if (rc)
        return rc;
    uint64_t a[2];
    int32_t prev;
    load_addr(bits, addr, a);
    pthread_rwlock_wrlock(&dp->lock);
    rc = peer < dp->clocks.max_peers ? tree_insert(t, bits, a, cidr, (int32_t)peer, &prev)
                                     : -EINVAL;
    if (rc == 0)
        count_move(dp, prev, peer);
    pthread_rwlock_unlock(&dp->lock);
    return rc;
}

/* Entries of a batch: all checked before anything changes. */
static int check_many(wg_dp *dp, const uint8_t *family, const uint8_t *keys,
                      const uint32_t *peers, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        int bits = family_bits(family[i]);
        if (bits < 0 || keys[(size_t)i * 17 + 16] > bits || peers[i] >= dp->clocks.max_peers)
            return -EINVAL;
    }
    return 0;
}

int wg_aip_insert_many(wg_dp *dp, const uint8_t *family, const uint8_t *keys,
                       const uint32_t *peers, uint32_t n, int32_t *prev)
{
    pthread_rwlock_wrlock(&dp->lock);
    int rc = check_many(dp, family, keys, peers, n);
    for (uint32_t i = 0; i < n && rc == 0; i++) {
        const uint8_t *k = keys + (size_t)i * 17;
        int bits = family_bits(family[i]);
        uint64_t a[2];
        int32_t was;
        load_addr(bits, k, a);
        rc = tree_insert(family[i] == 2 ? dp->aip4 : dp->aip6, bits, a, k[16],
                         (int32_t)peers[i], &was);
        if (rc == 0)
            count_move(dp, was, peers[i]);
        if (rc == 0 && prev)
            prev[i] = was;
        if (rc)
            rc = rc == -ENOMEM && i ? (int)i : rc;
    }
    pthread_rwlock_unlock(&dp->lock);
    return rc == 0 ? (int)n : rc;
}

int wg_aip_remove_many(wg_dp *dp, const uint8_t *family, const uint8_t *keys,
                       const uint32_t *peers, uint32_t n, int32_t *prev)
{
    pthread_rwlock_wrlock(&dp->lock);
    int rc = check_many(dp, family, keys, peers, n);
    for (uint32_t i = 0; i < n && rc == 0; i++) {
        const uint8_t *k = keys + (size_t)i * 17;
        int bits = family_bits(family[i]);
        uint64_t a[2], m[2];
        load_addr(bits, k, a);
        make_mask(k[16], m);
        a[0] &= m[0];
        a[1] &= m[1];
        struct aip_node *nd = find_exact(family[i] == 2 ? dp->aip4 : dp->aip6, a, k[16]);
        int32_t owner = nd ? nd->peer : -1;
        if (prev)
            prev[i] = owner;
        if (owner >= 0 && owner == (int32_t)peers[i]) {
            if (dp->aip_count[owner])
                dp->aip_count[owner]--;
            remove_node(family[i] == 2 ? dp->aip4 : dp->aip6, nd);
        }
    }
    pthread_rwlock_unlock(&dp->lock);
    return rc == 0 ? (int)n : rc;
}

int wg_aip_remove(wg_dp *dp, int family, const uint8_t *addr, uint8_t cidr)
{
    struct wg_aip *t;
    int bits, rc = prep(dp, family, cidr, &t, &bits);
    if (rc)
        return rc;
    uint64_t a[2], m[2];
    load_addr(bits, addr, a);
    make_mask(cidr, m);
    a[0] &= m[0];
    a[1] &= m[1];
    pthread_rwlock_wrlock(&dp->lock);
    struct aip_node *n = find_exact(t, a, cidr);
    if (n && n->peer >= 0) {
        if (dp->aip_count[n->peer])
            dp->aip_count[n->peer]--;
        remove_node(t, n);
    }
    else
        rc = -ENOENT;
    pthread_rwlock_unlock(&dp->lock);
    return rc;
}

/* Next node in pre-order, or NULL: walks with parent pointers, no stack. */
static struct aip_node *next_preorder(struct aip_node *n)
{
    if (n->child[0])
        return n->child[0];
    if (n->child[1])
        return n->child[1];
    while (n->parent) {
        struct aip_node *p = n->parent;
        if (p->child[0] == n && p->child[1])
            return p->child[1];
        n = p;
    }
    return NULL;
}

static void remove_peer_tree(struct wg_aip *t, int32_t peer)
{
    /* Removing a node frees only it and peerless branch points, never another peer's node,
     * but it changes the shape: restart from the root after each removal would be quadratic,
     * so collect first, then remove. */
    uint32_t cap = 0, cnt = 0;
    struct aip_node **v = NULL;
    for (struct aip_node *n = t->root; n; n = next_preorder(n)) {
        if (n->peer != peer)
            continue;
        if (cnt == cap) {
            uint32_t ncap = cap ? cap * 2 : 16;
            struct aip_node **nv = realloc(v, ncap * sizeof(*v));
            if (!nv) {
                /* Out of memory: fall back to one removal per full walk. */
                for (uint32_t i = 0; i < cnt; i++)
                    remove_node(t, v[i]);
                free(v);
                v = NULL;
                cap = cnt = 0;
                for (n = t->root; n; n = n->peer == peer ? (remove_node(t, n), t->root)
                                                          : next_preorder(n))
                    ;
                return;
            }
            v = nv;
            cap = ncap;
        }
        v[cnt++] = n;
    }
    for (uint32_t i = 0; i < cnt; i++)
        remove_node(t, v[i]);
    free(v);
}

void wg_aip_remove_peer(wg_dp *dp, uint32_t peer)
{
    pthread_rwlock_wrlock(&dp->lock);
    /* A walk of both tries, unless the peer owns nothing (the control plane removes a
     * peer's prefixes by name first: removing many peers stays linear). */
    if (peer < dp->clocks.max_peers && dp->aip_count[peer]) {
        remove_peer_tree(dp->aip4, (int32_t)peer);
        remove_peer_tree(dp->aip6, (int32_t)peer);
        dp->aip_count[peer] = 0;
    }
    pthread_rwlock_unlock(&dp->lock);
}

int wg_aip_lookup(wg_dp *dp, int family, const uint8_t *addr)
{
    if (family_bits(family) < 0)
        return -1;
    pthread_rwlock_rdlock(&dp->lock);
    int peer = wg_aip_lookup_nolock(family == 2 ? dp->aip4 : dp->aip6, family, addr);
    pthread_rwlock_unlock(&dp->lock);
    return peer;
}

/* Lookups in lanes: LANES walks advance one node per round, each prefetching its next node,
 * so the cache misses of a big trie overlap instead of queueing one after another. */
#define LANES 8
static void lookup_lanes(const struct wg_aip *t, int bits, const uint8_t *addrs, uint32_t stride,
                         uint32_t n, int32_t *out)
{
    for (uint32_t base = 0; base < n; base += LANES) {
        uint32_t k = n - base < LANES ? n - base : LANES;
        uint64_t a[LANES][2];
        const struct aip_node *cur[LANES];
        int32_t best[LANES];
        for (uint32_t j = 0; j < k; j++) {
            load_addr(bits, addrs + (size_t)(base + j) * stride, a[j]);
            cur[j] = t->root;
            best[j] = -1;
        }
        uint32_t live = k;
        while (live) {
            live = 0;
            for (uint32_t j = 0; j < k; j++) {
                const struct aip_node *nd = cur[j];
                if (!nd)
                    continue;
                if (!node_matches(nd, a[j])) {
                    cur[j] = NULL;
                    continue;
                }
                if (nd->peer >= 0)
                    best[j] = nd->peer;
                nd = nd->cidr >= bits ? NULL : nd->child[bit_at(a[j], nd->cidr)];
                if (nd) {
                    __builtin_prefetch(nd);
                    live++;
                }
                cur[j] = nd;
            }
        }
        for (uint32_t j = 0; j < k; j++)
            out[base + j] = best[j];
    }
}

void wg_aip_lookup_batch(wg_dp *dp, int family, const uint8_t *addrs, uint32_t stride,
                         uint32_t n, int32_t *out)
{
    int bits = family_bits(family);
    if (bits < 0) {
        for (uint32_t i = 0; i < n; i++)
            out[i] = -1;
        return;
    }
    pthread_rwlock_rdlock(&dp->lock);
    lookup_lanes(family == 2 ? dp->aip4 : dp->aip6, bits, addrs, stride, n, out);
    pthread_rwlock_unlock(&dp->lock);
}

int wg_aip_list(wg_dp *dp, int family, uint32_t peer, uint8_t *addrs, uint8_t *cidrs,
                uint32_t max)
{
    int bits = family_bits(family);
    if (bits < 0)
        return -EINVAL;
    struct wg_aip *t = family == 2 ? dp->aip4 : dp->aip6;
    uint32_t cnt = 0;
    pthread_rwlock_rdlock(&dp->lock);
    for (struct aip_node *n = t->root; n; n = next_preorder(n)) {
        if (n->peer < 0 || (peer != UINT32_MAX && (uint32_t)n->peer != peer))
            continue;
        if (cnt < max) {
            store_addr(bits, n->key, addrs + (size_t)cnt * (bits / 8));
            cidrs[cnt] = n->cidr;
        }
        cnt++;
    }
    pthread_rwlock_unlock(&dp->lock);
    return (int)cnt;
}

uint32_t wg_aip_nodes(wg_dp *dp, int family)
{
    if (family_bits(family) < 0)
        return 0;
    pthread_rwlock_rdlock(&dp->lock);
    uint32_t n = (family == 2 ? dp->aip4 : dp->aip6)->nodes;
    pthread_rwlock_unlock(&dp->lock);
    return n;
}
