/* wgfast_internal.h -- what the C files share beyond the public contract in wgfast.h. */
#ifndef WGFAST_INTERNAL_H
#define WGFAST_INTERNAL_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdint.h>
#include <stddef.h>
#include <pthread.h>

#include "wgfast.h"

#define WG_REKEY_AFTER_TIME   120.0
#define WG_REJECT_AFTER_TIME  180.0
#define WG_KEEPALIVE_TIMEOUT  10.0
#define WG_REKEY_TIMEOUT      5.0

struct wg_keypair {
    uint32_t local_index;
    uint32_t remote_index;
    uint32_t peer;
    uint8_t  in_use;
    uint8_t  initiator;
    uint8_t  pending;                /* "next": not yet current, promoted on first receive */
    uint8_t  _pad;
    uint64_t seq;                    /* install order: only a keypair newer than current may
                                        be promoted (an older pending one was demoted) */
    double   created;
    uint64_t send_counter;           /* next counter to send under this keypair */
    uint8_t  send_key[WG_KEY_LEN];
    uint8_t  recv_key[WG_KEY_LEN];
    pthread_mutex_t replay_lock;        /* receive threads update the window under it */
    wg_replay replay;
};

struct wg_aip;                          /* allowedips.c */
struct wg_aip *wg_aip_new(void);
void wg_aip_free(struct wg_aip *t);
/* Lookup without taking dp->lock: the data plane holds it for the batch. */
int wg_aip_lookup_nolock(struct wg_aip *t, int family, const uint8_t *addr);

struct wg_dp {
    uint32_t max_peers;
    uint32_t max_keypairs;
    uint32_t mtu;
    /* Configuration lock: the control plane writes under it, the data plane reads a batch at a
     * time under it.  Peers, keypairs, endpoints and allowed IPs are all behind it. */
    pthread_rwlock_t lock;

    wg_peer_clocks clocks;
    wg_addr  *endpoints;                /* max_peers */
    int32_t  *current;                  /* peer -> keypair slot it sends with, -1 = none */
    double   *last_need_event;          /* rate-limits WG_EV_NEED_HANDSHAKE per peer */
    uint64_t *roams;                    /* max_peers: endpoint moved by authenticated data */

    struct wg_keypair *keypairs;        /* max_keypairs slots */
    uint32_t *kp_hash;                  /* open addressing: local index -> slot + 1, 0 empty */
    uint32_t  kp_hash_mask;

    struct wg_aip *aip4, *aip6;

    uint64_t drops[WG_DROP_NREASONS];     /* __atomic builtins */
    uint64_t batches[2][WG_BATCH_STRIDE]; /* __atomic builtins; see wg_dp_batches */

    uint64_t kp_seq;                    /* last wg_keypair.seq handed out (under lock) */

    /* What goes to Python: handshake intake and its queue, control flags and staged
     * packets, and the eventfd that wakes Python for either. */
    struct wg_hs_in *hs;                /* handshake_in.c */
    struct wg_side *side;               /* staging.c */
    int       evfd;

    int tun_fd, udp4_fd, udp6_fd;
    int tun_vnet;                       /* WG_TUN_VNET: TUN reads/writes carry a virtio_net_hdr;
                                           | WG_TUN_USO: writes may be UDP GSO trains */
    int udp_gso4, udp_gso6;             /* UDP_SEGMENT works on that socket (until EIO) */
    int udp_gro;                        /* UDP_GRO is on: reads may hold many datagrams */
    int threads;                        /* WG_THREADS_*: how each loop uses threads */
    int stop_fd;                        /* eventfd: readable once wg_dp_stop was called */
    int stop;                           /* __atomic builtins */
};

/* keypairs.c -- callers hold dp->lock (read or write). */
struct wg_keypair *wg_kp_lookup(wg_dp *dp, uint32_t local_index);
struct wg_keypair *wg_kp_current(wg_dp *dp, uint32_t peer);

/* dataplane.c */
void wg_drop(wg_dp *dp, int reason, uint32_t n);
void wg_count_batch(wg_dp *dp, int dir, uint32_t n);   /* once per batch of n packets */
/* Make the eventfd readable: something is waiting for Python. */
void wg_dp_wake(wg_dp *dp);
/* Ask Python for a handshake (WG_CTL_NEED_HANDSHAKE): at once when none is pending, else at
 * most once per second per peer. */
void wg_want_handshake(wg_dp *dp, uint32_t peer, double now);

/* handshake_in.c */
struct wg_hs_in *wg_hs_new(void);
void wg_hs_free(struct wg_hs_in *h);

/* staging.c */
struct wg_side *wg_side_new(void);
void wg_side_free(struct wg_side *s);
void wg_side_clear(wg_dp *dp, uint32_t peer);   /* staged packets and flags of a peer */
void wg_ctl_set(wg_dp *dp, uint32_t peer, uint32_t flag, uint32_t confirmed);

/* Slot i of a ring, inline for the per-packet loops (wg_ring_slot checks its bounds). */
static inline uint8_t *wg_slot(const wg_ring *r, uint32_t i)
{
    return r->slab + (size_t)i * r->slot_size;
}

static inline uint32_t wg_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline uint64_t wg_le64(const uint8_t *p)
{
    return (uint64_t)wg_le32(p) | (uint64_t)wg_le32(p + 4) << 32;
}
static inline void wg_put_le32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
}
static inline void wg_put_le64(uint8_t *p, uint64_t v)
{
    wg_put_le32(p, (uint32_t)v); wg_put_le32(p + 4, (uint32_t)(v >> 32));
}

#endif
