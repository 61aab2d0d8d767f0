/*
 * wgfast.h -- the whole contract between the C data plane and the Python control plane.
 *
 * This file is read twice: by the C compiler (through csrc/wgfast_internal.h) and by cffi's
 * cdef (csrc/build.py), so it holds only declarations cffi can parse: plain integer #defines,
 * structs with fixed fields, and function prototypes.  No macros with expressions, no
 * includes, no inline code.
 *
 * Time: every `now` and every per-peer stamp is CLOCK_MONOTONIC in seconds (a double), the
 * same clock as Python's time.monotonic().  A stamp of 0 means "never".
 *
 * Longer than the ~400 lines the other files keep to, on purpose: it is the single C/Python
 * contract, read from top to bottom once, in the order the data flows; what the C files share
 * beyond it lives in wgfast_internal.h and the small headers beside each part.
 */

/* ---- sizes --------------------------------------------------------------------------- */
#define WG_HEADROOM          16     /* transport header: type(4) receiver(4) counter(8) */
#define WG_TAILROOM          32     /* up to 15 bytes of padding + 16-byte tag, rounded */
#define WG_TAG_LEN           16
#define WG_KEY_LEN           32
#define WG_MAX_BATCH         128    /* the largest batch any entry point takes */
#define WG_MSG_DATA          4      /* transport data message type */
#define WG_MIN_DATA_LEN      32     /* header + tag: a keepalive */

/* ---- per-slot status: 0 is fine, anything else is why the slot was dropped ----------- */
#define WG_OK                0
#define WG_DROP_SHORT        1      /* shorter than a transport message / than an IP header */
#define WG_DROP_TYPE         2      /* not type 4 + three zero bytes */
#define WG_DROP_NO_KEYPAIR   3      /* receiver index unknown */
#define WG_DROP_EXPIRED      4      /* keypair older than REJECT_AFTER_TIME */
#define WG_DROP_REPLAY       5      /* counter seen before or behind the window */
#define WG_DROP_TAG          6      /* authentication failed */
#define WG_DROP_COUNTER      7      /* counter >= REJECT_AFTER_MESSAGES */
#define WG_DROP_NO_ROUTE     8      /* no peer owns the destination (send) */
#define WG_DROP_NO_KEY       9      /* peer has no usable sending key: staged to Python */
#define WG_DROP_ALLOWED_IPS  10     /* inner source is not one of the sending peer's allowed IPs */
#define WG_DROP_BAD_INNER    11     /* decrypted payload is not an IPv4/IPv6 packet */
#define WG_DROP_TOO_BIG      12     /* does not fit the slot / the MTU */
#define WG_DROP_NO_ENDPOINT  13     /* peer has no endpoint yet */
#define WG_DROP_IO           14     /* the socket or TUN write failed */
#define WG_DROP_HANDSHAKE    15     /* a handshake message: queued for Python (not a loss) */
#define WG_DROP_EVENTS_FULL  16     /* the handshake queue (its source's share) was full */
#define WG_DROP_MAC1         17     /* handshake message with a bad mac1 (or no private key) */
#define WG_DROP_COOKIE       18     /* under load without a valid mac2: answered with a cookie */
#define WG_DROP_RATELIMIT    19     /* under load, over its source's 20/s handshake budget */
#define WG_DROP_STAGED       20     /* a staged packet pushed out by newer ones (or unsendable) */
#define WG_DROP_LOOP         21     /* our own message to a peer, routed back into its tunnel */
#define WG_DROP_NREASONS     22

/* ---- protocol limits the data plane enforces (whitepaper 6.1) ------------------------ */
#define WG_REKEY_AFTER_MESSAGES   1152921504606846976ULL   /* 2^60 */
#define WG_REJECT_AFTER_MESSAGES  18446744073709543423ULL  /* 2^64 - 2^13 - 1 */

/* ---- addresses: an outer UDP endpoint ------------------------------------------------ */
/* Address families, as wg_addr.family and the allowed-IPs calls take them: Linux's AF_INET
 * and AF_INET6 (checked in io.c), so Python may pass socket.AF_INET / AF_INET6. */
