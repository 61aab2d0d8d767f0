/* dataplane.c -- the data-plane state: peers, their clocks and endpoints, drop counters and
 * the eventfd that wakes Python for what C cannot handle (handshake_in.c, staging.c).
 * Just over ~400 lines: each per-peer table is allocated, grown and read here, together. */
#include "wgfast_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/eventfd.h>

double wg_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void *zalloc(size_t n)
{
    void *p = NULL;
    if (posix_memalign(&p, 64, n ? n : 64) != 0)
        return NULL;
    memset(p, 0, n ? n : 64);
    return p;
}

#define PEERS_INITIAL 64
#define KEYPAIRS_INITIAL 16

void wg_dp_retire(wg_dp *dp, void *p)
{
    if (!p)
        return;
    if (dp->nretired == dp->cap_retired) {
        uint32_t ncap = dp->cap_retired ? dp->cap_retired * 2 : 32;
        void **nv = realloc(dp->retired, ncap * sizeof(*nv));
        if (!nv)
            return;         /* leak it rather than free memory a view may still read */
        dp->retired = nv;
        dp->cap_retired = ncap;
    }
    dp->retired[dp->nretired++] = p;
}

/* Grow every per-peer table to cap entries; caller holds the write lock (or owns dp). */
static int grow_peers(wg_dp *dp, uint32_t cap)
{
    wg_peer_clocks *c = &dp->clocks;
    uint32_t old = c->max_peers;
    if (cap <= old)
        return 0;
    /* Allocate everything first so that a failure leaves the old tables in place. */
    struct { void **tab; size_t size; int fill; } t[] = {
        {(void **)&c->last_data_sent, sizeof(double), 0},
        {(void **)&c->last_data_recv, sizeof(double), 0},
        {(void **)&c->last_auth_sent, sizeof(double), 0},
        {(void **)&c->last_auth_recv, sizeof(double), 0},
        {(void **)&c->pending_data_sent, sizeof(double), 0},
        {(void **)&c->pending_data_recv, sizeof(double), 0},
        {(void **)&c->tx_bytes, sizeof(uint64_t), 0},
        {(void **)&c->rx_bytes, sizeof(uint64_t), 0},
        {(void **)&c->want_handshake, 1, 0},
        {(void **)&c->active, 1, 0},
        {(void **)&dp->endpoints, sizeof(wg_addr), 0},
        {(void **)&dp->current, sizeof(int32_t), 0xff},
        {(void **)&dp->kp_head, sizeof(int32_t), 0xff},
        {(void **)&dp->last_need_event, sizeof(double), 0},
        {(void **)&dp->aip_count, sizeof(uint32_t), 0},
        {(void **)&dp->roams, sizeof(uint64_t), 0},
    };
    enum { NT = sizeof(t) / sizeof(t[0]) };
    void *fresh[NT];
    for (int i = 0; i < NT; i++) {
        fresh[i] = zalloc((size_t)cap * t[i].size);
        if (!fresh[i]) {
            while (i--)
                free(fresh[i]);
            return -ENOMEM;
        }
        if (t[i].fill)
            memset((uint8_t *)fresh[i] + (size_t)old * t[i].size, t[i].fill,
                   (size_t)(cap - old) * t[i].size);
        if (*t[i].tab)
            memcpy(fresh[i], *t[i].tab, (size_t)old * t[i].size);
    }
    for (int i = 0; i < NT; i++) {
        wg_dp_retire(dp, *t[i].tab);
        *t[i].tab = fresh[i];
    }
    c->max_peers = cap;
    return 0;
}

int wg_dp_reserve(wg_dp *dp, uint32_t npeers)
{
    if (npeers > dp->max_peers)
        return -ENOSPC;
    if (npeers <= __atomic_load_n(&dp->clocks.max_peers, __ATOMIC_RELAXED))
        return 0;
    uint32_t cap = dp->clocks.max_peers;
    while (cap < npeers)
        cap = cap > dp->max_peers / 2 ? dp->max_peers : cap * 2;
    pthread_rwlock_wrlock(&dp->lock);
    int rc = grow_peers(dp, cap);
    pthread_rwlock_unlock(&dp->lock);
    return rc;
}

