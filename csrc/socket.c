/* socket.c -- sealed messages out to their UDP endpoints (send.c's step 4): one sendmmsg per
 * address family for a batch, runs of equal-sized messages to one endpoint as one UDP GSO
 * train (UDP_SEGMENT) the kernel splits as late as it can, each from its endpoint's sticky
 * source (an IP_PKTINFO / IPV6_PKTINFO cmsg).  When the kernel refuses a source it is
 * forgotten and the message goes again as routing decides; when it refuses a GSO train, GSO
 * is turned off for that family and the train goes again as single datagrams. */
#include "io.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

#include <netinet/udp.h>

#define GSO_SEGS     64             /* messages in one UDP GSO train (kernel limit 64+) */
#define GSO_BYTES    65000          /* and bytes: it must fit one IP datagram */

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif

#define CTL_SPACE (CMSG_SPACE(sizeof(uint16_t)) + WG_SRC_CMSG_SPACE)

struct wg_txbatch {
    struct mmsghdr msgs[WG_SEND_BATCH];
    struct iovec iov[WG_SEND_BATCH];
    struct sockaddr_storage dst[WG_SEND_BATCH];
    uint32_t nseg[WG_SEND_BATCH];      /* messages in each mmsghdr */
    uint32_t first[WG_SEND_BATCH];     /* ring slot of each mmsghdr's first message */
    uint16_t gso[WG_SEND_BATCH];       /* its UDP_SEGMENT size, 0 = one datagram */
    union {
        char buf[CTL_SPACE];
        struct cmsghdr align;
    } ctl[WG_SEND_BATCH];
};

/* Control messages of tb->msgs[m]: the sticky source of a (if any), then the GSO size. */
static void set_ctl(struct wg_txbatch *tb, uint32_t m, const wg_addr *a, uint16_t gso)
{
    struct msghdr *h = &tb->msgs[m].msg_hdr;
    char *b = tb->ctl[m].buf;
    size_t used = 0;
    if (wg_addr_has_src(a))
        used = wg_put_src_cmsg((struct cmsghdr *)b, a);
    if (gso) {
        struct cmsghdr *c = (struct cmsghdr *)(b + used);   /* CMSG_SPACE keeps alignment */
        c->cmsg_level = SOL_UDP;
        c->cmsg_type = UDP_SEGMENT;
        c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
        memcpy(CMSG_DATA(c), &gso, sizeof(gso));
        used += CMSG_SPACE(sizeof(uint16_t));
    }
    h->msg_control = used ? b : NULL;
    h->msg_controllen = used;
}

/* The peer's endpoint forgets its source if it still is bad's: routing picks from now on. */
static void forget_src(wg_dp *dp, uint32_t peer, const wg_addr *bad)
{
    pthread_rwlock_wrlock(&dp->lock);
    if (peer < dp->clocks.max_peers && wg_addr_equal(&dp->endpoints[peer], bad))
        wg_addr_clear_src(&dp->endpoints[peer]);
    pthread_rwlock_unlock(&dp->lock);
}

/* Send tb->msgs[0, nm) (built from ring r).  A message whose sticky source the kernel refuses
 * (the address left the host) loses it -- here and in the peer's endpoint -- and goes again
 * from wherever the routing table says, as does every later one from that source.  A GSO
 * train the kernel refuses (EIO: no checksum offload on the route; EINVAL) turns GSO off for
 * this family and goes again as single datagrams. */
