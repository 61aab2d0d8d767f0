/* aead.c -- ChaCha20-Poly1305 backends loaded at run time, and the batch seal/open of
 * transport messages in place in a ring.
 *
 * No link-time crypto dependency: libsodium comes from PyNaCl's own shared object (it exports
 * the libsodium C API), OpenSSL from libcrypto.so.3, both via dlopen/dlsym.  Each backend is a
 * pair of functions taking (key, rekey, nonce, aad, buf, len, tag); `rekey` = 0 promises that
 * the key is the one of this thread's previous call on the same backend and direction, which
 * lets OpenSSL skip its key setup for a run of messages under one keypair. */
#include "wgfast_internal.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- backend table ------------------------------------------------------------------- */
typedef int (*aead_fn)(const uint8_t *key, int rekey, const uint8_t *nonce, const uint8_t *aad,
                       size_t aadlen, uint8_t *buf, size_t len, uint8_t *tag);

/* One message of a batch: sealed or opened in place, tag separate. */
struct aead_item {
    const uint8_t *key;
    const uint8_t *aad;
    size_t aadlen;
    uint8_t *buf;
    size_t len;
    uint8_t *tag;
    uint8_t nonce[12];
    uint8_t calc[WG_TAG_LEN];   /* multi-buffer open: the tag it computed */
    int ok;
};
/* A backend that keeps several messages in flight takes the whole batch at once. */
typedef void (*aead_batch_fn)(struct aead_item *it, uint32_t n, int enc);

struct backend {
    const char *name;
    int loaded;
    aead_fn seal;       /* per-message backends */
    aead_fn open;       /* on a bad tag buf is left untouched or wiped, never plaintext */
    aead_batch_fn batch;
};

static struct backend backends[WG_AEAD_NBACKENDS] = {
    [WG_AEAD_SODIUM] = {"libsodium", 0, NULL, NULL, NULL},
    [WG_AEAD_OPENSSL] = {"openssl", 0, NULL, NULL, NULL},
    [WG_AEAD_IPSECMB] = {"ipsec-mb", 0, NULL, NULL, NULL},
};
static int selected = -1;
static pthread_mutex_t init_lock = PTHREAD_MUTEX_INITIALIZER;

static void run_batch(int be, struct aead_item *it, uint32_t n, int enc)
{
    const struct backend *b = &backends[be];
    if (b->batch) {
        b->batch(it, n, enc);
        return;
    }
    aead_fn f = enc ? b->seal : b->open;
    const uint8_t *prev = NULL;
    for (uint32_t k = 0; k < n; k++) {
        it[k].ok = f(it[k].key, it[k].key != prev, it[k].nonce, it[k].aad, it[k].aadlen,
                     it[k].buf, it[k].len, it[k].tag) == 0;
        prev = it[k].ok ? it[k].key : NULL;
    }
}

/* Constant-time tag comparison (the tags are not secret once sent, but the rule is simple). */
static int tag_equal(const uint8_t *a, const uint8_t *b)
{
    volatile uint8_t d = 0;
    for (int i = 0; i < WG_TAG_LEN; i++)
        d |= a[i] ^ b[i];
    return d == 0;
}

/* ---- libsodium ----------------------------------------------------------------------- */
typedef int (*sodium_enc_t)(unsigned char *c, unsigned char *mac, unsigned long long *maclen,
                            const unsigned char *m, unsigned long long mlen,
                            const unsigned char *ad, unsigned long long adlen,
                            const unsigned char *nsec, const unsigned char *npub,
                            const unsigned char *k);
typedef int (*sodium_dec_t)(unsigned char *m, unsigned char *nsec, const unsigned char *c,
                            unsigned long long clen, const unsigned char *mac,
                            const unsigned char *ad, unsigned long long adlen,
                            const unsigned char *npub, const unsigned char *k);
static sodium_enc_t sodium_enc;
static sodium_dec_t sodium_dec;

static int sodium_seal(const uint8_t *key, int rekey, const uint8_t *nonce, const uint8_t *aad,
                       size_t aadlen, uint8_t *buf, size_t len, uint8_t *tag)
{
    unsigned long long maclen;
    return sodium_enc(buf, tag, &maclen, buf, len, aad, aadlen, NULL, nonce, key) == 0 ? 0 : -1;
}

