/* aead.h -- the AEAD backend interface: what aead.c, the backend files (aead_libsodium.c,
 * aead_openssl.c, aead_ipsecmb.c) and transport.c share.
 *
 * A backend is a small struct of function pointers.  Per-message backends take (key, rekey,
 * nonce, aad, buf, len, tag); `rekey` = 0 promises that the key is the one of this thread's
 * previous call on the same backend and direction, which lets OpenSSL skip its key setup for a
 * run of messages under one keypair.  A backend that keeps several messages in flight takes a
 * whole batch instead. */
#ifndef WGFAST_AEAD_H
#define WGFAST_AEAD_H

#include "wgfast_internal.h"

#define WG_AEAD_NONCE_LEN 12
#define WG_AEAD_MAX_LEN   0x7fffffff    /* lengths the libraries take as int */

/* One message of a batch: sealed or opened in place, tag separate. */
struct wg_aead_item {
    const uint8_t *key;
    const uint8_t *aad;
    size_t aadlen;
    uint8_t *buf;
    size_t len;
    uint8_t *tag;
    uint8_t nonce[WG_AEAD_NONCE_LEN];
    uint8_t calc[WG_TAG_LEN];   /* multi-buffer open: the tag it computed */
    int ok;
};

typedef int (*wg_aead_fn)(const uint8_t *key, int rekey, const uint8_t *nonce,
                          const uint8_t *aad, size_t aadlen, uint8_t *buf, size_t len,
                          uint8_t *tag);
typedef void (*wg_aead_batch_fn)(struct wg_aead_item *it, uint32_t n, int enc);

struct wg_aead_backend {
    const char *name;
    int (*load)(const char *sodium_path);   /* 1 = usable from now on; called under a lock */
    wg_aead_fn seal;            /* per-message backends (NULL for a batch backend) */
    wg_aead_fn open;            /* on a bad tag buf is left untouched or wiped, never plaintext */
    wg_aead_batch_fn batch;     /* several messages in flight (NULL for per-message ones) */
};

extern const struct wg_aead_backend wg_aead_libsodium;   /* aead_libsodium.c */
extern const struct wg_aead_backend wg_aead_openssl;     /* aead_openssl.c */
extern const struct wg_aead_backend wg_aead_ipsecmb;     /* aead_ipsecmb.c */

/* Seal (enc = 1) or open n items with a loaded backend; each item's ok says how it went. */
void wg_aead_run(int backend, struct wg_aead_item *it, uint32_t n, int enc);

#endif
