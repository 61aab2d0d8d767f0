/* keypairs.c -- TODO(foundation): receiver index -> keypair. */
#include "wgfast_internal.h"
struct wg_keypair *wg_kp_lookup(wg_dp *dp, uint32_t i) { (void)dp; (void)i; return NULL; }
struct wg_keypair *wg_kp_current(wg_dp *dp, uint32_t p) { (void)dp; (void)p; return NULL; }
int wg_keypair_install(wg_dp *dp, uint32_t peer, uint32_t li, uint32_t ri, const uint8_t *sk, const uint8_t *rk, double created, int ini, int cur) { (void)dp; (void)peer; (void)li; (void)ri; (void)sk; (void)rk; (void)created; (void)ini; (void)cur; return -1; }
int wg_keypair_remove(wg_dp *dp, uint32_t li) { (void)dp; (void)li; return -1; }
int wg_keypair_set_counter(wg_dp *dp, uint32_t li, uint64_t n) { (void)dp; (void)li; (void)n; return -1; }
int wg_keypair_current(wg_dp *dp, uint32_t p, uint32_t *li) { (void)dp; (void)p; (void)li; return -1; }