static int sodium_open(const uint8_t *key, int rekey, const uint8_t *nonce, const uint8_t *aad,
                       size_t aadlen, uint8_t *buf, size_t len, uint8_t *tag)
{
    /* libsodium verifies before it decrypts: on failure buf is untouched. */
    return sodium_dec(buf, NULL, buf, len, tag, aad, aadlen, nonce, key) == 0 ? 0 : -1;
}

static int load_sodium(const char *path)
{
    if (!path || !*path)
        return 0;
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h)
        return 0;
    int (*init)(void) = (int (*)(void))dlsym(h, "sodium_init");
    sodium_enc = (sodium_enc_t)dlsym(h, "crypto_aead_chacha20poly1305_ietf_encrypt_detached");
    sodium_dec = (sodium_dec_t)dlsym(h, "crypto_aead_chacha20poly1305_ietf_decrypt_detached");
    if (!init || !sodium_enc || !sodium_dec || init() < 0)
        return 0;   /* the handle stays open: unloading a module Python holds would be worse */
    backends[WG_AEAD_SODIUM].seal = sodium_seal;
    backends[WG_AEAD_SODIUM].open = sodium_open;
    return 1;
}

/* ---- OpenSSL 3 libcrypto ------------------------------------------------------------- */
typedef struct evp_cipher_ctx_st EVP_CIPHER_CTX;
typedef struct evp_cipher_st EVP_CIPHER;
#define EVP_CTRL_AEAD_GET_TAG 0x10
#define EVP_CTRL_AEAD_SET_TAG 0x11

static struct {
    const EVP_CIPHER *(*chacha)(void);
    EVP_CIPHER_CTX *(*ctx_new)(void);
    void (*ctx_free)(EVP_CIPHER_CTX *);
    int (*cipher_init)(EVP_CIPHER_CTX *, const EVP_CIPHER *, void *, const unsigned char *,
                       const unsigned char *, int);
    int (*update)(EVP_CIPHER_CTX *, unsigned char *, int *, const unsigned char *, int);
    int (*final)(EVP_CIPHER_CTX *, unsigned char *, int *);
    int (*ctrl)(EVP_CIPHER_CTX *, int, int, void *);
    const EVP_CIPHER *cipher;
} ossl;

/* One context per thread and direction, freed when the thread exits. */
static pthread_key_t ossl_key;
struct ossl_tls {
    EVP_CIPHER_CTX *ctx[2];     /* 0 = decrypt, 1 = encrypt */
};
static __thread struct ossl_tls *ossl_tls;

static void ossl_tls_free(void *p)
{
    struct ossl_tls *t = p;
    for (int i = 0; i < 2; i++)
        if (t->ctx[i])
            ossl.ctx_free(t->ctx[i]);   /* EVP_CIPHER_CTX_free cleanses the key schedule */
    free(t);
}

static EVP_CIPHER_CTX *ossl_ctx(int enc, int *fresh)
{
    struct ossl_tls *t = ossl_tls;
    if (!t) {
        t = calloc(1, sizeof(*t));
        if (!t)
            return NULL;
        ossl_tls = t;
        pthread_setspecific(ossl_key, t);
    }
    if (!t->ctx[enc]) {
        EVP_CIPHER_CTX *c = ossl.ctx_new();
        if (!c)
            return NULL;
        if (ossl.cipher_init(c, ossl.cipher, NULL, NULL, NULL, enc) != 1) {
            ossl.ctx_free(c);
            return NULL;
        }
        t->ctx[enc] = c;
        *fresh = 1;
    }
    return t->ctx[enc];
}

static int ossl_run(int enc, const uint8_t *key, int rekey, const uint8_t *nonce,
                    const uint8_t *aad, size_t aadlen, uint8_t *buf, size_t len, uint8_t *tag)
{
    int fresh = 0, outl;
    if (len > 0x7fffffff || aadlen > 0x7fffffff)
        return -1;
    EVP_CIPHER_CTX *c = ossl_ctx(enc, &fresh);
    if (!c)
        return -1;
    /* The nonce must be set on every message; the key only when it changed. */
    if (ossl.cipher_init(c, NULL, NULL, (rekey || fresh) ? key : NULL, nonce, enc) != 1)
        return -1;
    if (aadlen && ossl.update(c, NULL, &outl, aad, (int)aadlen) != 1)
        return -1;
    if (!enc && ossl.ctrl(c, EVP_CTRL_AEAD_SET_TAG, WG_TAG_LEN, tag) != 1)
        return -1;
    if (len && ossl.update(c, buf, &outl, buf, (int)len) != 1)
        return -1;
    if (ossl.final(c, buf + len, &outl) != 1) {
        if (!enc)
            explicit_bzero(buf, len);   /* never leave unauthenticated plaintext behind */
        return -1;
    }
    if (enc && ossl.ctrl(c, EVP_CTRL_AEAD_GET_TAG, WG_TAG_LEN, tag) != 1)
        return -1;
    return 0;
}

