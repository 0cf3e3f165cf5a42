# cython: language_level=3, freethreading_compatible=True, embedsignature.format=python
"""Native LatencyHistogram: thin Cython wrapper over native/src/hist.c.

Behaviour, units and error cases are specified by the pure-Python twin
(``ollamamax.structures._hist_py``); both produce the same bucket layout and byte-identical
``to_bytes`` output.  ``record`` and ``record_many`` are thread-safe without a lock
(relaxed atomics in C; see the memory-ordering contract at the top of hist.c).
"""

cimport cython
from cpython.buffer cimport PyObject_CheckBuffer
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.float cimport PyFloat_AS_DOUBLE, PyFloat_AsDouble, PyFloat_Check
from cpython.long cimport PyLong_CheckExact
from cpython.number cimport PyNumber_Index
from libc.math cimport INFINITY, NAN, isnan
from libc.stdint cimport int64_t, uint8_t, uint64_t
from libc.stdlib cimport free, malloc, realloc

cdef extern from "ollamamax/hist.h" nogil:
    ctypedef struct omx_hist:
        pass
    int OMX_HIST_OK
    int OMX_HIST_EINVAL
    int OMX_HIST_ENOMEM
    int OMX_HIST_ELAYOUT
    int OMX_HIST_ETRUNC
    int OMX_HIST_EMAGIC
    int OMX_HIST_EVERSION
    int OMX_HIST_ECRC
    int OMX_HIST_ECORRUPT
    size_t OMX_HIST_MAX_BUCKETS

    int omx_hist_check_layout(double lowest, double highest, int sig_figs, size_t *n_buckets)
    omx_hist *omx_hist_new(double lowest, double highest, int sig_figs, int *err)
    void omx_hist_free(omx_hist *h)
    void omx_hist_record(omx_hist *h, double v, uint64_t count)
    ptrdiff_t omx_hist_record_doubles(omx_hist *h, const double *v, size_t n)
    ptrdiff_t omx_hist_record_int64(omx_hist *h, const int64_t *v, size_t n)
    uint64_t omx_hist_count(const omx_hist *h)
    uint64_t omx_hist_overflow(const omx_hist *h)
    double omx_hist_sum(const omx_hist *h)
    double omx_hist_min_raw(const omx_hist *h)
    double omx_hist_max_raw(const omx_hist *h)
    double omx_hist_lowest(const omx_hist *h)
    double omx_hist_highest(const omx_hist *h)
    int omx_hist_sig_figs(const omx_hist *h)
    size_t omx_hist_n_buckets(const omx_hist *h)
    void omx_hist_quantiles_sorted(const omx_hist *h, const double *qs, size_t m, double *out)
    uint64_t omx_hist_snapshot(const omx_hist *h, uint64_t *out)
    double omx_hist_bucket_upper(const omx_hist *h, size_t i)
    int omx_hist_merge(omx_hist *dst, const omx_hist *src)
    void omx_hist_reset(omx_hist *h)
    uint8_t *omx_hist_encode(const omx_hist *h, size_t *length)
    void omx_hist_free_buffer(uint8_t *buf)
    omx_hist *omx_hist_decode(const uint8_t *buf, size_t length, int *err)

__all__ = ["LatencyHistogram"]

FORMAT_VERSION = 1
MAX_BUCKETS = OMX_HIST_MAX_BUCKETS

cdef enum:
    # Batches at least this long are recorded with the GIL released.
    _NOGIL_MIN = 32768

cdef object _np = None


cdef object _numpy():
    global _np
    if _np is None:
        import numpy
        _np = numpy
    return _np


cdef double _to_double(object value) except? -1.0:
    """float(value) for real numbers; TypeError for anything else (str included)."""
    if PyFloat_Check(value):
        return PyFloat_AS_DOUBLE(value)
    try:
        return PyFloat_AsDouble(value)
    except OverflowError:  # an int beyond the double range
        if value > 0:
            return INFINITY
        raise ValueError(f"value must be >= 0, got {value!r}") from None


cdef inline int _check_value(double v) except -1:
    if v >= 0.0:
        return 0
    if isnan(v):
        raise ValueError("value must not be NaN")
    raise ValueError(f"value must be >= 0, got {v!r}")