#define WG_AF_NONE   0
#define WG_AF_INET   2
#define WG_AF_INET6  10

/* The remote address and port, plus the local address it last reached us on ("sticky
 * source", as the kernel and wireguard-go keep): replies leave from src so a peer on a host
 * with several addresses sees them come from where it sent to.  src all zero = none: the
 * routing table picks.  src_ifindex is the interface it arrived on, used for IPv6 only. */
typedef struct {
    uint16_t family;        /* WG_AF_NONE, WG_AF_INET or WG_AF_INET6 */
    uint16_t port;          /* host byte order */
    uint32_t scope_id;      /* IPv6 scope, else 0 */
    uint8_t  addr[16];      /* IPv4 in the first 4 bytes */
    uint32_t src_ifindex;   /* IPv6: the arrival interface, else 0 */
    uint8_t  src[16];       /* local source, same family as addr; IPv4 in the first 4 bytes */
} wg_addr;                  /* 44 bytes, no padding: numpy sees it as a structured dtype */

/* ---- the buffer ring (ring.c) -------------------------------------------------------- */
/* One slab of nslots fixed-size slots.  A slot is
 *     [0, HEADROOM)                     transport header
 *     [HEADROOM, HEADROOM + data_cap)   the IP packet (plaintext)
 *     [.., + TAILROOM)                  padding and tag
 * A transport message therefore lives at offset 0 and its plaintext at offset HEADROOM: a
 * packet is sealed and opened where it lies.  Metadata lives in parallel arrays, one entry
 * per slot, so Python can see every array as a numpy array without copying. */
typedef struct {
    uint32_t  nslots;
    uint32_t  slot_size;    /* HEADROOM + data_cap + TAILROOM, rounded up to 64 */
    uint32_t  data_cap;     /* largest plaintext a slot holds */
    uint32_t  epoch;        /* send: the peer-id epoch the batch was routed under */
    uint8_t  *slab;         /* nslots * slot_size bytes, 64-byte aligned */
    uint32_t *len;          /* plaintext length before seal / message length after; see below */
    uint32_t *peer;         /* peer id */
    uint32_t *receiver;     /* receiver index (the local index for received messages) */
    uint64_t *counter;      /* transport counter */
    uint8_t  *status;       /* WG_OK or a WG_DROP_* reason */
    wg_addr  *addr;         /* outer endpoint: destination when sending, source when received;
                               .src the local address: ours when sending, reached when received */
} wg_ring;

wg_ring  *wg_ring_new(uint32_t nslots, uint32_t data_cap);
void      wg_ring_free(wg_ring *r);
uint8_t  *wg_ring_slot(const wg_ring *r, uint32_t i);   /* start of slot i (the header) */

/* ---- AEAD backends (aead.c, aead_*.c) -------------------------------------------------- */
#define WG_AEAD_SODIUM   0          /* libsodium exported by PyNaCl's nacl._sodium */
#define WG_AEAD_OPENSSL  1          /* OpenSSL 3 libcrypto EVP chacha20-poly1305 */
#define WG_AEAD_IPSECMB  2          /* Intel multi-buffer crypto (libIPSec_MB.so.1), if present */
#define WG_AEAD_NBACKENDS 3

/* Load backends.  sodium_path is the file of nacl._sodium.  Returns a bitmask of the backends
 * that loaded (bit b = backend b).  Safe to call again; never fails hard. */
int         wg_aead_init(const char *sodium_path);
const char *wg_aead_name(int backend);
int         wg_aead_available(int backend);
int         wg_aead_select(int backend);    /* 0 on success, -1 if not available */
int         wg_aead_selected(void);

/* One message, in place, WireGuard nonce (4 zero bytes || LE64 counter), empty AAD.
 * seal: buf[0..len) is encrypted and the tag written to buf[len..len+16).
 * open: buf[0..len) is ciphertext followed by nothing; tag separate.  0 = ok, -1 = bad tag. */
