/* hist.c -- LatencyHistogram: log-linear buckets with bounded relative error.
 *
 * LAYOUT
 *   A value v (any unit, v >= 0) is first clamped to `highest` (counted in `overflow`
 *   when it was above), then scaled: u = v * (1 / lowest), and u < 1 is raised to 1
 *   (values below `lowest` share the lowest bucket).  With k sub-bucket bits
 *   (S = 2^k linear sub-buckets per power of two), the bucket of u >= 1 is
 *
 *       index(u) = (bits(u) >> (52 - k)) - (1023 << k)
 *
 *   i.e. (binary exponent e << k) | (top k bits of the mantissa): bucket
 *   i = (e << k) | j covers u in [2^e (1 + j/S), 2^e (1 + (j+1)/S)).  The pure-Python
 *   twin computes the same index with math.frexp, so both give identical layouts.
 *   k is the smallest value with 2^k >= 10^sig_figs / 2:  sig_figs 1..5 -> k = 3, 6, 9,
 *   13, 16.  Representative value of a bucket = its midpoint, so a quantile of values
 *   >= lowest is within a relative error of 1/(2S) <= 10^-sig_figs of the exact order
 *   statistic (1/128 = 0.78 % at sig_figs = 2); it is also clamped to [min, max].
 *   n_buckets = index(highest / lowest) + 1; the default layout (1 .. 3.6e9, 2
 *   figures) has 31*64 + 43 + 1 = 2028 buckets * 8 bytes = 15.8 KiB of counters.
 *
 *   struct: immutable layout fields, then atomics total, overflow, sum (double),
 *   min/max (bit patterns of non-negative doubles, which order like unsigned ints),
 *   then the counters (flexible array of _Atomic uint64_t).
 *
 * INVARIANTS (quiescent state, i.e. no concurrent writer)
 *   total == sum(counts); overflow <= total; sum == sum of recorded (clamped) values;
 *   empty  <=> total == 0, then min == +inf, max == 0.0 and sum == 0.0;
 *   otherwise min <= max, both finite, and every counted value lies in [min, max].
 *   -0.0 is recorded as +0.0 (so the bit patterns keep ordering).
 *
 * COST
 *   record: O(1): one multiply, a shift, 2 relaxed fetch_add, 1 CAS loop for the
 *   double sum, 1 load (+ a CAS only when min/max change).  record_doubles/int64: O(n)
 *   validation pass, then for n >= max(256, n_buckets/4) a private non-atomic
 *   histogram is filled (no atomics per value) and folded in with one fetch_add per
 *   non-empty bucket; smaller batches use relaxed per-value fetch_add.
 *   quantiles: O(n_buckets + m), two passes.  merge/reset/encode/snapshot: O(n_buckets).
 *
 * MEMORY-ORDERING CONTRACT
 *   Writers only use relaxed atomic read-modify-writes; no lock is ever taken, so
 *   concurrent record calls never lose an increment: once all writers have finished
 *   (and their completion is synchronized with the reader by some other means, e.g.
 *   thread join), every counter is exact.  While writers run, a reader sees each
 *   counter at some value it really had, but not one atomic snapshot of all of them:
 *   quantiles/encode/snapshot/merge derive the total from the bucket pass they make
 *   themselves, so a rank never falls outside the counts they saw; count, sum, min,
 *   max and overflow may each include or miss records in flight.  reset() racing
 *   with record() may keep part of an in-flight record (e.g. its bucket but not its
 *   sum); callers that need an exact reset must exclude writers themselves.
 *   omx_hist_free must not race with anything.
 *
 * SERIALIZED FORM (version 1, little endian)
 *   "OMXH" | version u8 | sig_figs u8 | lowest f64 | highest f64 | sum f64 | min f64 |
 *   max f64 | overflow varint | { gap varint, count varint }* | crc32 u32
 *   Only non-empty buckets are written, in increasing index order; gap = index minus
 *   (previous index + 1), the first previous index being -1.  Varints are unsigned
 *   LEB128.  The CRC-32 (IEEE, as zlib.crc32) covers every byte before it.
 */
#include "ollamamax/hist.h"

#include <math.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

struct omx_hist {
    double lowest;
    double highest;
    double inv_lowest;
    int sig_figs;
    unsigned sub_bits;
    size_t n_buckets;
    _Atomic uint64_t total;
    _Atomic uint64_t overflow;
    _Atomic double sum;
    _Atomic uint64_t min_bits;
    _Atomic uint64_t max_bits;
    _Atomic uint64_t counts[];
};

