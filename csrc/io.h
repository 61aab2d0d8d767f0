/* io.h -- what send.c and receive.c share: address conversion and the poll-for-work wait. */
#ifndef WGFAST_IO_H
#define WGFAST_IO_H

#include "wgfast_internal.h"

#include <netinet/in.h>
#include <sys/socket.h>

/* wg_addr <-> sockaddr; returns the sockaddr length, 0 when there is no address. */
socklen_t wg_addr_to_sockaddr(const wg_addr *a, struct sockaddr_storage *ss);
void      wg_addr_from_sockaddr(wg_addr *a, const struct sockaddr_storage *ss);
int       wg_addr_equal(const wg_addr *a, const wg_addr *b);

/* Block until fd is readable or the data plane is stopped.  1 = readable, 0 = stopped. */
int wg_wait_readable(wg_dp *dp, int fd);

#define WG_IO_BATCH 64

#endif