int wg_aead_seal(int backend, const uint8_t *key, uint64_t counter, uint8_t *buf, size_t len);
int wg_aead_open(int backend, const uint8_t *key, uint64_t counter, uint8_t *buf, size_t len,
                 const uint8_t *tag);
/* General single message (tests: RFC 8439 and Wycheproof vectors): 12-byte nonce, any AAD,
 * buf sealed/opened in place, tag separate.  0 = ok, -1 = bad tag or backend unavailable. */
int wg_aead_seal_raw(int backend, const uint8_t *key, const uint8_t *nonce, const uint8_t *aad,
                     size_t aadlen, uint8_t *buf, size_t len, uint8_t *tag);
int wg_aead_open_raw(int backend, const uint8_t *key, const uint8_t *nonce, const uint8_t *aad,
                     size_t aadlen, uint8_t *buf, size_t len, const uint8_t *tag);
/* The plain C loop a benchmark compares the batch layer with: seal buf in place n times
 * (counters 0..n-1, one key setup), tag at buf[len..len+16). */
void wg_aead_seal_loop(int backend, const uint8_t *key, uint8_t *buf, size_t len, uint32_t n);

/* ---- replay window (replay.c): RFC 6479, 8192 bits, 8128 usable ----------------------- */
#define WG_REPLAY_BITS     8192
#define WG_REPLAY_WINDOW   8128     /* WG_REPLAY_BITS - 64 */
typedef struct {
    uint64_t greatest;              /* highest counter accepted + 1 (0 = nothing yet) */
    uint64_t bits[128];
} wg_replay;
void wg_replay_reset(wg_replay *w);
int  wg_replay_check(const wg_replay *w, uint64_t counter);   /* 1 = may be fresh */
int  wg_replay_update(wg_replay *w, uint64_t counter);        /* 1 = accepted and recorded */

/* ---- the data-plane state (dataplane.c, keypairs.c) ----------------------------------- */
typedef struct wg_dp wg_dp;         /* opaque */

/* Per-peer clocks and counters, each an array of max_peers entries that Python reads (and
 * timers.py evaluates) in place as numpy arrays.  C stamps them once per batch.  The tables
 * grow (wg_dp_reserve): max_peers here is the current capacity, and after growth every
 * pointer is new -- Python must take its views again. */
typedef struct {
    uint32_t  max_peers;
    uint32_t  _pad;
    double   *last_data_sent;       /* last transport data (non-keepalive) sent */
    double   *last_data_recv;       /* last transport data (non-keepalive) received */
    double   *last_auth_sent;       /* last authenticated packet sent (data, keepalive) */
    double   *last_auth_recv;       /* last authenticated packet received (data, keepalive) */
    double   *pending_data_sent;    /* first data sent since the last authenticated receive */
    double   *pending_data_recv;    /* first data received since the last authenticated send */
    uint64_t *tx_bytes;             /* UDP payload bytes sent to the peer */
    uint64_t *rx_bytes;             /* UDP payload bytes received from the peer */
    uint8_t  *want_handshake;       /* set by C when it raised WG_CTL_NEED_HANDSHAKE */
    uint8_t  *active;               /* 1 = the slot holds a configured peer */
} wg_peer_clocks;

/* max_peers / max_keypairs are upper bounds (0 = WG_PEERS_LIMIT / WG_KEYPAIRS_LIMIT); the
 * tables start small and grow by themselves (keypairs) or through wg_dp_reserve (peers). */
#define WG_PEERS_LIMIT     16777216
#define WG_KEYPAIRS_LIMIT  67108864
wg_dp          *wg_dp_new(uint32_t max_peers, uint32_t max_keypairs, uint32_t mtu);
/* Make room for peer ids [0, npeers): 0, -ENOSPC beyond max_peers, -ENOMEM.  The old tables
 * stay allocated (views of them stay readable) until wg_dp_free_retired, which the caller
 * runs once it holds views of the new ones only. */
