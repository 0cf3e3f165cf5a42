/* lfu.c -- the eviction structure of ollamamax.LFUCache: W-TinyLFU.
 *
 * Policy (identical, decision for decision, to src/ollamamax/structures/_lfu_py.py)
 *   Frequency sketch: a count-min sketch with 4 rows of saturating 5-bit counters
 *   (stored one per byte, capped at 31).  The 4 counters of a key live in one
 *   64-byte block (one cache line) chosen by the low bits of its spread hash; row r
 *   uses counter  block*64 + 16*r + ((h >> (32 + 4r)) & 15).  Blocks:
 *   max(1, next_pow2(maxsize) / 2), i.e. ~8 counters per row and resident entry.
 *   Increments are conservative (only counters equal to the minimum grow), and each
 *   increment that changed something counts towards a sample; after
 *   60 * maxsize of them every counter is halved and the sample count too (aging:
 *   old popularity fades, where plain LFU keeps a stale hot set forever).  The long
 *   sample (and the 5-bit counters) tell apart keys near the admission boundary of
 *   a skewed (Zipf) load, which a short sample cannot; an abrupt change of the hot
 *   set is handled by the shift detector below instead.  Estimate = min of the 4.
 *   Entries sit in three LRU queues: window (max(1, maxsize/100) entries), and the
 *   main area = probation + protected (protected <= 90% of main).  Every new key
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
 *   Shift detector: get-style lookups are counted in periods of max(maxsize, 128)
 *   requests.  A miss is *recurring* if the same key missed in this or the previous
 *   period (two Bloom bit sets of 16 * next_pow2(period) bits, 2 probes, the older
 *   one cleared and reused at each period end).  avg / avg_recur = moving averages
 *   (fixed point x256, weight 1/8) of hits and recurring misses per period.  When a
 *   period's hits fall below 70% of avg (avg at least 10% of a period) while its
 *   recurring misses are at least period/8 and twice avg_recur, the hot set has
 *   changed: the sketch is zeroed and every protected entry moves (in order) to the
 *   LRU end of probation, so the new hot keys win admission at once instead of
 *   waiting for the old counts to age away; both averages restart at the period's
 *   values.  A scan (one-off keys: no recurring misses) never trips it, nor does a
 *   stationary load (a 30% drop is many standard deviations of a period's hits).
 *
 * Weights (only with a budget, maxweight > 0; without one the code paths above are
 * unchanged and every entry weighs 1).  Each entry has a weight in 1..maxweight (the
 * wrapper refuses heavier ones); besides the entry bounds, the window holds at most
 * wmax = max(1, maxweight/100) weight, protected at most pmax = 90% of (maxweight -
 * wmax), and the whole cache at most maxweight (Caffeine's maximumWeight).  Protected
 * overflow (entries or weight) demotes LRU entries to probation as before, in a loop.
 * An insert or a weight change ends with restore_bounds, Caffeine's evictFromMain:
 *   1. while the window exceeds wcap entries or wmax weight, its LRU entry moves to
 *      probation's MRU end: these are this round's candidates, oldest first;
 *   2. while main exceeds mcap entries or the total exceeds maxweight: if no candidate
 *      is pending, the window's LRU entry (if any) moves over as one; the victim is
 *      main's LRU entry that is not a pending candidate (probation's LRU, else
 *      protected's); the candidate leaves unless its estimate is strictly higher than
 *      the victim's (then the victim leaves); with no victim the candidate leaves, with
 *      no candidate the victim does.  Each step frees one slot and decides the oldest
 *      pending candidate (admitted or gone); its successor in probation is next.
 *   So a heavy newcomer is admitted only by beating main's LRU entries, one by one,
 *   and the new entry itself may be the one that leaves.  With every weight 1 and
 *   maxweight = maxsize the weight bounds equal the entry bounds (wmax = wcap, pmax =
 *   pcap, maxweight = wcap + mcap) and the decisions are exactly the unweighted ones.
 *
 * Layout
 *   slots[0 .. nslots)             entry slots, nslots = maxsize + 1: the spare slot
 *                                   lets insert place the new entry before choosing
 *                                   who leaves (so the new one never collides with
 *                                   the evicted one).
 *   slots[nslots + q - 1], q=1..3  sentinels of the circular doubly linked queues
 *                                   (window, probation, protected): head = LRU end.
 *   slots[nslots + 3]              unused (kept so the sentinel indexes match ages).
 *   A slot is 24 bytes (hash, links, epoch, queue) so the hot path touches few
 *   cache lines; TTL data lives apart:
 *   ages[0 .. nslots + 4)          only with a TTL (else NULL): expiry and age-list
 *                                   links per slot; ages[nslots + 3] is the sentinel
 *                                   of the age list, ordered by expiry, which is
 *                                   insertion/update order because the TTL is fixed.
 *   table                          the sketch; seen[0..1] the detector's bit sets.
 *   weights[0 .. nslots)           only with a weight budget (else NULL, like
 *   evicted[0 .. nslots)           evicted): each slot's weight (0 when free), and
 *                                   the slots freed by the last weighted call (an
 *                                   insert frees at most nslots - 1 others); wt[q]
 *                                   is the weight of queue q.
 *   Free slots form a singly linked list through next, ending in OMX_LFU_NIL.
 *   The caller (Cython) keeps key/value objects in a node per slot and a dict
 *   key -> node, so key equality is Python equality.  Nothing here touches a
 *   Python object.
 *
 * Invariants (between calls)
 *   len[WINDOW] <= wcap, len[PROBATION] + len[PROTECTED] <= mcap, len[PROTECTED] <=
 *   pcap (after touch), wcap + mcap = maxsize; so at most maxsize slots are resident
 *   and at least one is free.  A slot is in exactly one queue or in the free list;
 *   queue == OMX_LFU_FREE iff free.  Counters <= 31.  With a weight budget: wt[q] = the
 *   sum of weights[] over queue q, and wt[WINDOW] <= wmax, wt[PROTECTED] <= pmax,
 *   wt[1] + wt[2] + wt[3] <= maxweight <= OMX_LFU_MAXWEIGHT_LIMIT (so no sum overflows
 *   while a bound is being restored).
 *
 * Cost per operation: record/frequency O(1) (one cache line); touch, insert, remove,
 * set_expire, hit, miss O(1); the halving (and the demotion walk, which visits only
 * the entries it moves) is O(maxsize) once per 60 * maxsize increments, and a
 * detected shift O(maxsize) and the clearing of a bit set O(period) at most once
 * per period of >= maxsize requests: all
 * amortised O(1).  Weighted insert/update: O(1 + slots moved or freed); an entry leaves
 * the window (and protected) at most once per use that put it there, and is freed at
 * most once per insert, so this too is amortised O(1) per operation.
 *
 * Memory ordering: none needed.  Not thread-safe, no atomics: every call runs under the
 * GIL (the Cython wrapper), and the stress test is single-threaded.
 */
