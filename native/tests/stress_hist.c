/* stress_hist.c -- concurrent record / record_doubles / readers on one histogram.
 *
 * W writer threads each record N values (half through omx_hist_record, half through
 * batches of omx_hist_record_doubles / omx_hist_record_int64, large enough to use the
 * private-histogram path) while a reader thread runs quantiles, snapshot, encode and
 * merge into a second histogram.  After join, every counter must be exact: total,
 * per-bucket counts (compared with a single-threaded replay), overflow, min, max and
 * the sum (values are small integers, so the double sum is exact).  Then encode /
 * decode round trip and error paths.  Run under TSan and ASan+UBSan by
 * native/run_sanitizers.sh.
 */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ollamamax/hist.h"

#define W 4
#define N 60000
#define BATCH 2048

static omx_hist *shared;
static atomic_int writers_done;
static atomic_int reader_started;
static atomic_long reader_iters;

#define CHECK(cond)                                                          \
    do {                                                                     \
        if (!(cond)) {                                                       \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            exit(1);                                                         \
        }                                                                    \
    } while (0)

static double value_of(int t, int i) { /* deterministic, integer, spans buckets */
    unsigned x = ((unsigned)t * 7919u + (unsigned)i * 104729u) % 5000000u;
    return (double)x;
}

static void *writer(void *arg) {
    int t = (int)(intptr_t)arg;
    static _Thread_local double dbuf[BATCH];
    static _Thread_local int64_t ibuf[BATCH];
    int i = 0;
    while (!atomic_load(&reader_started)) {
    }
    while (i < N / 2) omx_hist_record(shared, value_of(t, i), 1), i++;
    while (i < N) {
        int n = 0;
        for (; n < BATCH && i + n < N; n++) dbuf[n] = value_of(t, i + n);
        CHECK(omx_hist_record_doubles(shared, dbuf, (size_t)n) == -1);
        i += n;
        n = 0;
        for (; n < BATCH && i + n < N; n++) ibuf[n] = (int64_t)value_of(t, i + n);
        CHECK(omx_hist_record_int64(shared, ibuf, (size_t)n) == -1);
        i += n;
    }
    atomic_fetch_add(&writers_done, 1);
    return NULL;
}

static void *reader(void *arg) {
    (void)arg;
    double qs[3] = {0.5, 0.9, 0.99}, out[3];
    uint64_t *snap = malloc(omx_hist_n_buckets(shared) * sizeof *snap);
    CHECK(snap);
    int err;
    omx_hist *other = omx_hist_new(1.0, 1e6, 2, &err);
    CHECK(other);
    atomic_store(&reader_started, 1);
    for (long it = 0; it < 20 || atomic_load(&writers_done) < W; it++) {
        atomic_fetch_add(&reader_iters, 1);
        omx_hist_quantiles_sorted(shared, qs, 3, out);
        CHECK(isnan(out[0]) || (out[0] <= out[1] && out[1] <= out[2]));
        (void)omx_hist_snapshot(shared, snap);
        size_t len;
        uint8_t *b = omx_hist_encode(shared, &len);
        CHECK(b);
        omx_hist *d = omx_hist_decode(b, len, &err);
        CHECK(d && err == OMX_HIST_OK); /* a racy snapshot still encodes validly */
        CHECK(omx_hist_merge(other, d) == OMX_HIST_OK);
        omx_hist_free(d);
        omx_hist_free_buffer(b);
        omx_hist_reset(other);
    }
    omx_hist_free(other);
    free(snap);
    return NULL;
}