cdef int _check_layout(double lowest, double highest, int sf) except -1:
    """Same checks, order and messages as _hist_py._check_layout."""
    cdef size_t n = 0
    if sf < 1 or sf > 5:
        raise ValueError(f"significant_figures must be in 1..5, got {sf}")
    if not (lowest > 0.0 and lowest < INFINITY):
        raise ValueError(f"lowest must be a finite number > 0, got {lowest!r}")
    if not (highest > lowest and highest < INFINITY):
        raise ValueError(f"highest must be finite and > lowest, got {highest!r}")
    if omx_hist_check_layout(lowest, highest, sf, &n) != OMX_HIST_OK:
        raise ValueError(
            f"range lowest={lowest!r}..highest={highest!r} at significant_figures={sf} "
            f"needs more than {OMX_HIST_MAX_BUCKETS} buckets"
        )
    return 0


cdef object _decode_error(int rc):
    if rc == OMX_HIST_ENOMEM:
        return MemoryError()
    if rc == OMX_HIST_ETRUNC:
        return ValueError("LatencyHistogram data is truncated")
    if rc == OMX_HIST_EMAGIC:
        return ValueError("not LatencyHistogram data (bad magic)")
    if rc == OMX_HIST_EVERSION:
        return ValueError("unsupported LatencyHistogram format version")
    if rc == OMX_HIST_ECRC:
        return ValueError("LatencyHistogram data checksum mismatch")
    return ValueError("LatencyHistogram data is corrupt")


def _from_bytes(data):
    """Module-level constructor used by pickle."""
    return LatencyHistogram.from_bytes(data)


