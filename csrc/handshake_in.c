/* handshake_in.c -- intake of handshake messages (types 1-3) before Python sees any of them.
 *
 * Everything an unauthenticated sender can cause per packet is decided here (whitepaper
 * 5.4.4, 5.4.7; kernel cookie.c / ratelimiter.c semantics):
 *   - initiations and responses need a valid mac1 (keyed BLAKE2s under HASH("mac1----" ||
 *     our public key)); a bad one is the counted drop WG_DROP_MAC1;
 *   - under load (the handshake queue more than 1/8 full, or it was within the last second)
 *     they also need a valid mac2 (keyed with the cookie of their source IP || port); without
 *     one the source gets a cookie reply, sent from here (WG_DROP_COOKIE), and either way a
 *     source may pass at most 20 messages a second (burst 5; IPv6 per /64: WG_DROP_RATELIMIT);
 *   - what passes goes to Python on a bounded queue of its own: HSQ_BUCKETS FIFOs picked by a
 *     keyed hash of the source address and port, drained round-robin, so one source fills only
 *     its own bucket (WG_DROP_EVENTS_FULL).
 *
 * Crypto is loaded at run time: BLAKE2s as OpenSSL 3's EVP_MAC "BLAKE2SMAC" (libcrypto.so.3),
 * XChaCha20-Poly1305 and randombytes from the libsodium inside PyNaCl.  Python cross-checks
 * both against hashlib / PyNaCl when a device opens (datapath.check_handshake_crypto).
 * Without BLAKE2SMAC every message is queued unverified (flag 1 in wg_event.receiver) and
 * Python checks the MACs itself.
 */
#include "io.h"

#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/random.h>
#include <netinet/in.h>
#include <unistd.h>

#define HSQ_BUCKETS     64
#define HSQ_DEPTH       16          /* 1,024 messages in all */
#define HSQ_CAP         (HSQ_BUCKETS * HSQ_DEPTH)
#define HSQ_MSG_MAX     148
#define UNDER_LOAD_HOLD 1.0
#define COOKIE_SECRET_MAX_AGE 120.0
#define RL_SLOTS        16384       /* open addressing, power of two */
#define RL_MAX          8192        /* sources tracked at once */
#define RL_COST_NS      50000000LL  /* 1 s / 20 */
#define RL_MAX_NS       (5 * RL_COST_NS)

/* ---- run-time crypto ------------------------------------------------------------------- */
typedef struct { const char *key; unsigned int data_type; void *data; size_t data_size;
                 size_t return_size; } ossl_param;     /* OSSL_PARAM, a stable OpenSSL 3 ABI */
#define OSSL_PARAM_UNSIGNED_INTEGER 2

static void *(*p_mac_fetch)(void *, const char *, const char *);
static void *(*p_ctx_new)(void *);
static void (*p_ctx_free)(void *);
static int (*p_mac_init)(void *, const unsigned char *, size_t, const ossl_param *);
static int (*p_mac_update)(void *, const unsigned char *, size_t);
static int (*p_mac_final)(void *, unsigned char *, size_t *, size_t);
static void *blake2s_mac;           /* EVP_MAC *, fetched once */

typedef int (*xseal_t)(unsigned char *c, unsigned long long *clen, const unsigned char *m,
                       unsigned long long mlen, const unsigned char *ad, unsigned long long adlen,
                       const unsigned char *nsec, const unsigned char *npub,
                       const unsigned char *k);
static xseal_t p_xseal;
static void (*p_randombytes)(void *, size_t);
static int hs_mask;
static pthread_mutex_t hs_init_lock = PTHREAD_MUTEX_INITIALIZER;

