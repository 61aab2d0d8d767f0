/* receive.c -- TODO(daemon): UDP -> open -> TUN. */
#include "wgfast_internal.h"
int wg_run_receive(wg_dp *dp, int fd) { (void)dp; (void)fd; return 0; }