static int ossl_seal(const uint8_t *key, int rekey, const uint8_t *nonce, const uint8_t *aad,
                     size_t aadlen, uint8_t *buf, size_t len, uint8_t *tag)
{
    return ossl_run(1, key, rekey, nonce, aad, aadlen, buf, len, tag);
}

static int ossl_open(const uint8_t *key, int rekey, const uint8_t *nonce, const uint8_t *aad,
                     size_t aadlen, uint8_t *buf, size_t len, uint8_t *tag)
{
    return ossl_run(0, key, rekey, nonce, aad, aadlen, buf, len, tag);
}

static int load_openssl(void)
{
    void *h = dlopen("libcrypto.so.3", RTLD_NOW | RTLD_LOCAL);
    if (!h)
        return 0;
    *(void **)&ossl.chacha = dlsym(h, "EVP_chacha20_poly1305");
    *(void **)&ossl.ctx_new = dlsym(h, "EVP_CIPHER_CTX_new");
    *(void **)&ossl.ctx_free = dlsym(h, "EVP_CIPHER_CTX_free");
    *(void **)&ossl.cipher_init = dlsym(h, "EVP_CipherInit_ex");
    *(void **)&ossl.update = dlsym(h, "EVP_CipherUpdate");
    *(void **)&ossl.final = dlsym(h, "EVP_CipherFinal_ex");
    *(void **)&ossl.ctrl = dlsym(h, "EVP_CIPHER_CTX_ctrl");
    if (!ossl.chacha || !ossl.ctx_new || !ossl.ctx_free || !ossl.cipher_init || !ossl.update ||
        !ossl.final || !ossl.ctrl)
        return 0;
    ossl.cipher = ossl.chacha();
    if (!ossl.cipher || pthread_key_create(&ossl_key, ossl_tls_free) != 0)
        return 0;
    backends[WG_AEAD_OPENSSL].seal = ossl_seal;
    backends[WG_AEAD_OPENSSL].open = ossl_open;
    return 1;
}

/* ---- Intel IPsec multi-buffer (libIPSec_MB.so.1, version 1.3) ------------------------ */
/* Declared here from the library's documented 1.3 ABI (intel-ipsec-mb.h) so that no -dev
 * package is needed to build; the version is checked before use. */
struct imb_job {
    const void *enc_keys;
    const void *dec_keys;
    uint64_t key_len_in_bytes;
    const uint8_t *src;
    uint8_t *dst;
    uint64_t cipher_start_src_offset_in_bytes;
    uint64_t msg_len_to_cipher_in_bytes;
    uint64_t hash_start_src_offset_in_bytes;
    uint64_t msg_len_to_hash_in_bytes;
    const uint8_t *iv;
    uint64_t iv_len_in_bytes;
    uint8_t *auth_tag_output;
    uint64_t auth_tag_output_len_in_bytes;
    union {
        struct { const void *aad; uint64_t aad_len_in_bytes; void *ctx; } chacha20_poly1305;
        uint8_t _size[24];
    } u;
    int status;
    int cipher_mode;
    int cipher_direction;
    int hash_alg;
    int chain_order;
    void *user_data;
    void *user_data2;
    int (*cipher_func)(struct imb_job *);
    int (*hash_func)(struct imb_job *);
    int sgl_state;
    void *cipher_fields;
};
_Static_assert(sizeof(struct imb_job) == 200, "IMB_JOB 1.3 layout");
_Static_assert(offsetof(struct imb_job, status) == 128, "IMB_JOB 1.3 layout");
_Static_assert(offsetof(struct imb_job, user_data) == 152, "IMB_JOB 1.3 layout");
_Static_assert(offsetof(struct imb_job, sgl_state) == 184, "IMB_JOB 1.3 layout");
#define IMB_CIPHER_CHACHA20_POLY1305 19
#define IMB_AUTH_CHACHA20_POLY1305   29
#define IMB_STATUS_COMPLETED         3
#define IMB_DIR_ENCRYPT              1
#define IMB_DIR_DECRYPT              2
#define IMB_ORDER_CIPHER_HASH        1
#define IMB_ORDER_HASH_CIPHER        2
#define IMB_SGL_ALL                  3

