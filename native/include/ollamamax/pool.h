/* ollamamax/pool.h -- slot bookkeeping for ObjectPool (see native/src/pool.c). */
#ifndef OLLAMAMAX_POOL_H
#define OLLAMAMAX_POOL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct omx_pool {
    void **idle;        /* LIFO stack of idle objects, capacity maxsize */
    size_t nidle;       /* objects on the stack */
    size_t maxsize;     /* stack capacity (0: nothing is ever kept) */
    void **out;         /* open-addressing set of outstanding objects (NULL = empty) */
    size_t nout;        /* objects in the set */
    size_t out_mask;    /* set capacity - 1 (capacity is a power of two) */
    uint64_t created;   /* objects counted by omx_pool_track_new */
    uint64_t reused;    /* objects handed out again by omx_pool_take_idle */
} omx_pool;

/* 0 on success, -1 if memory is short (the pool is then left empty and freeable). */
int omx_pool_init(omx_pool *p, size_t maxsize);
/* Frees the pool's own memory; the caller must have released the objects first
 * (see omx_pool_pop_any_idle / omx_pool_pop_any_out). */
void omx_pool_destroy(omx_pool *p);

/* Grows the outstanding set (doubling): 0, or -1 if memory is short. */
int omx_pool_grow(omx_pool *p);
/* Makes room for one more outstanding object: 0, or -1 if memory is short.
 * Call it before omx_pool_take_idle / omx_pool_track_new, which then cannot fail. */
static inline int omx_pool_reserve(omx_pool *p) {
    return ((p->nout + 1) * 2 <= p->out_mask + 1) ? 0 : omx_pool_grow(p);
}
/* Pops the most recently released idle object and marks it outstanding
 * (reused += 1).  Returns NULL when no object is idle.  *dup is set to 1 if the
 * object was already outstanding (a factory handed out a pooled object): the set
 * then keeps its single entry and the caller owns the extra reference. */
void *omx_pool_take_idle(omx_pool *p, int *dup);
/* Marks a freshly created object outstanding (created += 1).  Returns 0, or 1
 * (and changes nothing) if the object is already outstanding. */
int omx_pool_track_new(omx_pool *p, void *obj);
/* Removes obj from the outstanding set: 1 if it was there, 0 if not (a double
 * release or a foreign object). */
int omx_pool_untrack(omx_pool *p, void *obj);
/* 1 if obj is outstanding. */
int omx_pool_is_out(const omx_pool *p, const void *obj);
/* Pushes obj (already untracked) on the idle stack: 1 if kept, 0 if the stack is
 * full (the caller then drops obj). */
static inline int omx_pool_push_idle(omx_pool *p, void *obj) {
    if (p->nidle >= p->maxsize) return 0;
    p->idle[p->nidle++] = obj;
    return 1;
}
/* Teardown helpers: pop any idle / outstanding object, NULL when none is left. */
void *omx_pool_pop_any_idle(omx_pool *p);
void *omx_pool_pop_any_out(omx_pool *p);

#ifdef __cplusplus
}
#endif
#endif /* OLLAMAMAX_POOL_H */
