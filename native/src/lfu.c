/* lfu.c -- the eviction structure of ollamamax.LFUCache: W-TinyLFU.
 *
 * Policy (identical, decision for decision, to src/ollamamax/_lfu_py.py)
 *   Frequency sketch: a count-min sketch with 4 rows of saturating 4-bit counters
 *   (stored one per byte, capped at 15).  The 4 counters of a key live in one
 *   64-byte block (one cache line) chosen by the low bits of its spread hash; row r
 *   uses counter  block*64 + 16*r + ((h >> (32 + 4r)) & 15).  Blocks:
 *   max(1, next_pow2(maxsize) / 4), i.e. ~4 counters per row and resident entry.
 *   Increments are conservative (only counters equal to the minimum grow), and each
 *   increment that changed something counts towards a sample; after
 *   10 * maxsize of them every counter is halved and the sample count too (aging:
 *   old popularity fades within a few samples, so a shift in the hot set is followed,
 *   where plain LFU keeps the stale hot set forever).  Estimate = min of the 4.
 *   Entries sit in three LRU queues: window (max(1, maxsize/100) entries), and the
 *   main area = probation + protected (protected <= 80% of main).  Every new key
 *   enters the window.  A hit in probation promotes to protected; protected overflow
 *   demotes its LRU entry to probation's MRU end.  Window overflow moves the window's
 *   LRU entry (the candidate) to probation; if main then overflows, the candidate
 *   meets the victim (probation's LRU entry, else protected's): the victim leaves only
 *   if the candidate's estimate is strictly higher, else the candidate leaves.  So a
 *   one-off scan passes through the window without evicting frequent keys (scan
 *   resistance) while the window still catches bursts of recency.
 *   Stale protected entries: each halving bumps an epoch; the protected prefix whose
 *   last use is STALE_EPOCHS (6) or more epochs old moves to probation's LRU end, so a
 *   stale hot set is challenged even when nothing is promoted (without this, a cyclic
 *   pattern after a shift can leave the old hot set in protected forever).
 *
 * Layout
 *   slots[0 .. nslots)             entry slots, nslots = maxsize + 1: the spare slot
 *                                   lets insert place the new entry before choosing
 *                                   who leaves (so the new one never collides with
 *                                   the evicted one).
 *   slots[nslots + q - 1], q=1..3  sentinels of the circular doubly linked queues
 *                                   (window, probation, protected): head = LRU end.
 *   slots[nslots + 3]              sentinel of the age list (aprev/anext), used only
 *                                   with a TTL: entries ordered by expiry, which is
 *                                   insertion/update order because the TTL is fixed.
 *   Free slots form a singly linked list through next, ending in OMX_LFU_NIL.
 *   The caller (Cython) keeps key/value objects in Python lists indexed by slot and a
 *   dict key -> slot, so key equality is Python equality.  Nothing here touches a
 *   Python object.
 *
 * Invariants (between calls)
 *   len[WINDOW] <= wcap, len[PROBATION] + len[PROTECTED] <= mcap, len[PROTECTED] <=
 *   pcap (after touch), wcap + mcap = maxsize; so at most maxsize slots are resident
 *   and at least one is free.  A slot is in exactly one queue or in the free list;
 *   queue == OMX_LFU_FREE iff free.  Counters <= 15.
 *
 * Cost per operation: record/frequency O(1) (one cache line); touch, insert, remove,
 * set_expire O(1); the halving (and the demotion walk, which visits only the entries
 * it moves) is O(maxsize) once per 10 * maxsize increments, i.e. amortised O(1).  Not thread-safe: the wrapper calls it under the GIL.
 */
#include "ollamamax/lfu.h"

#include <stdlib.h>
#include <string.h>

#define SKETCH_CAP 15u
#define SAMPLE_FACTOR 10u
#define STALE_EPOCHS 6u

static inline uint32_t sentinel(const omx_lfu *c, int q) { return c->nslots + (uint32_t)q - 1u; }

static void q_unlink(omx_lfu *c, uint32_t i) {
    omx_lfu_slot *s = c->slots;
    s[s[i].prev].next = s[i].next;
    s[s[i].next].prev = s[i].prev;
    c->len[s[i].queue]--;
}

static void q_push_tail(omx_lfu *c, int q, uint32_t i) {
    omx_lfu_slot *s = c->slots;
    uint32_t sen = sentinel(c, q);
    uint32_t last = s[sen].prev;
    s[i].prev = last;
    s[i].next = sen;
    s[last].next = i;
    s[sen].prev = i;
    s[i].queue = (uint8_t)q;
    c->len[q]++;
}

static void q_push_head(omx_lfu *c, int q, uint32_t i) {
    omx_lfu_slot *s = c->slots;
    uint32_t sen = sentinel(c, q);
    uint32_t first = s[sen].next;
    s[i].next = first;
    s[i].prev = sen;
    s[first].prev = i;
    s[sen].next = i;
    s[i].queue = (uint8_t)q;
    c->len[q]++;
}

