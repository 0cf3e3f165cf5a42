/*
 * stress_ring.c -- standalone C11 stress test for native/src/ring.c (no Python).
 *
 * For several capacities (power of two and not, tiny and large) it runs
 * P producer and C consumer pthreads that move P * N items through one ring,
 * mixing single and batch push/pop.  It checks:
 *   - every item arrives exactly once;
 *   - per consumer, the items of one producer arrive in increasing order;
 *   - single-threaded: exactly `capacity` items fit, FIFO order, batch prefix.
 * A second test exercises the SLEEP/WAKE CONTRACT of ring.c the way the Python
 * wrapper uses it (waiter count + "signaled" flag + a semaphore, pass-on after a
 * woken pop): consumers that sleep must always be woken while items remain.
 * Every wait loop is bounded by a wall-clock deadline; exit status 0 = pass.
 * Run under TSan and ASan/UBSan by native/run_sanitizers.sh.
 */
#define _POSIX_C_SOURCE 200809L
#include "ollamamax/ring.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define NPROD 4
#define NCONS 4
#define BATCH 16

typedef struct {
    int producer;
    int index;
} item_t;

typedef struct {
    omx_ring *ring;
    item_t *items; /* this producer's items */
    int producer;
    int n;
} prod_arg;

typedef struct {
    omx_ring *ring;
    int id;
    int nprod;
    int *last;          /* last index seen per producer */
    _Atomic int *seen;  /* shared: times each item was received, [p * n + i] */
    int n;
    _Atomic long *remaining;
    long received;
    int errors;
} cons_arg;

static double deadline;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void *producer(void *vp) {
    prod_arg *a = (prod_arg *)vp;
    int i = 0;
    unsigned spins = 0;
    while (i < a->n) {
        int ok;
        if ((i / 7) % 2 == 0) { /* alternate single pushes and batches */
            ok = omx_ring_try_push(a->ring, &a->items[i]);
            i += ok;
        } else {
            void *batch[BATCH];
            int k = a->n - i < BATCH ? a->n - i : BATCH;
            for (int j = 0; j < k; j++) {
                batch[j] = &a->items[i + j];
            }
            size_t got = omx_ring_push_many(a->ring, batch, (size_t)k);
            ok = got > 0;
            i += (int)got;
        }
        if (!ok) {
            if ((++spins & 1023u) == 0 && now() > deadline) {
                fprintf(stderr, "producer %d: timed out at item %d\n", a->producer, i);
                return NULL;
            }
            sched_yield();
        }
    }
    return NULL;
}

static void consume_one(cons_arg *a, void *p) {
    item_t *it = (item_t *)p;
    if (it->index <= a->last[it->producer]) {
        if (a->errors++ < 5) {
            fprintf(stderr, "consumer %d: producer %d order broken: %d after %d\n", a->id,
                    it->producer, it->index, a->last[it->producer]);
        }
    }
    a->last[it->producer] = it->index;
    atomic_fetch_add_explicit(&a->seen[it->producer * a->n + it->index], 1, memory_order_relaxed);
    a->received++;
}

static void *consumer(void *vp) {
    cons_arg *a = (cons_arg *)vp;
    unsigned spins = 0;
    while (atomic_load(a->remaining) > 0) {
        long got = 0;
        if ((a->received / 5) % 2 == 0) {
            void *p;
            if (omx_ring_try_pop(a->ring, &p)) {
                consume_one(a, p);
                got = 1;
            }
        } else {
            void *batch[BATCH];
            size_t k = omx_ring_pop_many(a->ring, batch, BATCH);
            for (size_t j = 0; j < k; j++) {
                consume_one(a, batch[j]);
            }
            got = (long)k;
        }
        if (got) {
            atomic_fetch_sub(a->remaining, got);
        } else {
            if ((++spins & 1023u) == 0 && now() > deadline) {
                fprintf(stderr, "consumer %d: timed out\n", a->id);
                return NULL;
            }
            sched_yield();
        }
    }
    return NULL;
}

