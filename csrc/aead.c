/* aead.c -- TODO(foundation): AEAD backends, batch seal/open. */
#include "wgfast_internal.h"
int wg_aead_init(const char *p) { (void)p; return 0; }
const char *wg_aead_name(int b) { (void)b; return "none"; }
int wg_aead_available(int b) { (void)b; return 0; }
int wg_aead_select(int b) { (void)b; return -1; }
int wg_aead_selected(void) { return -1; }
int wg_aead_seal(int b, const uint8_t *k, uint64_t c, uint8_t *buf, size_t len) { (void)b; (void)k; (void)c; (void)buf; (void)len; return -1; }
int wg_aead_open(int b, const uint8_t *k, uint64_t c, uint8_t *buf, size_t len, const uint8_t *t) { (void)b; (void)k; (void)c; (void)buf; (void)len; (void)t; return -1; }
void wg_aead_seal_loop(int b, const uint8_t *k, uint8_t *buf, size_t len, uint32_t n) { (void)b; (void)k; (void)buf; (void)len; (void)n; }
uint32_t wg_seal_batch(wg_dp *dp, wg_ring *r, uint32_t f, uint32_t n, double now) { (void)dp; (void)r; (void)f; (void)n; (void)now; return 0; }
uint32_t wg_open_batch(wg_dp *dp, wg_ring *r, uint32_t f, uint32_t n, double now) { (void)dp; (void)r; (void)f; (void)n; (void)now; return 0; }
