/*
 * ollamamax/ring.h -- bounded lock-free multi-producer/multi-consumer FIFO of void*.
 *
 * A Vyukov-style ring of sequence-numbered slots built on C11 atomics.  The ring
 * stores opaque pointers and knows nothing of Python: whoever pushes a pointer
 * hands its ownership to whoever pops it.  Every function is safe to call from
 * any number of threads at once, with no lock and without the GIL.  See
 * native/src/ring.c for the layout, invariants, costs and memory-ordering contract.
 */
#ifndef OLLAMAMAX_RING_H
#define OLLAMAMAX_RING_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct omx_ring omx_ring;

/* The ring is linked statically into the extension module: hidden visibility keeps
 * its symbols out of the module's dynamic symbol table and lets calls bind
 * directly (no PLT indirection on the hot path). */
#if defined(__GNUC__) && !defined(_WIN32) && !defined(__CYGWIN__)
#define OMX_RING_API __attribute__((visibility("hidden")))
#else
#define OMX_RING_API
#endif

/* Largest capacity omx_ring_new accepts (the slot array is a power of two). */
#define OMX_RING_MAX_CAPACITY ((size_t)1 << (sizeof(size_t) * 8 - 4))

/* New empty ring holding at most `capacity` items (1 <= capacity <=
 * OMX_RING_MAX_CAPACITY).  Returns NULL for a capacity out of range or when
 * memory runs out.  Not thread-safe with respect to the returned ring (nobody
 * else can see it yet). */
OMX_RING_API omx_ring *omx_ring_new(size_t capacity);

/* Frees the ring.  Items still inside are NOT released: drain them first with
 * omx_ring_try_pop/omx_ring_pop_many if they own resources.  The caller must
 * guarantee that no other thread uses the ring any more. */
OMX_RING_API void omx_ring_free(omx_ring *r);

/* The capacity passed to omx_ring_new (not the rounded-up slot count). */
OMX_RING_API size_t omx_ring_capacity(const omx_ring *r);

/* Appends `item`.  Returns 1 on success, 0 when the ring holds `capacity` items
 * (or a slot is still being read by a slower consumer, see ring.c). */
OMX_RING_API int omx_ring_try_push(omx_ring *r, void *item);

/* Removes the oldest item into *out.  Returns 1 on success, 0 when empty (or the
 * next slot is claimed by a producer that has not finished writing it). */
OMX_RING_API int omx_ring_try_pop(omx_ring *r, void **out);

/* Appends the longest prefix of items[0..n) that fits, as one contiguous run
 * (no other producer's item is interleaved).  Returns how many were appended;
 * items[k..n) were not touched. */
OMX_RING_API size_t omx_ring_push_many(omx_ring *r, void *const *items, size_t n);

/* Removes up to n of the oldest items, in order, into out[0..k).  Returns k. */
OMX_RING_API size_t omx_ring_pop_many(omx_ring *r, void **out, size_t n);

/* Calls fn(item, ctx) for each item inside, oldest first, and returns the first
 * non-zero result (0 if all returned 0).  NOT safe against concurrent push/pop:
 * the caller must guarantee that no other thread mutates the ring meanwhile
 * (e.g. a garbage collector running with the GIL held or the world stopped). */
OMX_RING_API int omx_ring_visit(const omx_ring *r, int (*fn)(void *item, void *ctx), void *ctx);

/* Number of items inside: exact when no other thread is using the ring, a
 * snapshot in [0, capacity] otherwise (slots claimed by in-flight pushes count).
 * Loads tail then head with seq_cst; together with the seq_cst claims of every
 * push/pop this lets a caller build a sleep/wake protocol without fences on the
 * fast path (see "SLEEP/WAKE CONTRACT" in ring.c). */
OMX_RING_API size_t omx_ring_size(const omx_ring *r);

#ifdef __cplusplus
}
#endif
#endif /* OLLAMAMAX_RING_H */
