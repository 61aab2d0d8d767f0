/* transport.c -- transport data messages (type 4) sealed and opened in place in a ring
 * (whitepaper 5.4.6), in batches, over keypairs.c and the selected AEAD backend (aead.c).
 *
 * Seal: a run of slots for one peer takes its current keypair and one grab of its send
 * counter; each plaintext is padded to a multiple of 16 (never beyond the MTU) and given its
 * header, and a handshake is asked for once the keypair reaches REKEY_AFTER_MESSAGES or (as
 * initiator) REKEY_AFTER_TIME.  Nothing is sealed under a keypair past REJECT_AFTER_TIME or
 * REJECT_AFTER_MESSAGES (whitepaper 6.1).
 * Open: size, type, receiver index, age and counter limit first, an unlocked replay pre-check
 * (replay.c), the AEAD for the whole chunk, then the replay window is updated under its
 * keypair's lock and a responder's "next" keypair is confirmed by its first message. */
#include "aead.h"

#include <string.h>

static inline uint32_t padded_len(uint32_t len, uint32_t mtu)
{
    uint32_t p = (len + 15u) & ~15u;
    uint32_t cap = len > mtu ? len : mtu;
    return p < cap ? p : cap;
}

static inline void set_drop(wg_ring *r, uint32_t i, int reason, uint32_t *dropped)
{
    r->status[i] = (uint8_t)reason;
    dropped[reason]++;
}

static void flush_drops(wg_dp *dp, const uint32_t *dropped)
{
    for (int k = 1; k < WG_DROP_NREASONS; k++)
        if (dropped[k])
            wg_drop(dp, k, dropped[k]);
}

static uint32_t seal_chunk(wg_dp *dp, wg_ring *r, uint32_t first, uint32_t n, double now, int be,
                           uint32_t *dropped)
{
    struct wg_aead_item it[WG_MAX_BATCH];
    uint32_t slot_of[WG_MAX_BATCH];
    uint32_t m = 0, ok = 0;
    uint32_t mtu = dp->mtu;
    uint32_t end = first + n;

    /* Pass 1: keys, counters and headers; pass 2: crypto for the whole chunk. */
    for (uint32_t i = first; i < end;) {
        /* A run of consecutive slots for one peer shares one keypair and one counter grab. */
        uint32_t peer = r->peer[i];
        uint32_t j = i + 1;
        while (j < end && r->peer[j] == peer)
            j++;
        struct wg_keypair *kp = be >= 0 ? wg_keypair_of_peer(dp, peer) : NULL;
        if (!kp || now - kp->created >= WG_REJECT_AFTER_TIME) {
            for (uint32_t k = i; k < j; k++)
                set_drop(r, k, WG_DROP_NO_KEY, dropped);
            i = j;
            continue;
        }
        uint32_t want = 0;      /* slots too big for the ring take no counter */
        for (uint32_t k = i; k < j; k++) {
            if (r->len[k] > r->data_cap)
                set_drop(r, k, WG_DROP_TOO_BIG, dropped);
            else
                want++;
        }
        if (!want) {
            i = j;
            continue;
        }
        uint64_t ctr;
        if (__atomic_load_n(&kp->send_counter, __ATOMIC_RELAXED) >= WG_REJECT_AFTER_MESSAGES)
            ctr = WG_REJECT_AFTER_MESSAGES;     /* exhausted: consume nothing */
        else
            ctr = __atomic_fetch_add(&kp->send_counter, want, __ATOMIC_RELAXED);
        uint64_t last = ctr + want;
        wg_addr ep = dp->endpoints[peer];
        for (uint32_t k = i; k < j; k++) {
            if (r->len[k] > r->data_cap)
                continue;
            if (ctr >= WG_REJECT_AFTER_MESSAGES) {
                set_drop(r, k, WG_DROP_NO_KEY, dropped);
                ctr++;
                continue;
            }
            uint8_t *slot = r->slab + (size_t)k * r->slot_size;
            uint32_t len = r->len[k];
            uint32_t plen = padded_len(len, mtu);
            memset(slot + WG_HEADROOM + len, 0, plen - len);
            slot[0] = WG_MSG_DATA;
            slot[1] = slot[2] = slot[3] = 0;
            wg_put_le32(slot + 4, kp->remote_index);
            wg_put_le64(slot + 8, ctr);
            struct wg_aead_item *x = &it[m];
            x->key = kp->send_key;
            x->aad = NULL;
            x->aadlen = 0;
            x->buf = slot + WG_HEADROOM;
            x->len = plen;
            x->tag = slot + WG_HEADROOM + plen;
            memcpy(x->nonce, slot + 4, WG_AEAD_NONCE_LEN);     /* 4 zero bytes || LE64 counter */
            memset(x->nonce, 0, 4);
            slot_of[m++] = k;
            r->len[k] = WG_HEADROOM + plen + WG_TAG_LEN;
            r->receiver[k] = kp->remote_index;
            r->counter[k] = ctr;
            r->addr[k] = ep;
            ctr++;
        }
        if (last >= WG_REKEY_AFTER_MESSAGES ||
            (kp->initiator && now - kp->created >= WG_REKEY_AFTER_TIME))
            wg_want_handshake(dp, peer, now);
        i = j;
    }
    if (m)
        wg_aead_run(be, it, m, 1);
    for (uint32_t q = 0; q < m; q++) {
        if (it[q].ok) {
            r->status[slot_of[q]] = WG_OK;
            ok++;
        } else {
            set_drop(r, slot_of[q], WG_DROP_NO_KEY, dropped);
        }
    }
    return ok;
}

