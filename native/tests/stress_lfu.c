/* stress_lfu.c -- randomized model test of native/src/lfu.c (run under ASan/UBSan
 * by native/run_sanitizers.sh).  Keys are integers; the test keeps key <-> slot maps
 * (what the Cython wrapper does with a dict) and validates every structural
 * invariant after each operation, without and with a weight budget (run_weighted:
 * random weights, inserts, weight changes, removals; the weight sums and bounds). */
#include "ollamamax/lfu.h"

#include <stdio.h>
#include <stdlib.h>

#define CHECK(cond)                                                              \
    do {                                                                         \
        if (!(cond)) {                                                           \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            exit(1);                                                             \
        }                                                                        \
    } while (0)

static uint64_t rng_state = 0x243F6A8885A308D3u;
static uint64_t rnd(void) {
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * UINT64_C(2685821657736338717);
}

static void validate(const omx_lfu *c, const long *slot_key) {
    uint32_t counted[4] = {0, 0, 0, 0};
    for (int q = 1; q <= 3; q++) {
        uint32_t sen = c->nslots + (uint32_t)q - 1;
        uint32_t prev = sen, n = 0;
        for (uint32_t i = c->slots[sen].next; i != sen; i = c->slots[i].next) {
            CHECK(i < c->nslots);
            CHECK(c->slots[i].queue == q);
            CHECK(c->slots[i].prev == prev);
            CHECK(slot_key[i] >= 0);
            prev = i;
            CHECK(++n <= c->nslots);
        }
        counted[q] = n;
        CHECK(n == c->len[q]);
    }
    CHECK(counted[1] <= c->wcap);
    CHECK(counted[2] + counted[3] <= c->mcap);
    CHECK(counted[3] <= c->pcap);
    uint32_t nfree = 0;
    for (uint32_t i = c->free_head; i != OMX_LFU_NIL; i = c->slots[i].next) {
        CHECK(i < c->nslots && c->slots[i].queue == OMX_LFU_FREE && slot_key[i] < 0);
        CHECK(++nfree <= c->nslots);
    }
    CHECK(nfree + counted[1] + counted[2] + counted[3] == c->nslots);
    if (c->track_age) { /* age list holds every resident slot, in expiry order */
        uint32_t sen = c->nslots + 3, n = 0;
        double last = -1.0;
        for (uint32_t i = c->ages[sen].anext; i != sen; i = c->ages[i].anext) {
            CHECK(c->slots[i].queue != OMX_LFU_FREE);
            CHECK(c->ages[i].expire >= last);
            last = c->ages[i].expire;
            CHECK(++n <= c->nslots);
        }
        CHECK(n == omx_lfu_size(c));
    }
    for (uint64_t b = 0; b < (c->block_mask + 1) * 64; b++) CHECK(c->table[b] <= 31);
    CHECK(c->p_req < c->period && c->p_hits <= c->p_req && c->p_recur <= c->p_req);
    CHECK(c->track_age ? c->ages != NULL : c->ages == NULL);
    if (c->weights != NULL) { /* per-queue weights are the sums of their slots' weights */
        uint64_t sum[4] = {0, 0, 0, 0};
        for (uint32_t i = 0; i < c->nslots; i++) {
            if (c->slots[i].queue == OMX_LFU_FREE) {
                CHECK(c->weights[i] == 0);
            } else {
                CHECK(c->weights[i] >= 1 && c->weights[i] <= c->maxweight);
                sum[c->slots[i].queue] += c->weights[i];
            }
        }
        for (int q = 1; q <= 3; q++) CHECK(sum[q] == c->wt[q]);
        CHECK(c->wt[OMX_LFU_WINDOW] <= c->wmax);
        CHECK(c->wt[OMX_LFU_PROTECTED] <= c->pmax);
        CHECK(omx_lfu_weight(c) == sum[1] + sum[2] + sum[3] && omx_lfu_weight(c) <= c->maxweight);
    } else {
        CHECK(omx_lfu_weight(c) == omx_lfu_size(c));
    }
}