int             wg_dp_reserve(wg_dp *dp, uint32_t npeers);
void            wg_dp_free_retired(wg_dp *dp);
void            wg_dp_free(wg_dp *dp);
wg_peer_clocks *wg_dp_clocks(wg_dp *dp);
uint64_t       *wg_dp_drops(wg_dp *dp);                 /* WG_DROP_NREASONS counters */
/* Batch sizes, for metrics: counted once per batch the loops process, never per packet.
 * For each of WG_BATCH_TUN (packets read from the TUN, after segmentation) and WG_BATCH_UDP
 * (datagrams handed to one receive pass), WG_BATCH_STRIDE counters: [b] for b < 10 = batches
 * of at most 2^b packets (and more than 2^(b-1)), [10] = larger ones, [11] = packets summed. */
#define WG_BATCH_TUN       0
#define WG_BATCH_UDP       1
#define WG_BATCH_BUCKETS   11
#define WG_BATCH_STRIDE    12
uint64_t       *wg_dp_batches(wg_dp *dp);               /* 2 * WG_BATCH_STRIDE counters */
/* max_peers counters: times authenticated data moved a peer's endpoint (roaming). */
uint64_t       *wg_dp_roams(wg_dp *dp);
void            wg_dp_set_mtu(wg_dp *dp, uint32_t mtu);

/* Peers.  Python allocates ids in [0, capacity) (wg_dp_reserve first).  Removing a peer
 * releases its id: batches in flight that looked it up drop what they hold for it (the id
 * epoch, see wgfast_internal.h), and its events still queued for Python are voided (type 0). */
int  wg_peer_add(wg_dp *dp, uint32_t peer);             /* clears the peer's state, marks active */
int  wg_peer_remove(wg_dp *dp, uint32_t peer);          /* drops its keypairs, allowed IPs, endpoint */
/* Endpoints for n peers at once (configuration of many peers). */
int  wg_peer_set_endpoints(wg_dp *dp, const uint32_t *peers, const wg_addr *addrs, uint32_t n);
int  wg_peer_get_endpoints(wg_dp *dp, const uint32_t *peers, wg_addr *out, uint32_t n);
int  wg_peer_set_endpoint(wg_dp *dp, uint32_t peer, const wg_addr *a);
int  wg_peer_get_endpoint(wg_dp *dp, uint32_t peer, wg_addr *out);
void wg_peer_add_bytes(wg_dp *dp, uint32_t peer, uint64_t tx, uint64_t rx);   /* handshake bytes */

/* Keypairs (keypairs.c), found by local (receiver) index.  make_current = 1 makes it the
 * peer's sending keypair at once (the initiator); 0 leaves it "next" until the first data
 * message arrives under it (the responder), when C promotes it and sets WG_CTL_CONFIRMED --
 * only if it is still "next": a keypair installed as current after it demoted it. */
int  wg_keypair_install(wg_dp *dp, uint32_t peer, uint32_t local_index, uint32_t remote_index,
                        const uint8_t *send_key, const uint8_t *recv_key, double created,
                        int initiator, int make_current);
int  wg_keypair_remove(wg_dp *dp, uint32_t local_index);   /* wipes the keys */
int  wg_keypair_set_counter(wg_dp *dp, uint32_t local_index, uint64_t next_send); /* tests */
int  wg_keypair_current(wg_dp *dp, uint32_t peer, uint32_t *local_index);  /* 0 = has one */

/* Transport messages in place (transport.c over keypairs.c and aead.c).
 * seal: slot i holds len[i] bytes of plaintext at HEADROOM for peer[i]; it is padded to a
 *   multiple of 16 (never beyond the MTU), given the header and sealed under the peer's current
 *   keypair.  Afterwards len[i] is the whole message length, receiver[i]/counter[i] are set,
 *   addr[i] is the peer's endpoint, status[i] WG_OK or a drop reason.
 * open: slot i holds a len[i]-byte message at 0.  Afterwards, for WG_OK, the plaintext (still
 *   padded) is at HEADROOM with len[i] its length, peer[i] and counter[i] set.
 * Both return the number of slots left WG_OK and count drops in wg_dp_drops. */