typedef struct imb_mgr IMB_MGR;
typedef struct imb_job *(*imb_job_fn)(IMB_MGR *);
static struct {
    IMB_MGR *(*alloc)(uint64_t flags);
    void (*free_mgr)(IMB_MGR *);
    void (*init)(IMB_MGR *);
    imb_job_fn get_next, submit, get_completed, flush;
} imb;

static pthread_key_t imb_key;
static __thread IMB_MGR *imb_mgr;

static void imb_mgr_free(void *p)
{
    imb.free_mgr(p);
}

static IMB_MGR *imb_thread_mgr(void)
{
    if (!imb_mgr) {
        IMB_MGR *m = imb.alloc(0);
        if (!m)
            return NULL;
        imb.init(m);
        imb_mgr = m;
        pthread_setspecific(imb_key, m);
    }
    return imb_mgr;
}

static void imb_done(struct imb_job *j, int enc)
{
    struct aead_item *it = j->user_data;
    int ok = j->status == IMB_STATUS_COMPLETED;
    if (!enc) {
        ok = ok && tag_equal(it->calc, it->tag);
        if (!ok)
            explicit_bzero(it->buf, it->len);   /* it was decrypted before the tag check */
    }
    it->ok = ok;
}

static void imb_batch(struct aead_item *it, uint32_t n, int enc)
{
    IMB_MGR *m = imb_thread_mgr();
    for (uint32_t k = 0; k < n; k++)
        it[k].ok = 0;
    if (!m)
        return;
    for (uint32_t k = 0; k < n; k++) {
        struct imb_job *j = imb.get_next(m);
        j->cipher_mode = IMB_CIPHER_CHACHA20_POLY1305;
        j->hash_alg = IMB_AUTH_CHACHA20_POLY1305;
        j->cipher_direction = enc ? IMB_DIR_ENCRYPT : IMB_DIR_DECRYPT;
        j->chain_order = enc ? IMB_ORDER_CIPHER_HASH : IMB_ORDER_HASH_CIPHER;
        j->enc_keys = j->dec_keys = it[k].key;
        j->key_len_in_bytes = WG_KEY_LEN;
        j->src = it[k].buf;
        j->dst = it[k].buf;
        j->cipher_start_src_offset_in_bytes = 0;
        j->msg_len_to_cipher_in_bytes = it[k].len;
        j->hash_start_src_offset_in_bytes = 0;
        j->msg_len_to_hash_in_bytes = it[k].len;
        j->iv = it[k].nonce;
        j->iv_len_in_bytes = 12;
        j->auth_tag_output = enc ? it[k].tag : it[k].calc;
        j->auth_tag_output_len_in_bytes = WG_TAG_LEN;
        j->u.chacha20_poly1305.aad = it[k].aad;
        j->u.chacha20_poly1305.aad_len_in_bytes = it[k].aadlen;
        j->u.chacha20_poly1305.ctx = NULL;
        j->sgl_state = IMB_SGL_ALL;
        j->user_data = &it[k];
        for (j = imb.submit(m); j; j = imb.get_completed(m))
            imb_done(j, enc);
    }
    for (struct imb_job *j; (j = imb.flush(m));)
        imb_done(j, enc);
}

