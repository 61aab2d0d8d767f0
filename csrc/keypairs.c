/* keypairs.c -- receiver index -> keypair, and each peer's current sending keypair.
 *
 * dp->kp_hash is open addressing with linear probing (local index -> slot + 1, 0 = empty).
 * Deletion shifts later members of the probe run back so no tombstones accumulate: lookups
 * stay short however many handshakes come and go.  The table has at least twice as many
 * buckets as keypair slots, so it never fills. */
#include "wgfast_internal.h"

#include <errno.h>
#include <string.h>

static inline uint32_t kp_hash(uint32_t x)
{
    /* Indices come from the peer-visible random source but tests use sequential ones: mix. */
    x ^= x >> 16;
    x *= 0x7feb352du;
    x ^= x >> 15;
    x *= 0x846ca68bu;
    x ^= x >> 16;
    return x;
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

struct wg_keypair *wg_kp_lookup(wg_dp *dp, uint32_t local_index)
{
    int64_t b = bucket_of(dp, local_index);
    return b < 0 ? NULL : &dp->keypairs[dp->kp_hash[b] - 1];
}

struct wg_keypair *wg_kp_current(wg_dp *dp, uint32_t peer)
{
    if (peer >= dp->max_peers)
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

int wg_keypair_install(wg_dp *dp, uint32_t peer, uint32_t local_index, uint32_t remote_index,
                       const uint8_t *send_key, const uint8_t *recv_key, double created,
                       int initiator, int make_current)
{
    if (peer >= dp->max_peers || !send_key || !recv_key)
        return -EINVAL;
    pthread_rwlock_wrlock(&dp->lock);
    if (bucket_of(dp, local_index) >= 0) {
        pthread_rwlock_unlock(&dp->lock);
        return -EEXIST;
    }
    uint32_t slot = 0;
    while (slot < dp->max_keypairs && dp->keypairs[slot].in_use)
        slot++;
    if (slot == dp->max_keypairs) {
        pthread_rwlock_unlock(&dp->lock);
        return -ENOSPC;
    }
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

    uint32_t mask = dp->kp_hash_mask;
    uint32_t b = kp_hash(local_index) & mask;
    while (dp->kp_hash[b])
        b = (b + 1) & mask;
    dp->kp_hash[b] = slot + 1;
    if (make_current)
        __atomic_store_n(&dp->current[peer], (int32_t)slot, __ATOMIC_RELEASE);
    pthread_rwlock_unlock(&dp->lock);
    return 0;
}

int wg_keypair_remove(wg_dp *dp, uint32_t local_index)
{
    pthread_rwlock_wrlock(&dp->lock);
    int64_t b = bucket_of(dp, local_index);
    if (b < 0) {
        pthread_rwlock_unlock(&dp->lock);
        return -ENOENT;
    }
    uint32_t slot = dp->kp_hash[b] - 1;
    struct wg_keypair *kp = &dp->keypairs[slot];
    hash_delete(dp, (uint32_t)b);
    if (dp->current[kp->peer] == (int32_t)slot)
        __atomic_store_n(&dp->current[kp->peer], -1, __ATOMIC_RELEASE);
    explicit_bzero(kp->send_key, WG_KEY_LEN);
    explicit_bzero(kp->recv_key, WG_KEY_LEN);
    kp->in_use = 0;
    kp->pending = 0;
    kp->send_counter = 0;
    kp->local_index = kp->remote_index = 0;
    wg_replay_reset(&kp->replay);
    pthread_rwlock_unlock(&dp->lock);
    return 0;
}

int wg_keypair_set_counter(wg_dp *dp, uint32_t local_index, uint64_t next_send)
{
    pthread_rwlock_wrlock(&dp->lock);
    struct wg_keypair *kp = wg_kp_lookup(dp, local_index);
    if (kp)
        kp->send_counter = next_send;
    pthread_rwlock_unlock(&dp->lock);
    return kp ? 0 : -ENOENT;
}

int wg_keypair_current(wg_dp *dp, uint32_t peer, uint32_t *local_index)
{
    if (peer >= dp->max_peers)
        return -EINVAL;
    pthread_rwlock_rdlock(&dp->lock);
    struct wg_keypair *kp = wg_kp_current(dp, peer);
    if (kp && local_index)
        *local_index = kp->local_index;
    pthread_rwlock_unlock(&dp->lock);
    return kp ? 0 : -ENOENT;
}
