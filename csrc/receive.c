/*
 * receive.c -- the inbound flow, run to completion by one thread per UDP socket:
 *
 *   1. wait until the socket is readable, then recvmmsg up to WG_IO_BATCH datagrams, each into
 *      a ring slot at offset 0, with its source address and (IP_PKTINFO / IPV6_PKTINFO) the
 *      local address and interface it reached: the sticky source replies leave from.  With
 *      UDP GRO a read may hold a train of equal-sized datagrams from one source: they are then
 *      read into large buffers and split into slots;
 *   2. handshake messages (types 1-3) of their exact size go to the intake (handshake_in.c):
 *      mac1 checked, and under load mac2, the cookie reply and the per-source rate limit;
 *      what passes is queued for Python, fairly between sources; anything that is not a
 *      plausible transport message is a counted drop;
 *   3. wg_open_batch looks each transport message's receiver index up, pre-checks the replay
 *      window, opens it in place (plaintext at HEADROOM) and then records its counter;
 *   4. under the configuration lock, each plaintext is checked: empty = keepalive, otherwise an
 *      IPv4/IPv6 packet whose length fits and whose source address the allowed-IPs trie maps
 *      back to the peer that sent it (else WG_DROP_ALLOWED_IPS);
 *   5. per peer, once per batch: clocks and byte counters stamped, the endpoint moved to the
 *      newest authenticated source and the local address it reached (roaming; a new local
 *      address alone also moves it), a rekey requested when our keypair is old;
 *      steps 4-5 trust the peer ids step 3 found only if no peer id was released since the
 *      batch began (dp->id_epoch), else the batch is a counted drop;
 *   6. the surviving packets are written to the TUN, one write each; with TUN offloads,
 *      consecutive segments of one TCP flow (and with USO, equal-sized datagrams of one UDP
 *      flow) are first joined into one super-packet (wg_gro_coalesce), so the kernel takes a
 *      whole train in one write.
 */
#include "io.h"
#include "ip.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <netinet/udp.h>

#ifndef UDP_GRO
#define UDP_GRO 104
#endif

#define GRO_BUFS     WG_IO_BATCH    /* large reads per recvmmsg when UDP GRO is on (4 MB) */
#define GRO_BUF_CAP  65536
#define RECV_SLOTS   512            /* slots a GRO batch may fill before it is processed */
#define SCRATCH_CAP  (4 * 65600)    /* TUN super-packets under construction */

struct rxbatch {
    struct mmsghdr msgs[WG_IO_BATCH];
    struct iovec iov[WG_IO_BATCH];
    struct sockaddr_storage src[WG_IO_BATCH];
    union {
        char buf[CMSG_SPACE(sizeof(int)) + WG_SRC_CMSG_SPACE];    /* UDP_GRO, pktinfo */
        struct cmsghdr align;
    } ctl[WG_IO_BATCH];
    uint8_t *scratch;               /* SCRATCH_CAP bytes, for wg_gro_coalesce */
    uint8_t *pkts[WG_MAX_BATCH];
    uint32_t lens[WG_MAX_BATCH];
    uint8_t *outs[WG_MAX_BATCH];
    uint32_t outlens[WG_MAX_BATCH];
};

struct seen {
    uint32_t peer;
    uint8_t  data;          /* any non-keepalive message */
    uint64_t bytes;
    wg_addr  addr;          /* newest authenticated source */
};

/* Clocks and counters of one peer for what it sent in this batch. */
static void stamp(wg_dp *dp, uint32_t peer, double now, uint64_t bytes, int data)
{
    wg_peer_clocks *c = &dp->clocks;
    c->last_auth_recv[peer] = now;
    c->pending_data_sent[peer] = 0;
    if (data) {
        c->last_data_recv[peer] = now;
        if (c->pending_data_recv[peer] == 0)
            c->pending_data_recv[peer] = now;
    }
    __atomic_fetch_add(&c->rx_bytes[peer], bytes, __ATOMIC_RELAXED);
}

/* Steps 4 and 5 for slots [0, n) after wg_open_batch, which ran under an earlier hold of the
 * lock: if a peer id was released since epoch was read (before the open), an id in r->peer may
 * name another peer now, so the batch is dropped rather than checked against its prefixes. */