uint32_t wg_seal_batch(wg_dp *dp, wg_ring *r, uint32_t first, uint32_t n, double now);
uint32_t wg_open_batch(wg_dp *dp, wg_ring *r, uint32_t first, uint32_t n, double now);

/* ---- allowed IPs (allowedips.c): longest-prefix match, IPv4 and IPv6 ------------------ */
int  wg_aip_insert(wg_dp *dp, int family, const uint8_t *addr, uint8_t cidr, uint32_t peer);
int  wg_aip_remove(wg_dp *dp, int family, const uint8_t *addr, uint8_t cidr);
void wg_aip_remove_peer(wg_dp *dp, uint32_t peer);
int  wg_aip_lookup(wg_dp *dp, int family, const uint8_t *addr);   /* peer id or -1 */
/* Insert masks addr to cidr; an existing prefix moves to the new peer.  -EINVAL for a bad
 * family (not WG_AF_INET / WG_AF_INET6), cidr (> 32 / > 128) or peer; remove gives -ENOENT
 * for an unknown prefix. */
/* n lookups under one read lock: addrs[i * stride ..] -> out[i] (peer id or -1). */
void wg_aip_lookup_batch(wg_dp *dp, int family, const uint8_t *addrs, uint32_t stride,
                         uint32_t n, int32_t *out);
/* The prefixes of one peer (peer = 0xFFFFFFFF: every peer): addresses packed 4 or 16 bytes
 * each into addrs, cidrs into cidrs, at most max of them; returns how many there are. */
int  wg_aip_list(wg_dp *dp, int family, uint32_t peer, uint8_t *addrs, uint8_t *cidrs,
                 uint32_t max);
uint32_t wg_aip_nodes(wg_dp *dp, int family);   /* trie nodes allocated (tests: no leaks) */
/* n inserts / removes under one write lock.  keys[i * WG_AIP_KEY_LEN ..]: 16 address bytes
 * (IPv4 in the first 4) then the cidr; family[i] WG_AF_INET or WG_AF_INET6.  Insert: prev[i]
 * = the prefix's owner before (-1 = new).  Remove (of peer[i]'s prefix only): prev[i] = the
 * owner found (-1 = none; removed only when it is peer[i]).  prev may be NULL.  Returns n,
 * or -EINVAL naming nothing done (every entry is checked first), or -ENOMEM after the first
 * i entries. */
#define WG_AIP_KEY_LEN 17
int  wg_aip_insert_many(wg_dp *dp, const uint8_t *family, const uint8_t *keys,
                        const uint32_t *peers, uint32_t n, int32_t *prev);
int  wg_aip_remove_many(wg_dp *dp, const uint8_t *family, const uint8_t *keys,
                        const uint32_t *peers, uint32_t n, int32_t *prev);

/* ---- what C hands to Python (dataplane.c, handshake_in.c, staging.c) ------------------ */
/* One eventfd wakes Python for all of it.  Three paths that cannot crowd each other out:
 *   - handshake messages that passed the intake checks (handshake_in.c) on a bounded queue
 *     of their own, fair between sources: wg_hs_pop;
 *   - control flags per peer (a handshake is needed, a keypair was confirmed), set by C and
 *     collected by Python, never dropped: wg_ctl_collect;
 *   - packets waiting for a session, kept per peer in C (staging.c): wg_stage_flush. */
#define WG_EV_HANDSHAKE       1     /* a message of type 1-3: data = it, addr = source
                                       (addr.src = the local address it reached) */
#define WG_EV_NEED_HANDSHAKE  3     /* the peer needs a (re)handshake */
#define WG_EV_CONFIRMED       4     /* receiver = local index of a keypair C just made current */
typedef struct {
    uint32_t type;
    uint32_t peer;
    uint32_t receiver;
    uint32_t len;
    wg_addr  addr;
} wg_event;
int      wg_dp_eventfd(wg_dp *dp);                     /* readable when anything is waiting */
/* Up to max events: control flags first (as NEED_HANDSHAKE / CONFIRMED events), then
 * handshake messages; data for event k is copied to data + k * stride (cut to stride).
 * The eventfd stays readable while anything is left. */