@cython.final
cdef class LatencyHistogram:
    """Log-linear latency histogram with bounded relative error (spec: ``_hist_py``).

    ``LatencyHistogram(*, lowest=1, highest=3_600_000_000, significant_figures=2)``

    Lock-free: ``record``/``record_many`` use relaxed atomic increments (min/max by CAS
    loops), so concurrent writers never lose a count.  Readers racing writers see each
    counter at a value it really had but no global snapshot: ``quantiles``,
    ``buckets`` and ``to_bytes`` derive the total from their own pass over the
    buckets (internally consistent), while ``count``/``sum``/``min``/``max`` may
    include or miss records in flight.  Large ``record_many`` batches release the GIL.
    """

    cdef omx_hist *_h

    def __cinit__(self):
        self._h = NULL

    def __init__(self, *, lowest=1, highest=3_600_000_000, significant_figures=2):
        if self._h is not NULL:  # freeing it could race with record() in another thread
            raise RuntimeError("LatencyHistogram is already initialised")
        cdef double lo = _to_double(lowest)
        cdef double hi = _to_double(highest)
        sf_obj = PyNumber_Index(significant_figures)
        if not 1 <= sf_obj <= 5:
            raise ValueError(f"significant_figures must be in 1..5, got {sf_obj}")
        cdef int sf = sf_obj
        cdef int err = 0
        _check_layout(lo, hi, sf)
        cdef omx_hist *h = omx_hist_new(lo, hi, sf, &err)
        if h is NULL:
            raise MemoryError()
        self._h = h

    def __dealloc__(self):
        if self._h is not NULL:
            omx_hist_free(self._h)
            self._h = NULL

    cdef inline int _ready(self) except -1:
        if self._h is NULL:
            raise RuntimeError("LatencyHistogram was not initialised")
        return 0

    # -- recording ---------------------------------------------------------------

    def record(self, value, count=1):
        """Record ``count`` occurrences of ``value`` (a number >= 0)."""
        cdef double v
        cdef long long c
        if PyLong_CheckExact(count):
            c = count
        else:
            c = PyNumber_Index(count)
        if PyFloat_Check(value):
            v = PyFloat_AS_DOUBLE(value)
        else:
            v = _to_double(value)
        if not v >= 0.0:
            _check_value(v)
        if c != 1:
            if c < 0:
                raise ValueError(f"count must be >= 0, got {c}")
            if c == 0:
                return
        if self._h is NULL:
            self._ready()
        omx_hist_record(self._h, v, <uint64_t>c)

    def record_many(self, values):
        """Record every value of a numpy array, buffer or iterable (all or nothing)."""
        self._ready()
        arr = _as_array(values)
        if arr is None:
            self._record_iterable(values)
        elif arr.dtype.kind == "i":
            self._record_int64(arr)
        else:
            self._record_doubles(arr)

    cdef int _record_doubles(self, arr) except -1:
        cdef const double[::1] dv = arr
        cdef size_t n = dv.shape[0]
        cdef ptrdiff_t bad
        if n == 0:
            return 0
        if n >= _NOGIL_MIN:
            with nogil:
                bad = omx_hist_record_doubles(self._h, &dv[0], n)
        else:
            bad = omx_hist_record_doubles(self._h, &dv[0], n)
        if bad >= 0:
            _batch_error(bad, dv[bad])
        return 0

    cdef int _record_int64(self, arr) except -1:
        cdef const int64_t[::1] iv = arr
        cdef size_t n = iv.shape[0]
        cdef ptrdiff_t bad
        if n == 0:
            return 0
        if n >= _NOGIL_MIN:
            with nogil:
                bad = omx_hist_record_int64(self._h, &iv[0], n)
        else:
            bad = omx_hist_record_int64(self._h, &iv[0], n)
        if bad >= 0:
            raise ValueError(f"record_many: element {bad} is negative ({iv[bad]}); nothing recorded")
        return 0

    cdef int _record_iterable(self, values) except -1:
        cdef size_t n = 0, cap = 64
        cdef double *buf = <double *>malloc(cap * sizeof(double))
        cdef double *grown
        cdef ptrdiff_t bad
        if buf is NULL:
            raise MemoryError()
        try:
            for x in values:
                if n == cap:
                    grown = <double *>realloc(buf, 2 * cap * sizeof(double))
                    if grown is NULL:
                        raise MemoryError()
                    buf = grown
                    cap *= 2
                buf[n] = _to_double(x)
                n += 1
            if n:
                bad = omx_hist_record_doubles(self._h, buf, n)
                if bad >= 0:
                    _batch_error(bad, buf[bad])
        finally:
            free(buf)
        return 0

    # -- reading -----------------------------------------------------------------

    def quantile(self, q):
        """Value at quantile ``q`` in [0, 1] (nearest rank); NaN when empty."""
        cdef double qd = _check_q(q)
        cdef double out
        self._ready()
        omx_hist_quantiles_sorted(self._h, &qd, 1, &out)
        return out

    def quantiles(self, qs):
        """``[quantile(q) for q in qs]`` from one consistent pass over the buckets."""
        self._ready()
        cdef list qlist = [_check_q(q) for q in qs]
        cdef Py_ssize_t m = len(qlist), i
        if m == 0:
            return []
        order = sorted(range(m), key=qlist.__getitem__)
        cdef double *sq = <double *>malloc(2 * m * sizeof(double))
        if sq is NULL:
            raise MemoryError()
        cdef list res = [None] * m
        try:
            for i in range(m):
                sq[i] = qlist[<Py_ssize_t>order[i]]
            omx_hist_quantiles_sorted(self._h, sq, <size_t>m, sq + m)
            for i in range(m):
                res[<Py_ssize_t>order[i]] = sq[m + i]
        finally:
            free(sq)
        return res

    @property
    def count(self):
        """Number of recorded values."""
        self._ready()
        return omx_hist_count(self._h)

    @property
    def overflow(self):
        """How many recorded values were above ``highest`` (and counted as ``highest``)."""
        self._ready()
        return omx_hist_overflow(self._h)

    @property
    def min(self):
        """Smallest recorded value (NaN when empty)."""
        self._ready()
        if omx_hist_count(self._h) == 0:
            return NAN
        return omx_hist_min_raw(self._h)

    @property
    def max(self):
        """Largest recorded value, at most ``highest`` (NaN when empty)."""
        self._ready()
        if omx_hist_count(self._h) == 0:
            return NAN
        return omx_hist_max_raw(self._h)

    @property
    def mean(self):
        """Arithmetic mean of the recorded (clamped) values (NaN when empty)."""
        self._ready()
        cdef uint64_t c = omx_hist_count(self._h)
        if c == 0:
            return NAN
        return omx_hist_sum(self._h) / <double>c

    @property
    def sum(self):
        """Sum of the recorded (clamped) values."""
        self._ready()
        return omx_hist_sum(self._h)

    @property
    def lowest(self):
        self._ready()
        return omx_hist_lowest(self._h)

    @property
    def highest(self):
        self._ready()
        return omx_hist_highest(self._h)

    @property
    def significant_figures(self):
        self._ready()
        return omx_hist_sig_figs(self._h)

    @property
    def bucket_count(self):
        """Number of buckets (each an 8-byte counter)."""
        self._ready()
        return omx_hist_n_buckets(self._h)

    def buckets(self):
        """List of (exclusive upper bound, cumulative count) for the non-empty buckets,
        in value units, then ``(inf, count)``."""
        self._ready()
        cdef size_t nb = omx_hist_n_buckets(self._h), i
        cdef uint64_t *snap = <uint64_t *>malloc(nb * sizeof(uint64_t))
        cdef uint64_t cum = 0
        if snap is NULL:
            raise MemoryError()
        cdef list out = []
        try:
            omx_hist_snapshot(self._h, snap)
            for i in range(nb):
                if snap[i]:
                    cum += snap[i]
                    out.append((omx_hist_bucket_upper(self._h, i), cum))
        finally:
            free(snap)
        out.append((INFINITY, cum))
        return out

    # -- combining and serialization ---------------------------------------------

    def merge(self, other):
        """Add ``other``'s counts into this histogram (same layout required)."""
        self._ready()
        cdef LatencyHistogram o
        if isinstance(other, LatencyHistogram):
            o = <LatencyHistogram>other
            o._ready()
        elif hasattr(other, "to_bytes") and hasattr(other, "significant_figures"):
            _check_same_layout(self, other)
            o = LatencyHistogram.from_bytes(other.to_bytes())
        else:
            raise TypeError(f"can only merge a LatencyHistogram, not {type(other).__name__}")
        _check_same_layout(self, o)
        omx_hist_merge(self._h, o._h)

    def reset(self):
        """Forget every recorded value (the layout stays)."""
        self._ready()
        omx_hist_reset(self._h)

    def to_bytes(self):
        """Compact, versioned, CRC-checked serialization (identical to the pure twin's)."""
        self._ready()
        cdef size_t n = 0
        cdef uint8_t *buf = omx_hist_encode(self._h, &n)
        if buf is NULL:
            raise MemoryError()
        try:
            return PyBytes_FromStringAndSize(<char *>buf, <Py_ssize_t>n)
        finally:
            omx_hist_free_buffer(buf)

    @staticmethod
    def from_bytes(data):
        """Rebuild a histogram from ``to_bytes`` output; ValueError if corrupt/truncated."""
        if isinstance(data, str) or not PyObject_CheckBuffer(data):
            raise TypeError(f"from_bytes needs a bytes-like object, not {type(data).__name__}")
        cdef const uint8_t[::1] mv = memoryview(data).cast("B")
        cdef int err = 0
        cdef const uint8_t *p = NULL
        if mv.shape[0]:
            p = &mv[0]
        cdef omx_hist *h = omx_hist_decode(p, <size_t>mv.shape[0], &err)
        if h is NULL:
            raise _decode_error(err)
        cdef LatencyHistogram obj = LatencyHistogram.__new__(LatencyHistogram)
        obj._h = h
        return obj

    def __reduce__(self):
        return (_from_bytes, (self.to_bytes(),))

    def __copy__(self):
        return LatencyHistogram.from_bytes(self.to_bytes())

    def __deepcopy__(self, memo):
        return self.__copy__()

    def __repr__(self):
        if self._h is NULL:
            return "<LatencyHistogram (uninitialised)>"
        return (
            f"LatencyHistogram(lowest={self.lowest!r}, highest={self.highest!r}, "
            f"significant_figures={self.significant_figures}) <count={self.count}>"
        )