static int run_threads(size_t capacity, int n) {
    omx_ring *r = omx_ring_new(capacity);
    if (!r) {
        fprintf(stderr, "omx_ring_new(%zu) failed\n", capacity);
        return 1;
    }
    item_t *items = (item_t *)malloc(sizeof(item_t) * (size_t)NPROD * (size_t)n);
    _Atomic int *seen = (_Atomic int *)calloc((size_t)NPROD * (size_t)n, sizeof(_Atomic int));
    int *lasts = (int *)malloc(sizeof(int) * NPROD * NCONS);
    if (!items || !seen || !lasts) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    for (int p = 0; p < NPROD; p++) {
        for (int i = 0; i < n; i++) {
            items[p * n + i].producer = p;
            items[p * n + i].index = i;
        }
    }
    for (int i = 0; i < NPROD * NCONS; i++) {
        lasts[i] = -1;
    }
    _Atomic long remaining = (long)NPROD * n;
    pthread_t pt[NPROD], ct[NCONS];
    prod_arg pa[NPROD];
    cons_arg ca[NCONS];
    for (int c = 0; c < NCONS; c++) {
        ca[c] = (cons_arg){r, c, NPROD, &lasts[c * NPROD], seen, n, &remaining, 0, 0};
        pthread_create(&ct[c], NULL, consumer, &ca[c]);
    }
    for (int p = 0; p < NPROD; p++) {
        pa[p] = (prod_arg){r, &items[p * n], p, n};
        pthread_create(&pt[p], NULL, producer, &pa[p]);
    }
    for (int p = 0; p < NPROD; p++) {
        pthread_join(pt[p], NULL);
    }
    for (int c = 0; c < NCONS; c++) {
        pthread_join(ct[c], NULL);
    }
    int fail = 0;
    long total = 0;
    for (int c = 0; c < NCONS; c++) {
        total += ca[c].received;
        fail |= ca[c].errors != 0;
    }
    if (total != (long)NPROD * n) {
        fprintf(stderr, "capacity %zu: received %ld of %ld\n", capacity, total, (long)NPROD * n);
        fail = 1;
    }
    for (long i = 0; i < (long)NPROD * n; i++) {
        if (atomic_load(&seen[i]) != 1) {
            fprintf(stderr, "capacity %zu: item %ld seen %d times\n", capacity, i, atomic_load(&seen[i]));
            fail = 1;
            break;
        }
    }
    void *p;
    if (omx_ring_try_pop(r, &p) || omx_ring_size(r) != 0) {
        fprintf(stderr, "capacity %zu: ring not empty at the end\n", capacity);
        fail = 1;
    }
    printf("   capacity %-5zu %d producers x %d items, %d consumers: %s\n", capacity, NPROD, n, NCONS,
           fail ? "FAIL" : "ok");
    omx_ring_free(r);
    free(items);
    free((void *)seen);
    free(lasts);
    return fail;
}

#define CHECK(cond)                                                            \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            return 1;                                                          \
        }                                                                      \
    } while (0)

static int count_visit(void *item, void *ctx) {
    size_t *n = (size_t *)ctx;
    (void)item;
    (*n)++;
    return 0;
}

static int stop_visit(void *item, void *ctx) {
    (void)ctx;
    return *(int *)item == 1 ? 7 : 0;
}