static void send_all(wg_dp *dp, int fd, int *gso, wg_ring *r, struct wg_txbatch *tb, uint32_t nm)
{
    uint32_t done = 0;
    while (done < nm) {
        int ret = sendmmsg(fd, tb->msgs + done, nm - done, 0);
        if (ret >= 0) {
            done += (uint32_t)ret;
            continue;
        }
        int err = errno;
        if (err == EINTR)
            continue;
        wg_addr *a = &r->addr[tb->first[done]];
        if (wg_addr_has_src(a) && wg_src_error(err)) {
            wg_addr bad = *a;
            forget_src(dp, r->peer[tb->first[done]], &bad);
            for (uint32_t m = done; m < nm; m++) {
                wg_addr *am = &r->addr[tb->first[m]];
                if (wg_addr_equal(am, &bad)) {
                    wg_addr_clear_src(am);
                    set_ctl(tb, m, am, tb->gso[m]);
                }
            }
            continue;
        }
        struct msghdr *h = &tb->msgs[done].msg_hdr;
        if (tb->nseg[done] > 1 && (err == EIO || err == EINVAL || err == EMSGSIZE) && *gso) {
            __atomic_store_n(gso, 0, __ATOMIC_RELAXED);
            set_ctl(tb, done, a, 0);
            for (size_t k = 0; k < h->msg_iovlen; k++) {
                struct msghdr one = *h;
                one.msg_iov = &h->msg_iov[k];
                one.msg_iovlen = 1;
                if (sendmsg(fd, &one, 0) < 0)
                    wg_drop(dp, WG_DROP_IO, 1);
            }
        } else {
            /* Unreachable, no buffer space: these messages are lost, as on a wire. */
            wg_drop(dp, WG_DROP_IO, tb->nseg[done]);
        }
        done++;
    }
}

/* Gather the sealed messages of one address family into tb and send them in one sendmmsg,
 * equal-sized runs to one endpoint as GSO trains when the socket takes them. */
static void send_family(wg_dp *dp, wg_ring *r, uint32_t n, int family, int fd,
                        struct wg_txbatch *tb)
{
    int *gso = family == AF_INET ? &dp->udp_gso4 : &dp->udp_gso6;
    int use_gso = __atomic_load_n(gso, __ATOMIC_RELAXED);
    uint32_t nm = 0, ni = 0, i = 0;
    while (i < n) {
        if (r->status[i] != WG_OK || r->addr[i].family != family) {
            i++;
            continue;
        }
        uint32_t seg = r->len[i], total = seg, cnt = 1, first = ni;
        tb->iov[ni].iov_base = wg_slot(r, i);
        tb->iov[ni++].iov_len = seg;
        uint32_t j = i + 1;
        while (use_gso && j < n && cnt < GSO_SEGS) {
            if (r->status[j] != WG_OK || r->addr[j].family != family) {
                j++;
                continue;
            }
            if (r->len[j] > seg || total + r->len[j] > GSO_BYTES ||
                !wg_addr_equal(&r->addr[j], &r->addr[i]))
                break;
            tb->iov[ni].iov_base = wg_slot(r, j);
            tb->iov[ni++].iov_len = r->len[j];
            total += r->len[j];
            cnt++;
            if (r->len[j++] < seg)
                break;          /* only the last of a train may be shorter */
        }
        struct mmsghdr *m = &tb->msgs[nm];
        memset(m, 0, sizeof(*m));
        m->msg_hdr.msg_iov = &tb->iov[first];
        m->msg_hdr.msg_iovlen = cnt;
        m->msg_hdr.msg_name = &tb->dst[nm];
        m->msg_hdr.msg_namelen = wg_addr_to_sockaddr(&r->addr[i], &tb->dst[nm]);
        tb->first[nm] = i;
        tb->gso[nm] = cnt > 1 ? (uint16_t)seg : 0;
        set_ctl(tb, nm, &r->addr[i], tb->gso[nm]);
        tb->nseg[nm++] = cnt;
        i = j;
    }
    if (nm)
        send_all(dp, fd, gso, r, tb, nm);
}

struct wg_txbatch *wg_txbatch_new(void)
{
    return calloc(1, sizeof(struct wg_txbatch));
}

void wg_txbatch_free(struct wg_txbatch *tb)
{
    free(tb);
}

void wg_udp_send(wg_dp *dp, wg_ring *r, uint32_t n, struct wg_txbatch *tb)
{
    int any4 = 0, any6 = 0;
    for (uint32_t i = 0; i < n; i++) {
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
}
