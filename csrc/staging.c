/* staging.c -- what C keeps per peer for the control plane, outside the data-plane tables:
 * the packets waiting for a session (at most WG_MAX_STAGED per peer, the oldest dropped, each
 * stored at its own length) and the control flags Python collects (a handshake is needed, a
 * keypair was confirmed).  Flags are bits, not queue entries: setting one twice is setting it
 * once, so they can never overflow or be lost.
 *
 * The table is keyed by peer id and grows on demand in chunks that never move.  One mutex
 * guards it: staging happens only while a peer has no session, and flags once per event. */
#include "wgfast_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CHUNK_PEERS 256
#define MAX_CHUNKS  65536           /* 16 M peer ids */

struct staged_pkt {
    uint32_t len;
    uint8_t  data[];
};

struct peer_side {
    struct staged_pkt **pkts;       /* WG_MAX_STAGED, allocated with the first packet */
    uint16_t head, count;
    uint32_t flags;                 /* WG_CTL_* waiting for Python */
    uint32_t confirmed;             /* local index of the last keypair C promoted */
    uint8_t  listed;                /* in the dirty list */
};

struct wg_side {
    pthread_mutex_t lock;
    struct peer_side *chunks[MAX_CHUNKS];
    uint32_t *dirty;                /* peers with flags set, each at most once */
    uint32_t ndirty, dirty_cap;
    uint64_t staged_total;
};

struct wg_side *wg_side_new(void)
{
    struct wg_side *s = calloc(1, sizeof(*s));
    if (s)
        pthread_mutex_init(&s->lock, NULL);
    return s;
}

static void free_pkts(struct peer_side *p, struct wg_side *s)
{
    for (uint32_t k = 0; k < p->count; k++) {
        struct staged_pkt *x = p->pkts[(p->head + k) % WG_MAX_STAGED];
        explicit_bzero(x->data, x->len);
        free(x);
    }
    s->staged_total -= p->count;
    p->head = p->count = 0;
}

