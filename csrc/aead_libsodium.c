/* aead_libsodium.c -- ChaCha20-Poly1305 from the libsodium inside PyNaCl (the reference).
 *
 * No link-time dependency: PyNaCl's shared object exports the libsodium C API, so the detached
 * IETF functions are resolved from its path with dlopen/dlsym. */
#include "aead.h"

#include <dlfcn.h>

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
    return 1;
}

const struct wg_aead_backend wg_aead_libsodium = {
    .name = "libsodium",
    .load = load_sodium,
    .seal = sodium_seal,
    .open = sodium_open,
};
