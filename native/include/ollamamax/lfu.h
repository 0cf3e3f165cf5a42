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

enum { OMX_LFU_FREE = 0, OMX_LFU_WINDOW = 1, OMX_LFU_PROBATION = 2, OMX_LFU_PROTECTED = 3 };

typedef struct omx_lfu_slot {
    uint64_t hash;          /* spread hash of the key (omx_lfu_spread) */
    double expire;          /* expiry time (only with track_age) */
    uint32_t prev, next;    /* queue links; a free slot uses next for the free list */
    uint32_t aprev, anext;  /* age-list links (only with track_age) */
    uint32_t epoch;         /* value of omx_lfu.epoch at the slot's last use */
    uint8_t queue;          /* OMX_LFU_FREE / WINDOW / PROBATION / PROTECTED */
} omx_lfu_slot;

typedef struct omx_lfu {
    omx_lfu_slot *slots;    /* nslots entry slots, then 4 sentinels */
    unsigned char *table;   /* sketch: (block_mask + 1) blocks of 64 counters */
    uint64_t block_mask;
    uint64_t sample_count;  /* counted increments since the last halving (halved too) */
    uint64_t sample_size;   /* 10 * maxsize */
    uint32_t maxsize, nslots, wcap, mcap, pcap;
    uint32_t len[4];        /* entries per queue (index 0 unused) */
    uint32_t free_head;
    uint32_t epoch;         /* number of sketch halvings so far */
    int track_age;
} omx_lfu;

/* murmur3 fmix64, applied to the Python hash of a key. */
static inline uint64_t omx_lfu_spread(uint64_t h) {
    h ^= h >> 33;
    h *= UINT64_C(0xFF51AFD7ED558CCD);
    h ^= h >> 33;
    h *= UINT64_C(0xC4CEB9FE1A85EC53);
    return h ^ (h >> 33);
}

/* 0 ok, -1 out of memory, -2 maxsize outside 1..OMX_LFU_MAXSIZE_LIMIT. */
int omx_lfu_init(omx_lfu *c, uint32_t maxsize, int track_age);
void omx_lfu_destroy(omx_lfu *c);
/* Empties the queues and zeroes the sketch. */
void omx_lfu_clear(omx_lfu *c);

/* Sketch: count one use of hash h / estimate its frequency (0..15). */
void omx_lfu_record(omx_lfu *c, uint64_t h);
unsigned omx_lfu_frequency(const omx_lfu *c, uint64_t h);

/* A use of a resident slot: records its hash and repositions it. */
void omx_lfu_touch(omx_lfu *c, uint32_t slot);
/* Records h, places a new entry in the window and restores the size bounds.
 * Returns the new slot; *evicted is the slot that left the cache (its key must be
 * dropped by the caller) or OMX_LFU_NIL.  The evicted slot is already free but is
 * never the returned one.  Returns OMX_LFU_NIL if no slot is free (cannot happen
 * while the caller removes every evicted key). */
uint32_t omx_lfu_insert(omx_lfu *c, uint64_t h, double expire, uint32_t *evicted);
/* Removes a resident slot (pop/del/expiry).  Returns 0, or -1 if slot is not resident. */
int omx_lfu_remove(omx_lfu *c, uint32_t slot);
/* Sets a slot's expiry and moves it to the young end of the age list. */
void omx_lfu_set_expire(omx_lfu *c, uint32_t slot, double expire);
/* The slot with the oldest expiry, or OMX_LFU_NIL. */
uint32_t omx_lfu_oldest(const omx_lfu *c);
uint32_t omx_lfu_size(const omx_lfu *c);

static inline double omx_lfu_expire_of(const omx_lfu *c, uint32_t slot) {
    return c->slots[slot].expire;
}
static inline int omx_lfu_queue_of(const omx_lfu *c, uint32_t slot) {
    return c->slots[slot].queue;
}

#ifdef __cplusplus
}
#endif
#endif /* OLLAMAMAX_LFU_H */
