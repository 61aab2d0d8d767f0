/* io.c -- helpers the two I/O loops share. */
#include "io.h"

#include <errno.h>
#include <poll.h>
#include <string.h>

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
