/* ollamamax/lfu.h -- eviction structure of LFUCache (W-TinyLFU; see native/src/lfu.c). */
#ifndef OLLAMAMAX_LFU_H
#define OLLAMAMAX_LFU_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define OMX_LFU_NIL UINT32_MAX
#define OMX_LFU_MAXSIZE_LIMIT (UINT32_C(1) << 30)
/* Largest weight budget: twice it still fits in a uint64_t (a total may exceed the
 * budget by one entry's weight while the bounds are being restored). */
#define OMX_LFU_MAXWEIGHT_LIMIT (UINT64_C(1) << 62)

enum { OMX_LFU_FREE = 0, OMX_LFU_WINDOW = 1, OMX_LFU_PROBATION = 2, OMX_LFU_PROTECTED = 3 };

typedef struct omx_lfu_slot {  /* 24 bytes */
    uint64_t hash;          /* spread hash of the key (omx_lfu_spread) */
    uint32_t prev, next;    /* queue links; a free slot uses next for the free list */
    uint32_t epoch;         /* value of omx_lfu.epoch at the slot's last use */
    uint8_t queue;          /* OMX_LFU_FREE / WINDOW / PROBATION / PROTECTED */
} omx_lfu_slot;

typedef struct omx_lfu_age {   /* per slot, only with track_age */
    double expire;          /* expiry time */
    uint32_t aprev, anext;  /* age-list links */
} omx_lfu_age;

typedef struct omx_lfu {
    omx_lfu_slot *slots;    /* nslots entry slots, then 4 sentinels */
    omx_lfu_age *ages;      /* nslots + 4 entries with track_age (sentinel last), else NULL */
    unsigned char *table;   /* sketch: (block_mask + 1) blocks of 64 counters */
    uint64_t block_mask;
    uint64_t sample_count;  /* counted increments since the last halving (halved too) */
    uint64_t sample_size;   /* 60 * maxsize */
    uint32_t maxsize, nslots, wcap, mcap, pcap;
    uint32_t len[4];        /* entries per queue (index 0 unused) */
    uint32_t free_head;
    uint32_t epoch;         /* number of sketch halvings so far */
    int track_age;
    /* shift detector: lookups are counted in periods of `period` requests */
    uint32_t period;        /* max(maxsize, OMX_LFU_MIN_PERIOD) */
    uint32_t p_req, p_hits; /* requests / hits in the current period */
    uint32_t p_recur;       /* misses in the period on keys that missed recently */
    unsigned char *seen[2]; /* bit sets of keys that missed in this / the previous period */
    uint64_t seen_mask;     /* bits per set - 1 (8 * next_pow2(period) bits) */
    int64_t avg_fp;         /* moving average of hits per period, x256; -1 before the first */
    int64_t avg_recur_fp;   /* moving average of p_recur, x256 */
    uint64_t shifts;        /* shifts detected so far */
    /* weight budget: all NULL / 0 without one (maxweight == 0) */
    uint64_t *weights;      /* nslots entries: weight of each resident slot, 0 if free */
    uint32_t *evicted;      /* nslots entries: the slots the last weighted call freed */
    uint64_t maxweight;     /* the budget: total weight <= maxweight between calls */
    uint64_t wmax;          /* window weight bound: max(1, maxweight / 100) */
    uint64_t pmax;          /* protected weight bound: 90% of maxweight - wmax */
    uint64_t wt[4];         /* weight per queue (index 0 unused) */
} omx_lfu;

#define OMX_LFU_MIN_PERIOD 128u

/* murmur3 fmix64, applied to the Python hash of a key. */
static inline uint64_t omx_lfu_spread(uint64_t h) {
    h ^= h >> 33;
    h *= UINT64_C(0xFF51AFD7ED558CCD);
    h ^= h >> 33;
    h *= UINT64_C(0xC4CEB9FE1A85EC53);
    return h ^ (h >> 33);
}