static uint64_t run(uint32_t maxsize, long nkeys, long steps, int track_age) {
    omx_lfu c;
    CHECK(omx_lfu_init(&c, maxsize, track_age, 0) == 0);
    long *key_slot = malloc(sizeof(long) * (size_t)nkeys);
    long *slot_key = malloc(sizeof(long) * (c.nslots));
    CHECK(key_slot && slot_key);
    for (long k = 0; k < nkeys; k++) key_slot[k] = -1;
    for (uint32_t s = 0; s < c.nslots; s++) slot_key[s] = -1;
    double now = 0.0;
    long resident = 0;
    for (long step = 0; step < steps; step++) {
        /* skewed keys: squaring a uniform draw favours small keys */
        uint64_t r = rnd() % (uint64_t)nkeys;
        long k = (long)((r * r) / (uint64_t)nkeys);
        k = (k + (step / (steps / 4 + 1)) * (nkeys / 2 + 1)) % nkeys; /* hot set moves */
        uint64_t h = omx_lfu_spread((uint64_t)k * 0x9E37u);
        unsigned op = (unsigned)(rnd() % 16);
        now += 0.001;
        if (track_age) { /* purge expired, oldest first */
            uint32_t s;
            while ((s = omx_lfu_oldest(&c)) != OMX_LFU_NIL && omx_lfu_expire_of(&c, s) <= now) {
                CHECK(omx_lfu_remove(&c, s) == 0);
                key_slot[slot_key[s]] = -1;
                slot_key[s] = -1;
                resident--;
            }
        }
        if (op < 12) { /* get-or-set */
            if (key_slot[k] >= 0) {
                if (op < 8) omx_lfu_hit(&c, (uint32_t)key_slot[k]); /* a get hit */
                else omx_lfu_touch(&c, (uint32_t)key_slot[k]);      /* a set */
                if (op == 0) omx_lfu_set_expire(&c, (uint32_t)key_slot[k], now + 0.5);
            } else {
                if (op < 8) omx_lfu_miss(&c, h); /* a get miss, then the set */
                uint32_t ev;
                uint32_t s = omx_lfu_insert(&c, h, now + 0.5, &ev);
                CHECK(s != OMX_LFU_NIL && s < c.nslots && slot_key[s] < 0);
                slot_key[s] = k;
                key_slot[k] = s;
                resident++;
                if (ev != OMX_LFU_NIL) {
                    CHECK(ev != s && slot_key[ev] >= 0);
                    key_slot[slot_key[ev]] = -1;
                    slot_key[ev] = -1;
                    resident--;
                }
            }
        } else if (op < 14) { /* remove */
            if (key_slot[k] >= 0) {
                uint32_t s = (uint32_t)key_slot[k];
                CHECK(omx_lfu_remove(&c, s) == 0);
                CHECK(omx_lfu_remove(&c, s) == -1);
                key_slot[k] = -1;
                slot_key[s] = -1;
                resident--;
            }
        } else if (op == 14) {
            CHECK(omx_lfu_frequency(&c, h) <= 31);
            omx_lfu_record(&c, h);
        } else if (rnd() % (uint64_t)(steps / 16 + 1) == 0) { /* a clear, now and then */
            omx_lfu_clear(&c);
            for (long j = 0; j < nkeys; j++) key_slot[j] = -1;
            for (uint32_t s = 0; s < c.nslots; s++) slot_key[s] = -1;
            resident = 0;
        }
        CHECK((long)omx_lfu_size(&c) == resident);
        CHECK(resident <= (long)maxsize);
        if (maxsize <= 100 || step % 97 == 0) validate(&c, slot_key);
    }
    validate(&c, slot_key);
    CHECK(omx_lfu_remove(&c, c.nslots) == -1);
    uint64_t shifts = c.shifts;
    omx_lfu_destroy(&c);
    free(key_slot);
    free(slot_key);
    return shifts;
}

static uint64_t rejected_new = 0; /* new entries that lost their admission contest */