void wg_dp_free_retired(wg_dp *dp)
{
    /* Under the write lock: no batch can be using a table it read before the swap. */
    pthread_rwlock_wrlock(&dp->lock);
    for (uint32_t i = 0; i < dp->nretired; i++)
        free(dp->retired[i]);
    dp->nretired = 0;
    pthread_rwlock_unlock(&dp->lock);
}

wg_dp *wg_dp_new(uint32_t max_peers, uint32_t max_keypairs, uint32_t mtu)
{
    if (max_peers == 0 || max_peers > WG_PEERS_LIMIT)
        max_peers = WG_PEERS_LIMIT;
    if (max_keypairs == 0 || max_keypairs > WG_KEYPAIRS_LIMIT)
        max_keypairs = WG_KEYPAIRS_LIMIT;
    wg_dp *dp = zalloc(sizeof(*dp));
    if (!dp)
        return NULL;
    dp->max_peers = max_peers;
    dp->max_keypairs = max_keypairs;
    dp->mtu = mtu;
    pthread_rwlock_init(&dp->lock, NULL);

    int ok = grow_peers(dp, max_peers < PEERS_INITIAL ? max_peers : PEERS_INITIAL) == 0;
    ok = ok && wg_keypair_table_init(dp, max_keypairs < KEYPAIRS_INITIAL ? max_keypairs
                                                                        : KEYPAIRS_INITIAL) == 0;

    dp->aip4 = wg_aip_new();
    dp->aip6 = wg_aip_new();

    dp->hs = wg_hs_new();
    dp->side = wg_side_new();
    dp->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    dp->stop_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    dp->tun_fd = dp->udp4_fd = dp->udp6_fd = -1;

    if (!ok || !dp->aip4 || !dp->aip6 || !dp->hs || !dp->side || dp->evfd < 0 ||
        dp->stop_fd < 0) {
        wg_dp_free(dp);
        return NULL;
    }
    return dp;
}

void wg_dp_free(wg_dp *dp)
{
    if (!dp)
        return;
    wg_peer_clocks *c = &dp->clocks;
    free(c->last_data_sent); free(c->last_data_recv);
    free(c->last_auth_sent); free(c->last_auth_recv);
    free(c->pending_data_sent); free(c->pending_data_recv);
    free(c->tx_bytes); free(c->rx_bytes); free(c->want_handshake); free(c->active);
    free(dp->endpoints); free(dp->current); free(dp->kp_head); free(dp->last_need_event);
    free(dp->roams);
    free(dp->aip_count);
    for (uint32_t i = 0; i < dp->nretired; i++)
        free(dp->retired[i]);
    free(dp->retired);
    wg_keypair_table_free(dp);
    if (dp->aip4) wg_aip_free(dp->aip4);
    if (dp->aip6) wg_aip_free(dp->aip6);
    wg_hs_free(dp->hs);
    wg_side_free(dp->side);
    if (dp->evfd >= 0) close(dp->evfd);
    if (dp->stop_fd >= 0) close(dp->stop_fd);
    pthread_rwlock_destroy(&dp->lock);
    free(dp);
}

wg_peer_clocks *wg_dp_clocks(wg_dp *dp) { return &dp->clocks; }
uint64_t *wg_dp_drops(wg_dp *dp) { return (uint64_t *)dp->drops; }
uint64_t *wg_dp_batches(wg_dp *dp) { return &dp->batches[0][0]; }
uint64_t *wg_dp_roams(wg_dp *dp) { return dp->roams; }

void wg_count_batch(wg_dp *dp, int dir, uint32_t n)
{
    uint32_t b = 0;
    while (b < WG_BATCH_BUCKETS - 1 && (1u << b) < n)
        b++;
    __atomic_fetch_add(&dp->batches[dir][b], 1, __ATOMIC_RELAXED);
    __atomic_fetch_add(&dp->batches[dir][WG_BATCH_BUCKETS], n, __ATOMIC_RELAXED);
}

void wg_dp_set_mtu(wg_dp *dp, uint32_t mtu)
{
    pthread_rwlock_wrlock(&dp->lock);
    dp->mtu = mtu;
    pthread_rwlock_unlock(&dp->lock);
}

void wg_drop(wg_dp *dp, int reason, uint32_t n)
{
    if (reason > 0 && reason < WG_DROP_NREASONS && n)
        __atomic_fetch_add(&dp->drops[reason], n, __ATOMIC_RELAXED);
}

