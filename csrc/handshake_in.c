/* handshake_in.c -- intake of handshake messages (types 1-3) before Python sees any of them.
 *
 * Everything an unauthenticated sender can cause per packet is decided here (whitepaper
 * 5.4.4, 5.4.7; kernel cookie.c / ratelimiter.c semantics):
 *   - initiations and responses need a valid mac1 (cookie.c); a bad one is the counted drop
 *     WG_DROP_MAC1;
 *   - under load (the handshake queue more than 1/8 full, or it was within the last second)
 *     they also need a valid mac2 (keyed with the cookie of their source IP || port); without
 *     one the source gets a cookie reply, sent from here (WG_DROP_COOKIE), and either way a
 *     source may pass at most 20 messages a second (ratelimiter.c: WG_DROP_RATELIMIT);
 *   - what passes goes to Python on a bounded queue of its own: HSQ_BUCKETS FIFOs picked by a
 *     keyed hash of the source address and port, drained round-robin, so one source fills only
 *     its own bucket (WG_DROP_EVENTS_FULL).
 *
 * Without BLAKE2SMAC (cookie.c loads it at run time) every message is queued unverified (flag
 * WG_HS_UNVERIFIED in wg_event.receiver) and Python checks the MACs itself.
 */
#include "handshake_in.h"

#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#define UNDER_LOAD_HOLD 1.0

struct wg_hs_in *wg_hs_new(void)
{
    struct wg_hs_in *h = calloc(1, sizeof(*h));
    if (!h)
        return NULL;
    h->q = calloc(HSQ_CAP, sizeof(struct hsq_entry));
    if (!h->q || getrandom(&h->seed, sizeof(h->seed), 0) < 0 ||
        wg_ratelimiter_init(&h->rl, h->seed) != 0) {
        wg_hs_free(h);
        return NULL;
    }
    pthread_mutex_init(&h->lock, NULL);
    return h;
}

void wg_hs_free(struct wg_hs_in *h)
{
    if (!h)
        return;
    explicit_bzero(&h->cookie, sizeof(h->cookie));   /* keys and the cookie secret */
    free(h->q);
    wg_ratelimiter_free(&h->rl);
    free(h);
}

int wg_hs_set_keys(wg_dp *dp, const uint8_t *mac1_key, const uint8_t *cookie_key)
{
    struct wg_hs_in *h = dp->hs;
    pthread_mutex_lock(&h->lock);
    struct wg_cookie_checker *c = &h->cookie;
    if (mac1_key && cookie_key) {
        memcpy(c->mac1_key, mac1_key, 32);
        memcpy(c->cookie_key, cookie_key, 32);
        c->have_key = 1;
    } else {
        explicit_bzero(c->mac1_key, 32);
        explicit_bzero(c->cookie_key, 32);
        c->have_key = 0;
    }
    /* Messages queued under the old key are void. */
    memset(h->count, 0, sizeof(h->count));
    h->total = 0;
    pthread_mutex_unlock(&h->lock);
    return 0;
}

static void send_reply(wg_dp *dp, const uint8_t *reply, const wg_addr *to)
{
    int fd = to->family == AF_INET ? dp->udp4_fd : dp->udp6_fd;
    struct sockaddr_storage ss;
    socklen_t sl = wg_addr_to_sockaddr(to, &ss);
    if (fd < 0 || !sl || sendto(fd, reply, WG_COOKIE_REPLY_LEN, MSG_DONTWAIT,
                                (struct sockaddr *)&ss, sl) != WG_COOKIE_REPLY_LEN)
        wg_drop(dp, WG_DROP_IO, 1);
}


/* ---- the queue (callers hold h->lock) ----------------------------------------------------- */
static int under_load(struct wg_hs_in *h, double now)
{
    if (h->total > HSQ_CAP / 8) {
        h->last_under_load = now;
        return 1;
    }
    return (h->last_under_load > 0 && now - h->last_under_load < UNDER_LOAD_HOLD) ||
           now < h->force_load_until;
}

int wg_hs_under_load(wg_dp *dp, double now)
{
    pthread_mutex_lock(&dp->hs->lock);
    int r = under_load(dp->hs, now);
    pthread_mutex_unlock(&dp->hs->lock);
    return r;
}

void wg_hs_force_load(wg_dp *dp, double until)
{
    pthread_mutex_lock(&dp->hs->lock);
    dp->hs->force_load_until = until;
    pthread_mutex_unlock(&dp->hs->lock);
}