cdef int _check_same_layout(LatencyHistogram a, b) except -1:
    if (a.lowest != b.lowest or a.highest != b.highest
            or a.significant_figures != b.significant_figures):
        raise ValueError(
            "cannot merge histograms with different layouts "
            f"({a.lowest!r}, {a.highest!r}, {a.significant_figures}) vs "
            f"({b.lowest!r}, {b.highest!r}, {b.significant_figures})"
        )
    return 0


cdef double _check_q(object q) except? -1.0:
    cdef double qd = _to_double(q)
    if not (qd >= 0.0 and qd <= 1.0):
        raise ValueError(f"quantile must be in [0, 1], got {q!r}")
    return qd


cdef int _batch_error(ptrdiff_t i, double v) except -1:
    if isnan(v):
        raise ValueError(f"record_many: element {i} is NaN; nothing recorded")
    raise ValueError(f"record_many: element {i} is negative ({v!r}); nothing recorded")


cdef object _as_array(object values):
    """A contiguous 1-D float64 or int64 numpy array viewing/converting ``values``,
    or None for a plain iterable (handled element by element).  Same rules as
    _hist_py._as_array."""
    if isinstance(values, (str, bytes, bytearray)):
        raise TypeError(f"record_many needs numbers, not {type(values).__name__}")
    np = _numpy()
    if isinstance(values, np.ndarray):
        arr = values
    elif PyObject_CheckBuffer(values):
        arr = np.asarray(memoryview(values))
    else:
        return None
    kind = arr.dtype.kind
    if kind == "O":
        return None
    if kind not in "fiub":
        raise TypeError(f"record_many needs real numbers, not dtype {arr.dtype}")
    arr = arr.reshape(-1)
    if kind == "i" and arr.dtype.itemsize == 8:
        return np.ascontiguousarray(arr, dtype=np.int64)
    return np.ascontiguousarray(arr, dtype=np.float64)


@cython.final
cdef class _Trivial:
    """Benchmark reference: a no-op method with the same signature as ``record``."""

    def call(self, value, count=1):
        return None