static void check_and_stamp(wg_dp *dp, wg_ring *r, uint32_t n, double now, uint32_t epoch)
{
    struct seen seen[WG_IO_BATCH];          /* peers in this batch (the first 64 of them) */
    uint32_t nseen = 0;

    pthread_rwlock_rdlock(&dp->lock);
    if (dp->id_epoch != epoch) {
        pthread_rwlock_unlock(&dp->lock);
        for (uint32_t i = 0; i < n; i++) {
            if (r->status[i] == WG_OK) {
                r->status[i] = WG_DROP_NO_KEYPAIR;
                wg_drop(dp, WG_DROP_NO_KEYPAIR, 1);
            }
        }
        return;
    }
    for (uint32_t i = 0; i < n; i++) {
        if (r->status[i] != WG_OK)
            continue;
        uint32_t peer = r->peer[i];
        uint32_t msglen = r->len[i] + WG_MIN_DATA_LEN;
        int data = r->len[i] != 0;
        if (data) {
            struct wg_ip ip;
            uint8_t *p = wg_slot(r, i) + WG_HEADROOM;
            uint32_t ilen = wg_ip_parse(p, r->len[i], &ip) ? wg_ip_len(&ip, r->len[i]) : 0;
            if (!ilen) {
                r->status[i] = WG_DROP_BAD_INNER;
                wg_drop(dp, WG_DROP_BAD_INNER, 1);
            } else if (wg_aip_lookup_nolock(ip.family == AF_INET ? dp->aip4 : dp->aip6, ip.family,
                                            ip.src) != (int)peer) {
                r->status[i] = WG_DROP_ALLOWED_IPS;
                wg_drop(dp, WG_DROP_ALLOWED_IPS, 1);
            } else {
                r->len[i] = ilen;   /* the padding stays behind */
            }
        }
        /* Authenticated, even if its payload was refused: it counts for the timers, the
         * byte counter and roaming -- once per peer per batch, below. */
        uint32_t k = 0;
        while (k < nseen && seen[k].peer != peer)
            k++;
        if (k == nseen) {
            if (nseen == WG_IO_BATCH) {
                stamp(dp, peer, now, msglen, data);     /* a 65th peer: no roaming record */
                continue;
            }
            seen[nseen++] = (struct seen){.peer = peer};
        }
        seen[k].addr = r->addr[i];
        seen[k].bytes += msglen;
        seen[k].data |= (uint8_t)data;
    }
    int moved = 0;
    for (uint32_t k = 0; k < nseen; k++) {
        uint32_t peer = seen[k].peer;
        stamp(dp, peer, now, seen[k].bytes, seen[k].data);
        if (!wg_addr_equal(&dp->endpoints[peer], &seen[k].addr))
            moved = 1;
        /* Data on a keypair we initiated that is nearly too old: rekey now (6.2). */
        const struct wg_keypair *kp = wg_keypair_of_peer(dp, peer);
        if (seen[k].data && kp && kp->initiator &&
            now - kp->created >= WG_REJECT_AFTER_TIME - WG_KEEPALIVE_TIMEOUT - WG_REKEY_TIMEOUT)
            wg_want_handshake(dp, peer, now);
    }
    pthread_rwlock_unlock(&dp->lock);

    if (moved) {
        pthread_rwlock_wrlock(&dp->lock);
        for (uint32_t k = 0; k < nseen && dp->id_epoch == epoch; k++)
            if (dp->clocks.active[seen[k].peer]) {
                if (!wg_addr_equal(&dp->endpoints[seen[k].peer], &seen[k].addr))
                    dp->roams[seen[k].peer]++;          /* under the write lock */
                dp->endpoints[seen[k].peer] = seen[k].addr;
            }
        pthread_rwlock_unlock(&dp->lock);
    }
}

static void tun_write(wg_dp *dp, const uint8_t *p, uint32_t len)
{
    ssize_t w;
    do {
        w = write(dp->tun_fd, p, len);
    } while (w < 0 && errno == EINTR);
    if (w < 0)
        wg_drop(dp, WG_DROP_IO, 1);
}

