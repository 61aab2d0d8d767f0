/* aead_ipsecmb.c -- ChaCha20-Poly1305 from Intel's multi-buffer library (libIPSec_MB.so.1,
 * Debian's libipsec-mb1), loaded at run time when present.
 *
 * A batch backend: it keeps several messages in flight (submit, then collect the completed
 * jobs), which is where its speed comes from.  It decrypts before it checks the tag, so a
 * failed open wipes the buffer. */
#include "aead.h"

#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

#define IMB_LIB "libIPSec_MB.so.1"
#define IMB_ABI 0x103               /* imb_get_version() >> 8: version 1.3 */

/* Constant-time tag comparison (the tags are not secret once sent, but the rule is simple). */
static int tag_equal(const uint8_t *a, const uint8_t *b)
{
    volatile uint8_t d = 0;
    for (int i = 0; i < WG_TAG_LEN; i++)
        d |= a[i] ^ b[i];
    return d == 0;
}

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
#define IMB_ARCH_SSE                 2      /* init_mb_mgr_auto: SSE, AVX, AVX2, AVX512 */
#define IMB_ARCH_AVX512              5

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
    struct wg_aead_item *it = j->user_data;
    int ok = j->status == IMB_STATUS_COMPLETED;
    if (!enc) {
        ok = ok && tag_equal(it->calc, it->tag);
        if (!ok)
            explicit_bzero(it->buf, it->len);   /* it was decrypted before the tag check */
    }
    it->ok = ok;
}

static void imb_batch(struct wg_aead_item *it, uint32_t n, int enc)
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
        j->iv_len_in_bytes = WG_AEAD_NONCE_LEN;
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

static int load_ipsecmb(const char *unused)
{
    void *h = dlopen(IMB_LIB, RTLD_NOW | RTLD_LOCAL);
    if (!h)
        return 0;
    unsigned (*version)(void) = (unsigned (*)(void))dlsym(h, "imb_get_version");
    void (*init_auto)(IMB_MGR *, int *) = (void (*)(IMB_MGR *, int *))dlsym(h, "init_mb_mgr_auto");
    *(void **)&imb.alloc = dlsym(h, "alloc_mb_mgr");
    *(void **)&imb.free_mgr = dlsym(h, "free_mb_mgr");
    /* Only the ABI the job struct above was written for. */
    if (!version || (version() >> 8) != IMB_ABI || !init_auto || !imb.alloc || !imb.free_mgr)
        return 0;
    /* Ask the library which code path suits this CPU, then bind that path's entry points. */
    IMB_MGR *probe = imb.alloc(0);
    if (!probe)
        return 0;
    int arch = 0;
    init_auto(probe, &arch);
    imb.free_mgr(probe);
    static const char *const arch_names[] = {NULL, NULL, "sse", "avx", "avx2", "avx512"};
    if (arch < IMB_ARCH_SSE || arch > IMB_ARCH_AVX512)
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
    return 1;
}

const struct wg_aead_backend wg_aead_ipsecmb = {
    .name = "ipsec-mb",
    .load = load_ipsecmb,
    .batch = imb_batch,
};