#define RLX memory_order_relaxed
#define BATCH_LOCAL_MIN 256u

static const uint64_t INF_BITS = UINT64_C(0x7FF0000000000000);

static inline uint64_t dbits(double d) {
    uint64_t b;
    memcpy(&b, &d, sizeof b);
    return b;
}

static inline double bitsd(uint64_t b) {
    double d;
    memcpy(&d, &b, sizeof d);
    return d;
}

static inline size_t bucket_index(double u, unsigned k) {
    return (size_t)((dbits(u) >> (52u - k)) - ((uint64_t)1023u << k));
}

int omx_hist_sub_bits(int sig_figs) {
    static const int table[5] = {3, 6, 9, 13, 16};
    if (sig_figs < 1 || sig_figs > 5) return -1;
    return table[sig_figs - 1];
}

int omx_hist_check_layout(double lowest, double highest, int sig_figs, size_t *n_buckets) {
    int k = omx_hist_sub_bits(sig_figs);
    if (k < 0) return OMX_HIST_EINVAL;
    if (!(lowest > 0.0) || !isfinite(lowest)) return OMX_HIST_EINVAL;
    if (!(highest > lowest) || !isfinite(highest)) return OMX_HIST_EINVAL;
    double inv = 1.0 / lowest;
    if (!isfinite(inv)) return OMX_HIST_EINVAL;
    double hu = highest * inv;
    if (!isfinite(hu)) return OMX_HIST_EINVAL;
    if (hu < 1.0) hu = 1.0;
    size_t n = bucket_index(hu, (unsigned)k) + 1u;
    if (n > OMX_HIST_MAX_BUCKETS) return OMX_HIST_EINVAL;
    if (n_buckets) *n_buckets = n;
    return OMX_HIST_OK;
}

static void init_stats(omx_hist *h) {
    atomic_store_explicit(&h->total, 0, RLX);
    atomic_store_explicit(&h->overflow, 0, RLX);
    atomic_store_explicit(&h->sum, 0.0, RLX);
    atomic_store_explicit(&h->min_bits, INF_BITS, RLX);
    atomic_store_explicit(&h->max_bits, 0, RLX);
}

omx_hist *omx_hist_new(double lowest, double highest, int sig_figs, int *err) {
    size_t n;
    int rc = omx_hist_check_layout(lowest, highest, sig_figs, &n);
    if (rc != OMX_HIST_OK) {
        if (err) *err = rc;
        return NULL;
    }
    omx_hist *h = malloc(sizeof *h + n * sizeof(_Atomic uint64_t));
    if (!h) {
        if (err) *err = OMX_HIST_ENOMEM;
        return NULL;
    }
    h->lowest = lowest;
    h->highest = highest;
    h->inv_lowest = 1.0 / lowest;
    h->sig_figs = sig_figs;
    h->sub_bits = (unsigned)omx_hist_sub_bits(sig_figs);
    h->n_buckets = n;
    for (size_t i = 0; i < n; i++) atomic_init(&h->counts[i], 0);
    init_stats(h);
    if (err) *err = OMX_HIST_OK;
    return h;
}

void omx_hist_free(omx_hist *h) { free(h); }

static inline void add_sum(omx_hist *h, double d) {
    double cur = atomic_load_explicit(&h->sum, RLX);
    while (!atomic_compare_exchange_weak_explicit(&h->sum, &cur, cur + d, RLX, RLX)) {
    }
}

static inline void lower_min(omx_hist *h, uint64_t b) {
    uint64_t cur = atomic_load_explicit(&h->min_bits, RLX);
    while (b < cur && !atomic_compare_exchange_weak_explicit(&h->min_bits, &cur, b, RLX, RLX)) {
    }
}

static inline void raise_max(omx_hist *h, uint64_t b) {
    uint64_t cur = atomic_load_explicit(&h->max_bits, RLX);
    while (b > cur && !atomic_compare_exchange_weak_explicit(&h->max_bits, &cur, b, RLX, RLX)) {
    }
}

