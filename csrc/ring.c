/* ring.c -- the slab of fixed-size slots and its parallel metadata arrays.
 *
 * One 64-byte aligned slab so every slot starts on a cache line; a slot has headroom for the
 * transport header and tailroom for padding and the tag, so packets are sealed and opened
 * where they lie. */
#include "wgfast_internal.h"

#include <stdlib.h>
#include <string.h>

#define RING_MAX_SLOTS    (1u << 20)
#define RING_MAX_DATA_CAP (1u << 16)

static void *aligned_zalloc(size_t n)
{
    void *p = NULL;
    if (posix_memalign(&p, 64, n ? n : 64) != 0)
        return NULL;
    memset(p, 0, n ? n : 64);
    return p;
}

wg_ring *wg_ring_new(uint32_t nslots, uint32_t data_cap)
{
    if (nslots == 0 || nslots > RING_MAX_SLOTS || data_cap > RING_MAX_DATA_CAP)
        return NULL;
    wg_ring *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->nslots = nslots;
    r->data_cap = data_cap;
    r->slot_size = (WG_HEADROOM + data_cap + WG_TAILROOM + 63u) & ~63u;
    r->slab = aligned_zalloc((size_t)nslots * r->slot_size);
    r->len = aligned_zalloc((size_t)nslots * sizeof(uint32_t));
    r->peer = aligned_zalloc((size_t)nslots * sizeof(uint32_t));
    r->receiver = aligned_zalloc((size_t)nslots * sizeof(uint32_t));
    r->counter = aligned_zalloc((size_t)nslots * sizeof(uint64_t));
    r->status = aligned_zalloc(nslots);
    r->addr = aligned_zalloc((size_t)nslots * sizeof(wg_addr));
    if (!r->slab || !r->len || !r->peer || !r->receiver || !r->counter || !r->status ||
        !r->addr) {
        wg_ring_free(r);
        return NULL;
    }
    return r;
}

void wg_ring_free(wg_ring *r)
{
    if (!r)
        return;
    if (r->slab)    /* slots held plaintext */
        explicit_bzero(r->slab, (size_t)r->nslots * r->slot_size);
    free(r->slab);
    free(r->len);
    free(r->peer);
    free(r->receiver);
    free(r->counter);
    free(r->status);
    free(r->addr);
    free(r);
}

uint8_t *wg_ring_slot(const wg_ring *r, uint32_t i)
{
    if (!r || i >= r->nslots)
        return NULL;
    return r->slab + (size_t)i * r->slot_size;
}