int wg_hs_crypto_init(const char *sodium_path)
{
    pthread_mutex_lock(&hs_init_lock);
    if (!(hs_mask & WG_HS_BLAKE2S)) {
        void *h = dlopen("libcrypto.so.3", RTLD_NOW | RTLD_LOCAL);
        if (h) {
            p_mac_fetch = (void *(*)(void *, const char *, const char *))dlsym(h, "EVP_MAC_fetch");
            p_ctx_new = (void *(*)(void *))dlsym(h, "EVP_MAC_CTX_new");
            p_ctx_free = (void (*)(void *))dlsym(h, "EVP_MAC_CTX_free");
            p_mac_init = (int (*)(void *, const unsigned char *, size_t, const ossl_param *))
                         dlsym(h, "EVP_MAC_init");
            p_mac_update = (int (*)(void *, const unsigned char *, size_t))
                           dlsym(h, "EVP_MAC_update");
            p_mac_final = (int (*)(void *, unsigned char *, size_t *, size_t))
                          dlsym(h, "EVP_MAC_final");
            if (p_mac_fetch && p_ctx_new && p_ctx_free && p_mac_init && p_mac_update &&
                p_mac_final)
                blake2s_mac = p_mac_fetch(NULL, "BLAKE2SMAC", NULL);
            if (blake2s_mac)
                hs_mask |= WG_HS_BLAKE2S;
        }
    }
    if (!(hs_mask & WG_HS_XCHACHA) && sodium_path && *sodium_path) {
        void *h = dlopen(sodium_path, RTLD_NOW | RTLD_LOCAL);
        if (h) {
            int (*init)(void) = (int (*)(void))dlsym(h, "sodium_init");
            p_xseal = (xseal_t)dlsym(h, "crypto_aead_xchacha20poly1305_ietf_encrypt");
            p_randombytes = (void (*)(void *, size_t))dlsym(h, "randombytes_buf");
            if (init && p_xseal && p_randombytes && init() >= 0)
                hs_mask |= WG_HS_XCHACHA;
        }
    }
    int m = hs_mask;
    pthread_mutex_unlock(&hs_init_lock);
    return m;
}

/* One EVP_MAC_CTX per thread, rekeyed per message, freed when the thread ends. */
static pthread_key_t ctx_key;
static pthread_once_t ctx_once = PTHREAD_ONCE_INIT;
static void ctx_free(void *ctx) { p_ctx_free(ctx); }
static void ctx_key_init(void) { pthread_key_create(&ctx_key, ctx_free); }

int wg_blake2s_mac(const uint8_t *key, uint32_t keylen, const uint8_t *data, uint32_t len,
                   uint8_t *out16)
{
    if (!(__atomic_load_n(&hs_mask, __ATOMIC_ACQUIRE) & WG_HS_BLAKE2S) || keylen > 32)
        return -1;
    pthread_once(&ctx_once, ctx_key_init);
    void *ctx = pthread_getspecific(ctx_key);
    if (!ctx) {
        if (!(ctx = p_ctx_new(blake2s_mac)))
            return -1;
        pthread_setspecific(ctx_key, ctx);
    }
    size_t outlen = 16, got = 0;
    ossl_param params[2] = {
        {"size", OSSL_PARAM_UNSIGNED_INTEGER, &outlen, sizeof(outlen), 0},
        {NULL, 0, NULL, 0, 0},
    };
    if (p_mac_init(ctx, key, keylen, params) != 1 || p_mac_update(ctx, data, len) != 1 ||
        p_mac_final(ctx, out16, &got, 16) != 1 || got != 16)
        return -1;
    return 0;
}

static int ct_equal16(const uint8_t *a, const uint8_t *b)
{
    volatile uint8_t d = 0;
    for (int i = 0; i < 16; i++)
        d |= a[i] ^ b[i];
    return d == 0;
}

/* ---- state ------------------------------------------------------------------------------ */
struct hsq_entry {
    wg_addr  addr;
    uint32_t len;
    uint32_t flags;
    uint8_t  data[HSQ_MSG_MAX];
};

struct rl_entry {
    uint64_t key;           /* IPv4 address or IPv6 /64 */
    uint32_t used;          /* 0 empty, 4 IPv4, 6 IPv6 */
    int64_t  last_ns;
    int64_t  tokens;
};