static void peer_clear(wg_dp *dp, uint32_t p)
{
    wg_peer_clocks *c = &dp->clocks;
    c->last_data_sent[p] = c->last_data_recv[p] = 0;
    c->last_auth_sent[p] = c->last_auth_recv[p] = 0;
    c->pending_data_sent[p] = c->pending_data_recv[p] = 0;
    c->tx_bytes[p] = c->rx_bytes[p] = 0;
    c->want_handshake[p] = 0;
    dp->last_need_event[p] = 0;
    dp->roams[p] = 0;
    memset(&dp->endpoints[p], 0, sizeof(wg_addr));
    dp->current[p] = -1;
    if (dp->side)
        wg_side_clear(dp, p);       /* staged packets and control flags (staging.c) */
}

int wg_peer_add(wg_dp *dp, uint32_t peer)
{
    pthread_rwlock_wrlock(&dp->lock);
    if (peer >= dp->clocks.max_peers) {
        pthread_rwlock_unlock(&dp->lock);
        return -EINVAL;
    }
    peer_clear(dp, peer);
    dp->clocks.active[peer] = 1;
    pthread_rwlock_unlock(&dp->lock);
    return 0;
}

int wg_peer_remove(wg_dp *dp, uint32_t peer)
{
    pthread_rwlock_wrlock(&dp->lock);
    if (peer >= dp->clocks.max_peers) {
        pthread_rwlock_unlock(&dp->lock);
        return -EINVAL;
    }
    wg_keypair_remove_peer_locked(dp, peer);
    pthread_rwlock_unlock(&dp->lock);
    wg_aip_remove_peer(dp, peer);
    pthread_rwlock_wrlock(&dp->lock);
    peer_clear(dp, peer);           /* its staged packets and control flags go too */
    dp->clocks.active[peer] = 0;
    /* Batches that looked this id up before now must not use it (see struct wg_dp). */
    __atomic_store_n(&dp->id_epoch, dp->id_epoch + 1, __ATOMIC_RELEASE);
    pthread_rwlock_unlock(&dp->lock);
    return 0;
}

int wg_peer_set_endpoint(wg_dp *dp, uint32_t peer, const wg_addr *a)
{
    return wg_peer_set_endpoints(dp, &peer, a, 1);
}

int wg_peer_set_endpoints(wg_dp *dp, const uint32_t *peers, const wg_addr *addrs, uint32_t n)
{
    pthread_rwlock_wrlock(&dp->lock);
    int rc = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (peers[i] >= dp->clocks.max_peers) {
            rc = -EINVAL;
            continue;
        }
        dp->endpoints[peers[i]] = addrs[i];
    }
    pthread_rwlock_unlock(&dp->lock);
    return rc;
}

int wg_peer_get_endpoints(wg_dp *dp, const uint32_t *peers, wg_addr *out, uint32_t n)
{
    pthread_rwlock_rdlock(&dp->lock);
    int rc = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (peers[i] < dp->clocks.max_peers) {
            out[i] = dp->endpoints[peers[i]];
        } else {
            memset(&out[i], 0, sizeof(out[i]));
            rc = -EINVAL;
        }
    }
    pthread_rwlock_unlock(&dp->lock);
    return rc;
}

int wg_peer_get_endpoint(wg_dp *dp, uint32_t peer, wg_addr *out)
{
    pthread_rwlock_rdlock(&dp->lock);
    int rc = peer < dp->clocks.max_peers ? 0 : -EINVAL;
    if (!rc)
        *out = dp->endpoints[peer];
    pthread_rwlock_unlock(&dp->lock);
    return rc;
}

void wg_peer_add_bytes(wg_dp *dp, uint32_t peer, uint64_t tx, uint64_t rx)
{
    pthread_rwlock_rdlock(&dp->lock);
    if (peer < dp->clocks.max_peers) {
        __atomic_fetch_add(&dp->clocks.tx_bytes[peer], tx, __ATOMIC_RELAXED);
        __atomic_fetch_add(&dp->clocks.rx_bytes[peer], rx, __ATOMIC_RELAXED);
    }
    pthread_rwlock_unlock(&dp->lock);
}

