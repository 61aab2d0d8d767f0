/*
 * send.c -- the outbound flow, run to completion by one thread:
 *
 *   1. wait until the TUN is readable, then read packets into ring slots at HEADROOM until the
 *      batch is full or the TUN is empty.  With TUN offloads each read lands in one 64 KB
 *      buffer, as it may be a TSO/USO super-packet: wg_vnet_segment_from cuts it into
 *      MTU-sized packets, one per slot, finishing checksums as it copies (one plain read()
 *      there cost less per small packet than a readv() split between a slot and the buffer);
 *      a super-packet with more segments than free slots (a small MSS) fills the batch and
 *      its remaining segments start the next one;
 *   2. under the configuration lock, map each packet's destination address to a peer through
 *      the allowed-IPs trie (no owner: counted drop WG_DROP_NO_ROUTE); one of our own UDP
 *      messages to that peer's endpoint, routed back into its tunnel, is a routing loop
 *      (counted drop WG_DROP_LOOP);
 *   3. wg_seal_batch pads, numbers and seals every packet in place under its peer's current
 *      keypair; a peer without a usable keypair gets its packets staged in C (staging.c, at
 *      most WG_MAX_STAGED per peer) and a handshake requested; Python flushes them
 *      (wg_stage_flush) once a session exists;
 *   4. one sendmmsg per address family (socket.c) sends every sealed message from the slot it
 *      was read into, from the endpoint's sticky source (an IP_PKTINFO / IPV6_PKTINFO cmsg:
 *      the local address the peer last reached us on; when the kernel refuses it, the source
 *      is forgotten and the message goes again as routing decides); with UDP GSO, runs of
 *      equal-sized messages to one endpoint go as one datagram train (UDP_SEGMENT) that the
 *      kernel splits as late as it can;
 *   5. the per-peer clocks and byte counters are stamped once per peer per batch.
 *
 * Steps 2, 3 and 5 each hold the configuration lock (read) once.  A peer id found in step 2
 * is only trusted later if no peer id was released in between (dp->id_epoch, kept in the
 * ring): otherwise the batch is dropped, since the id may name another peer by then.
 *
 * The control plane sends keepalives (and wg_stage_flush staged packets) with wg_send_packet,
 * which takes the same path (steps 3-5) for one packet.
 */
#include "io.h"
#include "ip.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SEND_SLOTS   WG_SEND_BATCH  /* slots a batch may fill */
#define SEND_REFILL  128            /* with offloads: read again while this many are free */
#define BIG_CAP      (65536 + 2 * WG_VNET_HDR_LEN)   /* one TUN read: a 64 KB super-packet */
#define ONE_CAP      (65536 - WG_HEADROOM - WG_TAILROOM - 64)   /* wg_send_packet's slot */

/* Whether the IP packet p (header ip), which the allowed IPs give to a peer with endpoint
 * ep, is a UDP datagram from our own socket to that endpoint: one of our messages that the
 * route to the endpoint led back into the tunnel to the same peer.  Sealed again, it would come
 * back again, a little bigger, forever (the kernel drops these: the route leads to the device
 * itself).  Other peers' endpoints may lie behind a peer (onion routing): only a message to
 * this very peer is a loop.  Called under the configuration lock. */
static int routed_into_itself(const wg_dp *dp, const uint8_t *p, uint32_t len,
                              const struct wg_ip *ip, const wg_addr *ep)
{
    int fam = ip->family;
    if (ep->family != fam || ip->proto != IPPROTO_UDP)
        return 0;
    /* IPv4: the first fragment (the one with the ports); IPv6: no extension headers. */
    if (fam == AF_INET && (ip->hdr_len < WG_IPV4_HDR_LEN || (wg_ipv4_frag(p) & WG_IPV4_FRAG_OFF)))
        return 0;
    if (len < ip->hdr_len + WG_UDP_HDR_LEN)
        return 0;
    const uint8_t *udp = p + ip->hdr_len;
    if (wg_be16(udp + 2) != ep->port || memcmp(ip->dst, ep->addr, wg_ip_addr_len(fam)))
        return 0;
    /* Rare from here on (traffic to the peer's own endpoint): ask the socket for its port. */
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    int fd = fam == AF_INET ? dp->udp4_fd : dp->udp6_fd;
    if (fd < 0 || getsockname(fd, (struct sockaddr *)&ss, &sl) != 0)
        return 0;
    uint16_t own = fam == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port
                                  : ((struct sockaddr_in6 *)&ss)->sin6_port;
    return ntohs(own) == wg_be16(udp);
}

/* Steps 3-5 for slots [0, n) of r whose status is WG_OK and peer is set.  With stage set,
 * packets of peers without a usable key go to Python; without it they are left as they are. */