struct wg_hs_in {
    pthread_mutex_t lock;
    uint8_t  mac1_key[32];
    uint8_t  cookie_key[32];
    int      have_key;
    uint8_t  secret[32];
    double   secret_birth;
    int      have_secret;
    double   last_under_load;
    double   force_load_until;      /* tests */
    uint64_t seed;                  /* keys the bucket hash */
    struct hsq_entry *q;            /* HSQ_BUCKETS x HSQ_DEPTH */
    uint8_t  head[HSQ_BUCKETS], count[HSQ_BUCKETS];
    uint32_t total, rr;
    struct rl_entry *rl, *rl_spare;
    uint32_t rl_used;
    double   rl_gc;
};

struct wg_hs_in *wg_hs_new(void)
{
    struct wg_hs_in *h = calloc(1, sizeof(*h));
    if (!h)
        return NULL;
    h->q = calloc(HSQ_CAP, sizeof(struct hsq_entry));
    h->rl = calloc(RL_SLOTS, sizeof(struct rl_entry));
    h->rl_spare = calloc(RL_SLOTS, sizeof(struct rl_entry));
    if (!h->q || !h->rl || !h->rl_spare || getrandom(&h->seed, sizeof(h->seed), 0) < 0) {
        wg_hs_free(h);
        return NULL;
    }
    pthread_mutex_init(&h->lock, NULL);
    h->rl_gc = -1e18;
    return h;
}

void wg_hs_free(struct wg_hs_in *h)
{
    if (!h)
        return;
    explicit_bzero(h->mac1_key, sizeof(h->mac1_key));
    explicit_bzero(h->cookie_key, sizeof(h->cookie_key));
    explicit_bzero(h->secret, sizeof(h->secret));
    free(h->q);
    free(h->rl);
    free(h->rl_spare);
    free(h);
}

int wg_hs_set_keys(wg_dp *dp, const uint8_t *mac1_key, const uint8_t *cookie_key)
{
    struct wg_hs_in *h = dp->hs;
    pthread_mutex_lock(&h->lock);
    if (mac1_key && cookie_key) {
        memcpy(h->mac1_key, mac1_key, 32);
        memcpy(h->cookie_key, cookie_key, 32);
        h->have_key = 1;
    } else {
        explicit_bzero(h->mac1_key, 32);
        explicit_bzero(h->cookie_key, 32);
        h->have_key = 0;
    }
    /* Messages queued under the old key are void. */
    memset(h->count, 0, sizeof(h->count));
    h->total = 0;
    pthread_mutex_unlock(&h->lock);
    return 0;
}

/* ---- the per-source token bucket (callers hold h->lock) -------------------------------- */
/* The rate limiter's key for a source: its IPv4 address (also when IPv4-mapped) or /64. */
static uint64_t source_key(const wg_addr *a, uint32_t *fam)
{
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    uint64_t k = 0;
    if (a->family == AF_INET || (a->family == AF_INET6 && !memcmp(a->addr, mapped, 12))) {
        const uint8_t *p = a->family == AF_INET ? a->addr : a->addr + 12;
        for (int i = 0; i < 4; i++)
            k = k << 8 | p[i];
        *fam = 4;
    } else {
        for (int i = 0; i < 8; i++)
            k = k << 8 | a->addr[i];
        *fam = 6;
    }
    return k;
}

static struct rl_entry *rl_find(struct rl_entry *t, uint64_t key, uint32_t fam, uint64_t seed,
                                int *found)
{
    uint32_t b = (uint32_t)wg_mix64(key ^ seed ^ fam) & (RL_SLOTS - 1);
    for (;;) {
        struct rl_entry *e = &t[b];
        if (!e->used) {
            *found = 0;
            return e;
        }
        if (e->used == fam && e->key == key) {
            *found = 1;
            return e;
        }
        b = (b + 1) & (RL_SLOTS - 1);
    }
}