#include "ollamamax/lfu.h"

#include <stdlib.h>
#include <string.h>

#define SKETCH_CAP 31u
#define SAMPLE_FACTOR 60u
#define STALE_EPOCHS 6u
#define PROTECTED_PCT 90u
#define SHIFT_DROP_PCT 70   /* a period below this % of the average is a shift */
#define SHIFT_MIN_AVG_PCT 10 /* ... provided the average hit rate is at least this */

static inline uint32_t sentinel(const omx_lfu *c, int q) { return c->nslots + (uint32_t)q - 1u; }

static void q_unlink(omx_lfu *c, uint32_t i) {
    omx_lfu_slot *s = c->slots;
    s[s[i].prev].next = s[i].next;
    s[s[i].next].prev = s[i].prev;
    c->len[s[i].queue]--;
    if (c->weights != NULL) c->wt[s[i].queue] -= c->weights[i];
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
    if (c->weights != NULL) c->wt[q] += c->weights[i];
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
    if (c->weights != NULL) c->wt[q] += c->weights[i];
}

static inline uint32_t q_head(const omx_lfu *c, int q) {
    uint32_t sen = sentinel(c, q);
    uint32_t h = c->slots[sen].next;
    return h == sen ? OMX_LFU_NIL : h;
}

static void age_unlink(omx_lfu *c, uint32_t i) {
    omx_lfu_age *s = c->ages;
    s[s[i].aprev].anext = s[i].anext;
    s[s[i].anext].aprev = s[i].aprev;
}