void omx_hist_record(omx_hist *h, double v, uint64_t count) {
    if (v > h->highest) {
        v = h->highest;
        atomic_fetch_add_explicit(&h->overflow, count, RLX);
    }
    v += 0.0; /* -0.0 -> +0.0 */
    double u = v * h->inv_lowest;
    if (u < 1.0) u = 1.0;
    atomic_fetch_add_explicit(&h->counts[bucket_index(u, h->sub_bits)], count, RLX);
    atomic_fetch_add_explicit(&h->total, count, RLX);
    add_sum(h, v * (double)count);
    uint64_t b = dbits(v);
    lower_min(h, b);
    raise_max(h, b);
}

/* Batch core: values already validated (>= 0, not NaN).  CONV(i) yields a double. */
#define OMX_BATCH_BODY(CONV)                                                            \
    do {                                                                               \
        const double hi = h->highest, inv = h->inv_lowest;                            \
        const unsigned k = h->sub_bits;                                                \
        double s = 0.0, mn = INFINITY, mx = 0.0;                                       \
        uint64_t ovf = 0;                                                              \
        uint64_t *local = NULL;                                                        \
        if (n >= BATCH_LOCAL_MIN && n >= h->n_buckets / 4u)                            \
            local = calloc(h->n_buckets, sizeof *local);                               \
        if (local) {                                                                   \
            for (size_t i = 0; i < n; i++) {                                           \
                double x = (CONV(i)) + 0.0;                                            \
                if (x > hi) {                                                          \
                    x = hi;                                                            \
                    ovf++;                                                             \
                }                                                                      \
                double u = x * inv;                                                    \
                u = u < 1.0 ? 1.0 : u;                                                 \
                local[bucket_index(u, k)]++;                                           \
                s += x;                                                                \
                mn = x < mn ? x : mn;                                                  \
                mx = x > mx ? x : mx;                                                  \
            }                                                                          \
            for (size_t i = 0; i < h->n_buckets; i++)                                  \
                if (local[i]) atomic_fetch_add_explicit(&h->counts[i], local[i], RLX); \
            free(local);                                                               \
        } else {                                                                       \
            for (size_t i = 0; i < n; i++) {                                           \
                double x = (CONV(i)) + 0.0;                                            \
                if (x > hi) {                                                          \
                    x = hi;                                                            \
                    ovf++;                                                             \
                }                                                                      \
                double u = x * inv;                                                    \
                u = u < 1.0 ? 1.0 : u;                                                 \
                atomic_fetch_add_explicit(&h->counts[bucket_index(u, k)], 1, RLX);    \
                s += x;                                                                \
                mn = x < mn ? x : mn;                                                  \
                mx = x > mx ? x : mx;                                                  \
            }                                                                          \
        }                                                                              \
        if (ovf) atomic_fetch_add_explicit(&h->overflow, ovf, RLX);                    \
        atomic_fetch_add_explicit(&h->total, (uint64_t)n, RLX);                        \
        add_sum(h, s);                                                                 \
        lower_min(h, dbits(mn));                                                       \
        raise_max(h, dbits(mx));                                                       \
    } while (0)

ptrdiff_t omx_hist_record_doubles(omx_hist *h, const double *v, size_t n) {
    /* Validation: branch-free blocks, then locate the first bad element. */
    for (size_t base = 0; base < n; base += 1024u) {
        size_t end = n - base < 1024u ? n : base + 1024u;
        int bad = 0;
        for (size_t i = base; i < end; i++) bad |= !(v[i] >= 0.0);
        if (bad)
            for (size_t i = base; i < end; i++)
                if (!(v[i] >= 0.0)) return (ptrdiff_t)i;
    }
    if (n == 0) return -1;
#define OMX_CONV_D(i) v[i]
    OMX_BATCH_BODY(OMX_CONV_D);
#undef OMX_CONV_D
    return -1;
}

ptrdiff_t omx_hist_record_int64(omx_hist *h, const int64_t *v, size_t n) {
    for (size_t base = 0; base < n; base += 1024u) {
        size_t end = n - base < 1024u ? n : base + 1024u;
        int bad = 0;
        for (size_t i = base; i < end; i++) bad |= v[i] < 0;
        if (bad)
            for (size_t i = base; i < end; i++)
                if (v[i] < 0) return (ptrdiff_t)i;
    }
    if (n == 0) return -1;
#define OMX_CONV_I(i) ((double)v[i])
    OMX_BATCH_BODY(OMX_CONV_I);
#undef OMX_CONV_I
    return -1;
}