/* Forget sources idle for over a second (a full bucket carries no state): rebuild the table
 * from the live entries, so no tombstones pile up. */
static void rl_collect(struct wg_hs_in *h, int64_t now_ns)
{
    memset(h->rl_spare, 0, RL_SLOTS * sizeof(struct rl_entry));
    uint32_t used = 0;
    for (uint32_t i = 0; i < RL_SLOTS; i++) {
        struct rl_entry *e = &h->rl[i];
        if (!e->used || now_ns - e->last_ns > 1000000000LL)
            continue;
        int found;
        *rl_find(h->rl_spare, e->key, e->used, h->seed, &found) = *e;
        used++;
    }
    struct rl_entry *t = h->rl;
    h->rl = h->rl_spare;
    h->rl_spare = t;
    h->rl_used = used;
}

static int rl_allow(struct wg_hs_in *h, const wg_addr *a, double now)
{
    int64_t now_ns = (int64_t)(now * 1e9);
    if (now - h->rl_gc >= 1.0) {
        rl_collect(h, now_ns);
        h->rl_gc = now;
    }
    uint32_t fam;
    uint64_t key = source_key(a, &fam);
    int found;
    struct rl_entry *e = rl_find(h->rl, key, fam, h->seed, &found);
    if (!found) {
        if (h->rl_used >= RL_MAX) {
            rl_collect(h, now_ns);
            h->rl_gc = now;
            if (h->rl_used >= RL_MAX)
                return 0;           /* full of active sources: refuse new ones */
            e = rl_find(h->rl, key, fam, h->seed, &found);
        }
        e->key = key;
        e->used = fam;
        e->last_ns = now_ns;
        e->tokens = RL_MAX_NS - RL_COST_NS;
        h->rl_used++;
        return 1;
    }
    int64_t dt = now_ns - e->last_ns;
    int64_t tokens = e->tokens + (dt > 0 ? dt : 0);
    if (tokens > RL_MAX_NS)
        tokens = RL_MAX_NS;
    e->last_ns = now_ns;
    /* 1 us of slack: time stamps that are sums of 1/20 s must not lose a token to rounding. */
    if (tokens >= RL_COST_NS - 1000) {
        e->tokens = tokens - RL_COST_NS;
        return 1;
    }
    e->tokens = tokens;
    return 0;
}

int wg_hs_ratelimit(wg_dp *dp, const wg_addr *src, double now)
{
    pthread_mutex_lock(&dp->hs->lock);
    int ok = rl_allow(dp->hs, src, now);
    pthread_mutex_unlock(&dp->hs->lock);
    return ok;
}

/* ---- cookies (callers hold h->lock) ------------------------------------------------------ */
/* What the cookie is computed over: source IP (4 or 16 bytes) || UDP port, big-endian. */
static uint32_t source_bytes(const wg_addr *a, uint8_t *out)
{
    uint32_t n = a->family == AF_INET ? 4 : 16;
    memcpy(out, a->addr, n);
    out[n] = (uint8_t)(a->port >> 8);
    out[n + 1] = (uint8_t)a->port;
    return n + 2;
}

static int cookie_for(struct wg_hs_in *h, const wg_addr *src, double now, uint8_t *cookie)
{
    if (!h->have_secret || now - h->secret_birth >= COOKIE_SECRET_MAX_AGE) {
        if (!(hs_mask & WG_HS_XCHACHA))
            return -1;
        p_randombytes(h->secret, sizeof(h->secret));
        h->secret_birth = now;
        h->have_secret = 1;
    }
    uint8_t sb[18];
    return wg_blake2s_mac(h->secret, 32, sb, source_bytes(src, sb), cookie);
}

/* Cookie reply (type 3) to the sender of msg: XChaCha20-Poly1305 under HASH("cookie--" ||
 * our public key), random nonce, the cookie as plaintext, the message's mac1 as AAD. */