static void age_push_tail(omx_lfu *c, uint32_t i) {
    omx_lfu_age *s = c->ages;
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
        s[i].prev = OMX_LFU_NIL;
        s[i].hash = 0;
        s[i].epoch = 0;
    }
    if (c->ages != NULL) {
        for (uint32_t i = 0; i < c->nslots; i++) {
            c->ages[i].expire = 0.0;
            c->ages[i].aprev = c->ages[i].anext = OMX_LFU_NIL;
        }
        uint32_t sen = c->nslots + 3u;
        c->ages[sen].aprev = c->ages[sen].anext = sen;
    }
    for (uint32_t k = 0; k < 4; k++) {
        uint32_t sen = c->nslots + k;
        s[sen].prev = s[sen].next = sen;
        s[sen].queue = OMX_LFU_FREE;
        c->len[k] = 0;
        c->wt[k] = 0;
    }
    if (c->weights != NULL) memset(c->weights, 0, (size_t)c->nslots * sizeof *c->weights);
    c->free_head = 0;
}

int omx_lfu_init(omx_lfu *c, uint32_t maxsize, int track_age, uint64_t maxweight) {
    memset(c, 0, sizeof *c);
    if (maxsize < 1 || maxsize > OMX_LFU_MAXSIZE_LIMIT) return -2;
    if (maxweight > OMX_LFU_MAXWEIGHT_LIMIT) return -3;
    uint64_t width = 1;
    while (width < maxsize) width <<= 1;
    uint64_t nblocks = width >> 1;
    if (nblocks < 1) nblocks = 1;
    c->maxsize = maxsize;
    c->nslots = maxsize + 1;
    c->wcap = maxsize / 100 > 1 ? maxsize / 100 : 1;
    c->mcap = maxsize - c->wcap;
    c->pcap = (uint32_t)((uint64_t)c->mcap * PROTECTED_PCT / 100);
    c->period = maxsize > OMX_LFU_MIN_PERIOD ? maxsize : OMX_LFU_MIN_PERIOD;
    c->avg_fp = -1;
    c->block_mask = nblocks - 1;
    c->sample_size = (uint64_t)SAMPLE_FACTOR * maxsize;
    c->track_age = track_age != 0;
    uint64_t seen_bytes = 1;
    while (seen_bytes < c->period) seen_bytes <<= 1;
    seen_bytes *= 2;
    c->seen_mask = seen_bytes * 8 - 1;
    c->slots = (omx_lfu_slot *)calloc((size_t)c->nslots + 4, sizeof(omx_lfu_slot));
    if (c->track_age) {
        c->ages = (omx_lfu_age *)calloc((size_t)c->nslots + 4, sizeof(omx_lfu_age));
        if (c->ages == NULL) {
            omx_lfu_destroy(c);
            return -1;
        }
    }
    if (maxweight > 0) {
        c->maxweight = maxweight;
        c->wmax = maxweight / 100 > 1 ? maxweight / 100 : 1;
        c->pmax = (maxweight - c->wmax) / 100 * PROTECTED_PCT + (maxweight - c->wmax) % 100 * PROTECTED_PCT / 100;
        c->weights = (uint64_t *)calloc((size_t)c->nslots, sizeof(uint64_t));
        c->evicted = (uint32_t *)calloc((size_t)c->nslots, sizeof(uint32_t));
        if (c->weights == NULL || c->evicted == NULL) {
            omx_lfu_destroy(c);
            return -1;
        }
    }
    c->table = (unsigned char *)calloc((size_t)nblocks, 64);
    c->seen[0] = (unsigned char *)calloc((size_t)seen_bytes, 1);
    c->seen[1] = (unsigned char *)calloc((size_t)seen_bytes, 1);
    if (c->slots == NULL || c->table == NULL || c->seen[0] == NULL || c->seen[1] == NULL) {
        omx_lfu_destroy(c);
        return -1;
    }
    reset_lists(c);
    return 0;
}

