/* dataplane.c -- the data-plane state: peers, their clocks and endpoints, drop counters and
 * the eventfd that wakes Python for what C cannot handle (handshake_in.c, staging.c). */
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

wg_dp *wg_dp_new(uint32_t max_peers, uint32_t max_keypairs, uint32_t mtu)
{
    if (max_peers == 0 || max_keypairs == 0)
        return NULL;
    wg_dp *dp = zalloc(sizeof(*dp));
    if (!dp)
        return NULL;
    dp->max_peers = max_peers;
    dp->max_keypairs = max_keypairs;
    dp->mtu = mtu;
    pthread_rwlock_init(&dp->lock, NULL);

    wg_peer_clocks *c = &dp->clocks;
    c->max_peers = max_peers;
    c->last_data_sent = zalloc(max_peers * sizeof(double));
    c->last_data_recv = zalloc(max_peers * sizeof(double));
    c->last_auth_sent = zalloc(max_peers * sizeof(double));
    c->last_auth_recv = zalloc(max_peers * sizeof(double));
    c->pending_data_sent = zalloc(max_peers * sizeof(double));
    c->pending_data_recv = zalloc(max_peers * sizeof(double));
    c->tx_bytes = zalloc(max_peers * sizeof(uint64_t));
    c->rx_bytes = zalloc(max_peers * sizeof(uint64_t));
    c->want_handshake = zalloc(max_peers);
    c->active = zalloc(max_peers);
    dp->endpoints = zalloc(max_peers * sizeof(wg_addr));
    dp->current = zalloc(max_peers * sizeof(int32_t));
    dp->last_need_event = zalloc(max_peers * sizeof(double));
    dp->roams = zalloc(max_peers * sizeof(uint64_t));

    dp->keypairs = zalloc((size_t)max_keypairs * sizeof(struct wg_keypair));
    uint32_t hs = 16;
    while (hs < max_keypairs * 2)
        hs <<= 1;
    dp->kp_hash = zalloc(hs * sizeof(uint32_t));
    dp->kp_hash_mask = hs - 1;

    dp->aip4 = wg_aip_new();
    dp->aip6 = wg_aip_new();

    dp->hs = wg_hs_new();
    dp->side = wg_side_new();
    dp->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    dp->stop_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    dp->tun_fd = dp->udp4_fd = dp->udp6_fd = -1;

    if (!c->last_data_sent || !c->last_data_recv || !c->last_auth_sent || !c->last_auth_recv ||
        !c->pending_data_sent || !c->pending_data_recv || !c->tx_bytes || !c->rx_bytes ||
        !c->want_handshake || !c->active || !dp->endpoints || !dp->current ||
        !dp->last_need_event || !dp->roams || !dp->keypairs || !dp->kp_hash || !dp->aip4 ||
        !dp->aip6 || !dp->hs || !dp->side || dp->evfd < 0 || dp->stop_fd < 0) {
        wg_dp_free(dp);
        return NULL;
    }
    for (uint32_t i = 0; i < max_peers; i++)
        dp->current[i] = -1;
    for (uint32_t i = 0; i < max_keypairs; i++)
        pthread_mutex_init(&dp->keypairs[i].replay_lock, NULL);
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
    free(dp->endpoints); free(dp->current); free(dp->last_need_event); free(dp->roams);
    if (dp->keypairs) {
        /* No key bytes outlive the data plane. */
        explicit_bzero(dp->keypairs, (size_t)dp->max_keypairs * sizeof(struct wg_keypair));
        free(dp->keypairs);
    }
    free(dp->kp_hash);
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

uint32_t wg_events_pending(wg_dp *dp)
{
    return wg_hs_queued(dp);       /* control flags cannot back up: only the handshake queue */
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
    if (peer >= dp->max_peers)
        return -EINVAL;
    pthread_rwlock_wrlock(&dp->lock);
    peer_clear(dp, peer);
    dp->clocks.active[peer] = 1;
    pthread_rwlock_unlock(&dp->lock);
    return 0;
}

int wg_peer_remove(wg_dp *dp, uint32_t peer)
{
    if (peer >= dp->max_peers)
        return -EINVAL;
    /* Keypairs first (wg_keypair_remove takes the lock itself), then the rest. */
    for (uint32_t i = 0; i < dp->max_keypairs; i++) {
        pthread_rwlock_rdlock(&dp->lock);
        int mine = dp->keypairs[i].in_use && dp->keypairs[i].peer == peer;
        uint32_t idx = dp->keypairs[i].local_index;
        pthread_rwlock_unlock(&dp->lock);
        if (mine)
            wg_keypair_remove(dp, idx);
    }
    wg_aip_remove_peer(dp, peer);
    pthread_rwlock_wrlock(&dp->lock);
    peer_clear(dp, peer);
    dp->clocks.active[peer] = 0;
    pthread_rwlock_unlock(&dp->lock);
    return 0;
}

int wg_peer_set_endpoint(wg_dp *dp, uint32_t peer, const wg_addr *a)
{
    if (peer >= dp->max_peers)
        return -EINVAL;
    pthread_rwlock_wrlock(&dp->lock);
    dp->endpoints[peer] = *a;
    pthread_rwlock_unlock(&dp->lock);
    return 0;
}

int wg_peer_get_endpoint(wg_dp *dp, uint32_t peer, wg_addr *out)
{
    if (peer >= dp->max_peers)
        return -EINVAL;
    pthread_rwlock_rdlock(&dp->lock);
    *out = dp->endpoints[peer];
    pthread_rwlock_unlock(&dp->lock);
    return 0;
}

void wg_peer_add_bytes(wg_dp *dp, uint32_t peer, uint64_t tx, uint64_t rx)
{
    if (peer >= dp->max_peers)
        return;
    __atomic_fetch_add(&dp->clocks.tx_bytes[peer], tx, __ATOMIC_RELAXED);
    __atomic_fetch_add(&dp->clocks.rx_bytes[peer], rx, __ATOMIC_RELAXED);
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

void wg_dp_set_threads(wg_dp *dp, int mode)
{
    dp->threads = mode == WG_THREADS_PIPELINE ? WG_THREADS_PIPELINE : WG_THREADS_RTC;
}

int wg_dp_offloads(wg_dp *dp)
{
    return (dp->tun_vnet & WG_TUN_VNET ? 1 : 0) | (dp->udp_gso4 ? 2 : 0) |
           (dp->udp_gso6 ? 4 : 0) | (dp->udp_gro ? 8 : 0) | (dp->tun_vnet & WG_TUN_USO ? 16 : 0);
}
