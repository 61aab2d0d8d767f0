/* replay.c -- RFC 6479 sliding window of 8192 bits, of which 8128 are usable.
 *
 * Bit positions are counter + 1 so that `greatest` == 0 means "nothing received yet".  The
 * window is a ring of 128 words; moving forward clears the words the window slides into.  The
 * extra word (64 bits) is what lets a whole word be cleared at once without losing any counter
 * still inside the window. */
#include "wgfast_internal.h"

#include <string.h>

#define WORD_BITS 64u
#define NWORDS    (WG_REPLAY_BITS / WORD_BITS)

void wg_replay_reset(wg_replay *w)
{
    memset(w, 0, sizeof(*w));
}

/* The cheap test before decryption: no state changes. */
int wg_replay_check(const wg_replay *w, uint64_t counter)
{
    if (counter >= WG_REJECT_AFTER_MESSAGES)
        return 0;
    uint64_t pos = counter + 1;
    uint64_t greatest = w->greatest;
    if (pos > greatest)
        return 1;                       /* ahead of the window: always fresh */
    if (pos + WG_REPLAY_WINDOW < greatest)
        return 0;                       /* fell behind the window */
    uint64_t word = w->bits[(pos / WORD_BITS) & (NWORDS - 1)];
    return !((word >> (pos & (WORD_BITS - 1))) & 1);
}

/* Record a counter whose message authenticated.  0 = replayed or too old. */
int wg_replay_update(wg_replay *w, uint64_t counter)
{
    if (counter >= WG_REJECT_AFTER_MESSAGES)
        return 0;
    uint64_t pos = counter + 1;
    if (pos + WG_REPLAY_WINDOW < w->greatest)
        return 0;
    uint64_t index = pos / WORD_BITS;
    if (pos > w->greatest) {
        uint64_t cur = w->greatest / WORD_BITS;
        uint64_t steps = index - cur;
        if (steps > NWORDS)
            steps = NWORDS;
        for (uint64_t i = 1; i <= steps; i++)
            w->bits[(cur + i) & (NWORDS - 1)] = 0;
        w->greatest = pos;
    }
    uint64_t *word = &w->bits[index & (NWORDS - 1)];
    uint64_t bit = 1ull << (pos & (WORD_BITS - 1));
    if (*word & bit)
        return 0;
    *word |= bit;
    return 1;
}
