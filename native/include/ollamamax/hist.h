/* ollamamax/hist.h -- LatencyHistogram: log-linear buckets with bounded relative error.
 *
 * See native/src/hist.c for the layout, invariants, costs and memory-ordering contract.
 * The structure is opaque; every function below is safe to call concurrently with
 * omx_hist_record* on the same histogram (see the contract for what readers see),
 * except omx_hist_free.
 */
#ifndef OLLAMAMAX_HIST_H
#define OLLAMAMAX_HIST_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct omx_hist omx_hist;

/* Status codes (negative). */
#define OMX_HIST_OK 0
#define OMX_HIST_EINVAL (-1)    /* invalid layout arguments                    */
#define OMX_HIST_ENOMEM (-2)    /* allocation failed                           */
#define OMX_HIST_ELAYOUT (-3)   /* merge: different lowest/highest/sig. figures */
#define OMX_HIST_ETRUNC (-4)    /* decode: input too short / truncated varint   */
#define OMX_HIST_EMAGIC (-5)    /* decode: not a histogram (bad magic)          */
#define OMX_HIST_EVERSION (-6)  /* decode: unsupported format version           */
#define OMX_HIST_ECRC (-7)      /* decode: checksum mismatch                    */
#define OMX_HIST_ECORRUPT (-8)  /* decode: well-formed but inconsistent content */

/* Largest bucket array accepted (counters); layouts needing more are EINVAL. */
#define OMX_HIST_MAX_BUCKETS ((size_t)1 << 24)
/* Size of the fixed part of the serialized form (header + empty varint + CRC). */
#define OMX_HIST_ENCODED_MIN 51u
#define OMX_HIST_FORMAT_VERSION 1u

/* Validate a layout; on success store the number of buckets (if n_buckets != NULL). */
int omx_hist_check_layout(double lowest, double highest, int sig_figs, size_t *n_buckets);
/* Sub-bucket bits k (2^k linear sub-buckets per power of two) for 1..5 figures, else -1. */
int omx_hist_sub_bits(int sig_figs);

/* New empty histogram; NULL with *err set (EINVAL or ENOMEM) on failure. */
omx_hist *omx_hist_new(double lowest, double highest, int sig_figs, int *err);
void omx_hist_free(omx_hist *h);

/* Record `count` occurrences of v.  The caller guarantees v >= 0 and not NaN
 * (+inf is allowed and clamps to `highest`).  Lock-free; relaxed atomics. */
void omx_hist_record(omx_hist *h, double v, uint64_t count);

/* Batch record.  Validates the whole batch first: if some element is NaN or
 * negative, nothing is recorded and the index of the first such element is
 * returned; otherwise every element is recorded and -1 is returned. */
ptrdiff_t omx_hist_record_doubles(omx_hist *h, const double *v, size_t n);
ptrdiff_t omx_hist_record_int64(omx_hist *h, const int64_t *v, size_t n);

/* Readers (relaxed loads; see the contract in hist.c). */
uint64_t omx_hist_count(const omx_hist *h);
uint64_t omx_hist_overflow(const omx_hist *h);
double omx_hist_sum(const omx_hist *h);
double omx_hist_min_raw(const omx_hist *h); /* +inf when empty */
double omx_hist_max_raw(const omx_hist *h); /* 0.0 when empty  */
double omx_hist_lowest(const omx_hist *h);
double omx_hist_highest(const omx_hist *h);
int omx_hist_sig_figs(const omx_hist *h);
size_t omx_hist_n_buckets(const omx_hist *h);

/* Quantiles for m values of q, each in [0, 1], given in ascending order
 * (the caller sorts).  One pass over the buckets.  Empty histogram: NaN. */
void omx_hist_quantiles_sorted(const omx_hist *h, const double *qs, size_t m, double *out);

/* Snapshot of the bucket counters into out[n_buckets]; returns their sum. */
uint64_t omx_hist_snapshot(const omx_hist *h, uint64_t *out);
/* Exclusive upper bound / representative (midpoint) of bucket i, in value units. */
double omx_hist_bucket_upper(const omx_hist *h, size_t i);
double omx_hist_bucket_mid(const omx_hist *h, size_t i);

/* dst += src (same layout required, else ELAYOUT).  src may equal dst. */
int omx_hist_merge(omx_hist *dst, const omx_hist *src);
void omx_hist_reset(omx_hist *h);

/* Serialization (format in hist.c).  Returns a malloc'd buffer of *len bytes, to be
 * released with omx_hist_free_buffer; NULL on allocation failure. */
uint8_t *omx_hist_encode(const omx_hist *h, size_t *len);
void omx_hist_free_buffer(uint8_t *buf);
/* NULL with *err set to one of the decode codes (or ENOMEM/EINVAL) on failure. */
omx_hist *omx_hist_decode(const uint8_t *buf, size_t len, int *err);

uint32_t omx_crc32(const uint8_t *buf, size_t len);

#ifdef __cplusplus
}
#endif
#endif /* OLLAMAMAX_HIST_H */