typedef uint32_t (*chunk_fn)(wg_dp *, wg_ring *, uint32_t, uint32_t, double, int, uint32_t *);

/* Slots [first, first + n) in chunks of WG_MAX_BATCH, under one read lock; drops are
 * counted once per batch. */
static uint32_t run_slots(wg_dp *dp, wg_ring *r, uint32_t first, uint32_t n, double now,
                          chunk_fn chunk)
{
    if (!dp || !r || first >= r->nslots || n == 0)
        return 0;
    if (n > r->nslots - first)
        n = r->nslots - first;
    int be = wg_aead_selected();
    uint32_t dropped[WG_DROP_NREASONS] = {0};
    uint32_t ok = 0;
    pthread_rwlock_rdlock(&dp->lock);
    for (uint32_t at = first; at < first + n; at += WG_MAX_BATCH) {
        uint32_t c = first + n - at < WG_MAX_BATCH ? first + n - at : WG_MAX_BATCH;
        ok += chunk(dp, r, at, c, now, be, dropped);
    }
    pthread_rwlock_unlock(&dp->lock);
    flush_drops(dp, dropped);
    return ok;
}

uint32_t wg_seal_batch(wg_dp *dp, wg_ring *r, uint32_t first, uint32_t n, double now)
{
    return run_slots(dp, r, first, n, now, seal_chunk);
}

