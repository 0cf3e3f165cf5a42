/* pool.c -- slot bookkeeping for ollamamax.ObjectPool.
 *
 * Layout
 *   idle[0..nidle)   LIFO stack of idle objects (capacity maxsize, fixed at init).
 *                    LIFO hands out the most recently used (cache-warm) object.
 *   out[0..mask]     open-addressing hash set (linear probing, power-of-two size,
 *                    NULL = empty bucket) of the objects currently handed out.
 *   created, reused  counters (never decrease).
 *
 * Ownership ("C owns slots and counts, Python owns objects"): this file stores
 * opaque pointers and never dereferences them.  The Cython wrapper holds one
 * strong reference per pointer stored here (idle or outstanding), so an address in
 * the set can never be reused by another object while it is outstanding: the
 * double-release / foreign-object check is exact.
 *
 * Invariants
 *   nidle <= maxsize;  nout <= (mask + 1) / 2  (load factor at most 1/2, grown by
 *   omx_pool_reserve before any insertion);  an object is never both idle and
 *   outstanding unless a factory returned an idle object (reported via *dup);
 *   the set has no tombstones: deletion shifts the following run back
 *   (Knuth 6.4, algorithm R), so a probe stops at the first empty bucket.
 *
 * Cost per operation: take_idle / track_new / untrack / push_idle are O(1)
 * (expected; one multiplicative hash and a short probe; push_idle and the fast path
 * of reserve are inline in the header); reserve is amortised O(1) (doubling).  Not thread-safe: the wrapper runs every call under the GIL
 * (no call here releases it).
 */
#include "ollamamax/pool.h"

#include <stdlib.h>
#include <string.h>

#define OMX_POOL_MIN_SET 16u

static size_t bucket_of(const void *obj, size_t mask) {
    uint64_t x = (uint64_t)(uintptr_t)obj;
    x ^= x >> 4;                       /* allocations are 16-byte aligned */
    x *= UINT64_C(0x9E3779B97F4A7C15); /* Fibonacci hashing: top bits are best mixed */
    return (size_t)(x >> 32) & mask;
}

int omx_pool_init(omx_pool *p, size_t maxsize) {
    memset(p, 0, sizeof *p);
    p->maxsize = maxsize;
    if (maxsize > 0) {
        p->idle = (void **)calloc(maxsize, sizeof(void *));
        if (p->idle == NULL) return -1;
    }
    p->out = (void **)calloc(OMX_POOL_MIN_SET, sizeof(void *));
    if (p->out == NULL) {
        free(p->idle);
        p->idle = NULL;
        return -1;
    }
    p->out_mask = OMX_POOL_MIN_SET - 1;
    return 0;
}

void omx_pool_destroy(omx_pool *p) {
    free(p->idle);
    free(p->out);
    p->idle = NULL;
    p->out = NULL;
    p->nidle = p->nout = 0;
}

static void set_insert(void **set, size_t mask, void *obj) {
    size_t i = bucket_of(obj, mask);
    while (set[i] != NULL) i = (i + 1) & mask;
    set[i] = obj;
}

/* Inserts obj unless present, in one probe: 1 if inserted, 0 if already there. */
static int set_add(void **set, size_t mask, void *obj) {
    size_t i = bucket_of(obj, mask);
    while (set[i] != NULL) {
        if (set[i] == obj) return 0;
        i = (i + 1) & mask;
    }
    set[i] = obj;
    return 1;
}

/* Index of obj in the set, or SIZE_MAX. */
static size_t set_find(void *const *set, size_t mask, const void *obj) {
    size_t i = bucket_of(obj, mask);
    while (set[i] != NULL) {
        if (set[i] == obj) return i;
        i = (i + 1) & mask;
    }
    return SIZE_MAX;
}

int omx_pool_grow(omx_pool *p) {
    size_t cap = p->out_mask + 1;
    if ((p->nout + 1) * 2 <= cap) return 0;
    if (cap > SIZE_MAX / 2 / sizeof(void *)) return -1;
    size_t ncap = cap * 2;
    void **nset = (void **)calloc(ncap, sizeof(void *));
    if (nset == NULL) return -1;
    for (size_t i = 0; i < cap; i++)
        if (p->out[i] != NULL) set_insert(nset, ncap - 1, p->out[i]);
    free(p->out);
    p->out = nset;
    p->out_mask = ncap - 1;
    return 0;
}

void *omx_pool_take_idle(omx_pool *p, int *dup) {
    *dup = 0;
    if (p->nidle == 0) return NULL;
    void *obj = p->idle[--p->nidle];
    p->idle[p->nidle] = NULL;
    p->reused++;
    if (set_add(p->out, p->out_mask, obj))
        p->nout++;
    else
        *dup = 1;
    return obj;
}

int omx_pool_track_new(omx_pool *p, void *obj) {
    if (!set_add(p->out, p->out_mask, obj)) return 1;
    p->nout++;
    p->created++;
    return 0;
}

int omx_pool_is_out(const omx_pool *p, const void *obj) {
    return set_find(p->out, p->out_mask, obj) != SIZE_MAX;
}

int omx_pool_untrack(omx_pool *p, void *obj) {
    size_t mask = p->out_mask;
    size_t i = set_find(p->out, mask, obj);
    if (i == SIZE_MAX) return 0;
    /* Backward-shift deletion: move later members of the probe run into the hole
     * when their home bucket does not lie cyclically in (hole, j]. */
    size_t hole = i;
    size_t j = i;
    for (;;) {
        j = (j + 1) & mask;
        void *cur = p->out[j];
        if (cur == NULL) break;
        size_t home = bucket_of(cur, mask);
        int stays = (hole <= j) ? (hole < home && home <= j) : (hole < home || home <= j);
        if (!stays) {
            p->out[hole] = cur;
            hole = j;
        }
    }
    p->out[hole] = NULL;
    p->nout--;
    return 1;
}

void *omx_pool_pop_any_idle(omx_pool *p) {
    if (p->nidle == 0) return NULL;
    void *obj = p->idle[--p->nidle];
    p->idle[p->nidle] = NULL;
    return obj;
}

void *omx_pool_pop_any_out(omx_pool *p) {
    if (p->nout == 0) return NULL;
    for (size_t i = 0; i <= p->out_mask; i++) {
        if (p->out[i] != NULL) {
            void *obj = p->out[i];
            omx_pool_untrack(p, obj);
            return obj;
        }
    }
    return NULL; /* unreachable while nout is exact */
}