/* 0 ok, -1 out of memory, -2 maxsize outside 1..OMX_LFU_MAXSIZE_LIMIT, -3 maxweight
 * above OMX_LFU_MAXWEIGHT_LIMIT.  maxweight 0: no weight budget (every entry weighs 1
 * and only the entry count is bounded); else a weighted cache (see lfu.c). */
int omx_lfu_init(omx_lfu *c, uint32_t maxsize, int track_age, uint64_t maxweight);
void omx_lfu_destroy(omx_lfu *c);
/* Empties the queues and zeroes the sketch. */
void omx_lfu_clear(omx_lfu *c);

/* Sketch: count one use of hash h / estimate its frequency (0..31). */
void omx_lfu_record(omx_lfu *c, uint64_t h);
unsigned omx_lfu_frequency(const omx_lfu *c, uint64_t h);

/* End of a shift-detector period (called by omx_lfu_hit / omx_lfu_miss). */
void omx_lfu_period_end(omx_lfu *c);

/* A use of a resident slot: records its hash and repositions it. */
void omx_lfu_touch(omx_lfu *c, uint32_t slot);
/* A get-style lookup that hit: feeds the shift detector, then omx_lfu_touch. */
static inline void omx_lfu_hit(omx_lfu *c, uint32_t slot) {
    c->p_hits++;
    if (++c->p_req >= c->period) omx_lfu_period_end(c);
    omx_lfu_touch(c, slot);
}
/* A get-style lookup that missed (key hash h): feeds the shift detector, then
 * records h.  A set that follows it is a separate use (omx_lfu_insert records). */
void omx_lfu_miss(omx_lfu *c, uint64_t h);
/* Caches without a weight budget only (see omx_lfu_insert_weighted).
 * Records h, places a new entry in the window and restores the size bounds.
 * Returns the new slot; *evicted is the slot that left the cache (its key must be
 * dropped by the caller) or OMX_LFU_NIL.  The evicted slot is already free but is
 * never the returned one.  Returns OMX_LFU_NIL if no slot is free (cannot happen
 * while the caller removes every evicted key). */
uint32_t omx_lfu_insert(omx_lfu *c, uint64_t h, double expire, uint32_t *evicted);
/* Weighted caches only (maxweight > 0), weight in 1..maxweight.
 * omx_lfu_insert_weighted records h, places a new entry of that weight in the window
 * and restores every bound; *slot is the new slot (OMX_LFU_NIL if none was free, then
 * nothing happened).  Returns n: c->evicted[0..n) are the slots that left, already
 * free; they may include *slot itself (the new entry lost its admission contest). */
uint32_t omx_lfu_insert_weighted(omx_lfu *c, uint64_t h, double expire, uint64_t weight, uint32_t *slot);
/* A set of a resident slot with a (possibly new) weight: sets the weight, records the
 * use and repositions it as omx_lfu_touch does, restores every bound.  Returns n as
 * above (c->evicted may include slot).  0 and no change if slot is not resident. */
uint32_t omx_lfu_update_weighted(omx_lfu *c, uint32_t slot, uint64_t weight);
/* Total weight of the resident entries (their number without a weight budget). */
uint64_t omx_lfu_weight(const omx_lfu *c);
/* Removes a resident slot (pop/del/expiry).  Returns 0, or -1 if slot is not resident. */
int omx_lfu_remove(omx_lfu *c, uint32_t slot);
/* Sets a slot's expiry and moves it to the young end of the age list. */
void omx_lfu_set_expire(omx_lfu *c, uint32_t slot, double expire);
/* The slot with the oldest expiry, or OMX_LFU_NIL. */
uint32_t omx_lfu_oldest(const omx_lfu *c);
uint32_t omx_lfu_size(const omx_lfu *c);

static inline double omx_lfu_expire_of(const omx_lfu *c, uint32_t slot) {
    return c->ages[slot].expire;
}
static inline int omx_lfu_queue_of(const omx_lfu *c, uint32_t slot) {
    return c->slots[slot].queue;
}

#ifdef __cplusplus
}
#endif
#endif /* OLLAMAMAX_LFU_H */