uint64_t omx_hist_count(const omx_hist *h) {
    return atomic_load_explicit(&((omx_hist *)h)->total, RLX);
}
uint64_t omx_hist_overflow(const omx_hist *h) {
    return atomic_load_explicit(&((omx_hist *)h)->overflow, RLX);
}
double omx_hist_sum(const omx_hist *h) { return atomic_load_explicit(&((omx_hist *)h)->sum, RLX); }
double omx_hist_min_raw(const omx_hist *h) {
    return bitsd(atomic_load_explicit(&((omx_hist *)h)->min_bits, RLX));
}
double omx_hist_max_raw(const omx_hist *h) {
    return bitsd(atomic_load_explicit(&((omx_hist *)h)->max_bits, RLX));
}
double omx_hist_lowest(const omx_hist *h) { return h->lowest; }
double omx_hist_highest(const omx_hist *h) { return h->highest; }
int omx_hist_sig_figs(const omx_hist *h) { return h->sig_figs; }
size_t omx_hist_n_buckets(const omx_hist *h) { return h->n_buckets; }

static inline uint64_t load_count(const omx_hist *h, size_t i) {
    return atomic_load_explicit(&((omx_hist *)h)->counts[i], RLX);
}

double omx_hist_bucket_mid(const omx_hist *h, size_t i) {
    unsigned k = h->sub_bits;
    int e = (int)(i >> k);
    double j = (double)(i & (((size_t)1 << k) - 1u));
    double s = ldexp(1.0, (int)k);
    /* u-midpoint 2^e (1 + (j + 1/2)/S) = (2S + 2j + 1) * 2^(e-k-1), exact. */
    return ldexp(2.0 * s + 2.0 * j + 1.0, e - (int)k - 1) * h->lowest;
}

double omx_hist_bucket_upper(const omx_hist *h, size_t i) {
    unsigned k = h->sub_bits;
    int e = (int)(i >> k);
    double j = (double)(i & (((size_t)1 << k) - 1u));
    double s = ldexp(1.0, (int)k);
    return ldexp(s + j + 1.0, e - (int)k) * h->lowest;
}

void omx_hist_quantiles_sorted(const omx_hist *h, const double *qs, size_t m, double *out) {
    uint64_t total = 0;
    for (size_t i = 0; i < h->n_buckets; i++) total += load_count(h, i);
    if (total == 0) {
        for (size_t j = 0; j < m; j++) out[j] = NAN;
        return;
    }
    double mn = omx_hist_min_raw(h), mx = omx_hist_max_raw(h);
    size_t j = 0;
    /* q <= 0 -> min and q >= 1 -> max exactly. */
    while (j < m && qs[j] <= 0.0) out[j++] = mn;
    size_t jend = m;
    while (jend > j && qs[jend - 1] >= 1.0) out[--jend] = mx;
    uint64_t cum = 0;
    for (size_t i = 0; i < h->n_buckets && j < jend; i++) {
        uint64_t c = load_count(h, i);
        if (!c) continue;
        cum += c;
        while (j < jend) {
            double r = ceil(qs[j] * (double)total);
            if (r < 1.0) r = 1.0;
            if (r > (double)cum) break;
            double x = omx_hist_bucket_mid(h, i);
            if (x < mn) x = mn;
            if (x > mx) x = mx;
            out[j++] = x;
        }
    }
    while (j < jend) out[j++] = mx; /* only under a concurrent reset */
}

uint64_t omx_hist_snapshot(const omx_hist *h, uint64_t *out) {
    uint64_t total = 0;
    for (size_t i = 0; i < h->n_buckets; i++) total += (out[i] = load_count(h, i));
    return total;
}

int omx_hist_merge(omx_hist *dst, const omx_hist *src) {
    if (dst->lowest != src->lowest || dst->highest != src->highest ||
        dst->sig_figs != src->sig_figs)
        return OMX_HIST_ELAYOUT;
    uint64_t total = 0;
    for (size_t i = 0; i < src->n_buckets; i++) {
        uint64_t c = load_count(src, i);
        if (c) {
            total += c;
            atomic_fetch_add_explicit(&dst->counts[i], c, RLX);
        }
    }
    if (!total) return OMX_HIST_OK;
    uint64_t ovf = omx_hist_overflow(src);
    if (ovf) atomic_fetch_add_explicit(&dst->overflow, ovf, RLX);
    atomic_fetch_add_explicit(&dst->total, total, RLX);
    add_sum(dst, omx_hist_sum(src));
    lower_min(dst, dbits(omx_hist_min_raw(src)));
    raise_max(dst, dbits(omx_hist_max_raw(src)));
    return OMX_HIST_OK;
}