uint32_t wg_events_pop(wg_dp *dp, wg_event *evs, uint8_t *data, uint32_t stride, uint32_t max);

/* Control flags (staging.c): peers[k] had flags[k] set (WG_CTL_*) since the last collect;
 * confirmed[k] is the local index C promoted when WG_CTL_CONFIRMED is set. */
#define WG_CTL_NEED_HANDSHAKE 1
#define WG_CTL_CONFIRMED      2
uint32_t wg_ctl_collect(wg_dp *dp, uint32_t *peers, uint32_t *flags, uint32_t *confirmed,
                        uint32_t max);
uint32_t wg_ctl_pending(wg_dp *dp);                    /* peers with flags waiting */

/* Staged packets (staging.c): at most WG_MAX_STAGED per peer, the oldest dropped
 * (WG_DROP_STAGED), each kept at its own length.  flush sends them (oldest first) once the
 * peer has a session and returns how many went; those that still find no key stay. */
#define WG_MAX_STAGED 128
int      wg_stage_put(wg_dp *dp, uint32_t peer, const uint8_t *pkt, uint32_t len);
int      wg_stage_flush(wg_dp *dp, uint32_t peer, double now);
uint32_t wg_stage_drop(wg_dp *dp, uint32_t peer);      /* give up: returns how many */
uint32_t wg_stage_count(wg_dp *dp, uint32_t peer);
uint64_t wg_stage_total(wg_dp *dp);

/* Handshake intake (handshake_in.c, cookie.c, ratelimiter.c).  crypto_init loads keyed
 * BLAKE2s (OpenSSL 3 EVP_MAC "BLAKE2SMAC") and XChaCha20-Poly1305 (libsodium at sodium_path);
 * returns WG_HS_* bits.  Without BLAKE2S every message is queued with WG_HS_UNVERIFIED in
 * wg_event.receiver and Python checks the MACs. */
#define WG_HS_BLAKE2S    1
#define WG_HS_XCHACHA    2
#define WG_HS_UNVERIFIED 1
int      wg_hs_crypto_init(const char *sodium_path);
/* BLAKE2s-128 keyed MAC (key <= 32 bytes); 0 = ok, -1 = unavailable. */
int      wg_blake2s_mac(const uint8_t *key, uint32_t keylen, const uint8_t *data, uint32_t len,
                        uint8_t *out16);
/* mac1_key = HASH("mac1----" || our public), cookie_key = HASH("cookie--" || our public);
 * NULL = no private key (every handshake message is dropped).  Empties the queue. */
int      wg_hs_set_keys(wg_dp *dp, const uint8_t *mac1_key, const uint8_t *cookie_key);
/* One datagram of type 1-3 and its exact size, from src: returns WG_DROP_HANDSHAKE when it
 * was queued, else the reason it was dropped (counted). */
int      wg_hs_receive(wg_dp *dp, const uint8_t *msg, uint32_t len, const wg_addr *src,
                       double now);
uint32_t wg_hs_pop(wg_dp *dp, wg_event *evs, uint8_t *data, uint32_t stride, uint32_t max);
uint32_t wg_hs_queued(wg_dp *dp);
int      wg_hs_under_load(wg_dp *dp, double now);
void     wg_hs_force_load(wg_dp *dp, double until);    /* tests: under load until then */
/* The per-source token bucket (tests: against ratelimiter.py); 1 = allowed. */
int      wg_hs_ratelimit(wg_dp *dp, const wg_addr *src, double now);
/* The cookie reply we would send to msg (148 or 92 bytes) from src; 0 = ok. */
int      wg_hs_cookie_reply(wg_dp *dp, const uint8_t *msg, uint32_t len, const wg_addr *src,
                            double now, uint8_t *out64);

