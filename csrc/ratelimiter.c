/* ratelimiter.c -- the per-source token bucket for handshake messages under load (as the
 * kernel's ratelimiter.c): 20 messages a second, a burst of 5, per IPv4 address or IPv6 /64;
 * tests hold it against wgfast/ratelimiter.py.  Sources idle for a second are forgotten (a
 * full bucket carries no state); at most RL_MAX are tracked at once. */
#include "handshake_in.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define RL_SLOTS        16384       /* open addressing, power of two */
#define RL_MAX          8192        /* sources tracked at once */
#define RL_COST_NS      50000000LL  /* 1 s / 20 */
#define RL_MAX_NS       (5 * RL_COST_NS)
#define RL_IDLE_NS      1000000000LL

struct wg_rl_entry {
    uint64_t key;           /* IPv4 address or IPv6 /64 */
    uint32_t used;          /* 0 empty, 4 IPv4, 6 IPv6 */
    int64_t  last_ns;
    int64_t  tokens;
};

int wg_ratelimiter_init(struct wg_ratelimiter *rl, uint64_t seed)
{
    rl->table = calloc(RL_SLOTS, sizeof(struct wg_rl_entry));
    rl->spare = calloc(RL_SLOTS, sizeof(struct wg_rl_entry));
    rl->used = 0;
    rl->gc = -1e18;
    rl->seed = seed;
    return rl->table && rl->spare ? 0 : -ENOMEM;
}

void wg_ratelimiter_free(struct wg_ratelimiter *rl)
{
    free(rl->table);
    free(rl->spare);
    rl->table = rl->spare = NULL;
}

uint64_t wg_source_key(const wg_addr *a, uint32_t *fam)
{
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    uint64_t k = 0;
    if (a->family == AF_INET || (a->family == AF_INET6 && !memcmp(a->addr, mapped, 12))) {
        const uint8_t *p = a->family == AF_INET ? a->addr : a->addr + 12;
        for (int i = 0; i < 4; i++)
            k = k << 8 | p[i];
        *fam = 4;
    } else {
        for (int i = 0; i < 8; i++)
            k = k << 8 | a->addr[i];
        *fam = 6;
    }
    return k;
}

static struct wg_rl_entry *rl_find(struct wg_rl_entry *t, uint64_t key, uint32_t fam, uint64_t seed,
                                int *found)
{
    uint32_t b = (uint32_t)wg_mix64(key ^ seed ^ fam) & (RL_SLOTS - 1);
    for (;;) {
        struct wg_rl_entry *e = &t[b];
        if (!e->used) {
            *found = 0;
            return e;
        }
        if (e->used == fam && e->key == key) {
            *found = 1;
            return e;
        }
        b = (b + 1) & (RL_SLOTS - 1);
    }
}

/* Forget sources idle for over a second (a full bucket carries no state): rebuild the table
 * from the live entries, so no tombstones pile up. */
static void rl_collect(struct wg_ratelimiter *rl, int64_t now_ns)
{
    memset(rl->spare, 0, RL_SLOTS * sizeof(struct wg_rl_entry));
    uint32_t used = 0;
    for (uint32_t i = 0; i < RL_SLOTS; i++) {
        struct wg_rl_entry *e = &rl->table[i];
        if (!e->used || now_ns - e->last_ns > RL_IDLE_NS)
            continue;
        int found;
        *rl_find(rl->spare, e->key, e->used, rl->seed, &found) = *e;
        used++;
    }
    struct wg_rl_entry *t = rl->table;
    rl->table = rl->spare;
    rl->spare = t;
    rl->used = used;
}

int wg_ratelimiter_allow(struct wg_ratelimiter *rl, const wg_addr *a, double now)
{
    int64_t now_ns = (int64_t)(now * 1e9);
    if (now - rl->gc >= 1.0) {
        rl_collect(rl, now_ns);
        rl->gc = now;
    }
    uint32_t fam;
    uint64_t key = wg_source_key(a, &fam);
    int found;
    struct wg_rl_entry *e = rl_find(rl->table, key, fam, rl->seed, &found);
    if (!found) {
        if (rl->used >= RL_MAX) {
            rl_collect(rl, now_ns);
            rl->gc = now;
            if (rl->used >= RL_MAX)
                return 0;           /* full of active sources: refuse new ones */
            e = rl_find(rl->table, key, fam, rl->seed, &found);
        }
        e->key = key;
        e->used = fam;
        e->last_ns = now_ns;
        e->tokens = RL_MAX_NS - RL_COST_NS;
        rl->used++;
        return 1;
    }
    int64_t dt = now_ns - e->last_ns;
    int64_t tokens = e->tokens + (dt > 0 ? dt : 0);
    if (tokens > RL_MAX_NS)
        tokens = RL_MAX_NS;
    e->last_ns = now_ns;
    /* 1 us of slack: time stamps that are sums of 1/20 s must not lose a token to rounding. */
    if (tokens >= RL_COST_NS - 1000) {
        e->tokens = tokens - RL_COST_NS;
        return 1;
    }
    e->tokens = tokens;
    return 0;
}

int wg_hs_ratelimit(wg_dp *dp, const wg_addr *src, double now)
{
    pthread_mutex_lock(&dp->hs->lock);
    int ok = wg_ratelimiter_allow(&dp->hs->rl, src, now);
    pthread_mutex_unlock(&dp->hs->lock);
    return ok;
}