static void deliver(wg_dp *dp, wg_ring *r, uint32_t n, struct rxbatch *rb)
{
    if (!dp->tun_vnet) {
        for (uint32_t i = 0; i < n; i++)
            if (r->status[i] == WG_OK && r->len[i])
                tun_write(dp, wg_slot(r, i) + WG_HEADROOM, r->len[i]);
        return;
    }
    uint32_t k = 0;
    for (uint32_t i = 0; i <= n; i++) {
        if (k == WG_MAX_BATCH || (i == n && k)) {
            uint32_t w = wg_gro_coalesce(rb->pkts, rb->lens, k, rb->scratch, SCRATCH_CAP,
                                         rb->outs, rb->outlens, WG_MAX_BATCH,
                                         dp->tun_vnet & WG_TUN_USO ? WG_GRO_UDP : 0);
            for (uint32_t j = 0; j < w; j++)
                tun_write(dp, rb->outs[j], rb->outlens[j]);
            k = 0;
        }
        if (i == n)
            break;
        if (r->status[i] == WG_OK && r->len[i]) {
            rb->pkts[k] = wg_slot(r, i) + WG_HEADROOM;
            rb->lens[k++] = r->len[i];
        }
    }
}

/* Steps 2-6 for slots [0, n), each holding a datagram (len, addr) with status WG_OK. */
static void process(wg_dp *dp, wg_ring *r, uint32_t n, struct rxbatch *rb)
{
    double now = wg_now();
    uint32_t epoch = wg_id_epoch(dp);      /* before the opens: see check_and_stamp */
    for (uint32_t i = 0; i < n; i++) {
        uint8_t *m = wg_slot(r, i);
        uint32_t len = r->len[i];
        if (r->status[i] != WG_OK)
            continue;
        if (len >= 4 && m[0] >= WG_MSG_INITIATION && m[0] <= WG_MSG_COOKIE_REPLY &&
            !m[1] && !m[2] && !m[3]) {
            /* Only a handshake message of its exact size is worth waking Python for. */
            static const uint32_t size[4] = {
                [WG_MSG_INITIATION] = WG_INITIATION_LEN,
                [WG_MSG_RESPONSE] = WG_RESPONSE_LEN,
                [WG_MSG_COOKIE_REPLY] = WG_COOKIE_REPLY_LEN,
            };
            if (len != size[m[0]]) {
                r->status[i] = WG_DROP_SHORT;
                wg_drop(dp, WG_DROP_SHORT, 1);
                continue;
            }
            /* mac1, and under load mac2, the cookie reply and the rate limit, are decided
             * in handshake_in.c; only what passes is queued for Python. */
            r->status[i] = (uint8_t)wg_hs_receive(dp, m, len, &r->addr[i], now);
        }
    }
    uint32_t i = 0;
    while (i < n) {
        if (r->status[i] != WG_OK) {
            i++;
            continue;
        }
        uint32_t j = i;
        while (j < n && r->status[j] == WG_OK)
            j++;
        wg_open_batch(dp, r, i, j - i, now);
        i = j;
    }
    wg_test_pause(dp, WG_DELAY_RECV_OPENED);
    check_and_stamp(dp, r, n, now, epoch);
    deliver(dp, r, n, rb);
}

static void prepare(struct rxbatch *rb, uint32_t count)
{
    for (uint32_t i = 0; i < count; i++) {
        struct msghdr *h = &rb->msgs[i].msg_hdr;
        memset(h, 0, sizeof(*h));
        h->msg_iov = &rb->iov[i];
        h->msg_iovlen = 1;
        h->msg_name = &rb->src[i];
        h->msg_namelen = sizeof(rb->src[i]);
        h->msg_control = rb->ctl[i].buf;
        h->msg_controllen = sizeof(rb->ctl[i].buf);
    }
}

/* The segment size of a GRO read, or 0 when it is one datagram. */
static uint32_t gro_size(struct msghdr *h)
{
    for (struct cmsghdr *c = CMSG_FIRSTHDR(h); c; c = CMSG_NXTHDR(h, c))
        if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_GRO) {
            int v;
            memcpy(&v, CMSG_DATA(c), sizeof(v));
            return v > 0 ? (uint32_t)v : 0;
        }
    return 0;
}

/* Steps 2-6 for slots [0, n). */
static void hand_on(wg_dp *dp, wg_ring *r, uint32_t n, struct rxbatch *rb)
{
    wg_count_batch(dp, WG_BATCH_UDP, n);
    process(dp, r, n, rb);
}

static void free_rxbatch(struct rxbatch *rb)
{
    if (rb)
        free(rb->scratch);
    free(rb);
}