static uint32_t open_chunk(wg_dp *dp, wg_ring *r, uint32_t first, uint32_t n, double now, int be,
                           uint32_t *dropped)
{
    struct wg_aead_item it[WG_MAX_BATCH];
    uint32_t slot_of[WG_MAX_BATCH];
    struct wg_keypair *kp_of[WG_MAX_BATCH];
    uint32_t m = 0, ok = 0;

    for (uint32_t i = first; i < first + n; i++) {
        uint8_t *slot = r->slab + (size_t)i * r->slot_size;
        uint32_t len = r->len[i];
        if (len < WG_MIN_DATA_LEN) {
            set_drop(r, i, WG_DROP_SHORT, dropped);
            continue;
        }
        if (len > r->slot_size) {
            set_drop(r, i, WG_DROP_TOO_BIG, dropped);
            continue;
        }
        if (slot[0] != WG_MSG_DATA || slot[1] || slot[2] || slot[3]) {
            set_drop(r, i, WG_DROP_TYPE, dropped);
            continue;
        }
        struct wg_keypair *kp = wg_keypair_lookup(dp, wg_le32(slot + 4));
        if (!kp) {
            set_drop(r, i, WG_DROP_NO_KEYPAIR, dropped);
            continue;
        }
        if (now - kp->created >= WG_REJECT_AFTER_TIME) {
            set_drop(r, i, WG_DROP_EXPIRED, dropped);
            continue;
        }
        uint64_t ctr = wg_le64(slot + 8);
        if (ctr >= WG_REJECT_AFTER_MESSAGES) {
            set_drop(r, i, WG_DROP_COUNTER, dropped);
            continue;
        }
        /* Unlocked pre-check: a stale read only lets a replay reach the tag check, and the
         * locked update after it catches the replay. */
        if (!wg_replay_check(&kp->replay, ctr)) {
            set_drop(r, i, WG_DROP_REPLAY, dropped);
            continue;
        }
        if (be < 0) {
            set_drop(r, i, WG_DROP_TAG, dropped);
            continue;
        }
        uint32_t clen = len - WG_MIN_DATA_LEN;
        struct wg_aead_item *x = &it[m];
        x->key = kp->recv_key;
        x->aad = NULL;
        x->aadlen = 0;
        x->buf = slot + WG_HEADROOM;
        x->len = clen;
        x->tag = slot + WG_HEADROOM + clen;
        memcpy(x->nonce, slot + 4, WG_AEAD_NONCE_LEN);
        memset(x->nonce, 0, 4);
        kp_of[m] = kp;
        slot_of[m++] = i;
    }
    if (m)
        wg_aead_run(be, it, m, 0);
    /* Replay windows are updated under their keypair's lock, taken once per run of messages
     * of one keypair (a batch is usually one run). */
    struct wg_keypair *locked = NULL;
    for (uint32_t q = 0; q < m; q++) {
        uint32_t i = slot_of[q];
        struct wg_keypair *kp = kp_of[q];
        if (!it[q].ok) {
            set_drop(r, i, WG_DROP_TAG, dropped);
            continue;
        }
        uint8_t *slot = r->slab + (size_t)i * r->slot_size;
        uint64_t ctr = wg_le64(slot + 8);
        if (kp != locked) {
            if (locked)
                pthread_mutex_unlock(&locked->replay_lock);
            pthread_mutex_lock(&kp->replay_lock);
            locked = kp;
        }
        int fresh = wg_replay_update(&kp->replay, ctr);
        if (!fresh) {
            set_drop(r, i, WG_DROP_REPLAY, dropped);
            continue;
        }
        if (__atomic_load_n(&kp->pending, __ATOMIC_RELAXED) &&
            __atomic_exchange_n(&kp->pending, 0, __ATOMIC_ACQ_REL)) {
            /* The responder's "next" keypair is confirmed by its first message -- if it is
             * still "next": a keypair installed as current after it (our own initiation
             * completed) demoted it to previous, and it must not override that one. */
            const struct wg_keypair *cur = wg_keypair_of_peer(dp, kp->peer);
            if (!cur || cur->seq < kp->seq) {
                __atomic_store_n(&dp->current[kp->peer], (int32_t)(kp - dp->keypairs),
                                 __ATOMIC_RELEASE);
                wg_ctl_set(dp, kp->peer, WG_CTL_CONFIRMED, kp->local_index);
            }
        }
        r->peer[i] = kp->peer;
        r->receiver[i] = kp->local_index;
        r->counter[i] = ctr;
        r->len[i] = (uint32_t)it[q].len;
        r->status[i] = WG_OK;
        ok++;
    }
    if (locked)
        pthread_mutex_unlock(&locked->replay_lock);
    return ok;
}

uint32_t wg_open_batch(wg_dp *dp, wg_ring *r, uint32_t first, uint32_t n, double now)
{
    return run_slots(dp, r, first, n, now, open_chunk);
}