static void seal_and_send(wg_dp *dp, wg_ring *r, uint32_t n, double now, struct wg_txbatch *tb,
                          int stage)
{
    wg_peer_clocks *c;
    wg_seal_batch(dp, r, 0, n, now);

    /* The peer ids were looked up under an earlier hold of the lock: if an id was released
     * since, it may name another peer now, and what was sealed may be under its keys. */
    pthread_rwlock_rdlock(&dp->lock);
    if (dp->id_epoch != r->epoch) {
        pthread_rwlock_unlock(&dp->lock);
        wg_drop(dp, WG_DROP_NO_ROUTE, n);
        for (uint32_t i = 0; i < n; i++)
            r->status[i] = WG_DROP_NO_ROUTE;
        return;
    }
    for (uint32_t i = 0; stage && i < n; i++) {
        if (r->status[i] == WG_DROP_NO_KEY) {
            /* Kept in C per peer (staging.c) until Python flushes them. */
            wg_stage_put(dp, r->peer[i], wg_slot(r, i) + WG_HEADROOM, r->len[i]);
            wg_want_handshake(dp, r->peer[i], now);
        }
    }
    pthread_rwlock_unlock(&dp->lock);

    wg_udp_send(dp, r, n, tb);

    /* Clocks: once per run of one peer (batches are usually one peer), under the lock, as
     * growth moves the tables; skipped if an id was released meanwhile. */
    pthread_rwlock_rdlock(&dp->lock);
    if (dp->id_epoch != r->epoch) {
        pthread_rwlock_unlock(&dp->lock);
        return;
    }
    c = &dp->clocks;
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
    pthread_rwlock_unlock(&dp->lock);
}

/* A TUN read held in big while it is cut into slots, possibly across several batches. */
struct pending {
    uint32_t len;                   /* bytes in big; 0 = nothing pending */
    uint32_t next;                  /* the next segment to cut */
};

/* Read one TUN packet with its vnet header into big.  1 = read, 0 = the TUN has nothing more
 * (or failed: *err set). */
static int read_vnet(wg_dp *dp, uint8_t *big, struct pending *pd, int *err)
{
    ssize_t got;
    do {
        got = read(dp->tun_fd, big, BIG_CAP);
    } while (got < 0 && errno == EINTR);
    if (got <= 0) {
        *err = got < 0 && errno != EAGAIN;
        return 0;
    }
    pd->len = (uint32_t)got;
    pd->next = 0;
    return 1;
}

/* Cut the pending packet into slots n, n+1, ... up to SEND_SLOTS (outs[i] = where slot i's
 * packet starts): as many segments as fit, the rest stays pending for the next batch, so a
 * super-packet of any MSS goes out whole.  Returns the number of packets (0 for a counted
 * drop). */
static uint32_t cut_vnet(wg_dp *dp, wg_ring *r, uint32_t n, const uint8_t *big,
                         struct pending *pd, uint8_t **outs)
{
    uint32_t total = 0;
    int c = wg_vnet_segment_from(big, pd->len, pd->next, outs + n, r->data_cap, &r->len[n],
                                 SEND_SLOTS - n, &total);
    if (c < 0) {
        wg_drop(dp, c == -WG_OFF_ERR_TOO_BIG ? WG_DROP_TOO_BIG : WG_DROP_BAD_INNER, 1);
        pd->len = 0;
        return 0;
    }
    for (int k = 0; k < c; k++)
        r->status[n + (uint32_t)k] = WG_OK;
    pd->next += (uint32_t)c;
    if (pd->next >= total)
        pd->len = 0;
    return (uint32_t)c;
}

