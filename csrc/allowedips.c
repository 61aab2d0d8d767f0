/* allowedips.c -- allowed IPs (whitepaper 2, "cryptokey routing"): the wg_aip_* calls of
 * wgfast.h over one trie per address family (allowedips_trie.c).  Here: arguments checked,
 * the configuration lock taken (one hold for a batch), and each peer's count of prefixes
 * kept, so removing a peer that owns none costs no walk. */
#include "allowedips.h"

#include <errno.h>

static int prep(wg_dp *dp, int family, uint8_t cidr, struct wg_aip **t, int *bits)
{
    *bits = wg_aip_bits(family);
    if (*bits < 0 || cidr > *bits)
        return -EINVAL;
    *t = family == WG_AF_INET ? dp->aip4 : dp->aip6;
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
    wg_aip_load(bits, addr, a);
    pthread_rwlock_wrlock(&dp->lock);
    rc = peer < dp->clocks.max_peers ? wg_aip_trie_insert(t, a, cidr, (int32_t)peer, &prev)
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
        int bits = wg_aip_bits(family[i]);
        if (bits < 0 || keys[(size_t)i * WG_AIP_KEY_LEN + 16] > bits || peers[i] >= dp->clocks.max_peers)
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
        const uint8_t *k = keys + (size_t)i * WG_AIP_KEY_LEN;
        int bits = wg_aip_bits(family[i]);
        uint64_t a[2];
        int32_t was;
        wg_aip_load(bits, k, a);
        rc = wg_aip_trie_insert(family[i] == WG_AF_INET ? dp->aip4 : dp->aip6, a, k[16],
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
        const uint8_t *k = keys + (size_t)i * WG_AIP_KEY_LEN;
        int bits = wg_aip_bits(family[i]);
        uint64_t a[2], m[2];
        wg_aip_load(bits, k, a);
        wg_aip_mask(k[16], m);
        a[0] &= m[0];
        a[1] &= m[1];
        struct aip_node *nd = wg_aip_trie_find(family[i] == WG_AF_INET ? dp->aip4 : dp->aip6, a, k[16]);
        int32_t owner = nd ? nd->peer : -1;
        if (prev)
            prev[i] = owner;
        if (owner >= 0 && owner == (int32_t)peers[i]) {
            if (dp->aip_count[owner])
                dp->aip_count[owner]--;
            wg_aip_trie_remove(family[i] == WG_AF_INET ? dp->aip4 : dp->aip6, nd);
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
    wg_aip_load(bits, addr, a);
    wg_aip_mask(cidr, m);
    a[0] &= m[0];
    a[1] &= m[1];
    pthread_rwlock_wrlock(&dp->lock);
    struct aip_node *n = wg_aip_trie_find(t, a, cidr);
    if (n && n->peer >= 0) {
        if (dp->aip_count[n->peer])
            dp->aip_count[n->peer]--;
        wg_aip_trie_remove(t, n);
    }
    else
        rc = -ENOENT;
    pthread_rwlock_unlock(&dp->lock);
    return rc;
}

void wg_aip_remove_peer(wg_dp *dp, uint32_t peer)
{
    pthread_rwlock_wrlock(&dp->lock);
    /* A walk of both tries, unless the peer owns nothing (the control plane removes a
     * peer's prefixes by name first: removing many peers stays linear). */
    if (peer < dp->clocks.max_peers && dp->aip_count[peer]) {
        wg_aip_trie_remove_peer(dp->aip4, (int32_t)peer);
        wg_aip_trie_remove_peer(dp->aip6, (int32_t)peer);
        dp->aip_count[peer] = 0;
    }
    pthread_rwlock_unlock(&dp->lock);
}

int wg_aip_lookup(wg_dp *dp, int family, const uint8_t *addr)
{
    if (wg_aip_bits(family) < 0)
        return -1;
    pthread_rwlock_rdlock(&dp->lock);
    int peer = wg_aip_lookup_nolock(family == WG_AF_INET ? dp->aip4 : dp->aip6, family, addr);
    pthread_rwlock_unlock(&dp->lock);
    return peer;
}

void wg_aip_lookup_batch(wg_dp *dp, int family, const uint8_t *addrs, uint32_t stride,
                         uint32_t n, int32_t *out)
{
    int bits = wg_aip_bits(family);
    if (bits < 0) {
        for (uint32_t i = 0; i < n; i++)
            out[i] = -1;
        return;
    }
    pthread_rwlock_rdlock(&dp->lock);
    wg_aip_trie_lookup_lanes(family == WG_AF_INET ? dp->aip4 : dp->aip6, bits, addrs, stride, n, out);
    pthread_rwlock_unlock(&dp->lock);
}

int wg_aip_list(wg_dp *dp, int family, uint32_t peer, uint8_t *addrs, uint8_t *cidrs,
                uint32_t max)
{
    int bits = wg_aip_bits(family);
    if (bits < 0)
        return -EINVAL;
    struct wg_aip *t = family == WG_AF_INET ? dp->aip4 : dp->aip6;
    uint32_t cnt = 0;
    pthread_rwlock_rdlock(&dp->lock);
    for (struct aip_node *n = t->root; n; n = wg_aip_trie_next(n)) {
        if (n->peer < 0 || (peer != UINT32_MAX && (uint32_t)n->peer != peer))
            continue;
        if (cnt < max) {
            wg_aip_store(bits, n->key, addrs + (size_t)cnt * (bits / 8));
            cidrs[cnt] = n->cidr;
        }
        cnt++;
    }
    pthread_rwlock_unlock(&dp->lock);
    return (int)cnt;
}

uint32_t wg_aip_nodes(wg_dp *dp, int family)
{
    if (wg_aip_bits(family) < 0)
        return 0;
    pthread_rwlock_rdlock(&dp->lock);
    uint32_t n = (family == WG_AF_INET ? dp->aip4 : dp->aip6)->nodes;
    pthread_rwlock_unlock(&dp->lock);
    return n;
}