static int make_reply(struct wg_hs_in *h, const uint8_t *msg, uint32_t len, const wg_addr *src,
                      double now, uint8_t *out)
{
    uint8_t cookie[16];
    uint32_t off = len - 32;
    if (!(hs_mask & WG_HS_XCHACHA) || cookie_for(h, src, now, cookie))
        return -1;
    out[0] = 3;
    out[1] = out[2] = out[3] = 0;
    memcpy(out + 4, msg + 4, 4);                /* receiver = their sender index */
    p_randombytes(out + 8, 24);
    unsigned long long clen = 0;
    int r = p_xseal(out + 32, &clen, cookie, 16, msg + off, 16, NULL, out + 8, h->cookie_key);
    explicit_bzero(cookie, sizeof(cookie));
    return r == 0 && clen == 32 ? 0 : -1;
}

int wg_hs_cookie_reply(wg_dp *dp, const uint8_t *msg, uint32_t len, const wg_addr *src,
                       double now, uint8_t *out64)
{
    if (len != 148 && len != 92)
        return -EINVAL;
    pthread_mutex_lock(&dp->hs->lock);
    int r = make_reply(dp->hs, msg, len, src, now, out64);
    pthread_mutex_unlock(&dp->hs->lock);
    return r;
}

static void send_reply(wg_dp *dp, const uint8_t *reply, const wg_addr *to)
{
    int fd = to->family == AF_INET ? dp->udp4_fd : dp->udp6_fd;
    struct sockaddr_storage ss;
    socklen_t sl = wg_addr_to_sockaddr(to, &ss);
    if (fd < 0 || !sl || sendto(fd, reply, 64, MSG_DONTWAIT, (struct sockaddr *)&ss, sl) != 64)
        wg_drop(dp, WG_DROP_IO, 1);
}

/* ---- the queue (callers hold h->lock) ----------------------------------------------------- */
static int under_load(struct wg_hs_in *h, double now)
{
    if (h->total > HSQ_CAP / 8) {
        h->last_under_load = now;
        return 1;
    }
    return (h->last_under_load > 0 && now - h->last_under_load < UNDER_LOAD_HOLD) ||
           now < h->force_load_until;
}

int wg_hs_under_load(wg_dp *dp, double now)
{
    pthread_mutex_lock(&dp->hs->lock);
    int r = under_load(dp->hs, now);
    pthread_mutex_unlock(&dp->hs->lock);
    return r;
}

void wg_hs_force_load(wg_dp *dp, double until)
{
    pthread_mutex_lock(&dp->hs->lock);
    dp->hs->force_load_until = until;
    pthread_mutex_unlock(&dp->hs->lock);
}

static int enqueue(struct wg_hs_in *h, const uint8_t *msg, uint32_t len, const wg_addr *src,
                   uint32_t flags)
{
    uint32_t fam;
    uint64_t key = source_key(src, &fam);
    uint64_t k = key ^ h->seed ^ ((uint64_t)src->port << 40);
    uint32_t b = (uint32_t)(wg_mix64(k) % HSQ_BUCKETS);
    if (h->count[b] == HSQ_DEPTH)
        return -1;
    struct hsq_entry *e = &h->q[b * HSQ_DEPTH + (h->head[b] + h->count[b]) % HSQ_DEPTH];
    e->addr = *src;
    e->len = len;
    e->flags = flags;
    memcpy(e->data, msg, len);
    h->count[b]++;
    h->total++;
    return 0;
}

