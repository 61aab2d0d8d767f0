/* replay.c -- TODO(foundation): RFC 6479 window. */
#include "wgfast_internal.h"
void wg_replay_reset(wg_replay *w) { (void)w; }
int wg_replay_check(const wg_replay *w, uint64_t c) { (void)w; (void)c; return 0; }
int wg_replay_update(wg_replay *w, uint64_t c) { (void)w; (void)c; return 0; }