int wg_run_send(wg_dp *dp)
{
    uint32_t cap = dp->mtu > WG_SLOT_MIN_MTU ? dp->mtu : WG_SLOT_MIN_MTU;
    struct wg_txbatch *tb = wg_txbatch_new();
    wg_ring *r = wg_ring_new(SEND_SLOTS, cap);
    uint8_t *big = malloc(BIG_CAP);
    int ret = 0;
    if (!r || !tb || !big) {
        ret = -ENOMEM;
        goto out;
    }
    int vnet = dp->tun_vnet & WG_TUN_VNET;
    uint8_t *outs[SEND_SLOTS];
    for (uint32_t i = 0; i < SEND_SLOTS; i++)
        outs[i] = wg_slot(r, i) + WG_HEADROOM;
    int fails = 0, more = 0;
    struct pending pend = {0, 0};
    for (;;) {
        /* Sleep in poll only when the last batch emptied the TUN (nothing left pending). */
        if (!more && !wg_wait_readable(dp, dp->tun_fd))
            break;
        if (__atomic_load_n(&dp->stop, __ATOMIC_ACQUIRE))
            break;
        uint32_t n = 0;
        int err = 0;
        more = 1;
        while (n < SEND_SLOTS) {
            if (vnet) {
                /* Read again only while a whole 64 KB super-packet of a usual MSS fits. */
                if (!pend.len && (n + SEND_REFILL > SEND_SLOTS ||
                                  !read_vnet(dp, big, &pend, &err))) {
                    more = n + SEND_REFILL > SEND_SLOTS;
                    break;
                }
                n += cut_vnet(dp, r, n, big, &pend, outs);
                continue;
            }
            uint8_t *p = wg_slot(r, n) + WG_HEADROOM;
            ssize_t got = read(dp->tun_fd, p, r->data_cap);
            if (got < 0 && errno == EINTR)
                continue;
            if (got <= 0) {
                err = got < 0 && errno != EAGAIN;
                more = 0;
                break;
            }
            r->len[n] = (uint32_t)got;
            r->status[n] = WG_OK;
            n++;
        }
        if (err && ++fails > WG_IO_FAILS_MAX)
            break;      /* the TUN is gone */
        if (!err)
            fails = 0;
        if (!n)
            continue;
        wg_count_batch(dp, WG_BATCH_TUN, n);

        /* Step 2: route every packet under one read lock; segments of one super-packet share
         * their destination, so the last answer is reused. */
        uint32_t keep = 0;
        int last_peer = -1, last_fam = 0;
        uint8_t last_dst[16];
        pthread_rwlock_rdlock(&dp->lock);
        r->epoch = dp->id_epoch;
        for (uint32_t i = 0; i < n; i++) {
            struct wg_ip ip;
            const uint8_t *p = wg_slot(r, i) + WG_HEADROOM;
            int sane = wg_ip_parse(p, r->len[i], &ip);
            int peer = -1;
            if (sane) {
                int fam = ip.family;
                size_t alen = wg_ip_addr_len(fam);
                if (fam == last_fam && !memcmp(ip.dst, last_dst, alen)) {
                    peer = last_peer;
                } else {
                    peer = wg_aip_lookup_nolock(fam == AF_INET ? dp->aip4 : dp->aip6, fam, ip.dst);
                    last_fam = fam;
                    last_peer = peer;
                    memcpy(last_dst, ip.dst, alen);
                }
            }
            if (peer < 0) {
                wg_drop(dp, sane ? WG_DROP_NO_ROUTE : WG_DROP_BAD_INNER, 1);
                continue;
            }
            if (r->len[i] > dp->mtu) {
                wg_drop(dp, WG_DROP_TOO_BIG, 1);
                continue;
            }
            if (routed_into_itself(dp, p, r->len[i], &ip, &dp->endpoints[peer])) {
                wg_drop(dp, WG_DROP_LOOP, 1);
                continue;
            }
            /* Keyed but nowhere to send: drop before a counter is spent on it.  Without a
             * key the packet is staged below, as the handshake may still find an endpoint. */
            if (dp->endpoints[peer].family == 0 && dp->current[peer] >= 0) {
                wg_drop(dp, WG_DROP_NO_ENDPOINT, 1);
                continue;
            }
            if (keep != i) {
                memcpy(wg_slot(r, keep) + WG_HEADROOM, p, r->len[i]);
                r->len[keep] = r->len[i];
            }
            r->peer[keep] = (uint32_t)peer;
            r->status[keep] = WG_OK;
            keep++;
        }
        pthread_rwlock_unlock(&dp->lock);
        if (keep)
            wg_test_pause(dp, WG_DELAY_SEND_ROUTED);
        if (keep)
            seal_and_send(dp, r, keep, wg_now(), tb, 1);
    }
out:
    wg_ring_free(r);
    wg_txbatch_free(tb);
    free(big);
    return ret;
}

int wg_send_packet(wg_dp *dp, uint32_t peer, const uint8_t *pkt, uint32_t len, double now)
{
    static __thread wg_ring *r;
    static __thread struct wg_txbatch *tb;
    if (peer >= __atomic_load_n(&dp->clocks.max_peers, __ATOMIC_ACQUIRE))
        return WG_DROP_NO_ROUTE;
    /* Allocated on first use, each retried until it exists: half a pair must not be used. */
    if (!r)
        r = wg_ring_new(1, ONE_CAP);
    if (!tb)
        tb = wg_txbatch_new();
    if (!r || !tb)
        return WG_DROP_IO;
    if (len > r->data_cap || len > dp->mtu)
        return WG_DROP_TOO_BIG;
    if (len)
        memcpy(wg_slot(r, 0) + WG_HEADROOM, pkt, len);
    r->len[0] = len;
    r->peer[0] = peer;
    r->status[0] = WG_OK;
    r->epoch = wg_id_epoch(dp);
    seal_and_send(dp, r, 1, now, tb, 0);
    return r->status[0];
}
