/*
 * send.c -- the outbound flow, run to completion by one thread:
 *
 *   1. wait until the TUN is readable, then read up to WG_IO_BATCH packets into ring slots at
 *      HEADROOM (one read each: without IFF_VNET_HDR the TUN hands out one packet per read);
 *   2. under the configuration lock, map each packet's destination address to a peer through
 *      the allowed-IPs trie (no owner: counted drop WG_DROP_NO_ROUTE);
 *   3. wg_seal_batch pads, numbers and seals every packet in place under its peer's current
 *      keypair; a peer without a usable keypair gets its packets handed to Python (WG_EV_STAGE)
 *      and a handshake requested;
 *   4. one sendmmsg per address family sends every sealed message from the slot it was read into;
 *   5. the per-peer clocks and byte counters are stamped once per peer per batch.
 *
 * The control plane sends keepalives and staged packets with wg_send_packet, which takes the
 * same path (steps 3-5) for one packet.
 */
#include "io.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct txbatch {
    struct mmsghdr msgs[WG_IO_BATCH];
    struct iovec iov[WG_IO_BATCH];
    struct sockaddr_storage dst[WG_IO_BATCH];
};

/* Destination address of an IP packet at p, or NULL when it is not a sane IPv4/IPv6 packet. */
static const uint8_t *inner_dst(const uint8_t *p, uint32_t len, int *family)
{
    if (len >= 20 && (p[0] >> 4) == 4) {
        *family = AF_INET;
        return p + 16;
    }
    if (len >= 40 && (p[0] >> 4) == 6) {
        *family = AF_INET6;
        return p + 24;
    }
    return NULL;
}

static void send_all(wg_dp *dp, int fd, struct mmsghdr *msgs, uint32_t n)
{
    uint32_t done = 0;
    while (done < n) {
        int r = sendmmsg(fd, msgs + done, n - done, 0);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            /* The head message failed (unreachable, no buffer): drop it and go on. */
            wg_drop(dp, WG_DROP_IO, 1);
            done++;
            continue;
        }
        done += (uint32_t)r;
    }
}

/* Gather the sealed messages of one address family into tb and send them in one sendmmsg. */
static void send_family(wg_dp *dp, wg_ring *r, uint32_t n, int family, int fd, struct txbatch *tb)
{
    uint32_t k = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (r->status[i] != WG_OK || r->addr[i].family != family)
            continue;
        struct mmsghdr *m = &tb->msgs[k];
        memset(m, 0, sizeof(*m));
        tb->iov[k].iov_base = wg_ring_slot(r, i);
        tb->iov[k].iov_len = r->len[i];
        m->msg_hdr.msg_iov = &tb->iov[k];
        m->msg_hdr.msg_iovlen = 1;
        m->msg_hdr.msg_name = &tb->dst[k];
        m->msg_hdr.msg_namelen = wg_addr_to_sockaddr(&r->addr[i], &tb->dst[k]);
        k++;
    }
    if (k)
        send_all(dp, fd, tb->msgs, k);
}

/* Steps 3-5 for slots [0, n) of r whose status is WG_OK and peer is set.  With stage set,
 * packets of peers without a usable key go to Python; without it they are left as they are. */
static void seal_and_send(wg_dp *dp, wg_ring *r, uint32_t n, double now, struct txbatch *tb,
                          int stage)
{
    wg_peer_clocks *c = &dp->clocks;
    wg_seal_batch(dp, r, 0, n, now);

    int any4 = 0, any6 = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (r->status[i] == WG_DROP_NO_KEY) {
            if (stage) {
                wg_ev_push(dp, WG_EV_STAGE, r->peer[i], 0, NULL,
                           wg_ring_slot(r, i) + WG_HEADROOM, r->len[i]);
                wg_want_handshake(dp, r->peer[i], now);
            }
            continue;
        }
        if (r->status[i] != WG_OK)
            continue;
        uint16_t fam = r->addr[i].family;
        if (fam == AF_INET && dp->udp4_fd >= 0) {
            any4 = 1;
        } else if (fam == AF_INET6 && dp->udp6_fd >= 0) {
            any6 = 1;
        } else {
            r->status[i] = WG_DROP_NO_ENDPOINT;
            wg_drop(dp, WG_DROP_NO_ENDPOINT, 1);
        }
    }
    if (any4)
        send_family(dp, r, n, AF_INET, dp->udp4_fd, tb);
    if (any6)
        send_family(dp, r, n, AF_INET6, dp->udp6_fd, tb);

    /* Clocks: once per run of one peer (batches are usually one peer). */
    uint32_t last_peer = UINT32_MAX;
    uint64_t bytes = 0;
    int data = 0;
    for (uint32_t i = 0; i <= n; i++) {
        int flush = i == n || (r->status[i] == WG_OK && r->peer[i] != last_peer);
        if (flush && last_peer != UINT32_MAX) {
            c->last_auth_sent[last_peer] = now;
            c->pending_data_recv[last_peer] = 0;
            if (data) {
                c->last_data_sent[last_peer] = now;
                if (c->pending_data_sent[last_peer] == 0)
                    c->pending_data_sent[last_peer] = now;
            }
            __atomic_fetch_add(&c->tx_bytes[last_peer], bytes, __ATOMIC_RELAXED);
            bytes = 0;
            data = 0;
        }
        if (i == n)
            break;
        if (r->status[i] != WG_OK)
            continue;
        last_peer = r->peer[i];
        bytes += r->len[i];
        if (r->len[i] > WG_MIN_DATA_LEN)
            data = 1;
    }
}