static int single_threaded(size_t capacity) {
    omx_ring *r = omx_ring_new(capacity);
    CHECK(r != NULL);
    CHECK(omx_ring_capacity(r) == capacity);
    int vals[4096];
    void *out[4096];
    CHECK(capacity <= 4000);
    for (int lap = 0; lap < 3; lap++) {
        for (size_t i = 0; i < capacity; i++) {
            vals[i] = (int)i;
            CHECK(omx_ring_try_push(r, &vals[i]) == 1);
        }
        CHECK(omx_ring_try_push(r, &vals[0]) == 0);
        CHECK(omx_ring_size(r) == capacity);
        size_t visited = 0;
        CHECK(omx_ring_visit(r, count_visit, &visited) == 0);
        CHECK(visited == capacity);
        CHECK(omx_ring_visit(r, stop_visit, NULL) == (capacity > 1 ? 7 : 0));
        for (size_t i = 0; i < capacity; i++) {
            void *p = NULL;
            CHECK(omx_ring_try_pop(r, &p) == 1);
            CHECK(p == &vals[i]);
        }
        void *p;
        CHECK(omx_ring_try_pop(r, &p) == 0);
        CHECK(omx_ring_size(r) == 0);
        /* batches: prefix semantics */
        void *in[4096];
        for (size_t i = 0; i < capacity + 3; i++) {
            in[i] = &vals[i % capacity];
        }
        CHECK(omx_ring_push_many(r, in, 0) == 0);
        CHECK(omx_ring_push_many(r, in, capacity + 3) == capacity);
        CHECK(omx_ring_push_many(r, in, 1) == 0);
        CHECK(omx_ring_pop_many(r, out, 0) == 0);
        size_t half = capacity / 2;
        CHECK(omx_ring_pop_many(r, out, half) == half);
        CHECK(omx_ring_push_many(r, in, capacity) == half);
        CHECK(omx_ring_pop_many(r, out, 4096) == capacity);
        for (size_t i = 0; i < capacity - half; i++) {
            CHECK(out[i] == in[half + i]);
        }
        CHECK(omx_ring_pop_many(r, out, 4) == 0);
    }
    omx_ring_free(r);
    return 0;
}

/* ---- sleep/wake contract (mirrors omx_gate in _ring_c.pyx) ---- */
typedef struct {
    omx_ring *ring;
    _Atomic long waiting;
    _Atomic int signaled;
    sem_t sem;
    _Atomic long remaining; /* items not yet popped */
    _Atomic long stalls;    /* timed-out sleeps while items were inside: lost wake-ups */
    _Atomic long sleeps;
    int per_producer;
    int nprod;
    int lockstep; /* 1: one producer waits for each item to be popped before the next */
} gate_test;

static void gate_signal(gate_test *g) {
    int expected = 0;
    if (atomic_compare_exchange_strong(&g->signaled, &expected, 1)) {
        sem_post(&g->sem);
    }
}

static void *gate_producer(void *vp) {
    gate_test *g = (gate_test *)vp;
    for (int i = 0; i < g->per_producer; i++) {
        while (!omx_ring_try_push(g->ring, (void *)(size_t)(i + 1))) {
            if (now() > deadline) {
                return NULL;
            }
            sched_yield();
        }
        if (atomic_load(&g->waiting) > 0) { /* seq_cst, after the seq_cst claim */
            gate_signal(g);
        }
        if (g->lockstep) { /* every item is a fresh race against a consumer going to sleep */
            long left = (long)g->per_producer - i - 1;
            while (atomic_load(&g->remaining) > left && now() < deadline) {
                sched_yield();
            }
        } else if ((i & 255) == 0) {
            sched_yield(); /* let consumers run dry and sleep now and then */
        }
    }
    return NULL;
}