static int load_ipsecmb(void)
{
    void *h = dlopen("libIPSec_MB.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!h)
        return 0;
    unsigned (*version)(void) = (unsigned (*)(void))dlsym(h, "imb_get_version");
    void (*init_auto)(IMB_MGR *, int *) = (void (*)(IMB_MGR *, int *))dlsym(h, "init_mb_mgr_auto");
    *(void **)&imb.alloc = dlsym(h, "alloc_mb_mgr");
    *(void **)&imb.free_mgr = dlsym(h, "free_mb_mgr");
    /* Only the ABI the job struct above was written for. */
    if (!version || (version() >> 8) != 0x103 || !init_auto || !imb.alloc || !imb.free_mgr)
        return 0;
    /* Ask the library which code path suits this CPU, then bind that path's entry points. */
    IMB_MGR *probe = imb.alloc(0);
    if (!probe)
        return 0;
    int arch = 0;
    init_auto(probe, &arch);
    imb.free_mgr(probe);
    static const char *const arch_names[] = {NULL, NULL, "sse", "avx", "avx2", "avx512"};
    if (arch < 2 || arch > 5)
        return 0;
    char name[64];
    const char *a = arch_names[arch];
#define BIND(field, base) do { \
        snprintf(name, sizeof(name), "%s_%s", base, a); \
        *(void **)&imb.field = dlsym(h, name); \
        if (!imb.field) return 0; \
    } while (0)
    BIND(init, "init_mb_mgr");
    BIND(get_next, "get_next_job");
    BIND(submit, "submit_job");
    BIND(get_completed, "get_completed_job");
    BIND(flush, "flush_job");
#undef BIND
    if (pthread_key_create(&imb_key, imb_mgr_free) != 0)
        return 0;
    backends[WG_AEAD_IPSECMB].batch = imb_batch;
    return 1;
}

/* ---- public: backends ---------------------------------------------------------------- */
int wg_aead_init(const char *sodium_path)
{
    pthread_mutex_lock(&init_lock);
    if (!backends[WG_AEAD_SODIUM].loaded && load_sodium(sodium_path))
        __atomic_store_n(&backends[WG_AEAD_SODIUM].loaded, 1, __ATOMIC_RELEASE);
    if (!backends[WG_AEAD_OPENSSL].loaded && load_openssl())
        __atomic_store_n(&backends[WG_AEAD_OPENSSL].loaded, 1, __ATOMIC_RELEASE);
    if (!backends[WG_AEAD_IPSECMB].loaded && load_ipsecmb())
        __atomic_store_n(&backends[WG_AEAD_IPSECMB].loaded, 1, __ATOMIC_RELEASE);
    int mask = 0;
    for (int b = 0; b < WG_AEAD_NBACKENDS; b++)
        if (backends[b].loaded)
            mask |= 1 << b;
    if (__atomic_load_n(&selected, __ATOMIC_ACQUIRE) < 0)
        for (int b = 0; b < WG_AEAD_NBACKENDS; b++)
            if (backends[b].loaded) {   /* libsodium first: it is the reference */
                __atomic_store_n(&selected, b, __ATOMIC_RELEASE);
                break;
            }
    pthread_mutex_unlock(&init_lock);
    return mask;
}

const char *wg_aead_name(int backend)
{
    if (backend < 0 || backend >= WG_AEAD_NBACKENDS)
        return "none";
    return backends[backend].name;
}

int wg_aead_available(int backend)
{
    if (backend < 0 || backend >= WG_AEAD_NBACKENDS)
        return 0;
    return __atomic_load_n(&backends[backend].loaded, __ATOMIC_ACQUIRE);
}

int wg_aead_select(int backend)
{
    if (!wg_aead_available(backend))
        return -1;
    __atomic_store_n(&selected, backend, __ATOMIC_RELEASE);
    return 0;
}

int wg_aead_selected(void)
{
    return __atomic_load_n(&selected, __ATOMIC_ACQUIRE);
}

static inline void wg_nonce(uint8_t nonce[12], uint64_t counter)
{
    memset(nonce, 0, 4);
    wg_put_le64(nonce + 4, counter);
}

static int one(int backend, int enc, const uint8_t *key, const uint8_t *nonce,
               const uint8_t *aad, size_t aadlen, uint8_t *buf, size_t len, uint8_t *tag)
{
    if (!wg_aead_available(backend) || len > 0x7fffffff || aadlen > 0x7fffffff)
        return -1;
    struct aead_item it = {.key = key, .aad = aad, .aadlen = aadlen, .buf = buf, .len = len,
                           .tag = tag};
    memcpy(it.nonce, nonce, 12);
    run_batch(backend, &it, 1, enc);
    return it.ok ? 0 : -1;
}