void omx_hist_reset(omx_hist *h) {
    for (size_t i = 0; i < h->n_buckets; i++) atomic_store_explicit(&h->counts[i], 0, RLX);
    init_stats(h);
}

/* ---- serialization ---------------------------------------------------------- */

static const uint32_t CRC_NIBBLE[16] = {
    0x00000000u, 0x1db71064u, 0x3b6e20c8u, 0x26d930acu, 0x76dc4190u, 0x6b6b51f4u,
    0x4db26158u, 0x5005713cu, 0xedb88320u, 0xf00f9344u, 0xd6d6a3e8u, 0xcb61b38cu,
    0x9b64c2b0u, 0x86d3d2d4u, 0xa00ae278u, 0xbdbdf21cu};

uint32_t omx_crc32(const uint8_t *buf, size_t len) {
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < len; i++) {
        c ^= buf[i];
        c = (c >> 4) ^ CRC_NIBBLE[c & 15u];
        c = (c >> 4) ^ CRC_NIBBLE[c & 15u];
    }
    return c ^ 0xFFFFFFFFu;
}

typedef struct {
    uint8_t *p;
    size_t len, cap;
    bool oom;
} wbuf;

static void wb_reserve(wbuf *w, size_t extra) {
    if (w->oom || w->len + extra <= w->cap) return;
    size_t cap = w->cap ? w->cap : 128;
    while (cap < w->len + extra) cap *= 2;
    uint8_t *p = realloc(w->p, cap);
    if (!p) {
        w->oom = true;
        return;
    }
    w->p = p;
    w->cap = cap;
}

static void wb_put(wbuf *w, const void *src, size_t n) {
    wb_reserve(w, n);
    if (w->oom) return;
    memcpy(w->p + w->len, src, n);
    w->len += n;
}

static void wb_u64le(wbuf *w, uint64_t x) {
    uint8_t b[8];
    for (int i = 0; i < 8; i++) b[i] = (uint8_t)(x >> (8 * i));
    wb_put(w, b, 8);
}

static void wb_varint(wbuf *w, uint64_t x) {
    uint8_t b[10];
    size_t n = 0;
    do {
        uint8_t byte = (uint8_t)(x & 0x7Fu);
        x >>= 7;
        b[n++] = (uint8_t)(byte | (x ? 0x80u : 0u));
    } while (x);
    wb_put(w, b, n);
}

uint8_t *omx_hist_encode(const omx_hist *h, size_t *len) {
    wbuf w = {NULL, 0, 0, false};
    wb_reserve(&w, 256);
    wb_put(&w, "OMXH", 4);
    uint8_t vs[2] = {(uint8_t)OMX_HIST_FORMAT_VERSION, (uint8_t)h->sig_figs};
    wb_put(&w, vs, 2);
    wb_u64le(&w, dbits(h->lowest));
    wb_u64le(&w, dbits(h->highest));
    /* Take the stats first, then the buckets; the total comes from the buckets. */
    double sum = omx_hist_sum(h), mn = omx_hist_min_raw(h), mx = omx_hist_max_raw(h);
    uint64_t ovf = omx_hist_overflow(h);
    wbuf body = {NULL, 0, 0, false};
    uint64_t total = 0;
    size_t prev_next = 0;
    for (size_t i = 0; i < h->n_buckets; i++) {
        uint64_t c = load_count(h, i);
        if (!c) continue;
        wb_varint(&body, (uint64_t)(i - prev_next));
        wb_varint(&body, c);
        prev_next = i + 1;
        total += c;
    }
    if (total == 0) { /* canonical empty state (a racing reset may leave a mix) */
        sum = 0.0;
        mn = INFINITY;
        mx = 0.0;
        ovf = 0;
    } else {
        if (ovf > total) ovf = total;
        if (mn > mx) mn = mx;
    }
    wb_u64le(&w, dbits(sum));
    wb_u64le(&w, dbits(mn));
    wb_u64le(&w, dbits(mx));
    wb_varint(&w, ovf);
    if (body.p) wb_put(&w, body.p, body.len);
    free(body.p);
    if (body.oom || w.oom) {
        free(w.p);
        return NULL;
    }
    uint32_t crc = omx_crc32(w.p, w.len);
    uint8_t cb[4] = {(uint8_t)crc, (uint8_t)(crc >> 8), (uint8_t)(crc >> 16), (uint8_t)(crc >> 24)};
    wb_put(&w, cb, 4);
    if (w.oom) {
        free(w.p);
        return NULL;
    }
    *len = w.len;
    return w.p;
}

