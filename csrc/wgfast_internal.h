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

/* Handshake messages (whitepaper 5.4): type byte and exact sizes; each of the first two
 * ends in mac1 || mac2. */
#define WG_MSG_INITIATION     1
#define WG_MSG_RESPONSE       2
#define WG_MSG_COOKIE_REPLY   3
#define WG_INITIATION_LEN     148
#define WG_RESPONSE_LEN       92
#define WG_COOKIE_REPLY_LEN   64
#define WG_MAC_LEN            16

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
    int32_t  peer_next;              /* the peer's next keypair slot (list from kp_head), -1 */
    pthread_mutex_t replay_lock;        /* receive threads update the window under it */
    wg_replay replay;
};

struct wg_aip;                          /* allowedips_trie.c */
struct wg_aip *wg_aip_new(void);
void wg_aip_free(struct wg_aip *t);
/* Lookup without taking dp->lock: the data plane holds it for the batch. */
int wg_aip_lookup_nolock(struct wg_aip *t, int family, const uint8_t *addr);

struct wg_dp {
    uint32_t max_peers;                 /* upper bound on peer ids (tables grow up to it) */
    uint32_t max_keypairs;              /* upper bound on keypair slots */
    uint32_t mtu;
    /* Configuration lock: the control plane writes under it, the data plane reads a batch at a
     * time under it.  Peers, keypairs, endpoints and allowed IPs are all behind it, and so are
     * the table pointers below: they are swapped (tables grown) only under the write lock, so
     * no pointer into a table may be kept past the read lock it was taken under. */
    pthread_rwlock_t lock;

    /* Per-peer tables, cap_peers (= clocks.max_peers) entries each. */
    wg_peer_clocks clocks;
    wg_addr  *endpoints;
    int32_t  *current;                  /* peer -> keypair slot it sends with, -1 = none */
    int32_t  *kp_head;                  /* peer -> first of its keypair slots, -1 = none */
    uint32_t *aip_count;                /* peer -> prefixes it owns (removal walks only if > 0) */
    double   *last_need_event;          /* rate-limits WG_EV_NEED_HANDSHAKE per peer */
    uint64_t *roams;                    /* endpoint moved by authenticated data */
    /* Bumped (under the write lock) whenever a peer id is released: a batch that looked peer
     * ids up under one hold of the lock and uses them under another checks it has not moved,
     * as the id may by then name another peer. */
    uint32_t  id_epoch;

    struct wg_keypair *keypairs;        /* cap_keypairs slots */
    uint32_t  cap_keypairs;
    uint32_t *kp_free;                  /* stack of free slots */
    uint32_t  kp_nfree;
    uint32_t *kp_hash;                  /* open addressing: local index -> slot + 1, 0 empty */
    uint32_t  kp_hash_mask;

    /* Tables replaced by growth stay allocated until Python has taken new views of them
     * (wg_dp_free_retired) or wg_dp_free. */
    void    **retired;
    uint32_t  nretired, cap_retired;

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
    int stop_fd;                        /* eventfd: readable once wg_dp_stop was called */
    uint32_t test_delay[3];             /* wg_dp_test_delay, usec by WG_DELAY_* */
    int stop;                           /* __atomic builtins */
};

/* keypairs.c -- callers hold dp->lock (read or write). */
struct wg_keypair *wg_keypair_lookup(wg_dp *dp, uint32_t local_index);
struct wg_keypair *wg_keypair_of_peer(wg_dp *dp, uint32_t peer);
int  wg_keypair_table_init(wg_dp *dp, uint32_t slots);         /* at wg_dp_new */
void wg_keypair_table_free(wg_dp *dp);
/* Remove every keypair of a peer; caller holds the write lock. */
void wg_keypair_remove_peer_locked(wg_dp *dp, uint32_t peer);

/* dataplane.c: keep an old table until wg_dp_free (caller holds the write lock). */
void wg_dp_retire(wg_dp *dp, void *p);

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
/* The id epoch, read at the start of a batch (see struct wg_dp). */
static inline uint32_t wg_id_epoch(wg_dp *dp)
{
    return __atomic_load_n(&dp->id_epoch, __ATOMIC_ACQUIRE);
}
/* Raise WG_EV_NEED_HANDSHAKE for a peer at most once per second. */
void wg_want_handshake(wg_dp *dp, uint32_t peer, double now);

/* wg_dp_test_delay: a plain read per batch when off. */
void wg_test_pause(wg_dp *dp, int where);

/* Slot i of a ring, inline for the per-packet loops (wg_ring_slot checks its bounds). */
static inline uint8_t *wg_slot(const wg_ring *r, uint32_t i)
{
    return r->slab + (size_t)i * r->slot_size;
}

/* A 64-bit integer mixer (MurmurHash3's finalizer) for the tables' hashes; where a sender
 * chooses the input, the caller XORs in a random seed first. */
static inline uint64_t wg_mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
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
/* 16-bit little-endian: the virtio_net_hdr fields (offload); big-endian: IP, TCP and UDP. */
static inline uint16_t wg_le16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static inline void wg_put_le16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8);
}
static inline uint16_t wg_be16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline uint32_t wg_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline void wg_put_be16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v;
}
static inline void wg_put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}

#endif