int main(void) {
    int err;
    shared = omx_hist_new(1.0, 1e6, 2, &err); /* 1e6 < max value: exercises overflow */
    CHECK(shared && err == OMX_HIST_OK);
    pthread_t th[W + 1];
    for (int t = 0; t < W; t++) CHECK(pthread_create(&th[t], NULL, writer, (void *)(intptr_t)t) == 0);
    CHECK(pthread_create(&th[W], NULL, reader, NULL) == 0);
    for (int t = 0; t <= W; t++) CHECK(pthread_join(th[t], NULL) == 0);

    /* Single-threaded replay gives the expected state. */
    omx_hist *ref = omx_hist_new(1.0, 1e6, 2, &err);
    CHECK(ref);
    uint64_t ovf = 0;
    double sum = 0.0, mn = INFINITY, mx = 0.0;
    for (int t = 0; t < W; t++)
        for (int i = 0; i < N; i++) {
            double v = value_of(t, i);
            if (v > 1e6) v = 1e6, ovf++;
            sum += v;
            mn = v < mn ? v : mn;
            mx = v > mx ? v : mx;
            omx_hist_record(ref, value_of(t, i), 1);
        }
    CHECK(omx_hist_count(shared) == (uint64_t)W * N);
    CHECK(omx_hist_overflow(shared) == ovf);
    CHECK(omx_hist_sum(shared) == sum); /* integers < 2^53: exact in any order */
    CHECK(omx_hist_min_raw(shared) == mn && omx_hist_max_raw(shared) == mx);
    size_t nb = omx_hist_n_buckets(shared);
    uint64_t *a = malloc(nb * sizeof *a), *b = malloc(nb * sizeof *b);
    CHECK(a && b);
    CHECK(omx_hist_snapshot(shared, a) == (uint64_t)W * N);
    omx_hist_snapshot(ref, b);
    CHECK(memcmp(a, b, nb * sizeof *a) == 0);

    /* Round trip and self-merge. */
    size_t len;
    uint8_t *enc = omx_hist_encode(shared, &len);
    CHECK(enc);
    omx_hist *dec = omx_hist_decode(enc, len, &err);
    CHECK(dec && err == OMX_HIST_OK);
    omx_hist_snapshot(dec, b);
    CHECK(memcmp(a, b, nb * sizeof *a) == 0);
    CHECK(omx_hist_count(dec) == omx_hist_count(shared));
    CHECK(omx_hist_merge(dec, dec) == OMX_HIST_OK);
    CHECK(omx_hist_count(dec) == 2u * W * N);

    /* Corruption is detected; truncation at every length fails cleanly. */
    for (size_t cut = 0; cut < len; cut++) CHECK(omx_hist_decode(enc, cut, &err) == NULL);
    enc[len / 2] ^= 0x10;
    CHECK(omx_hist_decode(enc, len, &err) == NULL && err == OMX_HIST_ECRC);
    enc[0] = 'X';
    CHECK(omx_hist_decode(enc, len, &err) == NULL && err == OMX_HIST_EMAGIC);

    /* Layout mismatch and invalid layouts. */
    omx_hist *other = omx_hist_new(1.0, 2e6, 2, &err);
    CHECK(other && omx_hist_merge(other, shared) == OMX_HIST_ELAYOUT);
    CHECK(omx_hist_new(0.0, 10.0, 2, &err) == NULL && err == OMX_HIST_EINVAL);
    CHECK(omx_hist_new(1.0, 1.0, 2, &err) == NULL && err == OMX_HIST_EINVAL);
    CHECK(omx_hist_new(1.0, 10.0, 6, &err) == NULL && err == OMX_HIST_EINVAL);
    CHECK(omx_hist_new(1e-300, 1e300, 5, &err) == NULL && err == OMX_HIST_EINVAL);

    /* Batch validation: nothing recorded from a bad batch. */
    double bad[3] = {1.0, -1.0, 2.0};
    uint64_t before = omx_hist_count(other);
    CHECK(omx_hist_record_doubles(other, bad, 3) == 1 && omx_hist_count(other) == before);
    bad[1] = NAN;
    CHECK(omx_hist_record_doubles(other, bad, 3) == 1 && omx_hist_count(other) == before);

    omx_hist_free(other);
    omx_hist_free(dec);
    omx_hist_free_buffer(enc);
    free(a);
    free(b);
    omx_hist_free(ref);
    omx_hist_free(shared);
    printf("stress_hist: %d threads x %d values, exact (%ld reader passes)\n", W, N,
           (long)atomic_load(&reader_iters));
    return 0;
}