static inline uint32_t q_head(const omx_lfu *c, int q) {
    uint32_t sen = sentinel(c, q);
    uint32_t h = c->slots[sen].next;
    return h == sen ? OMX_LFU_NIL : h;
}

static void age_unlink(omx_lfu *c, uint32_t i) {
    omx_lfu_slot *s = c->slots;
    s[s[i].aprev].anext = s[i].anext;
    s[s[i].anext].aprev = s[i].aprev;
}

static void age_push_tail(omx_lfu *c, uint32_t i) {
    omx_lfu_slot *s = c->slots;
    uint32_t sen = c->nslots + 3u;
    uint32_t last = s[sen].aprev;
    s[i].aprev = last;
    s[i].anext = sen;
    s[last].anext = i;
    s[sen].aprev = i;
}

static void reset_lists(omx_lfu *c) {
    omx_lfu_slot *s = c->slots;
    for (uint32_t i = 0; i < c->nslots; i++) {
        s[i].queue = OMX_LFU_FREE;
        s[i].next = (i + 1 < c->nslots) ? i + 1 : OMX_LFU_NIL;
        s[i].prev = s[i].aprev = s[i].anext = OMX_LFU_NIL;
        s[i].hash = 0;
        s[i].expire = 0.0;
        s[i].epoch = 0;
    }
    for (uint32_t k = 0; k < 4; k++) {
        uint32_t sen = c->nslots + k;
        s[sen].prev = s[sen].next = s[sen].aprev = s[sen].anext = sen;
        s[sen].queue = OMX_LFU_FREE;
        c->len[k] = 0;
    }
    c->free_head = 0;
}

int omx_lfu_init(omx_lfu *c, uint32_t maxsize, int track_age) {
    memset(c, 0, sizeof *c);
    if (maxsize < 1 || maxsize > OMX_LFU_MAXSIZE_LIMIT) return -2;
    uint64_t width = 1;
    while (width < maxsize) width <<= 1;
    uint64_t nblocks = width >> 2;
    if (nblocks < 1) nblocks = 1;
    c->maxsize = maxsize;
    c->nslots = maxsize + 1;
    c->wcap = maxsize / 100 > 1 ? maxsize / 100 : 1;
    c->mcap = maxsize - c->wcap;
    c->pcap = (uint32_t)((uint64_t)c->mcap * 8 / 10);
    c->block_mask = nblocks - 1;
    c->sample_size = (uint64_t)SAMPLE_FACTOR * maxsize;
    c->track_age = track_age != 0;
    c->slots = (omx_lfu_slot *)calloc((size_t)c->nslots + 4, sizeof(omx_lfu_slot));
    c->table = (unsigned char *)calloc((size_t)nblocks, 64);
    if (c->slots == NULL || c->table == NULL) {
        omx_lfu_destroy(c);
        return -1;
    }
    reset_lists(c);
    return 0;
}

void omx_lfu_destroy(omx_lfu *c) {
    free(c->slots);
    free(c->table);
    c->slots = NULL;
    c->table = NULL;
}

void omx_lfu_clear(omx_lfu *c) {
    reset_lists(c);
    memset(c->table, 0, (size_t)(c->block_mask + 1) * 64);
    c->sample_count = 0;
    c->epoch = 0;
}

/* After a halving: the protected prefix unused for STALE_EPOCHS halvings (protected
 * is in order of last use) moves, in order, to the LRU end of probation. */
static void demote_stale(omx_lfu *c) {
    omx_lfu_slot *s = c->slots;
    uint32_t sen = sentinel(c, OMX_LFU_PROTECTED);
    uint32_t last = OMX_LFU_NIL;
    c->epoch++;
    for (uint32_t i = s[sen].next; i != sen && c->epoch - s[i].epoch >= STALE_EPOCHS; i = s[i].next)
        last = i;
    while (last != OMX_LFU_NIL) {
        uint32_t p = s[last].prev;
        q_unlink(c, last);
        q_push_head(c, OMX_LFU_PROBATION, last);
        last = (p == sen) ? OMX_LFU_NIL : p;
    }
}

static void sketch_halve(omx_lfu *c) {
    size_t nwords = (size_t)(c->block_mask + 1) * 8;
    for (size_t i = 0; i < nwords; i++) {
        uint64_t w;
        memcpy(&w, c->table + i * 8, 8);
        w = (w >> 1) & UINT64_C(0x7F7F7F7F7F7F7F7F);
        memcpy(c->table + i * 8, &w, 8);
    }
    c->sample_count >>= 1;
    demote_stale(c);
}

#define SKETCH_INDEXES(c, h)                                         \
    unsigned char *t = (c)->table + ((size_t)((h) & (c)->block_mask) << 6); \
    unsigned i0 = (unsigned)(((h) >> 32) & 15u);                     \
    unsigned i1 = 16u + (unsigned)(((h) >> 36) & 15u);               \
    unsigned i2 = 32u + (unsigned)(((h) >> 40) & 15u);               \
    unsigned i3 = 48u + (unsigned)(((h) >> 44) & 15u)