static int enqueue(struct wg_hs_in *h, const uint8_t *msg, uint32_t len, const wg_addr *src,
                   uint32_t flags)
{
    uint32_t fam;
    uint64_t key = wg_source_key(src, &fam);
    uint64_t k = key ^ h->seed ^ ((uint64_t)src->port << 40);
    uint32_t b = (uint32_t)(wg_mix64(k) % HSQ_BUCKETS);
    if (h->count[b] == HSQ_DEPTH)
        return -1;
    struct hsq_entry *e = &h->q[b * HSQ_DEPTH + (h->head[b] + h->count[b]) % HSQ_DEPTH];
    e->addr = *src;
    e->len = len;
    e->flags = flags;
    memcpy(e->data, msg, len);
    h->count[b]++;
    h->total++;
    return 0;
}

/* One handshake-typed datagram of its exact size: returns its slot status. */
int wg_hs_receive(wg_dp *dp, const uint8_t *msg, uint32_t len, const wg_addr *src, double now)
{
    struct wg_hs_in *h = dp->hs;
    int verified = wg_hs_crypto_mask() & WG_HS_BLAKE2S;
    uint8_t reply[WG_COOKIE_REPLY_LEN];
    int status = WG_DROP_HANDSHAKE, reply_ok = 0;

    /* mac1 outside the lock: a garbage flood costs one short critical section each. */
    uint8_t key[32];
    pthread_mutex_lock(&h->lock);
    int have_key = h->cookie.have_key;
    memcpy(key, h->cookie.mac1_key, sizeof(key));
    pthread_mutex_unlock(&h->lock);
    int is_reply = msg[0] == WG_MSG_COOKIE_REPLY;
    int mac1_ok = 0;
    if (have_key && verified && !is_reply)
        mac1_ok = wg_cookie_mac1_ok(key, msg, len);
    explicit_bzero(key, sizeof(key));
    if (!have_key || (verified && !is_reply && !mac1_ok)) {
        /* No private key (nobody to talk to), or a bad mac1: never queued. */
        wg_drop(dp, WG_DROP_MAC1, 1);
        return WG_DROP_MAC1;
    }

    pthread_mutex_lock(&h->lock);
    int load = under_load(h, now);
    if (is_reply) {
        /* Cookie replies carry no MACs; under load they share the per-source limit. */
        if (load && !wg_ratelimiter_allow(&h->rl, src, now))
            status = WG_DROP_RATELIMIT;
        else if (enqueue(h, msg, len, src, 0))
            status = WG_DROP_EVENTS_FULL;
        goto out;
    }
    if (!verified) {
        if (enqueue(h, msg, len, src, WG_HS_UNVERIFIED))
            status = WG_DROP_EVENTS_FULL;
        goto out;
    }
    if (load) {
        int good = wg_cookie_mac2_ok(&h->cookie, msg, len, src, now);
        if (!wg_ratelimiter_allow(&h->rl, src, now)) {
            status = WG_DROP_RATELIMIT;
            goto out;
        }
        if (!good) {
            status = WG_DROP_COOKIE;
            reply_ok = wg_cookie_make_reply(&h->cookie, msg, len, src, now, reply) == 0;
            goto out;
        }
    }
    if (enqueue(h, msg, len, src, 0))
        status = WG_DROP_EVENTS_FULL;
out:
    pthread_mutex_unlock(&h->lock);
    /* Counted before the reply leaves: whoever sees the reply sees the count. */
    if (status != WG_DROP_HANDSHAKE)
        wg_drop(dp, status, 1);
    else
        wg_dp_wake(dp);
    if (reply_ok)
        send_reply(dp, reply, src);
    return status;
}

uint32_t wg_hs_pop(wg_dp *dp, wg_event *evs, uint8_t *data, uint32_t stride, uint32_t max)
{
    struct wg_hs_in *h = dp->hs;
    uint32_t n = 0;
    pthread_mutex_lock(&h->lock);
    while (n < max && h->total) {
        uint32_t b = h->rr;
        h->rr = (h->rr + 1) % HSQ_BUCKETS;
        if (!h->count[b])
            continue;
        struct hsq_entry *e = &h->q[b * HSQ_DEPTH + h->head[b]];
        uint32_t len = e->len < stride ? e->len : stride;
        evs[n].type = WG_EV_HANDSHAKE;
        evs[n].peer = 0;
        evs[n].receiver = e->flags;
        evs[n].len = len;
        evs[n].addr = e->addr;
        if (data && len)
            memcpy(data + (size_t)n * stride, e->data, len);
        h->head[b] = (uint8_t)((h->head[b] + 1) % HSQ_DEPTH);
        h->count[b]--;
        h->total--;
        n++;
    }
    pthread_mutex_unlock(&h->lock);
    return n;
}

uint32_t wg_hs_queued(wg_dp *dp)
{
    return __atomic_load_n(&dp->hs->total, __ATOMIC_RELAXED);
}