void wg_dp_wake(wg_dp *dp)
{
    uint64_t one = 1;
    ssize_t w = write(dp->evfd, &one, sizeof(one));
    (void)w;    /* EAGAIN only when the counter is saturated: Python is awake anyway */
}

uint32_t wg_events_pop(wg_dp *dp, wg_event *evs, uint8_t *data, uint32_t stride, uint32_t max)
{
    uint64_t v;
    ssize_t r = read(dp->evfd, &v, sizeof(v));
    (void)r;
    uint32_t n = 0;
    /* Control flags first: they are few (one entry per peer at most) and never dropped. */
    while (n < max) {
        uint32_t peer, flags, confirmed;
        if (!wg_ctl_collect(dp, &peer, &flags, &confirmed, 1))
            break;
        if (flags & WG_CTL_CONFIRMED && n < max)
            evs[n++] = (wg_event){.type = WG_EV_CONFIRMED, .peer = peer, .receiver = confirmed};
        if (flags & WG_CTL_NEED_HANDSHAKE) {
            if (n < max)
                evs[n++] = (wg_event){.type = WG_EV_NEED_HANDSHAKE, .peer = peer};
            else
                wg_ctl_set(dp, peer, WG_CTL_NEED_HANDSHAKE, 0);   /* next time */
        }
    }
    n += wg_hs_pop(dp, evs + n, data ? data + (size_t)n * stride : NULL, stride, max - n);
    if (wg_hs_queued(dp) || wg_ctl_pending(dp))
        wg_dp_wake(dp);
    return n;
}

int wg_dp_eventfd(wg_dp *dp) { return dp->evfd; }

void wg_want_handshake(wg_dp *dp, uint32_t peer, double now)
{
    /* A new request (Python cleared the last one) always goes through; a standing one is
     * repeated at most once per second. */
    if (dp->clocks.want_handshake[peer] && now - dp->last_need_event[peer] < 1.0)
        return;
    dp->last_need_event[peer] = now;
    dp->clocks.want_handshake[peer] = 1;
    wg_ctl_set(dp, peer, WG_CTL_NEED_HANDSHAKE, 0);
}

void wg_dp_set_fds(wg_dp *dp, int tun_fd, int udp4_fd, int udp6_fd)
{
    dp->tun_fd = tun_fd;
    dp->udp4_fd = udp4_fd;
    dp->udp6_fd = udp6_fd;
}

void wg_dp_stop(wg_dp *dp)
{
    __atomic_store_n(&dp->stop, 1, __ATOMIC_SEQ_CST);
    uint64_t one = 1;
    ssize_t w = write(dp->stop_fd, &one, sizeof(one));
    (void)w;
}

void wg_dp_resume(wg_dp *dp)
{
    uint64_t v;
    ssize_t r = read(dp->stop_fd, &v, sizeof(v));
    (void)r;
    __atomic_store_n(&dp->stop, 0, __ATOMIC_SEQ_CST);
}

void wg_dp_set_offloads(wg_dp *dp, int tun_vnet, int udp_gso, int udp_gro)
{
    dp->tun_vnet = tun_vnet & WG_TUN_VNET ? tun_vnet : 0;
    dp->udp_gso4 = dp->udp_gso6 = udp_gso;
    dp->udp_gro = udp_gro;
}

int wg_dp_offloads(wg_dp *dp)
{
    return (dp->tun_vnet & WG_TUN_VNET ? WG_OFFLOAD_TUN_VNET : 0) |
           (dp->udp_gso4 ? WG_OFFLOAD_UDP_GSO4 : 0) | (dp->udp_gso6 ? WG_OFFLOAD_UDP_GSO6 : 0) |
           (dp->udp_gro ? WG_OFFLOAD_UDP_GRO : 0) |
           (dp->tun_vnet & WG_TUN_USO ? WG_OFFLOAD_TUN_USO : 0);
}

void wg_dp_test_delay(wg_dp *dp, int where, uint32_t usec)
{
    if (where == WG_DELAY_SEND_ROUTED || where == WG_DELAY_RECV_OPENED)
        __atomic_store_n(&dp->test_delay[where], usec, __ATOMIC_RELAXED);
}

void wg_test_pause(wg_dp *dp, int where)
{
    uint32_t us = __atomic_load_n(&dp->test_delay[where], __ATOMIC_RELAXED);
    if (us)
        usleep(us);
}