/* ---- the I/O loops (send.c, receive.c) ------------------------------------------------ */
/* Python opens the descriptors; C only reads and writes them.  -1 = none. */
void wg_dp_set_fds(wg_dp *dp, int tun_fd, int udp4_fd, int udp6_fd);
/* Each loop runs until wg_dp_stop; call it from a Python thread (cffi releases the GIL). */
int  wg_run_send(wg_dp *dp);        /* TUN -> allowed IPs -> seal -> UDP */
int  wg_run_receive(wg_dp *dp, int udp_fd);   /* UDP -> open -> replay -> allowed IPs -> TUN */
void wg_dp_stop(wg_dp *dp);
void wg_dp_resume(wg_dp *dp);       /* after wg_dp_stop and the loops returned: allow new loops */
/* Offloads for the loops, set before starting them: tun_vnet = WG_TUN_VNET when the TUN was
 * opened with IFF_VNET_HDR and TUNSETOFFLOAD (reads may be TSO/USO super-packets, writes may
 * be TCP GRO super-packets), | WG_TUN_USO when it also took TUN_F_USO4/6 (writes may be UDP
 * GRO super-packets); udp_gso = try UDP_SEGMENT on send (turned off by itself on EIO);
 * udp_gro = UDP_GRO is on for the sockets (reads may carry many datagrams). */
#define WG_TUN_VNET 1
#define WG_TUN_USO  2
void wg_dp_set_offloads(wg_dp *dp, int tun_vnet, int udp_gso, int udp_gro);
/* What the loops use now (udp_gso may have been turned off by a failed send): WG_OFFLOAD_*. */
#define WG_OFFLOAD_TUN_VNET  1
#define WG_OFFLOAD_UDP_GSO4  2
#define WG_OFFLOAD_UDP_GSO6  4
#define WG_OFFLOAD_UDP_GRO   8
#define WG_OFFLOAD_TUN_USO   16
int  wg_dp_offloads(wg_dp *dp);
/* Tests: the loops sleep usec between the steps that hold the lock separately -- 1 = send,
 * after routing and before sealing; 2 = receive, after opening and before the allowed-IPs
 * check -- so a configuration change can be made to land in between.  0 = off (default). */
#define WG_DELAY_SEND_ROUTED  1
#define WG_DELAY_RECV_OPENED  2
void wg_dp_test_delay(wg_dp *dp, int where, uint32_t usec);
/* Seal and send one plaintext packet (len 0 = keepalive) to a peer now: staged packets and
 * keepalives from the control plane.  Returns WG_OK or a drop reason. */
int  wg_send_packet(wg_dp *dp, uint32_t peer, const uint8_t *pkt, uint32_t len, double now);
double wg_now(void);                /* CLOCK_MONOTONIC seconds */

/* ---- offloads (gso.c, gro.c, csum.c): TUN with IFF_VNET_HDR + TUNSETOFFLOAD ------------ */
/* Every TUN read and write then starts with a struct virtio_net_hdr (linux/virtio_net.h):
 * flags u8, gso_type u8, hdr_len le16, gso_size le16, csum_start le16, csum_offset le16. */
#define WG_VNET_HDR_LEN        10
#define WG_VNET_F_NEEDS_CSUM   1      /* checksum partial: pseudo-header sum at csum_start+offset */
#define WG_VNET_GSO_NONE       0
#define WG_VNET_GSO_TCPV4      1
#define WG_VNET_GSO_TCPV6      4
#define WG_VNET_GSO_UDP_L4     5
#define WG_VNET_GSO_ECN        128    /* or-ed into gso_type */
/* TUNSETOFFLOAD bits (linux/if_tun.h); USO needs Linux >= 6.2 (EINVAL before: retry without). */
#define WG_TUN_F_CSUM          1
#define WG_TUN_F_TSO4          2
#define WG_TUN_F_TSO6          4
#define WG_TUN_F_TSO_ECN       8
#define WG_TUN_F_USO4          32
#define WG_TUN_F_USO6          64
/* wg_vnet_segment errors, returned negated. */
#define WG_OFF_ERR_SHORT       1      /* shorter than the headers it claims */
#define WG_OFF_ERR_HEADER      2      /* vnet header inconsistent with the packet */
#define WG_OFF_ERR_PACKET      3      /* not an IPv4/IPv6 packet of the protocol gso_type names */
#define WG_OFF_ERR_GSO_TYPE    4      /* unsupported gso_type (UFO) */
#define WG_OFF_ERR_TOO_MANY    5      /* more segments than max_out */
#define WG_OFF_ERR_TOO_BIG     6      /* a segment is larger than out_cap */