static struct rxbatch *new_rxbatch(int vnet)
{
    struct rxbatch *rb = calloc(1, sizeof(*rb));
    if (rb && vnet && !(rb->scratch = malloc(SCRATCH_CAP))) {
        free(rb);
        return NULL;
    }
    return rb;
}

int wg_run_receive(wg_dp *dp, int udp_fd)
{
    /* A slot takes the largest transport message the MTU allows, plus room to spot larger. */
    uint32_t cap = (dp->mtu > WG_SLOT_MIN_MTU ? dp->mtu : WG_SLOT_MIN_MTU) + 64;
    uint32_t msg_cap = cap + WG_HEADROOM;   /* message = header + plaintext + tag */
    int gro = dp->udp_gro;
    uint32_t nslots = gro ? RECV_SLOTS : WG_IO_BATCH;
    uint32_t nbufs = gro ? GRO_BUFS : WG_IO_BATCH;
    struct rxbatch *rb = new_rxbatch(dp->tun_vnet);
    wg_ring *r = wg_ring_new(nslots, cap);
    uint8_t *bufs = gro ? malloc((size_t)GRO_BUFS * GRO_BUF_CAP) : NULL;
    int ret = 0;
    if (!r || !rb || (gro && !bufs)) {
        ret = -ENOMEM;
        goto out;
    }
    for (uint32_t i = 0; i < nbufs; i++) {
        rb->iov[i].iov_base = gro ? bufs + (size_t)i * GRO_BUF_CAP : wg_slot(r, i);
        rb->iov[i].iov_len = gro ? GRO_BUF_CAP : msg_cap;
    }
    int fails = 0, more = 0;
    for (;;) {
        /* Sleep in poll only when the last read did not fill every buffer. */
        if (!more && !wg_wait_readable(dp, udp_fd))
            break;
        if (__atomic_load_n(&dp->stop, __ATOMIC_ACQUIRE))
            break;
        prepare(rb, nbufs);
        int got = recvmmsg(udp_fd, rb->msgs, nbufs, MSG_DONTWAIT, NULL);
        more = got == (int)nbufs;
        if (got <= 0) {
            if (got < 0 && errno != EAGAIN && errno != EINTR && ++fails > WG_IO_FAILS_MAX)
                break;
            continue;
        }
        fails = 0;
        if (!gro) {
            /* Step 1 without GRO: every datagram is already in its own slot. */
            for (uint32_t i = 0; i < (uint32_t)got; i++) {
                wg_addr_from_sockaddr(&r->addr[i], &rb->src[i]);
                wg_addr_src_from_msg(&r->addr[i], &rb->msgs[i].msg_hdr);
                r->len[i] = rb->msgs[i].msg_len;
                r->status[i] = WG_OK;
                if (rb->msgs[i].msg_hdr.msg_flags & MSG_TRUNC) {
                    r->status[i] = WG_DROP_TOO_BIG;
                    wg_drop(dp, WG_DROP_TOO_BIG, 1);
                }
            }
            hand_on(dp, r, (uint32_t)got, rb);
            continue;
        }
        /* Step 1 with GRO: split each train into slots, processing whenever they are full. */
        uint32_t n = 0;
        for (uint32_t b = 0; b < (uint32_t)got; b++) {
            struct msghdr *h = &rb->msgs[b].msg_hdr;
            uint32_t len = rb->msgs[b].msg_len;
            uint32_t seg = gro_size(h);
            if (!seg || seg > len)
                seg = len;
            wg_addr src;
            wg_addr_from_sockaddr(&src, &rb->src[b]);
            wg_addr_src_from_msg(&src, h);
            const uint8_t *p = rb->iov[b].iov_base;
            for (uint32_t off = 0; off < len; off += seg) {
                uint32_t l = len - off < seg ? len - off : seg;
                if (n == nslots) {
                    hand_on(dp, r, n, rb);
                    n = 0;
                }
                r->addr[n] = src;
                r->len[n] = l;
                r->status[n] = WG_OK;
                if (l > msg_cap || (h->msg_flags & MSG_TRUNC)) {
                    r->status[n] = WG_DROP_TOO_BIG;
                    wg_drop(dp, WG_DROP_TOO_BIG, 1);
                } else {
                    memcpy(wg_slot(r, n), p + off, l);
                }
                n++;
            }
        }
        if (n)
            hand_on(dp, r, n, rb);
    }
out:
    wg_ring_free(r);
    free_rxbatch(rb);
    free(bufs);
    return ret;
}
