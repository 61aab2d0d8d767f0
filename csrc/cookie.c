/* cookie.c -- the MACs of handshake messages and cookie replies (whitepaper 5.4.4, 5.4.7; as
 * the kernel's cookie.c): mac1 under HASH("mac1----" || our public key) on every initiation
 * and response, and under load mac2 under a cookie -- a keyed hash of the source's IP and
 * port under a secret renewed every two minutes -- which a source without one gets in a
 * cookie reply (XChaCha20-Poly1305 under HASH("cookie--" || our public key), its mac1 as AAD).
 *
 * Crypto is loaded at run time: BLAKE2s as OpenSSL 3's EVP_MAC "BLAKE2SMAC" (libcrypto.so.3),
 * XChaCha20-Poly1305 and randombytes from the libsodium inside PyNaCl.  Python cross-checks
 * both against hashlib / PyNaCl when a device opens (dataplane.check_handshake_crypto). */
#include "handshake_in.h"

#include <dlfcn.h>
#include <errno.h>
#include <string.h>

#define OSSL_LIB "libcrypto.so.3"
#define COOKIE_SECRET_MAX_AGE 120.0

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
        void *h = dlopen(OSSL_LIB, RTLD_NOW | RTLD_LOCAL);
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

int wg_hs_crypto_mask(void)
{
    return __atomic_load_n(&hs_mask, __ATOMIC_ACQUIRE);
}

static int ct_equal16(const uint8_t *a, const uint8_t *b)
{
    volatile uint8_t d = 0;
    for (int i = 0; i < WG_MAC_LEN; i++)
        d |= a[i] ^ b[i];
    return d == 0;
}

/* ---- mac1, mac2 and cookies -------------------------------------------------------------- */
/* What the cookie is computed over: source IP (4 or 16 bytes) || UDP port, big-endian. */
static uint32_t source_bytes(const wg_addr *a, uint8_t *out)
{
    uint32_t n = a->family == AF_INET ? 4 : 16;
    memcpy(out, a->addr, n);
    out[n] = (uint8_t)(a->port >> 8);
    out[n + 1] = (uint8_t)a->port;
    return n + 2;
}

static int cookie_for(struct wg_cookie_checker *c, const wg_addr *src, double now,
                      uint8_t *cookie)
{
    if (!c->have_secret || now - c->secret_birth >= COOKIE_SECRET_MAX_AGE) {
        if (!(hs_mask & WG_HS_XCHACHA))
            return -1;
        p_randombytes(c->secret, sizeof(c->secret));
        c->secret_birth = now;
        c->have_secret = 1;
    }
    uint8_t sb[18];
    return wg_blake2s_mac(c->secret, 32, sb, source_bytes(src, sb), cookie);
}

int wg_cookie_mac1_ok(const uint8_t key[32], const uint8_t *msg, uint32_t len)
{
    uint8_t m[WG_MAC_LEN];
    uint32_t off = len - 2 * WG_MAC_LEN;
    return wg_blake2s_mac(key, 32, msg, off, m) == 0 && ct_equal16(m, msg + off);
}

int wg_cookie_mac2_ok(struct wg_cookie_checker *c, const uint8_t *msg, uint32_t len,
                      const wg_addr *src, double now)
{
    uint8_t cookie[16], m[WG_MAC_LEN];
    uint32_t off = len - WG_MAC_LEN;
    int good = cookie_for(c, src, now, cookie) == 0 &&
               wg_blake2s_mac(cookie, 16, msg, off, m) == 0 && ct_equal16(m, msg + off);
    explicit_bzero(cookie, sizeof(cookie));
    return good;
}

/* Cookie reply (type 3) to the sender of msg: XChaCha20-Poly1305 under HASH("cookie--" ||
 * our public key), random nonce, the cookie as plaintext, the message's mac1 as AAD. */
int wg_cookie_make_reply(struct wg_cookie_checker *c, const uint8_t *msg, uint32_t len,
                         const wg_addr *src, double now, uint8_t *out)
{
    uint8_t cookie[16];
    uint32_t off = len - 2 * WG_MAC_LEN;       /* mac1 */
    if (!(hs_mask & WG_HS_XCHACHA) || cookie_for(c, src, now, cookie))
        return -1;
    out[0] = WG_MSG_COOKIE_REPLY;
    out[1] = out[2] = out[3] = 0;
    memcpy(out + 4, msg + 4, 4);                /* receiver = their sender index */
    p_randombytes(out + 8, 24);
    unsigned long long clen = 0;
    int r = p_xseal(out + 32, &clen, cookie, 16, msg + off, 16, NULL, out + 8, c->cookie_key);
    explicit_bzero(cookie, sizeof(cookie));
    return r == 0 && clen == 32 ? 0 : -1;
}

int wg_hs_cookie_reply(wg_dp *dp, const uint8_t *msg, uint32_t len, const wg_addr *src,
                       double now, uint8_t *out64)
{
    if (len != WG_INITIATION_LEN && len != WG_RESPONSE_LEN)
        return -EINVAL;
    pthread_mutex_lock(&dp->hs->lock);
    int r = wg_cookie_make_reply(&dp->hs->cookie, msg, len, src, now, out64);
    pthread_mutex_unlock(&dp->hs->lock);
    return r;
}
