/* io.h -- what send.c and receive.c share: address conversion, the poll-for-work wait, and
 * sending to UDP endpoints (socket.c). */
#ifndef WGFAST_IO_H
#define WGFAST_IO_H

#include "wgfast_internal.h"

#include <netinet/in.h>
#include <sys/socket.h>

/* wg_addr <-> sockaddr; returns the sockaddr length, 0 when there is no address. */
socklen_t wg_addr_to_sockaddr(const wg_addr *a, struct sockaddr_storage *ss);
void      wg_addr_from_sockaddr(wg_addr *a, const struct sockaddr_storage *ss);
int       wg_addr_equal(const wg_addr *a, const wg_addr *b);

/* Sticky source (wg_addr.src).  A received datagram's IP_PKTINFO / IPV6_PKTINFO cmsg gives
 * the local address it reached (and for IPv6 the interface); a send puts it back in its own
 * IP_PKTINFO / IPV6_PKTINFO cmsg, which the kernel refuses (wg_src_error) once the address
 * left the host. */
#define WG_SRC_CMSG_SPACE CMSG_SPACE(sizeof(struct in6_pktinfo))
int    wg_addr_has_src(const wg_addr *a);
void   wg_addr_clear_src(wg_addr *a);
/* Set a->src / src_ifindex from the pktinfo cmsg of h (a->family already set); none: cleared. */
void   wg_addr_src_from_msg(wg_addr *a, struct msghdr *h);
/* Write a's source as a cmsg at c (WG_SRC_CMSG_SPACE bytes free); returns the bytes used. */
size_t wg_put_src_cmsg(struct cmsghdr *c, const wg_addr *a);
/* 1 when a send failing with err may be the source's fault: drop it and route afresh. */
int    wg_src_error(int err);

/* Block until fd is readable or the data plane is stopped.  1 = readable, 0 = stopped. */
int wg_wait_readable(wg_dp *dp, int fd);

#define WG_IO_BATCH 64
#define WG_SLOT_MIN_MTU 1500        /* loop slots hold at least this much plaintext */
#define WG_IO_FAILS_MAX 1000        /* failed reads in a row: the descriptor is gone */
#define WG_SEND_BATCH 256           /* slots a send batch may fill */

/* socket.c: sending sealed messages.  A wg_txbatch is the sendmmsg state for one batch. */
struct wg_txbatch;
struct wg_txbatch *wg_txbatch_new(void);
void wg_txbatch_free(struct wg_txbatch *tb);
/* Send the messages of slots [0, n) of r with status WG_OK to r->addr[i], from its sticky
 * source; a slot without a socket of its family becomes WG_DROP_NO_ENDPOINT.  Messages the
 * kernel refuses are counted drops (WG_DROP_IO). */
void wg_udp_send(wg_dp *dp, wg_ring *r, uint32_t n, struct wg_txbatch *tb);

#endif