/* Drops the keys of the n slots the last weighted call freed (c->evicted). */
static long drop_evicted(const omx_lfu *c, uint32_t n, long *key_slot, long *slot_key) {
    for (uint32_t j = 0; j < n; j++) {
        uint32_t ev = c->evicted[j];
        CHECK(ev < c->nslots && c->slots[ev].queue == OMX_LFU_FREE && slot_key[ev] >= 0);
        for (uint32_t k = 0; k < j; k++) CHECK(c->evicted[k] != ev); /* each once */
        key_slot[slot_key[ev]] = -1;
        slot_key[ev] = -1;
    }
    return (long)n;
}

/* Weighted: weights from 1 to maxweight (mostly small, some heavy); get-or-set with
 * a weight, sets that change the weight of resident keys, removals, clears. */
static void run_weighted(uint32_t maxsize, uint64_t maxweight, long nkeys, long steps, int track_age) {
    omx_lfu c;
    CHECK(omx_lfu_init(&c, maxsize, track_age, maxweight) == 0);
    CHECK(c.weights != NULL && c.evicted != NULL && c.maxweight == maxweight);
    long *key_slot = malloc(sizeof(long) * (size_t)nkeys);
    long *slot_key = malloc(sizeof(long) * (c.nslots));
    CHECK(key_slot && slot_key);
    for (long k = 0; k < nkeys; k++) key_slot[k] = -1;
    for (uint32_t s = 0; s < c.nslots; s++) slot_key[s] = -1;
    double now = 0.0;
    long resident = 0;
    uint64_t evicted_total = 0;
    for (long step = 0; step < steps; step++) {
        uint64_t r = rnd() % (uint64_t)nkeys;
        long k = (long)((r * r) / (uint64_t)nkeys);
        k = (k + (step / (steps / 4 + 1)) * (nkeys / 2 + 1)) % nkeys;
        uint64_t h = omx_lfu_spread((uint64_t)k * 0x9E37u);
        unsigned op = (unsigned)(rnd() % 16);
        uint64_t w;
        switch (rnd() % 8) {
        case 0: w = maxweight; break;                               /* the whole budget */
        case 1: w = 1 + rnd() % maxweight; break;                   /* anything */
        case 2: w = 1 + rnd() % (maxweight / 4 + 1); break;         /* heavy-ish */
        default: w = 1 + rnd() % (maxweight / (maxsize + 1) + 1);   /* small */
        }
        if (w > maxweight) w = maxweight;
        now += 0.001;
        if (track_age) {
            uint32_t s;
            while ((s = omx_lfu_oldest(&c)) != OMX_LFU_NIL && omx_lfu_expire_of(&c, s) <= now) {
                CHECK(omx_lfu_remove(&c, s) == 0);
                key_slot[slot_key[s]] = -1;
                slot_key[s] = -1;
                resident--;
            }
        }
        if (op < 12) {
            if (key_slot[k] >= 0) {
                uint32_t s = (uint32_t)key_slot[k];
                if (op < 6) {
                    omx_lfu_hit(&c, s);
                } else { /* a set: maybe a new weight; may evict this very key */
                    uint32_t n = omx_lfu_update_weighted(&c, s, w);
                    resident -= drop_evicted(&c, n, key_slot, slot_key);
                    evicted_total += n;
                    if (key_slot[k] >= 0 && track_age) omx_lfu_set_expire(&c, s, now + 0.5);
                }
            } else {
                if (op < 8) omx_lfu_miss(&c, h);
                uint32_t s;
                uint32_t n = omx_lfu_insert_weighted(&c, h, now + 0.5, w, &s);
                CHECK(s != OMX_LFU_NIL && s < c.nslots && slot_key[s] < 0);
                slot_key[s] = k; /* as if the key were stored first, then dropped if evicted */
                key_slot[k] = s;
                resident++;
                for (uint32_t j = 0; j < n; j++) rejected_new += c.evicted[j] == s;
                resident -= drop_evicted(&c, n, key_slot, slot_key);
                evicted_total += n;
            }
        } else if (op < 14) {
            if (key_slot[k] >= 0) {
                uint32_t s = (uint32_t)key_slot[k];
                CHECK(omx_lfu_remove(&c, s) == 0);
                CHECK(omx_lfu_update_weighted(&c, s, 1) == 0); /* not resident: no-op */
                key_slot[k] = -1;
                slot_key[s] = -1;
                resident--;
            }
        } else if (op == 14) {
            omx_lfu_record(&c, h);
        } else if (rnd() % (uint64_t)(steps / 16 + 1) == 0) {
            omx_lfu_clear(&c);
            CHECK(omx_lfu_weight(&c) == 0);
            for (long j = 0; j < nkeys; j++) key_slot[j] = -1;
            for (uint32_t s = 0; s < c.nslots; s++) slot_key[s] = -1;
            resident = 0;
        }
        CHECK((long)omx_lfu_size(&c) == resident);
        CHECK(resident <= (long)maxsize);
        if (maxsize <= 100 || step % 97 == 0) validate(&c, slot_key);
    }
    validate(&c, slot_key);
    CHECK(evicted_total > 0);
    omx_lfu_destroy(&c);
    free(key_slot);
    free(slot_key);
}