static inline unsigned min4(unsigned a, unsigned b, unsigned c, unsigned d) {
    unsigned m = a < b ? a : b;
    unsigned n = c < d ? c : d;
    return m < n ? m : n;
}

void omx_lfu_record(omx_lfu *c, uint64_t h) {
    SKETCH_INDEXES(c, h);
    unsigned m = min4(t[i0], t[i1], t[i2], t[i3]);
    if (m >= SKETCH_CAP) return;
    if (t[i0] == m) t[i0] = (unsigned char)(m + 1);
    if (t[i1] == m) t[i1] = (unsigned char)(m + 1);
    if (t[i2] == m) t[i2] = (unsigned char)(m + 1);
    if (t[i3] == m) t[i3] = (unsigned char)(m + 1);
    if (++c->sample_count >= c->sample_size) sketch_halve(c);
}

unsigned omx_lfu_frequency(const omx_lfu *c, uint64_t h) {
    SKETCH_INDEXES(c, h);
    return min4(t[i0], t[i1], t[i2], t[i3]);
}

void omx_lfu_touch(omx_lfu *c, uint32_t slot) {
    omx_lfu_slot *s = c->slots;
    if (slot >= c->nslots || s[slot].queue == OMX_LFU_FREE) return;
    omx_lfu_record(c, s[slot].hash); /* may halve and demote, even this slot */
    s[slot].epoch = c->epoch;
    int q = s[slot].queue;
    if (q == OMX_LFU_PROBATION) {
        q_unlink(c, slot);
        q_push_tail(c, OMX_LFU_PROTECTED, slot);
        if (c->len[OMX_LFU_PROTECTED] > c->pcap) {
            uint32_t d = q_head(c, OMX_LFU_PROTECTED);
            q_unlink(c, d);
            q_push_tail(c, OMX_LFU_PROBATION, d);
        }
    } else {
        q_unlink(c, slot);
        q_push_tail(c, q, slot);
    }
}

static void free_slot(omx_lfu *c, uint32_t i) {
    q_unlink(c, i);
    if (c->track_age) age_unlink(c, i);
    c->slots[i].queue = OMX_LFU_FREE;
    c->slots[i].prev = c->slots[i].aprev = c->slots[i].anext = OMX_LFU_NIL;
    c->slots[i].next = c->free_head;
    c->free_head = i;
}

uint32_t omx_lfu_insert(omx_lfu *c, uint64_t h, double expire, uint32_t *evicted) {
    omx_lfu_slot *s = c->slots;
    *evicted = OMX_LFU_NIL;
    uint32_t i = c->free_head;
    if (i == OMX_LFU_NIL) return OMX_LFU_NIL;
    omx_lfu_record(c, h);
    c->free_head = s[i].next;
    s[i].hash = h;
    s[i].expire = expire;
    s[i].epoch = c->epoch;
    q_push_tail(c, OMX_LFU_WINDOW, i);
    if (c->track_age) age_push_tail(c, i);
    if (c->len[OMX_LFU_WINDOW] <= c->wcap) return i;
    uint32_t cand = q_head(c, OMX_LFU_WINDOW);
    q_unlink(c, cand);
    q_push_tail(c, OMX_LFU_PROBATION, cand);
    if (c->len[OMX_LFU_PROBATION] + c->len[OMX_LFU_PROTECTED] <= c->mcap) return i;
    uint32_t victim = q_head(c, OMX_LFU_PROBATION);
    if (victim == cand) {
        victim = q_head(c, OMX_LFU_PROTECTED);
        if (victim == OMX_LFU_NIL) victim = cand;
    }
    uint32_t leaving = cand;
    if (victim != cand && omx_lfu_frequency(c, s[cand].hash) > omx_lfu_frequency(c, s[victim].hash))
        leaving = victim;
    free_slot(c, leaving);
    *evicted = leaving;
    return i;
}

int omx_lfu_remove(omx_lfu *c, uint32_t slot) {
    if (slot >= c->nslots || c->slots[slot].queue == OMX_LFU_FREE) return -1;
    free_slot(c, slot);
    return 0;
}

void omx_lfu_set_expire(omx_lfu *c, uint32_t slot, double expire) {
    if (slot >= c->nslots || c->slots[slot].queue == OMX_LFU_FREE) return;
    c->slots[slot].expire = expire;
    if (c->track_age) {
        age_unlink(c, slot);
        age_push_tail(c, slot);
    }
}

uint32_t omx_lfu_oldest(const omx_lfu *c) {
    uint32_t sen = c->nslots + 3u;
    uint32_t h = c->slots[sen].anext;
    return (!c->track_age || h == sen) ? OMX_LFU_NIL : h;
}

uint32_t omx_lfu_size(const omx_lfu *c) {
    return c->len[OMX_LFU_WINDOW] + c->len[OMX_LFU_PROBATION] + c->len[OMX_LFU_PROTECTED];
}