void omx_lfu_destroy(omx_lfu *c) {
    free(c->slots);
    free(c->ages);
    free(c->table);
    free(c->seen[0]);
    free(c->seen[1]);
    free(c->weights);
    free(c->evicted);
    c->weights = NULL;
    c->evicted = NULL;
    c->slots = NULL;
    c->ages = NULL;
    c->table = NULL;
    c->seen[0] = c->seen[1] = NULL;
}

void omx_lfu_clear(omx_lfu *c) {
    reset_lists(c);
    memset(c->table, 0, (size_t)(c->block_mask + 1) * 64);
    c->sample_count = 0;
    c->epoch = 0;
    c->p_req = c->p_hits = c->p_recur = 0;
    c->avg_fp = -1;
    c->avg_recur_fp = 0;
    c->shifts = 0;
    memset(c->seen[0], 0, (size_t)(c->seen_mask >> 3) + 1);
    memset(c->seen[1], 0, (size_t)(c->seen_mask >> 3) + 1);
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

/* A detected shift: zero the sketch, move all of protected (in order, its LRU
 * entry first) to the LRU end of probation. */
static void on_shift(omx_lfu *c) {
    omx_lfu_slot *s = c->slots;
    uint32_t sen = sentinel(c, OMX_LFU_PROTECTED);
    memset(c->table, 0, (size_t)(c->block_mask + 1) * 64);
    c->sample_count = 0;
    c->shifts++;
    for (uint32_t i = s[sen].prev; i != sen;) {
        uint32_t p = s[i].prev;
        q_unlink(c, i);
        q_push_head(c, OMX_LFU_PROBATION, i);
        i = p;
    }
}

static inline int64_t ema8(int64_t avg, int64_t cur) {
    int64_t d = cur - avg;
    return avg + (d >= 0 ? d / 8 : -((-d) / 8));
}

void omx_lfu_period_end(omx_lfu *c) {
    int64_t cur = (int64_t)c->p_hits << 8;
    int64_t recur = (int64_t)c->p_recur << 8;
    unsigned char *older = c->seen[1];
    c->p_req = c->p_hits = c->p_recur = 0;
    memset(older, 0, (size_t)(c->seen_mask >> 3) + 1);
    c->seen[1] = c->seen[0];
    c->seen[0] = older;
    if (c->avg_fp < 0) {
        c->avg_fp = cur;
        c->avg_recur_fp = recur;
        return;
    }
    if (c->avg_fp * 100 >= (int64_t)c->period * 256 * SHIFT_MIN_AVG_PCT &&
        cur * 100 < c->avg_fp * SHIFT_DROP_PCT &&
        recur * 8 >= (int64_t)c->period * 256 && recur >= c->avg_recur_fp * 2) {
        on_shift(c);
        c->avg_fp = cur;
        c->avg_recur_fp = recur;
        return;
    }
    c->avg_fp = ema8(c->avg_fp, cur);
    c->avg_recur_fp = ema8(c->avg_recur_fp, recur);
}

void omx_lfu_miss(omx_lfu *c, uint64_t h) {
    uint64_t m = h * UINT64_C(0x9E3779B97F4A7C15);
    uint64_t a = ((m >> 40) | (m << 24)) & c->seen_mask, b = (m >> 8) & c->seen_mask;
    unsigned char *s0 = c->seen[0], *s1 = c->seen[1];
    int in0 = (s0[a >> 3] >> (a & 7) & 1) && (s0[b >> 3] >> (b & 7) & 1);
    int in1 = (s1[a >> 3] >> (a & 7) & 1) && (s1[b >> 3] >> (b & 7) & 1);
    if (in0 || in1) c->p_recur++;
    s0[a >> 3] |= (unsigned char)(1u << (a & 7));
    s0[b >> 3] |= (unsigned char)(1u << (b & 7));
    if (++c->p_req >= c->period) omx_lfu_period_end(c);
    omx_lfu_record(c, h);
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

/* Weighted caches: protected overflow (entries or weight) demotes its LRU entries to
 * probation's MRU end, possibly the entry just promoted (if it alone is too heavy). */
static void balance_protected(omx_lfu *c) {
    while (c->len[OMX_LFU_PROTECTED] > 0 &&
           (c->len[OMX_LFU_PROTECTED] > c->pcap || c->wt[OMX_LFU_PROTECTED] > c->pmax)) {
        uint32_t d = q_head(c, OMX_LFU_PROTECTED);
        q_unlink(c, d);
        q_push_tail(c, OMX_LFU_PROBATION, d);
    }
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
        if (c->weights != NULL) {
            balance_protected(c);
        } else if (c->len[OMX_LFU_PROTECTED] > c->pcap) {
            uint32_t d = q_head(c, OMX_LFU_PROTECTED);
            q_unlink(c, d);
            q_push_tail(c, OMX_LFU_PROBATION, d);
        }
    } else if (s[slot].next != sentinel(c, q)) { /* not already the MRU entry */
        q_unlink(c, slot);
        q_push_tail(c, q, slot);
    }
}

static void free_slot(omx_lfu *c, uint32_t i) {
    q_unlink(c, i);
    if (c->weights != NULL) c->weights[i] = 0;
    if (c->track_age) age_unlink(c, i);
    c->slots[i].queue = OMX_LFU_FREE;
    c->slots[i].prev = OMX_LFU_NIL;
    c->slots[i].next = c->free_head;
    c->free_head = i;
}

/* Caches without a weight budget (the weighted ones use omx_lfu_insert_weighted). */
uint32_t omx_lfu_insert(omx_lfu *c, uint64_t h, double expire, uint32_t *evicted) {
    omx_lfu_slot *s = c->slots;
    *evicted = OMX_LFU_NIL;
    uint32_t i = c->free_head;
    if (i == OMX_LFU_NIL) return OMX_LFU_NIL;
    omx_lfu_record(c, h);
    c->free_head = s[i].next;
    s[i].hash = h;
    if (c->track_age) c->ages[i].expire = expire;
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

static inline uint64_t total_weight(const omx_lfu *c) {
    return c->wt[OMX_LFU_WINDOW] + c->wt[OMX_LFU_PROBATION] + c->wt[OMX_LFU_PROTECTED];
}

/* Moves the window's LRU entry to probation's MRU end; returns it. */
static uint32_t window_to_probation(omx_lfu *c) {
    uint32_t x = q_head(c, OMX_LFU_WINDOW);
    q_unlink(c, x);
    q_push_tail(c, OMX_LFU_PROBATION, x);
    return x;
}

/* Weighted caches: restores every bound after an insert or a weight change, recording
 * the slots it frees in c->evicted; returns their number.  See "Weights" above. */
static uint32_t restore_bounds(omx_lfu *c) {
    omx_lfu_slot *s = c->slots;
    uint32_t n = 0, cand = OMX_LFU_NIL, ncand = 0;
    while (c->len[OMX_LFU_WINDOW] > 0 &&
           (c->len[OMX_LFU_WINDOW] > c->wcap || c->wt[OMX_LFU_WINDOW] > c->wmax)) {
        uint32_t x = window_to_probation(c);
        if (ncand++ == 0) cand = x;
    }
    while (c->len[OMX_LFU_PROBATION] + c->len[OMX_LFU_PROTECTED] > c->mcap || total_weight(c) > c->maxweight) {
        if (ncand == 0 && c->len[OMX_LFU_WINDOW] > 0) { /* draw the next candidate */
            cand = window_to_probation(c);
            ncand = 1;
        }
        /* the victim: main's LRU entry that is not a pending candidate (those are the
         * last ncand entries of probation) */
        uint32_t victim = c->len[OMX_LFU_PROBATION] > ncand ? q_head(c, OMX_LFU_PROBATION)
                                                            : q_head(c, OMX_LFU_PROTECTED);
        uint32_t leaving;
        if (ncand == 0)
            leaving = victim; /* nothing left to admit: main's LRU entry goes */
        else if (victim == OMX_LFU_NIL ||
                 omx_lfu_frequency(c, s[cand].hash) <= omx_lfu_frequency(c, s[victim].hash))
            leaving = cand;
        else
            leaving = victim;
        if (ncand > 0) { /* this candidate is decided: the next one is its successor */
            uint32_t next = --ncand > 0 ? s[cand].next : OMX_LFU_NIL;
            cand = next;
        }
        free_slot(c, leaving);
        c->evicted[n++] = leaving;
    }
    return n;
}

uint32_t omx_lfu_insert_weighted(omx_lfu *c, uint64_t h, double expire, uint64_t weight, uint32_t *slot) {
    omx_lfu_slot *s = c->slots;
    uint32_t i = c->free_head;
    *slot = i;
    if (i == OMX_LFU_NIL || c->weights == NULL) {
        *slot = OMX_LFU_NIL;
        return 0;
    }
    omx_lfu_record(c, h);
    c->free_head = s[i].next;
    s[i].hash = h;
    if (c->track_age) c->ages[i].expire = expire;
    s[i].epoch = c->epoch;
    c->weights[i] = weight;
    q_push_tail(c, OMX_LFU_WINDOW, i);
    if (c->track_age) age_push_tail(c, i);
    return restore_bounds(c);
}

uint32_t omx_lfu_update_weighted(omx_lfu *c, uint32_t slot, uint64_t weight) {
    omx_lfu_slot *s = c->slots;
    if (slot >= c->nslots || s[slot].queue == OMX_LFU_FREE || c->weights == NULL) return 0;
    c->wt[s[slot].queue] -= c->weights[slot];
    c->weights[slot] = weight;
    c->wt[s[slot].queue] += weight;
    omx_lfu_touch(c, slot);
    balance_protected(c); /* a protected entry may have grown */
    return restore_bounds(c);
}

uint64_t omx_lfu_weight(const omx_lfu *c) {
    return c->weights != NULL ? total_weight(c) : (uint64_t)omx_lfu_size(c);
}

int omx_lfu_remove(omx_lfu *c, uint32_t slot) {
    if (slot >= c->nslots || c->slots[slot].queue == OMX_LFU_FREE) return -1;
    free_slot(c, slot);
    return 0;
}

void omx_lfu_set_expire(omx_lfu *c, uint32_t slot, double expire) {
    if (slot >= c->nslots || c->slots[slot].queue == OMX_LFU_FREE) return;
    if (c->track_age) {
        c->ages[slot].expire = expire;
        age_unlink(c, slot);
        age_push_tail(c, slot);
    }
}

uint32_t omx_lfu_oldest(const omx_lfu *c) {
    if (!c->track_age) return OMX_LFU_NIL;
    uint32_t sen = c->nslots + 3u;
    uint32_t h = c->ages[sen].anext;
    return h == sen ? OMX_LFU_NIL : h;
}

uint32_t omx_lfu_size(const omx_lfu *c) {
    return c->len[OMX_LFU_WINDOW] + c->len[OMX_LFU_PROBATION] + c->len[OMX_LFU_PROTECTED];
}