static void *gate_consumer(void *vp) {
    gate_test *g = (gate_test *)vp;
    void *p;
    int woken = 0;
    while (atomic_load(&g->remaining) > 0 && now() < deadline) {
        if (omx_ring_try_pop(g->ring, &p)) {
            if (woken && atomic_load(&g->waiting) > 0 && omx_ring_size(g->ring) > 0) {
                gate_signal(g); /* pass the wake-up on */
            }
            woken = 0;
            if (atomic_fetch_sub(&g->remaining, 1) == 1) {
                for (int k = 0; k < NCONS; k++) {
                    sem_post(&g->sem); /* finished: release every sleeper */
                }
            }
            continue;
        }
        atomic_fetch_add(&g->waiting, 1);
        if (omx_ring_size(g->ring) != 0 || atomic_load(&g->remaining) == 0) {
            atomic_fetch_sub(&g->waiting, 1);
            continue;
        }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        /* 2 s: a lost wake-up strands items for the whole sleep, however long.  A shorter
         * sleep also "stalls" when the one consumer that was woken is descheduled for
         * longer than the sleep (seen at 0.2 s under TSan on 2 loaded cores), which is
         * scheduling, not a lost wake-up. */
        ts.tv_sec += 2;
        atomic_fetch_add(&g->sleeps, 1);
        int rc;
        do {
            rc = sem_timedwait(&g->sem, &ts);
        } while (rc != 0 && errno == EINTR);
        if (rc == 0) {
            atomic_store(&g->signaled, 0);
            woken = 1;
        } else if (omx_ring_size(g->ring) != 0) {
            atomic_fetch_add(&g->stalls, 1); /* slept 2 s with items inside */
        }
        atomic_fetch_sub(&g->waiting, 1);
    }
    return NULL;
}

static int run_gate(size_t capacity, int nprod, int n, int lockstep) {
    gate_test g;
    g.ring = omx_ring_new(capacity);
    if (!g.ring || sem_init(&g.sem, 0, 0) != 0) {
        fprintf(stderr, "gate test: setup failed\n");
        return 1;
    }
    atomic_init(&g.waiting, 0);
    atomic_init(&g.signaled, 0);
    atomic_init(&g.remaining, (long)nprod * n);
    atomic_init(&g.stalls, 0);
    atomic_init(&g.sleeps, 0);
    g.per_producer = n;
    g.nprod = nprod;
    g.lockstep = lockstep;
    pthread_t pt[NPROD], ct[NCONS];
    for (int c = 0; c < NCONS; c++) {
        pthread_create(&ct[c], NULL, gate_consumer, &g);
    }
    for (int p = 0; p < nprod; p++) {
        pthread_create(&pt[p], NULL, gate_producer, &g);
    }
    for (int p = 0; p < nprod; p++) {
        pthread_join(pt[p], NULL);
    }
    for (int c = 0; c < NCONS; c++) {
        pthread_join(ct[c], NULL);
    }
    int fail = atomic_load(&g.remaining) != 0 || atomic_load(&g.stalls) != 0;
    printf("   sleep/wake capacity %-5zu %d x %d items%s, %ld sleeps, %ld stalls: %s\n", capacity, nprod, n,
           lockstep ? " lock-step" : "", atomic_load(&g.sleeps), atomic_load(&g.stalls),
           fail ? "FAIL" : "ok");
    sem_destroy(&g.sem);
    omx_ring_free(g.ring);
    return fail;
}

int main(void) {
    CHECK(omx_ring_new(0) == NULL);
    CHECK(omx_ring_new(OMX_RING_MAX_CAPACITY + 1) == NULL);
    omx_ring_free(NULL);
    size_t caps1[] = {1, 2, 3, 5, 64, 100, 1000, 1024};
    for (size_t i = 0; i < sizeof caps1 / sizeof caps1[0]; i++) {
        if (single_threaded(caps1[i])) {
            fprintf(stderr, "single-threaded checks failed for capacity %zu\n", caps1[i]);
            return 1;
        }
    }
    printf("   single-threaded checks ok\n");
    const char *env = getenv("STRESS_RING_ITEMS");
    int n = env ? atoi(env) : 100000;
    deadline = now() + 240.0;
    size_t caps2[] = {1, 3, 64, 100, 1024};
    int fail = 0;
    for (size_t i = 0; i < sizeof caps2 / sizeof caps2[0]; i++) {
        fail |= run_threads(caps2[i], caps2[i] < 8 ? n / 10 : n);
    }
    size_t caps3[] = {1, 4, 1024};
    for (size_t i = 0; i < sizeof caps3 / sizeof caps3[0]; i++) {
        fail |= run_gate(caps3[i], NPROD, n / 10, 0);
    }
    fail |= run_gate(4, 1, n / 10, 1);
    return fail;
}
