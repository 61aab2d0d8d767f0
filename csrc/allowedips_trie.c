/* allowedips_trie.c -- the allowed-IPs trie itself (see allowedips.h): nodes, insert, exact
 * find, removal with pruning, longest-prefix lookups (one, and many interleaved), and walks
 * by parent pointers, never recursion.  No locks here: allowedips.c and the data-plane loops
 * hold dp->lock around every call. */
#include "allowedips.h"

#include <errno.h>
#include <stdlib.h>

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
    wg_aip_mask(cidr, n->mask);
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
    parent->child[wg_aip_bit_at(n->key, parent->cidr)] = n;
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
    int bits = wg_aip_bits(family);
    if (bits < 0)
        return -1;
    uint64_t a[2];
    wg_aip_load(bits, addr, a);
    int best = -1;
    const struct aip_node *n = t->root;
    while (n && wg_aip_node_matches(n, a)) {
        if (n->peer >= 0)
            best = n->peer;
        if (n->cidr >= bits)
            break;
        n = n->child[wg_aip_bit_at(a, n->cidr)];
    }
    return best;
}

int wg_aip_trie_insert(struct wg_aip *t, const uint64_t a[2], unsigned cidr, int32_t peer,
                       int32_t *prev)
{
    *prev = -1;
    uint64_t m[2], k[2];
    wg_aip_mask(cidr, m);
    k[0] = a[0] & m[0];
    k[1] = a[1] & m[1];

    struct aip_node *parent = NULL, *n = t->root;
    while (n && n->cidr <= cidr && wg_aip_node_matches(n, k)) {
        if (n->cidr == cidr) {
            *prev = n->peer;
            n->peer = peer;         /* an existing prefix moves to the new peer */
            return 0;
        }
        parent = n;
        n = n->child[wg_aip_bit_at(k, n->cidr)];
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
    return 0;
}

struct aip_node *wg_aip_trie_find(struct wg_aip *t, const uint64_t k[2], unsigned cidr)
{
    struct aip_node *n = t->root;
    while (n && n->cidr <= cidr && wg_aip_node_matches(n, k)) {
        if (n->cidr == cidr)
            return n->key[0] == k[0] && n->key[1] == k[1] ? n : NULL;
        n = n->child[wg_aip_bit_at(k, n->cidr)];
    }
    return NULL;
}

/* Drop n's peer and prune: a peerless node with fewer than two children goes away. */
void wg_aip_trie_remove(struct wg_aip *t, struct aip_node *n)
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

/* Next node in pre-order, or NULL: walks with parent pointers, no stack. */
struct aip_node *wg_aip_trie_next(struct aip_node *n)
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

void wg_aip_trie_remove_peer(struct wg_aip *t, int32_t peer)
{
    /* Removing a node frees only it and peerless branch points, never another peer's node,
     * but it changes the shape: restart from the root after each removal would be quadratic,
     * so collect first, then remove. */
    uint32_t cap = 0, cnt = 0;
    struct aip_node **v = NULL;
    for (struct aip_node *n = t->root; n; n = wg_aip_trie_next(n)) {
        if (n->peer != peer)
            continue;
        if (cnt == cap) {
            uint32_t ncap = cap ? cap * 2 : 16;
            struct aip_node **nv = realloc(v, ncap * sizeof(*v));
            if (!nv) {
                /* Out of memory: fall back to one removal per full walk. */
                for (uint32_t i = 0; i < cnt; i++)
                    wg_aip_trie_remove(t, v[i]);
                free(v);
                v = NULL;
                cap = cnt = 0;
                for (n = t->root; n; n = n->peer == peer ? (wg_aip_trie_remove(t, n), t->root)
                                                          : wg_aip_trie_next(n))
                    ;
                return;
            }
            v = nv;
            cap = ncap;
        }
        v[cnt++] = n;
    }
    for (uint32_t i = 0; i < cnt; i++)
        wg_aip_trie_remove(t, v[i]);
    free(v);
}

/* Lookups in lanes: LANES walks advance one node per round, each prefetching its next node,
 * so the cache misses of a big trie overlap instead of queueing one after another. */
#define LANES 8
void wg_aip_trie_lookup_lanes(const struct wg_aip *t, int bits, const uint8_t *addrs,
                              uint32_t stride, uint32_t n, int32_t *out)
{
    for (uint32_t base = 0; base < n; base += LANES) {
        uint32_t k = n - base < LANES ? n - base : LANES;
        uint64_t a[LANES][2];
        const struct aip_node *cur[LANES];
        int32_t best[LANES];
        for (uint32_t j = 0; j < k; j++) {
            wg_aip_load(bits, addrs + (size_t)(base + j) * stride, a[j]);
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
                if (!wg_aip_node_matches(nd, a[j])) {
                    cur[j] = NULL;
                    continue;
                }
                if (nd->peer >= 0)
                    best[j] = nd->peer;
                nd = nd->cidr >= bits ? NULL : nd->child[wg_aip_bit_at(a[j], nd->cidr)];
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
