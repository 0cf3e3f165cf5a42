/*
 * ring.c -- bounded lock-free MPMC ring of void* (Dmitry Vyukov's bounded queue).
 *
 * LAYOUT
 *   struct omx_ring (allocated 64-byte aligned, three cache lines):
 *     line 0 (read-only after creation): cells, mask = size-1, size (power of two
 *            >= max(capacity, 2)), capacity (what the user asked for), limited = capacity < size
 *     line 1: head  -- _Atomic size_t, next position a producer will claim
 *     line 2: tail  -- _Atomic size_t, next position a consumer will claim
 *   cells[size]: { _Atomic size_t seq; void *data; }.  Position p lives in
 *   cells[p & mask].  Positions grow forever (size_t arithmetic wraps; every
 *   comparison is done on differences, so wrap-around is harmless).
 *
 * INVARIANTS (for a cell c holding position p = some lap of its index)
 *   seq == p          : free, waiting for the producer of position p
 *   seq == p + 1      : holds the item of position p, waiting for its consumer
 *   seq == p + size   : consumed; free for the producer of position p + size
 *   tail <= head (a consumer claims p only after seeing seq == p + 1, which the
 *   producer of p stores after claiming it).  head - tail <= capacity: when
 *   capacity < size a producer additionally refuses to claim p if
 *   p - tail >= capacity (tail only grows, so a stale tail only makes that
 *   check more conservative and the bound can never be exceeded).  When
 *   capacity == size the cell sequence numbers alone give the bound.
 *
 * OPERATIONS AND COST (uncontended)
 *   try_push / try_pop: one relaxed load of head (tail), one acquire load of
 *     the cell's seq, one (seq_cst) CAS on head (tail), one plain store (load) of data and
 *     one release store of seq.  O(1); ~1 CAS each.  A non-power-of-two
 *     capacity adds one relaxed load of tail on push.
 *   push_many / pop_many of k items: k acquire loads, ONE CAS, k release stores.
 *     The run is claimed as a whole, so it is contiguous in FIFO order.
 *   visit: O(n) walk from tail to head over committed cells (quiescent only).
 *   size: two loads (a snapshot, clamped to [0, capacity]).
 *   A CAS failure means another thread made progress (lock-free, not
 *   wait-free): the loop retries from the fresh position it got back.
 *
 * MEMORY-ORDERING CONTRACT
 *   Producer: claim p by CAS on head (head only arbitrates who owns p; the
 *   CAS is seq_cst only for the sleep/wake contract below), write data
 *   (plain store), then store seq = p + 1 with RELEASE.
 *   Consumer: load seq with ACQUIRE; seeing p + 1 makes the producer's write
 *   of data visible; claim p by CAS on tail (seq_cst, see below), read data,
 *   then store seq = p + size with RELEASE, so the next producer of that cell (who loads
 *   seq with ACQUIRE) cannot overwrite data before this read happened.
 *   So: everything a producer did before push happens-before everything the
 *   consumer that pops that item does after pop.  There is no ordering
 *   between unrelated pushes/pops beyond FIFO order of the positions.
 *
 *   Claims are seq_cst read-modify-writes (the ordering is "seq_cst on
 *   success"; a failed CAS is relaxed) and omx_ring_size loads tail then head
 *   with seq_cst.  On x86 this costs nothing (lock cmpxchg and plain loads
 *   either way); it exists for the SLEEP/WAKE CONTRACT below.
 *
 * SLEEP/WAKE CONTRACT (for callers that block on an empty/full ring)
 *   A waiter (consumer) announces itself with a seq_cst RMW on a counter of its
 *   own, then calls omx_ring_size and sleeps only if it returns 0.  A producer,
 *   after a successful push, loads that counter with seq_cst and wakes a
 *   waiter if it is non-zero.  In the single total order S of seq_cst
 *   operations either the producer's claim comes before the waiter's load of
 *   tail/head (then the waiter counts the item, or a consumer already claimed
 *   it), or the producer's load of the counter comes after the waiter's
 *   announcement (then the producer sees the waiter).  So no wake-up is lost
 *   without a fence on the fast path.  The same holds for producers waiting
 *   for room (they sleep only if size == capacity; every pop is a seq_cst
 *   claim on tail).  The Python wrapper (_ring_c.pyx) implements this.
 *
 * PROGRESS CAVEAT (inherent to the design, documented for callers)
 *   A producer that claimed p but has not yet stored seq makes consumers see
 *   "empty" at p even if later positions are filled; symmetrically a consumer
 *   that claimed p but not yet released the cell makes producers see "full"
 *   for that cell.  Both windows are a few instructions long.
 */
#include "ollamamax/ring.h"

#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(_WIN32)
#include <malloc.h>
#endif

