/* allowedips.c -- TODO(daemon): longest-prefix trie. */
#include "wgfast_internal.h"
#include <stdlib.h>
struct wg_aip { int unused; };
struct wg_aip *wg_aip_new(void) { return calloc(1, sizeof(struct wg_aip)); }
void wg_aip_free(struct wg_aip *t) { free(t); }
int wg_aip_lookup_nolock(struct wg_aip *t, int f, const uint8_t *a) { (void)t; (void)f; (void)a; return -1; }
int wg_aip_insert(wg_dp *dp, int f, const uint8_t *a, uint8_t c, uint32_t p) { (void)dp; (void)f; (void)a; (void)c; (void)p; return -1; }
int wg_aip_remove(wg_dp *dp, int f, const uint8_t *a, uint8_t c) { (void)dp; (void)f; (void)a; (void)c; return -1; }
void wg_aip_remove_peer(wg_dp *dp, uint32_t p) { (void)dp; (void)p; }
int wg_aip_lookup(wg_dp *dp, int f, const uint8_t *a) { (void)dp; (void)f; (void)a; return -1; }