void omx_hist_free_buffer(uint8_t *buf) { free(buf); }

static uint64_t rd_u64le(const uint8_t *p) {
    uint64_t x = 0;
    for (int i = 7; i >= 0; i--) x = (x << 8) | p[i];
    return x;
}

/* Returns false on truncation or on a varint longer than 64 bits. */
static bool rd_varint(const uint8_t **p, const uint8_t *end, uint64_t *out) {
    uint64_t x = 0;
    unsigned shift = 0;
    while (*p < end) {
        uint8_t b = *(*p)++;
        if (shift == 63 && (b & 0x7Eu)) return false;
        x |= (uint64_t)(b & 0x7Fu) << shift;
        if (!(b & 0x80u)) {
            *out = x;
            return true;
        }
        shift += 7;
        if (shift > 63) return false;
    }
    return false;
}

omx_hist *omx_hist_decode(const uint8_t *buf, size_t len, int *err) {
#define FAIL(code)              \
    do {                        \
        if (err) *err = (code); \
        omx_hist_free(h);       \
        return NULL;            \
    } while (0)
    omx_hist *h = NULL;
    if (len < 6) FAIL(OMX_HIST_ETRUNC);
    if (memcmp(buf, "OMXH", 4) != 0) FAIL(OMX_HIST_EMAGIC);
    if (buf[4] != OMX_HIST_FORMAT_VERSION) FAIL(OMX_HIST_EVERSION);
    if (len < OMX_HIST_ENCODED_MIN) FAIL(OMX_HIST_ETRUNC);
    size_t body_len = len - 4;
    uint32_t want = (uint32_t)buf[body_len] | (uint32_t)buf[body_len + 1] << 8 |
                    (uint32_t)buf[body_len + 2] << 16 | (uint32_t)buf[body_len + 3] << 24;
    if (omx_crc32(buf, body_len) != want) FAIL(OMX_HIST_ECRC);
    int sf = buf[5];
    double lowest = bitsd(rd_u64le(buf + 6)), highest = bitsd(rd_u64le(buf + 14));
    double sum = bitsd(rd_u64le(buf + 22)), mn = bitsd(rd_u64le(buf + 30));
    double mx = bitsd(rd_u64le(buf + 38));
    int rc;
    h = omx_hist_new(lowest, highest, sf, &rc);
    if (!h) {
        if (err) *err = rc == OMX_HIST_ENOMEM ? rc : OMX_HIST_ECORRUPT;
        return NULL;
    }
    const uint8_t *p = buf + 46, *end = buf + body_len;
    uint64_t ovf, total = 0;
    if (!rd_varint(&p, end, &ovf)) FAIL(OMX_HIST_ECORRUPT);
    uint64_t next = 0;
    while (p < end) {
        uint64_t gap, c;
        if (!rd_varint(&p, end, &gap) || !rd_varint(&p, end, &c)) FAIL(OMX_HIST_ECORRUPT);
        if (gap >= h->n_buckets || next + gap >= h->n_buckets || c == 0) FAIL(OMX_HIST_ECORRUPT);
        if (total + c < total) FAIL(OMX_HIST_ECORRUPT);
        size_t i = (size_t)(next + gap);
        atomic_store_explicit(&h->counts[i], c, RLX);
        total += c;
        next = (uint64_t)i + 1u;
    }
    if (total == 0) {
        if (ovf != 0 || dbits(sum) != 0 || dbits(mn) != INF_BITS || dbits(mx) != 0)
            FAIL(OMX_HIST_ECORRUPT);
    } else {
        if (ovf > total || !(mn >= 0.0) || !(mx >= mn) || !(mx <= highest) || !(sum >= 0.0) ||
            dbits(mn) >> 63 || dbits(mx) >> 63)
            FAIL(OMX_HIST_ECORRUPT);
    }
    atomic_store_explicit(&h->total, total, RLX);
    atomic_store_explicit(&h->overflow, ovf, RLX);
    atomic_store_explicit(&h->sum, sum, RLX);
    atomic_store_explicit(&h->min_bits, dbits(mn), RLX);
    atomic_store_explicit(&h->max_bits, dbits(mx), RLX);
    if (err) *err = OMX_HIST_OK;
    return h;
#undef FAIL
}
