/* aead.c -- the ChaCha20-Poly1305 backends the data plane may use, which one is selected, and
 * the single-message entry points (public vectors, the cross-check, benchmarks).
 *
 * No link-time crypto dependency: each backend (aead_libsodium.c, aead_openssl.c,
 * aead_ipsecmb.c) loads its library at run time and describes itself in a struct
 * wg_aead_backend (aead.h).  wg_aead_init loads them all once; libsodium, the reference, is
 * selected first, and Python (dataplane.choose_backend) cross-checks the others against it
 * byte for byte before it selects a faster one.  Transport messages are sealed and opened in
 * batches by transport.c through wg_aead_run. */
#include "aead.h"

#include <string.h>

static const struct wg_aead_backend *const backends[WG_AEAD_NBACKENDS] = {
    [WG_AEAD_SODIUM] = &wg_aead_libsodium,
    [WG_AEAD_OPENSSL] = &wg_aead_openssl,
    [WG_AEAD_IPSECMB] = &wg_aead_ipsecmb,
};
static int loaded[WG_AEAD_NBACKENDS];      /* __atomic builtins: set once, never cleared */
static int selected = -1;
static pthread_mutex_t init_lock = PTHREAD_MUTEX_INITIALIZER;

void wg_aead_run(int be, struct wg_aead_item *it, uint32_t n, int enc)
{
    const struct wg_aead_backend *b = backends[be];
    if (b->batch) {
        b->batch(it, n, enc);
        return;
    }
    wg_aead_fn f = enc ? b->seal : b->open;
    const uint8_t *prev = NULL;
    for (uint32_t k = 0; k < n; k++) {
        it[k].ok = f(it[k].key, it[k].key != prev, it[k].nonce, it[k].aad, it[k].aadlen,
                     it[k].buf, it[k].len, it[k].tag) == 0;
        prev = it[k].ok ? it[k].key : NULL;
    }
}

/* ---- public: backends ---------------------------------------------------------------- */
int wg_aead_init(const char *sodium_path)
{
    pthread_mutex_lock(&init_lock);
    for (int b = 0; b < WG_AEAD_NBACKENDS; b++)
        if (!loaded[b] && backends[b]->load(sodium_path))
            __atomic_store_n(&loaded[b], 1, __ATOMIC_RELEASE);
    int mask = 0;
    for (int b = 0; b < WG_AEAD_NBACKENDS; b++)
        if (loaded[b])
            mask |= 1 << b;
    if (__atomic_load_n(&selected, __ATOMIC_ACQUIRE) < 0)
        for (int b = 0; b < WG_AEAD_NBACKENDS; b++)
            if (loaded[b]) {   /* libsodium first: it is the reference */
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
    return backends[backend]->name;
}

int wg_aead_available(int backend)
{
    if (backend < 0 || backend >= WG_AEAD_NBACKENDS)
        return 0;
    return __atomic_load_n(&loaded[backend], __ATOMIC_ACQUIRE);
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

/* ---- public: one message ------------------------------------------------------------- */
/* WireGuard's nonce: 4 zero bytes || LE64 counter. */
static inline void wg_nonce(uint8_t nonce[WG_AEAD_NONCE_LEN], uint64_t counter)
{
    memset(nonce, 0, 4);
    wg_put_le64(nonce + 4, counter);
}

static int one(int backend, int enc, const uint8_t *key, const uint8_t *nonce,
               const uint8_t *aad, size_t aadlen, uint8_t *buf, size_t len, uint8_t *tag)
{
    if (!wg_aead_available(backend) || len > WG_AEAD_MAX_LEN || aadlen > WG_AEAD_MAX_LEN)
        return -1;
    struct wg_aead_item it = {.key = key, .aad = aad, .aadlen = aadlen, .buf = buf, .len = len,
                              .tag = tag};
    memcpy(it.nonce, nonce, WG_AEAD_NONCE_LEN);
    wg_aead_run(backend, &it, 1, enc);
    return it.ok ? 0 : -1;
}

int wg_aead_seal(int backend, const uint8_t *key, uint64_t counter, uint8_t *buf, size_t len)
{
    uint8_t nonce[WG_AEAD_NONCE_LEN];
    wg_nonce(nonce, counter);
    return one(backend, 1, key, nonce, NULL, 0, buf, len, buf + len);
}

int wg_aead_open(int backend, const uint8_t *key, uint64_t counter, uint8_t *buf, size_t len,
                 const uint8_t *tag)
{
    uint8_t nonce[WG_AEAD_NONCE_LEN], t[WG_TAG_LEN];
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
    if (!wg_aead_available(backend) || len > WG_AEAD_MAX_LEN)
        return;
    const struct wg_aead_backend *b = backends[backend];
    uint8_t nonce[WG_AEAD_NONCE_LEN];
    for (uint32_t i = 0; i < n; i++) {
        wg_nonce(nonce, i);
        if (b->seal) {
            b->seal(key, i == 0, nonce, NULL, 0, buf, len, buf + len);
        } else {
            struct wg_aead_item it = {.key = key, .buf = buf, .len = len, .tag = buf + len};
            memcpy(it.nonce, nonce, WG_AEAD_NONCE_LEN);
            b->batch(&it, 1, 1);
        }
    }
}