int wg_aead_seal(int backend, const uint8_t *key, uint64_t counter, uint8_t *buf, size_t len)
{
    uint8_t nonce[12];
    wg_nonce(nonce, counter);
    return one(backend, 1, key, nonce, NULL, 0, buf, len, buf + len);
}

int wg_aead_open(int backend, const uint8_t *key, uint64_t counter, uint8_t *buf, size_t len,
                 const uint8_t *tag)
{
    uint8_t nonce[12], t[WG_TAG_LEN];
    wg_nonce(nonce, counter);
    memcpy(t, tag, WG_TAG_LEN);
    return one(backend, 0, key, nonce, NULL, 0, buf, len, t);
}

int wg_aead_seal_raw(int backend, const uint8_t *key, const uint8_t *nonce, const uint8_t *aad,
                     size_t aadlen, uint8_t *buf, size_t len, uint8_t *tag)
{
    return one(backend, 1, key, nonce, aad, aadlen, buf, len, tag);
}

int wg_aead_open_raw(int backend, const uint8_t *key, const uint8_t *nonce, const uint8_t *aad,
                     size_t aadlen, uint8_t *buf, size_t len, const uint8_t *tag)
{
    uint8_t t[WG_TAG_LEN];
    memcpy(t, tag, WG_TAG_LEN);
    return one(backend, 0, key, nonce, aad, aadlen, buf, len, t);
}

/* The plain loop: one message per backend call (per-message backends set the key up once). */
void wg_aead_seal_loop(int backend, const uint8_t *key, uint8_t *buf, size_t len, uint32_t n)
{
    if (!wg_aead_available(backend) || len > 0x7fffffff)
        return;
    const struct backend *b = &backends[backend];
    uint8_t nonce[12];
    for (uint32_t i = 0; i < n; i++) {
        wg_nonce(nonce, i);
        if (b->seal) {
            b->seal(key, i == 0, nonce, NULL, 0, buf, len, buf + len);
        } else {
            struct aead_item it = {.key = key, .buf = buf, .len = len, .tag = buf + len};
            memcpy(it.nonce, nonce, 12);
            b->batch(&it, 1, 1);
        }
    }
}

/* ---- batches of transport messages --------------------------------------------------- */
static inline uint32_t padded_len(uint32_t len, uint32_t mtu)
{
    uint32_t p = (len + 15u) & ~15u;
    uint32_t cap = len > mtu ? len : mtu;
    return p < cap ? p : cap;
}

static inline void set_drop(wg_ring *r, uint32_t i, int reason, uint32_t *dropped)
{
    r->status[i] = (uint8_t)reason;
    dropped[reason]++;
}

static void flush_drops(wg_dp *dp, const uint32_t *dropped)
{
    for (int k = 1; k < WG_DROP_NREASONS; k++)
        if (dropped[k])
            wg_drop(dp, k, dropped[k]);
}

