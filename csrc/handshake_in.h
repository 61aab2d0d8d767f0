/* handshake_in.h -- what the handshake intake's files share: the intake state (handshake_in.c,
 * its queue), the cookie checker (cookie.c: mac1, mac2, cookie replies and the run-time
 * crypto behind them) and the per-source rate limiter (ratelimiter.c). */
#ifndef WGFAST_HANDSHAKE_IN_H
#define WGFAST_HANDSHAKE_IN_H

#include "io.h"

#define HSQ_BUCKETS     64
#define HSQ_DEPTH       16          /* 1,024 messages in all */
#define HSQ_CAP         (HSQ_BUCKETS * HSQ_DEPTH)
#define HSQ_MSG_MAX     WG_INITIATION_LEN

/* ---- cookie.c ---------------------------------------------------------------------------- */
struct wg_cookie_checker {
    uint8_t  mac1_key[32];          /* HASH("mac1----" || our public key) */
    uint8_t  cookie_key[32];        /* HASH("cookie--" || our public key) */
    int      have_key;
    uint8_t  secret[32];            /* what cookies are made from, renewed every 2 minutes */
    double   secret_birth;
    int      have_secret;
};
/* WG_HS_* bits of the crypto wg_hs_crypto_init loaded. */
int wg_hs_crypto_mask(void);
/* The mac1 of an initiation or response (len bytes) under key; 1 = valid. */
int wg_cookie_mac1_ok(const uint8_t key[32], const uint8_t *msg, uint32_t len);
/* Its mac2 under the cookie src would hold now; 1 = valid.  Caller holds the intake lock. */
int wg_cookie_mac2_ok(struct wg_cookie_checker *c, const uint8_t *msg, uint32_t len,
                      const wg_addr *src, double now);
/* The cookie reply (WG_COOKIE_REPLY_LEN bytes) to msg from src; 0 = ok.  Caller holds the
 * intake lock. */
int wg_cookie_make_reply(struct wg_cookie_checker *c, const uint8_t *msg, uint32_t len,
                         const wg_addr *src, double now, uint8_t *out);

/* ---- ratelimiter.c ----------------------------------------------------------------------- */
struct wg_rl_entry;
struct wg_ratelimiter {
    struct wg_rl_entry *table, *spare;  /* open addressing; spare: rebuilt into, then swapped */
    uint32_t used;
    double   gc;                    /* when idle sources were last forgotten */
    uint64_t seed;                  /* keys the table's hash */
};
int  wg_ratelimiter_init(struct wg_ratelimiter *rl, uint64_t seed);   /* 0 or -ENOMEM */
void wg_ratelimiter_free(struct wg_ratelimiter *rl);
/* 1 when src may pass one more message now.  Caller holds the intake lock. */
int  wg_ratelimiter_allow(struct wg_ratelimiter *rl, const wg_addr *src, double now);
/* A source's key: its IPv4 address (also when IPv4-mapped) or its IPv6 /64; fam = 4 or 6. */
uint64_t wg_source_key(const wg_addr *a, uint32_t *fam);

/* ---- handshake_in.c ---------------------------------------------------------------------- */
struct hsq_entry {
    wg_addr  addr;
    uint32_t len;
    uint32_t flags;
    uint8_t  data[HSQ_MSG_MAX];
};

struct wg_hs_in {
    pthread_mutex_t lock;           /* everything below */
    struct wg_cookie_checker cookie;
    struct wg_ratelimiter rl;
    double   last_under_load;
    double   force_load_until;      /* tests */
    uint64_t seed;                  /* keys the bucket hash */
    struct hsq_entry *q;            /* HSQ_BUCKETS x HSQ_DEPTH */
    uint8_t  head[HSQ_BUCKETS], count[HSQ_BUCKETS];
    uint32_t total, rr;
};

#endif