#define OMX_CACHE_LINE 64

typedef struct {
    _Atomic size_t seq;
    void *data;
} omx_ring_cell;

struct omx_ring {
    _Alignas(OMX_CACHE_LINE) omx_ring_cell *cells;
    size_t mask;
    size_t size;
    size_t capacity;
    int limited;
    _Alignas(OMX_CACHE_LINE) _Atomic size_t head;
    _Alignas(OMX_CACHE_LINE) _Atomic size_t tail;
    _Alignas(OMX_CACHE_LINE) char end_pad;
};

static void *omx_aligned_alloc(size_t align, size_t n) {
    n = (n + align - 1) / align * align;
#if defined(_WIN32)
    return _aligned_malloc(n, align);
#else
    return aligned_alloc(align, n);
#endif
}

static void omx_aligned_free(void *p) {
#if defined(_WIN32)
    _aligned_free(p);
#else
    free(p);
#endif
}

/* Signed distance a - b of two positions (wrap-safe). */
static inline ptrdiff_t omx_diff(size_t a, size_t b) { return (ptrdiff_t)(a - b); }

omx_ring *omx_ring_new(size_t capacity) {
    if (capacity == 0 || capacity > OMX_RING_MAX_CAPACITY) {
        return NULL;
    }
    size_t size = 2; /* >= 2: with one slot, "full" (seq = p + 1) and "free for
                      * p + size" (seq = p + 1) would be the same state */
    while (size < capacity) {
        size <<= 1;
    }
    omx_ring *r = (omx_ring *)omx_aligned_alloc(OMX_CACHE_LINE, sizeof(omx_ring));
    if (r == NULL) {
        return NULL;
    }
    memset((void *)r, 0, sizeof(*r));
    r->cells = (omx_ring_cell *)calloc(size, sizeof(omx_ring_cell));
    if (r->cells == NULL) {
        omx_aligned_free(r);
        return NULL;
    }
    for (size_t i = 0; i < size; i++) {
        atomic_init(&r->cells[i].seq, i);
        r->cells[i].data = NULL;
    }
    r->mask = size - 1;
    r->size = size;
    r->capacity = capacity;
    r->limited = capacity < size;
    atomic_init(&r->head, 0);
    atomic_init(&r->tail, 0);
    /* Publishes the initialised cells to whichever thread receives r through
     * any synchronising channel; pairs with that channel's acquire. */
    atomic_thread_fence(memory_order_release);
    return r;
}

void omx_ring_free(omx_ring *r) {
    if (r == NULL) {
        return;
    }
    free(r->cells);
    omx_aligned_free(r);
}

size_t omx_ring_capacity(const omx_ring *r) { return r->capacity; }

/* Room left for a producer about to claim `pos` under the user's capacity. */
static inline size_t omx_room(omx_ring *r, size_t pos) {
    size_t t = atomic_load_explicit(&r->tail, memory_order_relaxed);
    ptrdiff_t used = omx_diff(pos, t);
    if (used < 0) {
        used = 0; /* pos is stale; the CAS on head will fail and we retry */
    }
    return (size_t)used >= r->capacity ? 0 : r->capacity - (size_t)used;
}

int omx_ring_try_push(omx_ring *r, void *item) {
    size_t pos = atomic_load_explicit(&r->head, memory_order_relaxed);
    for (;;) {
        omx_ring_cell *c = &r->cells[pos & r->mask];
        size_t seq = atomic_load_explicit(&c->seq, memory_order_acquire);
        ptrdiff_t dif = omx_diff(seq, pos);
        if (dif == 0) {
            if (r->limited && omx_room(r, pos) == 0) {
                return 0;
            }
            if (atomic_compare_exchange_weak_explicit(&r->head, &pos, pos + 1, memory_order_seq_cst,
                                                      memory_order_relaxed)) {
                c->data = item;
                atomic_store_explicit(&c->seq, pos + 1, memory_order_release);
                return 1;
            }
            /* pos now holds the current head; retry */
        } else if (dif < 0) {
            return 0; /* the cell still holds the item of pos - size: full */
        } else {
            pos = atomic_load_explicit(&r->head, memory_order_relaxed);
        }
    }
}

int omx_ring_try_pop(omx_ring *r, void **out) {
    size_t pos = atomic_load_explicit(&r->tail, memory_order_relaxed);
    for (;;) {
        omx_ring_cell *c = &r->cells[pos & r->mask];
        size_t seq = atomic_load_explicit(&c->seq, memory_order_acquire);
        ptrdiff_t dif = omx_diff(seq, pos + 1);
        if (dif == 0) {
            if (atomic_compare_exchange_weak_explicit(&r->tail, &pos, pos + 1, memory_order_seq_cst,
                                                      memory_order_relaxed)) {
                *out = c->data;
                atomic_store_explicit(&c->seq, pos + r->size, memory_order_release);
                return 1;
            }
        } else if (dif < 0) {
            return 0; /* position pos not yet written: empty */
        } else {
            pos = atomic_load_explicit(&r->tail, memory_order_relaxed);
        }
    }
}