int main(void) {
    omx_lfu bad;
    CHECK(omx_lfu_init(&bad, 0, 0, 0) == -2);
    CHECK(omx_lfu_init(&bad, OMX_LFU_MAXSIZE_LIMIT + 1u, 0, 0) == -2);
    CHECK(omx_lfu_init(&bad, 10, 0, OMX_LFU_MAXWEIGHT_LIMIT + 1u) == -3);
    CHECK(omx_lfu_init(&bad, 10, 1, OMX_LFU_MAXWEIGHT_LIMIT) == 0); /* largest budget */
    CHECK(bad.pmax == (OMX_LFU_MAXWEIGHT_LIMIT - bad.wmax) / 100 * 90 + (OMX_LFU_MAXWEIGHT_LIMIT - bad.wmax) % 100 * 90 / 100);
    {
        uint32_t s, n = omx_lfu_insert_weighted(&bad, 1, 0.0, OMX_LFU_MAXWEIGHT_LIMIT, &s);
        CHECK(n == 0 && s != OMX_LFU_NIL && omx_lfu_weight(&bad) == OMX_LFU_MAXWEIGHT_LIMIT);
        n = omx_lfu_insert_weighted(&bad, 2, 0.0, OMX_LFU_MAXWEIGHT_LIMIT, &s); /* sum 2^63 */
        CHECK(n == 1 && omx_lfu_weight(&bad) == OMX_LFU_MAXWEIGHT_LIMIT);
    }
    omx_lfu_destroy(&bad);
    uint32_t sizes[] = {1, 2, 3, 5, 10, 100, 1000};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        run(sizes[i], (long)sizes[i] * 4 + 3, 60000, 0);
        run(sizes[i], (long)sizes[i] * 4 + 3, 60000, 1);
    }
    /* many halvings of the sketch; the hot set moves 3 times: detected shifts */
    uint64_t shifts = run(5000, 50000, 2000000, 0);
    printf("stress_lfu: %llu shifts detected\n", (unsigned long long)shifts);
    CHECK(shifts >= 1);
    uint64_t budgets[] = {1, 2, 7, 100, 1000, 100000};
    uint32_t wsizes[] = {1, 3, 10, 100};
    for (size_t i = 0; i < sizeof wsizes / sizeof wsizes[0]; i++)
        for (size_t j = 0; j < sizeof budgets / sizeof budgets[0]; j++) {
            run_weighted(wsizes[i], budgets[j], (long)wsizes[i] * 4 + 3, 20000, 0);
            run_weighted(wsizes[i], budgets[j], (long)wsizes[i] * 4 + 3, 20000, 1);
        }
    run_weighted(2000, UINT64_C(1) << 40, 20000, 400000, 0);
    printf("stress_lfu: weighted ok, %llu new entries not admitted\n", (unsigned long long)rejected_new);
    CHECK(rejected_new > 0);
    printf("stress_lfu: ok\n");
    return 0;
}