int wg_run_send(wg_dp *dp)
{
    uint32_t cap = dp->mtu > 1500 ? dp->mtu : 1500;
    wg_ring *r = wg_ring_new(WG_IO_BATCH, cap);
    struct txbatch *tb = calloc(1, sizeof(*tb));
    if (!r || !tb) {
        wg_ring_free(r);
        free(tb);
        return -ENOMEM;
    }
    int fails = 0;
    while (wg_wait_readable(dp, dp->tun_fd)) {
        uint32_t n = 0;
        while (n < WG_IO_BATCH) {
            uint8_t *p = wg_ring_slot(r, n) + WG_HEADROOM;
            ssize_t got = read(dp->tun_fd, p, r->data_cap);
            if (got < 0) {
                if (errno == EINTR)
                    continue;
                if (errno != EAGAIN && ++fails > 1000)
                    goto out;   /* the TUN is gone */
                break;
            }
            fails = 0;
            if (got == 0)
                break;
            r->len[n] = (uint32_t)got;
            r->status[n] = WG_OK;
            n++;
        }
        if (!n)
            continue;

        /* Step 2: route every packet under one read lock. */
        uint32_t keep = 0;
        pthread_rwlock_rdlock(&dp->lock);
        for (uint32_t i = 0; i < n; i++) {
            int fam;
            const uint8_t *p = wg_ring_slot(r, i) + WG_HEADROOM;
            const uint8_t *dst = inner_dst(p, r->len[i], &fam);
            int peer = dst ? wg_aip_lookup_nolock(fam == AF_INET ? dp->aip4 : dp->aip6, fam, dst) : -1;
            if (peer < 0) {
                wg_drop(dp, dst ? WG_DROP_NO_ROUTE : WG_DROP_BAD_INNER, 1);
                continue;
            }
            if (r->len[i] > dp->mtu) {
                wg_drop(dp, WG_DROP_TOO_BIG, 1);
                continue;
            }
            if (keep != i) {
                memcpy(wg_ring_slot(r, keep) + WG_HEADROOM, p, r->len[i]);
                r->len[keep] = r->len[i];
            }
            r->peer[keep] = (uint32_t)peer;
            r->status[keep] = WG_OK;
            keep++;
        }
        pthread_rwlock_unlock(&dp->lock);
        if (keep)
            seal_and_send(dp, r, keep, wg_now(), tb, 1);
    }
out:
    wg_ring_free(r);
    free(tb);
    return 0;
}

int wg_send_packet(wg_dp *dp, uint32_t peer, const uint8_t *pkt, uint32_t len, double now)
{
    static __thread wg_ring *r;
    static __thread struct txbatch *tb;
    if (peer >= dp->max_peers)
        return WG_DROP_NO_ROUTE;
    if (!r) {
        r = wg_ring_new(1, 65536 - WG_HEADROOM - WG_TAILROOM - 64);
        tb = calloc(1, sizeof(*tb));
        if (!r || !tb)
            return WG_DROP_IO;
    }
    if (len > r->data_cap || len > dp->mtu)
        return WG_DROP_TOO_BIG;
    if (len)
        memcpy(wg_ring_slot(r, 0) + WG_HEADROOM, pkt, len);
    r->len[0] = len;
    r->peer[0] = peer;
    r->status[0] = WG_OK;
    seal_and_send(dp, r, 1, now, tb, 0);
    return r->status[0];
}