static uint32_t seal_chunk(wg_dp *dp, wg_ring *r, uint32_t first, uint32_t n, double now, int be,
                           uint32_t *dropped)
{
    struct aead_item it[WG_MAX_BATCH];
    uint32_t slot_of[WG_MAX_BATCH];
    uint32_t m = 0, ok = 0;
    uint32_t mtu = dp->mtu;
    uint32_t end = first + n;

    /* Pass 1: keys, counters and headers; pass 2: crypto for the whole chunk. */
    for (uint32_t i = first; i < end;) {
        /* A run of consecutive slots for one peer shares one keypair and one counter grab. */
        uint32_t peer = r->peer[i];
        uint32_t j = i + 1;
        while (j < end && r->peer[j] == peer)
            j++;
        struct wg_keypair *kp = be >= 0 ? wg_keypair_of_peer(dp, peer) : NULL;
        if (!kp || now - kp->created >= WG_REJECT_AFTER_TIME) {
            for (uint32_t k = i; k < j; k++)
                set_drop(r, k, WG_DROP_NO_KEY, dropped);
            i = j;
            continue;
        }
        uint32_t want = 0;      /* slots too big for the ring take no counter */
        for (uint32_t k = i; k < j; k++) {
            if (r->len[k] > r->data_cap)
                set_drop(r, k, WG_DROP_TOO_BIG, dropped);
            else
                want++;
        }
        if (!want) {
            i = j;
            continue;
        }
        uint64_t ctr;
        if (__atomic_load_n(&kp->send_counter, __ATOMIC_RELAXED) >= WG_REJECT_AFTER_MESSAGES)
            ctr = WG_REJECT_AFTER_MESSAGES;     /* exhausted: consume nothing */
        else
            ctr = __atomic_fetch_add(&kp->send_counter, want, __ATOMIC_RELAXED);
        uint64_t last = ctr + want;
        wg_addr ep = dp->endpoints[peer];
        for (uint32_t k = i; k < j; k++) {
            if (r->len[k] > r->data_cap)
                continue;
            if (ctr >= WG_REJECT_AFTER_MESSAGES) {
                set_drop(r, k, WG_DROP_NO_KEY, dropped);
                ctr++;
                continue;
            }
            uint8_t *slot = r->slab + (size_t)k * r->slot_size;
            uint32_t len = r->len[k];
            uint32_t plen = padded_len(len, mtu);
            memset(slot + WG_HEADROOM + len, 0, plen - len);
            slot[0] = WG_MSG_DATA;
            slot[1] = slot[2] = slot[3] = 0;
            wg_put_le32(slot + 4, kp->remote_index);
            wg_put_le64(slot + 8, ctr);
            struct aead_item *x = &it[m];
            x->key = kp->send_key;
            x->aad = NULL;
            x->aadlen = 0;
            x->buf = slot + WG_HEADROOM;
            x->len = plen;
            x->tag = slot + WG_HEADROOM + plen;
            memcpy(x->nonce, slot + 4, 12);     /* 4 zero bytes || LE64 counter */
            memset(x->nonce, 0, 4);
            slot_of[m++] = k;
            r->len[k] = WG_HEADROOM + plen + WG_TAG_LEN;
            r->receiver[k] = kp->remote_index;
            r->counter[k] = ctr;
            r->addr[k] = ep;
            ctr++;
        }
        if (last >= WG_REKEY_AFTER_MESSAGES ||
            (kp->initiator && now - kp->created >= WG_REKEY_AFTER_TIME))
            wg_want_handshake(dp, peer, now);
        i = j;
    }
    if (m)
        run_batch(be, it, m, 1);
    for (uint32_t q = 0; q < m; q++) {
        if (it[q].ok) {
            r->status[slot_of[q]] = WG_OK;
            ok++;
        } else {
            set_drop(r, slot_of[q], WG_DROP_NO_KEY, dropped);
        }
    }
    return ok;
}

typedef uint32_t (*chunk_fn)(wg_dp *, wg_ring *, uint32_t, uint32_t, double, int, uint32_t *);

/* Slots [first, first + n) in chunks of WG_MAX_BATCH, under one read lock; drops are
 * counted once per batch. */
static uint32_t run_slots(wg_dp *dp, wg_ring *r, uint32_t first, uint32_t n, double now,
                          chunk_fn chunk)
{
    if (!dp || !r || first >= r->nslots || n == 0)
        return 0;
    if (n > r->nslots - first)
        n = r->nslots - first;
    int be = wg_aead_selected();
    uint32_t dropped[WG_DROP_NREASONS] = {0};
    uint32_t ok = 0;
    pthread_rwlock_rdlock(&dp->lock);
    for (uint32_t at = first; at < first + n; at += WG_MAX_BATCH) {
        uint32_t c = first + n - at < WG_MAX_BATCH ? first + n - at : WG_MAX_BATCH;
        ok += chunk(dp, r, at, c, now, be, dropped);
    }
    pthread_rwlock_unlock(&dp->lock);
    flush_drops(dp, dropped);
    return ok;
}

uint32_t wg_seal_batch(wg_dp *dp, wg_ring *r, uint32_t first, uint32_t n, double now)
{
    return run_slots(dp, r, first, n, now, seal_chunk);
}

