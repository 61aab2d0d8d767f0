/* io.c -- helpers the two I/O loops share. */
#include "io.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>

_Static_assert(WG_AF_INET == AF_INET && WG_AF_INET6 == AF_INET6,
               "wg_addr.family holds the host's address families");

socklen_t wg_addr_to_sockaddr(const wg_addr *a, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof(*ss));
    if (a->family == AF_INET) {
        struct sockaddr_in *s = (struct sockaddr_in *)ss;
        s->sin_family = AF_INET;
        s->sin_port = htons(a->port);
        memcpy(&s->sin_addr, a->addr, 4);
        return sizeof(*s);
    }
    if (a->family == AF_INET6) {
        struct sockaddr_in6 *s = (struct sockaddr_in6 *)ss;
        s->sin6_family = AF_INET6;
        s->sin6_port = htons(a->port);
        s->sin6_scope_id = a->scope_id;
        memcpy(&s->sin6_addr, a->addr, 16);
        return sizeof(*s);
    }
    return 0;
}

void wg_addr_from_sockaddr(wg_addr *a, const struct sockaddr_storage *ss)
{
    memset(a, 0, sizeof(*a));
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *s = (const struct sockaddr_in *)ss;
        a->family = AF_INET;
        a->port = ntohs(s->sin_port);
        memcpy(a->addr, &s->sin_addr, 4);
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)ss;
        a->family = AF_INET6;
        a->port = ntohs(s->sin6_port);
        a->scope_id = s->sin6_scope_id;
        memcpy(a->addr, &s->sin6_addr, 16);
    }
}

int wg_addr_equal(const wg_addr *a, const wg_addr *b)
{
    return memcmp(a, b, sizeof(*a)) == 0;
}

int wg_addr_has_src(const wg_addr *a)
{
    static const uint8_t zero[16];
    return memcmp(a->src, zero, sizeof(zero)) != 0;
}

void wg_addr_clear_src(wg_addr *a)
{
    memset(a->src, 0, sizeof(a->src));
    a->src_ifindex = 0;
}

void wg_addr_src_from_msg(wg_addr *a, struct msghdr *h)
{
    wg_addr_clear_src(a);
    for (struct cmsghdr *c = CMSG_FIRSTHDR(h); c; c = CMSG_NXTHDR(h, c)) {
        if (a->family == AF_INET && c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_PKTINFO &&
            c->cmsg_len >= CMSG_LEN(sizeof(struct in_pktinfo))) {
            struct in_pktinfo pi;
            memcpy(&pi, CMSG_DATA(c), sizeof(pi));
            /* spec_dst: the local address a reply should leave from (the destination, unless
             * that was a broadcast).  No ifindex for IPv4: the route picks the interface. */
            memcpy(a->src, &pi.ipi_spec_dst, 4);
            return;
        }
        if (a->family == AF_INET6 && c->cmsg_level == IPPROTO_IPV6 &&
            c->cmsg_type == IPV6_PKTINFO && c->cmsg_len >= CMSG_LEN(sizeof(struct in6_pktinfo))) {
            struct in6_pktinfo pi;
            memcpy(&pi, CMSG_DATA(c), sizeof(pi));
            memcpy(a->src, &pi.ipi6_addr, 16);
            a->src_ifindex = (uint32_t)pi.ipi6_ifindex;
            return;
        }
    }
}

size_t wg_put_src_cmsg(struct cmsghdr *c, const wg_addr *a)
{
    if (a->family == AF_INET) {
        struct in_pktinfo pi;
        memset(&pi, 0, sizeof(pi));
        memcpy(&pi.ipi_spec_dst, a->src, 4);
        c->cmsg_level = IPPROTO_IP;
        c->cmsg_type = IP_PKTINFO;
        c->cmsg_len = CMSG_LEN(sizeof(pi));
        memcpy(CMSG_DATA(c), &pi, sizeof(pi));
        return CMSG_SPACE(sizeof(pi));
    }
    struct in6_pktinfo pi;
    memset(&pi, 0, sizeof(pi));
    memcpy(&pi.ipi6_addr, a->src, 16);
    pi.ipi6_ifindex = (int)a->src_ifindex;
    c->cmsg_level = IPPROTO_IPV6;
    c->cmsg_type = IPV6_PKTINFO;
    c->cmsg_len = CMSG_LEN(sizeof(pi));
    memcpy(CMSG_DATA(c), &pi, sizeof(pi));
    return CMSG_SPACE(sizeof(pi));
}

int wg_src_error(int err)
{
    /* EINVAL / EADDRNOTAVAIL: the address is no longer local; ENETUNREACH / EHOSTUNREACH:
     * no route from it; ENODEV / ENXIO: its interface is gone. */
    return err == EINVAL || err == EADDRNOTAVAIL || err == ENETUNREACH || err == EHOSTUNREACH ||
           err == ENODEV || err == ENXIO;
}

int wg_wait_readable(wg_dp *dp, int fd)
{
    struct pollfd p[2] = {{.fd = fd, .events = POLLIN}, {.fd = dp->stop_fd, .events = POLLIN}};
    for (;;) {
        if (__atomic_load_n(&dp->stop, __ATOMIC_ACQUIRE))
            return 0;
        int r = poll(p, 2, -1);
        if (r < 0 && errno != EINTR)
            return 0;
        if (p[1].revents)
            return 0;
        if (p[0].revents & POLLNVAL)
            return 0;
        /* POLLERR/POLLHUP: let the caller's read report (and clear) the error. */
        if (p[0].revents)
            return 1;
    }
}