/* One handshake-typed datagram of its exact size: returns its slot status. */
int wg_hs_receive(wg_dp *dp, const uint8_t *msg, uint32_t len, const wg_addr *src, double now)
{
    struct wg_hs_in *h = dp->hs;
    int verified = __atomic_load_n(&hs_mask, __ATOMIC_ACQUIRE) & WG_HS_BLAKE2S;
    uint8_t reply[64];
    int status = WG_DROP_HANDSHAKE, reply_ok = 0;
    uint8_t m[16];

    /* mac1 outside the lock: a garbage flood costs one short critical section each. */
    uint8_t key[32];
    pthread_mutex_lock(&h->lock);
    int have_key = h->have_key;
    memcpy(key, h->mac1_key, sizeof(key));
    pthread_mutex_unlock(&h->lock);
    uint32_t off = len - 32;
    int mac1_ok = 0;
    if (have_key && verified && msg[0] != 3)
        mac1_ok = wg_blake2s_mac(key, 32, msg, off, m) == 0 && ct_equal16(m, msg + off);
    explicit_bzero(key, sizeof(key));
    if (!have_key || (verified && msg[0] != 3 && !mac1_ok)) {
        /* No private key (nobody to talk to), or a bad mac1: never queued. */
        wg_drop(dp, WG_DROP_MAC1, 1);
        return WG_DROP_MAC1;
    }

    pthread_mutex_lock(&h->lock);
    int load = under_load(h, now);
    if (msg[0] == 3) {
        /* Cookie replies carry no MACs; under load they share the per-source limit. */
        if (load && !rl_allow(h, src, now))
            status = WG_DROP_RATELIMIT;
        else if (enqueue(h, msg, len, src, 0))
            status = WG_DROP_EVENTS_FULL;
        goto out;
    }
    if (!verified) {
        if (enqueue(h, msg, len, src, WG_HS_UNVERIFIED))
            status = WG_DROP_EVENTS_FULL;
        goto out;
    }
    if (load) {
        uint8_t cookie[16];
        int good = cookie_for(h, src, now, cookie) == 0 &&
                   wg_blake2s_mac(cookie, 16, msg, off + 16, m) == 0 &&
                   ct_equal16(m, msg + off + 16);
        explicit_bzero(cookie, sizeof(cookie));
        if (!rl_allow(h, src, now)) {
            status = WG_DROP_RATELIMIT;
            goto out;
        }
        if (!good) {
            status = WG_DROP_COOKIE;
            reply_ok = make_reply(h, msg, len, src, now, reply) == 0;
            goto out;
        }
    }
    if (enqueue(h, msg, len, src, 0))
        status = WG_DROP_EVENTS_FULL;
out:
    pthread_mutex_unlock(&h->lock);
    /* Counted before the reply leaves: whoever sees the reply sees the count. */
    if (status != WG_DROP_HANDSHAKE)
        wg_drop(dp, status, 1);
    else
        wg_dp_wake(dp);
    if (reply_ok)
        send_reply(dp, reply, src);
    return status;
}

uint32_t wg_hs_pop(wg_dp *dp, wg_event *evs, uint8_t *data, uint32_t stride, uint32_t max)
{
    struct wg_hs_in *h = dp->hs;
    uint32_t n = 0;
    pthread_mutex_lock(&h->lock);
    while (n < max && h->total) {
        uint32_t b = h->rr;
        h->rr = (h->rr + 1) % HSQ_BUCKETS;
        if (!h->count[b])
            continue;
        struct hsq_entry *e = &h->q[b * HSQ_DEPTH + h->head[b]];
        uint32_t len = e->len < stride ? e->len : stride;
        evs[n].type = WG_EV_HANDSHAKE;
        evs[n].peer = 0;
        evs[n].receiver = e->flags;
        evs[n].len = len;
        evs[n].addr = e->addr;
        if (data && len)
            memcpy(data + (size_t)n * stride, e->data, len);
        h->head[b] = (uint8_t)((h->head[b] + 1) % HSQ_DEPTH);
        h->count[b]--;
        h->total--;
        n++;
    }
    pthread_mutex_unlock(&h->lock);
    return n;
}

uint32_t wg_hs_queued(wg_dp *dp)
{
    return __atomic_load_n(&dp->hs->total, __ATOMIC_RELAXED);
}
