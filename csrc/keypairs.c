/* keypairs.c -- receiver index -> keypair, and each peer's current sending keypair.
 *
 * dp->kp_hash is open addressing with linear probing (local index -> slot + 1, 0 = empty).
 * Deletion shifts later members of the probe run back so no tombstones accumulate: lookups
 * stay short however many handshakes come and go.  The table has at least twice as many
 * buckets as keypair slots, so it never fills.
 *
 * Storage grows by itself: when every slot is taken, install doubles the slot array (and the
 * hash with it) under the write lock it already holds.  The data plane only ever uses a
 * keypair pointer under the read lock it looked it up under, so moving the array is safe.
 * Free slots are a stack and each peer's slots a short list, so install and peer removal
 * cost the same whatever the table size. */
#include "wgfast_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static inline uint32_t kp_hash(uint32_t x)
{
    /* Indices come from the peer-visible random source but tests use sequential ones: mix. */
    return (uint32_t)wg_mix64(x);
}

/* Bucket holding local_index, or -1. */
static int64_t bucket_of(wg_dp *dp, uint32_t local_index)
{
    uint32_t mask = dp->kp_hash_mask;
    for (uint32_t b = kp_hash(local_index) & mask, n = 0; n <= mask; b = (b + 1) & mask, n++) {
        uint32_t v = dp->kp_hash[b];
        if (v == 0)
            return -1;
        if (dp->keypairs[v - 1].local_index == local_index)
            return b;
    }
    return -1;
}

struct wg_keypair *wg_keypair_lookup(wg_dp *dp, uint32_t local_index)
{
    int64_t b = bucket_of(dp, local_index);
    return b < 0 ? NULL : &dp->keypairs[dp->kp_hash[b] - 1];
}

struct wg_keypair *wg_keypair_of_peer(wg_dp *dp, uint32_t peer)
{
    if (peer >= dp->clocks.max_peers)
        return NULL;
    int32_t s = __atomic_load_n(&dp->current[peer], __ATOMIC_ACQUIRE);
    return s < 0 ? NULL : &dp->keypairs[s];
}

static void hash_delete(wg_dp *dp, uint32_t hole)
{
    uint32_t mask = dp->kp_hash_mask;
    dp->kp_hash[hole] = 0;
    for (uint32_t j = (hole + 1) & mask; dp->kp_hash[j]; j = (j + 1) & mask) {
        uint32_t home = kp_hash(dp->keypairs[dp->kp_hash[j] - 1].local_index) & mask;
        /* Move j into the hole unless its home lies cyclically in (hole, j]. */
        int stays = hole <= j ? (hole < home && home <= j) : (hole < home || home <= j);
        if (!stays) {
            dp->kp_hash[hole] = dp->kp_hash[j];
            dp->kp_hash[j] = 0;
            hole = j;
        }
    }
}

int wg_keypair_table_init(wg_dp *dp, uint32_t slots)
{
    uint32_t hs = 16;
    while (hs < slots * 2)
        hs <<= 1;
    dp->keypairs = calloc(slots, sizeof(struct wg_keypair));
    dp->kp_free = calloc(slots, sizeof(uint32_t));
    dp->kp_hash = calloc(hs, sizeof(uint32_t));
    if (!dp->keypairs || !dp->kp_free || !dp->kp_hash)
        return -ENOMEM;
    dp->kp_hash_mask = hs - 1;
    dp->cap_keypairs = slots;
    for (uint32_t i = 0; i < slots; i++) {
        pthread_mutex_init(&dp->keypairs[i].replay_lock, NULL);
        dp->kp_free[i] = slots - 1 - i;     /* slot 0 on top */
    }
    dp->kp_nfree = slots;
    return 0;
}

void wg_keypair_table_free(wg_dp *dp)
{
    if (dp->keypairs) {
        /* No key bytes outlive the data plane. */
        explicit_bzero(dp->keypairs, (size_t)dp->cap_keypairs * sizeof(struct wg_keypair));
        free(dp->keypairs);
    }
    free(dp->kp_free);
    free(dp->kp_hash);
    dp->keypairs = NULL;
    dp->kp_free = dp->kp_hash = NULL;
}

static void hash_put(wg_dp *dp, uint32_t slot)
{
    uint32_t mask = dp->kp_hash_mask;
    uint32_t b = kp_hash(dp->keypairs[slot].local_index) & mask;
    while (dp->kp_hash[b])
        b = (b + 1) & mask;
    dp->kp_hash[b] = slot + 1;
}

/* Double the slots (write lock held).  No one holds a replay_lock without the read lock, so
 * every mutex is unlocked: the copies get fresh ones. */
static int kp_grow(wg_dp *dp)
{
    uint32_t old = dp->cap_keypairs;
    if (old >= dp->max_keypairs)
        return -ENOSPC;
    uint32_t cap = old > dp->max_keypairs / 2 ? dp->max_keypairs : old * 2;
    uint32_t hs = dp->kp_hash_mask + 1;
    while (hs < cap * 2)
        hs <<= 1;
    struct wg_keypair *kps = calloc(cap, sizeof(*kps));
    uint32_t *fr = calloc(cap, sizeof(uint32_t));
    uint32_t *h = calloc(hs, sizeof(uint32_t));
    if (!kps || !fr || !h) {
        free(kps); free(fr); free(h);
        return -ENOMEM;
    }
    memcpy(kps, dp->keypairs, (size_t)old * sizeof(*kps));
    for (uint32_t i = 0; i < cap; i++)
        pthread_mutex_init(&kps[i].replay_lock, NULL);
    explicit_bzero(dp->keypairs, (size_t)old * sizeof(*kps));
    free(dp->keypairs);
    dp->keypairs = kps;
    memcpy(fr, dp->kp_free, (size_t)dp->kp_nfree * sizeof(uint32_t));
    for (uint32_t i = cap; i > old; i--)
        fr[dp->kp_nfree++] = i - 1;
    free(dp->kp_free);
    dp->kp_free = fr;
    free(dp->kp_hash);
    dp->kp_hash = h;
    dp->kp_hash_mask = hs - 1;
    dp->cap_keypairs = cap;
    for (uint32_t i = 0; i < old; i++)
        if (kps[i].in_use)
            hash_put(dp, i);
    return 0;
}