void wg_side_free(struct wg_side *s)
{
    if (!s)
        return;
    for (uint32_t c = 0; c < MAX_CHUNKS; c++) {
        if (!s->chunks[c])
            continue;
        for (uint32_t i = 0; i < CHUNK_PEERS; i++) {
            free_pkts(&s->chunks[c][i], s);
            free(s->chunks[c][i].pkts);
        }
        free(s->chunks[c]);
    }
    free(s->dirty);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

/* The peer's entry (created when `make`), or NULL.  Caller holds s->lock. */
static struct peer_side *side_of(struct wg_side *s, uint32_t peer, int make)
{
    uint32_t c = peer / CHUNK_PEERS;
    if (c >= MAX_CHUNKS)
        return NULL;
    if (!s->chunks[c]) {
        if (!make || !(s->chunks[c] = calloc(CHUNK_PEERS, sizeof(struct peer_side))))
            return NULL;
    }
    return &s->chunks[c][peer % CHUNK_PEERS];
}

/* ---- control flags ------------------------------------------------------------------------ */
void wg_ctl_set(wg_dp *dp, uint32_t peer, uint32_t flag, uint32_t confirmed)
{
    struct wg_side *s = dp->side;
    int wake = 0;
    pthread_mutex_lock(&s->lock);
    struct peer_side *p = side_of(s, peer, 1);
    if (p && !p->listed) {
        if (s->ndirty == s->dirty_cap) {
            uint32_t cap = s->dirty_cap ? s->dirty_cap * 2 : 64;
            uint32_t *d = realloc(s->dirty, cap * sizeof(uint32_t));
            if (d) {
                s->dirty = d;
                s->dirty_cap = cap;
            }
        }
        if (s->ndirty < s->dirty_cap) {
            s->dirty[s->ndirty++] = peer;
            p->listed = 1;
        }
    }
    if (p && p->listed) {
        p->flags |= flag;
        if (flag & WG_CTL_CONFIRMED)
            p->confirmed = confirmed;
        wake = 1;
    }
    pthread_mutex_unlock(&s->lock);
    if (wake)
        wg_dp_wake(dp);
}

uint32_t wg_ctl_collect(wg_dp *dp, uint32_t *peers, uint32_t *flags, uint32_t *confirmed,
                        uint32_t max)
{
    struct wg_side *s = dp->side;
    uint32_t n = 0;
    pthread_mutex_lock(&s->lock);
    while (n < max && s->ndirty) {
        uint32_t peer = s->dirty[--s->ndirty];
        struct peer_side *p = side_of(s, peer, 0);
        if (!p)
            continue;
        peers[n] = peer;
        flags[n] = p->flags;
        confirmed[n] = p->confirmed;
        p->flags = 0;
        p->listed = 0;
        n++;
    }
    pthread_mutex_unlock(&s->lock);
    return n;
}

uint32_t wg_ctl_pending(wg_dp *dp)
{
    pthread_mutex_lock(&dp->side->lock);
    uint32_t n = dp->side->ndirty;
    pthread_mutex_unlock(&dp->side->lock);
    return n;
}

/* ---- staged packets ----------------------------------------------------------------------- */
int wg_stage_put(wg_dp *dp, uint32_t peer, const uint8_t *pkt, uint32_t len)
{
    struct wg_side *s = dp->side;
    struct staged_pkt *x = malloc(sizeof(*x) + (len ? len : 1));
    if (!x)
        return -ENOMEM;
    x->len = len;
    memcpy(x->data, pkt, len);
    pthread_mutex_lock(&s->lock);
    struct peer_side *p = side_of(s, peer, 1);
    if (p && !p->pkts)
        p->pkts = calloc(WG_MAX_STAGED, sizeof(*p->pkts));
    if (!p || !p->pkts) {
        pthread_mutex_unlock(&s->lock);
        free(x);
        return -ENOMEM;
    }
    int dropped = 0;
    if (p->count == WG_MAX_STAGED) {
        /* Full: the oldest goes, as in the kernel. */
        struct staged_pkt *old = p->pkts[p->head];
        explicit_bzero(old->data, old->len);
        free(old);
        p->head = (uint16_t)((p->head + 1) % WG_MAX_STAGED);
        p->count--;
        s->staged_total--;
        dropped = 1;
    }
    p->pkts[(p->head + p->count) % WG_MAX_STAGED] = x;
    p->count++;
    s->staged_total++;
    pthread_mutex_unlock(&s->lock);
    if (dropped)
        wg_drop(dp, WG_DROP_STAGED, 1);
    return 0;
}

/* Take the oldest staged packet (NULL when none).  Caller frees it. */
static struct staged_pkt *take(struct wg_side *s, uint32_t peer)
{
    pthread_mutex_lock(&s->lock);
    struct peer_side *p = side_of(s, peer, 0);
    struct staged_pkt *x = NULL;
    if (p && p->count) {
        x = p->pkts[p->head];
        p->head = (uint16_t)((p->head + 1) % WG_MAX_STAGED);
        p->count--;
        s->staged_total--;
    }
    pthread_mutex_unlock(&s->lock);
    return x;
}

/* Put a packet back in front (it could not be sent yet); dropped if the queue refilled. */
static void put_back(wg_dp *dp, uint32_t peer, struct staged_pkt *x)
{
    struct wg_side *s = dp->side;
    pthread_mutex_lock(&s->lock);
    struct peer_side *p = side_of(s, peer, 0);
    if (p && p->pkts && p->count < WG_MAX_STAGED) {
        p->head = (uint16_t)((p->head + WG_MAX_STAGED - 1) % WG_MAX_STAGED);
        p->pkts[p->head] = x;
        p->count++;
        s->staged_total++;
        x = NULL;
    }
    pthread_mutex_unlock(&s->lock);
    if (x) {
        explicit_bzero(x->data, x->len);
        free(x);
        wg_drop(dp, WG_DROP_STAGED, 1);
    }
}

int wg_stage_flush(wg_dp *dp, uint32_t peer, double now)
{
    int sent = 0;
    struct staged_pkt *x;
    /* At most one queue's worth: packets staged meanwhile wait for the next flush. */
    for (int k = 0; k < WG_MAX_STAGED && (x = take(dp->side, peer)); k++) {
        int r = wg_send_packet(dp, peer, x->data, x->len, now);
        if (r == WG_DROP_NO_KEY) {
            put_back(dp, peer, x);
            return sent;
        }
        explicit_bzero(x->data, x->len);
        free(x);
        if (r == WG_OK)
            sent++;
    }
    return sent;
}

uint32_t wg_stage_drop(wg_dp *dp, uint32_t peer)
{
    struct wg_side *s = dp->side;
    pthread_mutex_lock(&s->lock);
    struct peer_side *p = side_of(s, peer, 0);
    uint32_t n = 0;
    if (p) {
        n = p->count;
        free_pkts(p, s);
    }
    pthread_mutex_unlock(&s->lock);
    return n;
}

void wg_side_clear(wg_dp *dp, uint32_t peer)
{
    struct wg_side *s = dp->side;
    pthread_mutex_lock(&s->lock);
    struct peer_side *p = side_of(s, peer, 0);
    if (p) {
        free_pkts(p, s);
        p->flags = 0;       /* stays in the dirty list if listed: collected as "nothing" */
    }
    pthread_mutex_unlock(&s->lock);
}

uint32_t wg_stage_count(wg_dp *dp, uint32_t peer)
{
    struct wg_side *s = dp->side;
    pthread_mutex_lock(&s->lock);
    struct peer_side *p = side_of(s, peer, 0);
    uint32_t n = p ? p->count : 0;
    pthread_mutex_unlock(&s->lock);
    return n;
}

uint64_t wg_stage_total(wg_dp *dp)
{
    pthread_mutex_lock(&dp->side->lock);
    uint64_t n = dp->side->staged_total;
    pthread_mutex_unlock(&dp->side->lock);
    return n;
}
