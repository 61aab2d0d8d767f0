/* send.c -- TODO(daemon): TUN -> seal -> UDP. */
#include "wgfast_internal.h"
int wg_run_send(wg_dp *dp) { (void)dp; return 0; }
int wg_send_packet(wg_dp *dp, uint32_t p, const uint8_t *pkt, uint32_t len, double now) { (void)dp; (void)p; (void)pkt; (void)len; (void)now; return -1; }