int wg_keypair_install(wg_dp *dp, uint32_t peer, uint32_t local_index, uint32_t remote_index,
                       const uint8_t *send_key, const uint8_t *recv_key, double created,
                       int initiator, int make_current)
{
    if (!send_key || !recv_key)
        return -EINVAL;
    pthread_rwlock_wrlock(&dp->lock);
    if (peer >= dp->clocks.max_peers) {
        pthread_rwlock_unlock(&dp->lock);
        return -EINVAL;
    }
    if (bucket_of(dp, local_index) >= 0) {
        pthread_rwlock_unlock(&dp->lock);
        return -EEXIST;
    }
    if (dp->kp_nfree == 0) {
        int rc = kp_grow(dp);
        if (rc) {
            pthread_rwlock_unlock(&dp->lock);
            return rc;
        }
    }
    uint32_t slot = dp->kp_free[--dp->kp_nfree];
    struct wg_keypair *kp = &dp->keypairs[slot];
    kp->local_index = local_index;
    kp->remote_index = remote_index;
    kp->peer = peer;
    kp->initiator = initiator ? 1 : 0;
    kp->pending = make_current ? 0 : 1;
    kp->created = created;
    kp->seq = ++dp->kp_seq;
    kp->send_counter = 0;
    memcpy(kp->send_key, send_key, WG_KEY_LEN);
    memcpy(kp->recv_key, recv_key, WG_KEY_LEN);
    wg_replay_reset(&kp->replay);
    kp->in_use = 1;
    kp->peer_next = dp->kp_head[peer];
    dp->kp_head[peer] = (int32_t)slot;
    hash_put(dp, slot);
    if (make_current)
        __atomic_store_n(&dp->current[peer], (int32_t)slot, __ATOMIC_RELEASE);
    pthread_rwlock_unlock(&dp->lock);
    return 0;
}

/* Wipe and free one slot whose hash bucket is b (write lock held). */
static void kp_release(wg_dp *dp, uint32_t slot, uint32_t b)
{
    struct wg_keypair *kp = &dp->keypairs[slot];
    hash_delete(dp, b);
    if (dp->current[kp->peer] == (int32_t)slot)
        __atomic_store_n(&dp->current[kp->peer], -1, __ATOMIC_RELEASE);
    for (int32_t *at = &dp->kp_head[kp->peer]; *at >= 0; at = &dp->keypairs[*at].peer_next) {
        if (*at == (int32_t)slot) {
            *at = kp->peer_next;
            break;
        }
    }
    explicit_bzero(kp->send_key, WG_KEY_LEN);
    explicit_bzero(kp->recv_key, WG_KEY_LEN);
    kp->in_use = 0;
    kp->pending = 0;
    kp->send_counter = 0;
    kp->local_index = kp->remote_index = 0;
    kp->peer_next = -1;
    wg_replay_reset(&kp->replay);
    dp->kp_free[dp->kp_nfree++] = slot;
}

int wg_keypair_remove(wg_dp *dp, uint32_t local_index)
{
    pthread_rwlock_wrlock(&dp->lock);
    int64_t b = bucket_of(dp, local_index);
    if (b < 0) {
        pthread_rwlock_unlock(&dp->lock);
        return -ENOENT;
    }
    kp_release(dp, dp->kp_hash[b] - 1, (uint32_t)b);
    pthread_rwlock_unlock(&dp->lock);
    return 0;
}

void wg_keypair_remove_peer_locked(wg_dp *dp, uint32_t peer)
{
    while (dp->kp_head[peer] >= 0) {
        uint32_t slot = (uint32_t)dp->kp_head[peer];
        int64_t b = bucket_of(dp, dp->keypairs[slot].local_index);
        if (b < 0) {            /* cannot happen: every listed slot is hashed */
            dp->kp_head[peer] = dp->keypairs[slot].peer_next;
            continue;
        }
        kp_release(dp, slot, (uint32_t)b);
    }
}

int wg_keypair_set_counter(wg_dp *dp, uint32_t local_index, uint64_t next_send)
{
    pthread_rwlock_wrlock(&dp->lock);
    struct wg_keypair *kp = wg_keypair_lookup(dp, local_index);
    if (kp)
        kp->send_counter = next_send;
    pthread_rwlock_unlock(&dp->lock);
    return kp ? 0 : -ENOENT;
}

int wg_keypair_current(wg_dp *dp, uint32_t peer, uint32_t *local_index)
{
    pthread_rwlock_rdlock(&dp->lock);
    if (peer >= dp->clocks.max_peers) {
        pthread_rwlock_unlock(&dp->lock);
        return -EINVAL;
    }
    struct wg_keypair *kp = wg_keypair_of_peer(dp, peer);
    if (kp && local_index)
        *local_index = kp->local_index;
    pthread_rwlock_unlock(&dp->lock);
    return kp ? 0 : -ENOENT;
}