size_t omx_ring_push_many(omx_ring *r, void *const *items, size_t n) {
    if (n == 0) {
        return 0;
    }
    size_t pos = atomic_load_explicit(&r->head, memory_order_relaxed);
    for (;;) {
        size_t limit = n < r->size ? n : r->size;
        if (r->limited) {
            size_t room = omx_room(r, pos);
            if (room < limit) {
                limit = room;
            }
        }
        size_t k = 0;
        while (k < limit) {
            omx_ring_cell *c = &r->cells[(pos + k) & r->mask];
            size_t seq = atomic_load_explicit(&c->seq, memory_order_acquire);
            if (seq != pos + k) {
                break;
            }
            k++;
        }
        if (k == 0) {
            omx_ring_cell *c = &r->cells[pos & r->mask];
            size_t seq = atomic_load_explicit(&c->seq, memory_order_acquire);
            ptrdiff_t dif = omx_diff(seq, pos);
            if (dif < 0 || (dif == 0 && limit == 0)) {
                return 0; /* full */
            }
            pos = atomic_load_explicit(&r->head, memory_order_relaxed);
            continue;
        }
        if (atomic_compare_exchange_weak_explicit(&r->head, &pos, pos + k, memory_order_seq_cst,
                                                  memory_order_relaxed)) {
            for (size_t i = 0; i < k; i++) {
                omx_ring_cell *c = &r->cells[(pos + i) & r->mask];
                c->data = items[i];
                atomic_store_explicit(&c->seq, pos + i + 1, memory_order_release);
            }
            return k;
        }
    }
}

size_t omx_ring_pop_many(omx_ring *r, void **out, size_t n) {
    if (n == 0) {
        return 0;
    }
    size_t pos = atomic_load_explicit(&r->tail, memory_order_relaxed);
    for (;;) {
        size_t limit = n < r->size ? n : r->size;
        size_t k = 0;
        while (k < limit) {
            omx_ring_cell *c = &r->cells[(pos + k) & r->mask];
            size_t seq = atomic_load_explicit(&c->seq, memory_order_acquire);
            if (seq != pos + k + 1) {
                break;
            }
            k++;
        }
        if (k == 0) {
            omx_ring_cell *c = &r->cells[pos & r->mask];
            size_t seq = atomic_load_explicit(&c->seq, memory_order_acquire);
            if (omx_diff(seq, pos + 1) < 0) {
                return 0; /* empty */
            }
            pos = atomic_load_explicit(&r->tail, memory_order_relaxed);
            continue;
        }
        if (atomic_compare_exchange_weak_explicit(&r->tail, &pos, pos + k, memory_order_seq_cst,
                                                  memory_order_relaxed)) {
            for (size_t i = 0; i < k; i++) {
                omx_ring_cell *c = &r->cells[(pos + i) & r->mask];
                out[i] = c->data;
                atomic_store_explicit(&c->seq, pos + i + r->size, memory_order_release);
            }
            return k;
        }
    }
}

int omx_ring_visit(const omx_ring *r, int (*fn)(void *item, void *ctx), void *ctx) {
    omx_ring *m = (omx_ring *)r;
    size_t t = atomic_load_explicit(&m->tail, memory_order_acquire);
    size_t h = atomic_load_explicit(&m->head, memory_order_acquire);
    for (size_t pos = t; pos != h; pos++) {
        omx_ring_cell *c = &m->cells[pos & m->mask];
        if (atomic_load_explicit(&c->seq, memory_order_acquire) != pos + 1) {
            break; /* not committed: only possible if the caller broke the contract */
        }
        int rc = fn(c->data, ctx);
        if (rc != 0) {
            return rc;
        }
    }
    return 0;
}

size_t omx_ring_size(const omx_ring *r) {
    /* A snapshot: the two loads are not one atomic step, so clamp into
     * [0, capacity] (tail <= head holds at every instant, but the pair read
     * here may come from different instants). */
    omx_ring *m = (omx_ring *)r;
    /* seq_cst, tail first: the sleep/wake contract in the header comment relies on it */
    size_t t = atomic_load_explicit(&m->tail, memory_order_seq_cst);
    size_t h = atomic_load_explicit(&m->head, memory_order_seq_cst);
    ptrdiff_t n = omx_diff(h, t);
    if (n <= 0) {
        return 0;
    }
    return (size_t)n > r->capacity ? r->capacity : (size_t)n;
}