static uint32_t open_chunk(wg_dp *dp, wg_ring *r, uint32_t first, uint32_t n, double now, int be,
                           uint32_t *dropped)
{
    struct aead_item it[WG_MAX_BATCH];
    uint32_t slot_of[WG_MAX_BATCH];
    struct wg_keypair *kp_of[WG_MAX_BATCH];
    uint32_t m = 0, ok = 0;

    for (uint32_t i = first; i < first + n; i++) {
        uint8_t *slot = r->slab + (size_t)i * r->slot_size;
        uint32_t len = r->len[i];
        if (len < WG_MIN_DATA_LEN) {
            set_drop(r, i, WG_DROP_SHORT, dropped);
            continue;
        }
        if (len > r->slot_size) {
            set_drop(r, i, WG_DROP_TOO_BIG, dropped);
            continue;
        }
        if (slot[0] != WG_MSG_DATA || slot[1] || slot[2] || slot[3]) {
            set_drop(r, i, WG_DROP_TYPE, dropped);
            continue;
        }
        struct wg_keypair *kp = wg_keypair_lookup(dp, wg_le32(slot + 4));
        if (!kp) {
            set_drop(r, i, WG_DROP_NO_KEYPAIR, dropped);
            continue;
        }
        if (now - kp->created >= WG_REJECT_AFTER_TIME) {
            set_drop(r, i, WG_DROP_EXPIRED, dropped);
            continue;
        }
        uint64_t ctr = wg_le64(slot + 8);
        if (ctr >= WG_REJECT_AFTER_MESSAGES) {
            set_drop(r, i, WG_DROP_COUNTER, dropped);
            continue;
        }
        /* Unlocked pre-check: a stale read only lets a replay reach the tag check, and the
         * locked update after it catches the replay. */
        if (!wg_replay_check(&kp->replay, ctr)) {
            set_drop(r, i, WG_DROP_REPLAY, dropped);
            continue;
        }
        if (be < 0) {
            set_drop(r, i, WG_DROP_TAG, dropped);
            continue;
        }
        uint32_t clen = len - WG_MIN_DATA_LEN;
        struct aead_item *x = &it[m];
        x->key = kp->recv_key;
        x->aad = NULL;
        x->aadlen = 0;
        x->buf = slot + WG_HEADROOM;
        x->len = clen;
        x->tag = slot + WG_HEADROOM + clen;
        memcpy(x->nonce, slot + 4, 12);
        memset(x->nonce, 0, 4);
        kp_of[m] = kp;
        slot_of[m++] = i;
    }
    if (m)
        run_batch(be, it, m, 0);
    /* Replay windows are updated under their keypair's lock, taken once per run of messages
     * of one keypair (a batch is usually one run). */
    struct wg_keypair *locked = NULL;
    for (uint32_t q = 0; q < m; q++) {
        uint32_t i = slot_of[q];
        struct wg_keypair *kp = kp_of[q];
        if (!it[q].ok) {
            set_drop(r, i, WG_DROP_TAG, dropped);
            continue;
        }
        uint8_t *slot = r->slab + (size_t)i * r->slot_size;
        uint64_t ctr = wg_le64(slot + 8);
        if (kp != locked) {
            if (locked)
                pthread_mutex_unlock(&locked->replay_lock);
            pthread_mutex_lock(&kp->replay_lock);
            locked = kp;
        }
        int fresh = wg_replay_update(&kp->replay, ctr);
        if (!fresh) {
            set_drop(r, i, WG_DROP_REPLAY, dropped);
            continue;
        }
        if (__atomic_load_n(&kp->pending, __ATOMIC_RELAXED) &&
            __atomic_exchange_n(&kp->pending, 0, __ATOMIC_ACQ_REL)) {
            /* The responder's "next" keypair is confirmed by its first message -- if it is
             * still "next": a keypair installed as current after it (our own initiation
             * completed) demoted it to previous, and it must not override that one. */
            const struct wg_keypair *cur = wg_keypair_of_peer(dp, kp->peer);
            if (!cur || cur->seq < kp->seq) {
                __atomic_store_n(&dp->current[kp->peer], (int32_t)(kp - dp->keypairs),
                                 __ATOMIC_RELEASE);
                wg_ctl_set(dp, kp->peer, WG_CTL_CONFIRMED, kp->local_index);
            }
        }
        r->peer[i] = kp->peer;
        r->receiver[i] = kp->local_index;
        r->counter[i] = ctr;
        r->len[i] = (uint32_t)it[q].len;
        r->status[i] = WG_OK;
        ok++;
    }
    if (locked)
        pthread_mutex_unlock(&locked->replay_lock);
    return ok;
}

uint32_t wg_open_batch(wg_dp *dp, wg_ring *r, uint32_t first, uint32_t n, double now)
{
    return run_slots(dp, r, first, n, now, open_chunk);
}