/* Send side.  pkt = a TUN read: vnet header + IP packet (len counts both).  Writes plain IP
 * packets with complete checksums to out[k] (each out_cap bytes), lengths to out_len[k].
 * GSO_NONE: one packet (its partial checksum finished); TCPV4/TCPV6/UDP_L4: one packet per
 * gso_size bytes of payload, each with its own IP length/ID/checksum, TCP sequence number
 * (FIN/PSH on the last, CWR on the first only) or UDP length, and full L4 checksum.
 * out[0] may be pkt + WG_VNET_HDR_LEN (the first packet is then built in place); no other
 * out[k] may overlap pkt.  Returns the number of packets, or -WG_OFF_ERR_* (nothing usable). */
int wg_vnet_segment(const uint8_t *pkt, uint32_t len, uint8_t **out, uint32_t out_cap,
                    uint32_t *out_len, uint32_t max_out);
/* The same, resumable, for a caller with fewer free slots than segments: writes segments
 * first, first+1, ... (at most max_out of them) to out[0], out[1], ... and sets *nseg to the
 * super-packet's number of segments; call again with first += the return value until it
 * reaches *nseg.  With first > 0 no out[k] may overlap pkt.  Returns the number written (0
 * when first >= *nseg), or -WG_OFF_ERR_* (never TOO_MANY).  IPv6 super-packets may carry
 * hop-by-hop, routing and destination options headers (not fragments); each segment keeps
 * them, and a routing header with segments left gives the pseudo-header's destination. */
int wg_vnet_segment_from(const uint8_t *pkt, uint32_t len, uint32_t first, uint8_t **out,
                         uint32_t out_cap, uint32_t *out_len, uint32_t max_out, uint32_t *nseg);

/* Receive side.  pkts[i] (lens[i] bytes, WireGuard padding allowed: packets are trimmed to
 * their IP length) are decrypted IP packets in arrival order, each with WG_VNET_HDR_LEN
 * writable bytes in front of it (a ring slot's HEADROOM).  Consecutive in-order TCP segments
 * of one flow (ACK or ACK|PSH only, same addresses, ports, ACK, window, options, TOS/TTL,
 * IPv4 without options or fragments and IDs counting up, equal sizes but a shorter last one,
 * valid checksums, at most 65535 IP bytes) are copied into one super-packet in scratch with
 * a GSO_TCPV4/TCPV6 NEEDS_CSUM vnet header.  With WG_GRO_UDP in flags (only when the TUN
 * took TUN_F_USO4/6), consecutive UDP datagrams of one flow under the same IP rules (equal
 * sizes but a shorter last one, a checksum present and valid, at most 64 of them) become one
 * GSO_UDP_L4 super-packet the same way.  Everything else gets a zero vnet header written
 * in front of it, in place.  out_ptrs[k]/out_lens[k] = the k-th TUN write (vnet header
 * included), in arrival order of each output's first packet.  Takes the first
 * min(n, max_out, WG_MAX_BATCH) packets; returns the number of writes.  scratch should hold
 * about 64 KB per flow in flight (65600 bytes each); with less, packets pass through. */
#define WG_GRO_UDP 1
uint32_t wg_gro_coalesce(uint8_t **pkts, const uint32_t *lens, uint32_t n,
                         uint8_t *scratch, uint32_t scratch_cap,
                         uint8_t **out_ptrs, uint32_t *out_lens, uint32_t max_out, int flags);

/* RFC 1071 Internet checksum of len bytes, as the 16-bit value to store big-endian. */
uint16_t wg_inet_csum(const uint8_t *p, uint32_t len);
