/* stress_lfu.c -- randomized model test of native/src/lfu.c (run under ASan/UBSan
 * by native/run_sanitizers.sh).  Keys are integers; the test keeps key <-> slot maps
 * (what the Cython wrapper does with a dict) and validates every structural
 * invariant after each operation. */
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
}

static uint64_t run(uint32_t maxsize, long nkeys, long steps, int track_age) {
    omx_lfu c;
    CHECK(omx_lfu_init(&c, maxsize, track_age) == 0);
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

int main(void) {
    omx_lfu bad;
    CHECK(omx_lfu_init(&bad, 0, 0) == -2);
    CHECK(omx_lfu_init(&bad, OMX_LFU_MAXSIZE_LIMIT + 1u, 0) == -2);
    uint32_t sizes[] = {1, 2, 3, 5, 10, 100, 1000};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        run(sizes[i], (long)sizes[i] * 4 + 3, 60000, 0);
        run(sizes[i], (long)sizes[i] * 4 + 3, 60000, 1);
    }
    /* many halvings of the sketch; the hot set moves 3 times: detected shifts */
    uint64_t shifts = run(5000, 50000, 2000000, 0);
    printf("stress_lfu: %llu shifts detected\n", (unsigned long long)shifts);
    CHECK(shifts >= 1);
    printf("stress_lfu: ok\n");
    return 0;
}
