/* stress_pool.c -- randomized model test of native/src/pool.c (run under ASan/UBSan
 * by native/run_sanitizers.sh).  Objects are distinct heap blocks; a model array
 * records each one's state (0 never/dropped, 1 idle, 2 outstanding). */
#include "ollamamax/pool.h"

#include <stdio.h>
#include <stdlib.h>

#define NOBJ 4096
#define CHECK(cond)                                                              \
    do {                                                                         \
        if (!(cond)) {                                                           \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            exit(1);                                                             \
        }                                                                        \
    } while (0)

static uint64_t rng_state = 0x9E3779B97F4A7C15u;
static uint64_t rnd(void) { /* xorshift64* */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * UINT64_C(2685821657736338717);
}

static int run(size_t maxsize, long steps) {
    omx_pool p;
    CHECK(omx_pool_init(&p, maxsize) == 0);
    void *objs[NOBJ];
    int state[NOBJ];
    size_t nobj = 0, nidle = 0, nout = 0;
    uint64_t created = 0, reused = 0;
    void *idle_model[NOBJ];
    for (long s = 0; s < steps; s++) {
        unsigned op = (unsigned)(rnd() % 8);
        if (op < 3) { /* acquire */
            CHECK(omx_pool_reserve(&p) == 0);
            int dup = 0;
            void *o = omx_pool_take_idle(&p, &dup);
            CHECK(dup == 0);
            if (o != NULL) {
                CHECK(nidle > 0 && o == idle_model[nidle - 1]);
                nidle--;
                reused++;
            } else {
                CHECK(nidle == 0);
                if (nobj == NOBJ) continue;
                o = malloc(16);
                CHECK(o != NULL);
                objs[nobj] = o;
                state[nobj++] = 0;
                CHECK(omx_pool_track_new(&p, o) == 0);
                CHECK(omx_pool_track_new(&p, o) == 1); /* second time: already out */
                created++;
            }
            for (size_t i = 0; i < nobj; i++)
                if (objs[i] == o) state[i] = 2;
            nout++;
        } else if (op < 6 && nobj > 0) { /* release a random object */
            size_t i = (size_t)(rnd() % nobj);
            int r = omx_pool_untrack(&p, objs[i]);
            if (state[i] == 2) {
                CHECK(r == 1);
                nout--;
                if (omx_pool_push_idle(&p, objs[i])) {
                    CHECK(nidle < maxsize);
                    idle_model[nidle++] = objs[i];
                    state[i] = 1;
                } else {
                    CHECK(nidle == maxsize);
                    state[i] = 0;
                }
            } else {
                CHECK(r == 0); /* double release / foreign */
            }
        } else if (op == 6 && nobj > 0) { /* membership */
            size_t i = (size_t)(rnd() % nobj);
            CHECK(omx_pool_is_out(&p, objs[i]) == (state[i] == 2));
        } else if (op == 7 && rnd() % 64 == 0) { /* drop all idle */
            while (omx_pool_pop_any_idle(&p) != NULL) {
            }
            for (size_t i = 0; i < nobj; i++)
                if (state[i] == 1) state[i] = 0;
            nidle = 0;
        }
        CHECK(p.nidle == nidle && p.nout == nout && p.created == created && p.reused == reused);
        CHECK(p.nout * 2 <= p.out_mask + 1);
    }
    /* teardown: every outstanding object is returned exactly once */
    size_t left = 0;
    void *o;
    while ((o = omx_pool_pop_any_out(&p)) != NULL) left++;
    CHECK(left == nout);
    omx_pool_destroy(&p);
    for (size_t i = 0; i < nobj; i++) free(objs[i]);
    return 0;
}

/* Many outstanding objects: the set grows and deletions keep probe runs intact. */
static int run_bulk(void) {
    omx_pool p;
    CHECK(omx_pool_init(&p, 8) == 0);
    enum { N = 100000 };
    char *block = malloc(N);
    CHECK(block != NULL);
    for (size_t i = 0; i < N; i++) {
        CHECK(omx_pool_reserve(&p) == 0);
        CHECK(omx_pool_track_new(&p, block + i) == 0);
    }
    CHECK(p.nout == N);
    for (size_t i = 0; i < N; i += 2) CHECK(omx_pool_untrack(&p, block + i) == 1);
    for (size_t i = 0; i < N; i++) CHECK(omx_pool_is_out(&p, block + i) == (int)(i & 1));
    for (size_t i = 1; i < N; i += 2) CHECK(omx_pool_untrack(&p, block + i) == 1);
    CHECK(p.nout == 0);
    CHECK(omx_pool_untrack(&p, block) == 0);
    omx_pool_destroy(&p);
    free(block);
    return 0;
}

int main(void) {
    size_t sizes[] = {0, 1, 2, 7, 64, 1000};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) run(sizes[k], 200000);
    run_bulk();
    printf("stress_pool: ok\n");
    return 0;
}
