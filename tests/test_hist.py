"""LatencyHistogram: every method and error case, against both implementations.

Quantile accuracy is checked with hypothesis against numpy's nearest-rank percentile
("inverted_cdf"); native and pure must produce identical layouts and bytes.
"""

from __future__ import annotations

import array
import copy
import math
import pickle
import struct
import threading
import zlib
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from ollamamax.structures import _hist_py
from ollamamax.structures import hist as _hist

NATIVE = _hist.IMPLEMENTATIONS["c"]
needs_native = pytest.mark.skipif(NATIVE is None, reason="native _hist_c not built")

HYP = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
REL = {1: 1 / 16, 2: 1 / 128, 3: 1 / 1024, 4: 1 / 16384, 5: 1 / 131072}  # 1/(2S)

values_in_range = st.floats(min_value=1.0, max_value=3.6e9, allow_nan=False)


def rank_value(sorted_values: list[float], q: float) -> float:
    """Nearest-rank order statistic, the reference for quantile()."""
    n = len(sorted_values)
    if q <= 0.0:
        return sorted_values[0]
    r = max(math.ceil(q * float(n)), 1)
    return sorted_values[min(r, n) - 1]


# -- construction -------------------------------------------------------------------


def test_defaults_and_memory(impl) -> None:
    h = impl.LatencyHistogram()
    assert h.lowest == 1.0 and h.highest == 3_600_000_000.0 and h.significant_figures == 2
    assert h.bucket_count == 2028
    assert h.bucket_count * 8 <= 64 * 1024
    assert h.count == 0 and h.overflow == 0 and h.sum == 0.0
    assert "LatencyHistogram(lowest=1.0" in repr(h) and "count=0" in repr(h)


@pytest.mark.parametrize(
    ("kwargs", "exc"),
    [
        ({"lowest": 0}, ValueError),
        ({"lowest": -1}, ValueError),
        ({"lowest": math.nan}, ValueError),
        ({"lowest": math.inf}, ValueError),
        ({"highest": 1}, ValueError),
        ({"highest": 0.5}, ValueError),
        ({"highest": math.inf}, ValueError),
        ({"highest": math.nan}, ValueError),
        ({"significant_figures": 0}, ValueError),
        ({"significant_figures": 6}, ValueError),
        ({"significant_figures": 2.0}, TypeError),
        ({"lowest": "1"}, TypeError),
        ({"highest": None}, TypeError),
        ({"lowest": 1e-300, "highest": 1e300, "significant_figures": 5}, ValueError),
        ({"lowest": 5e-324}, ValueError),
    ],
)
def test_invalid_constructor(impl, kwargs, exc) -> None:
    with pytest.raises(exc):
        impl.LatencyHistogram(**kwargs)


def test_constructor_is_keyword_only(impl) -> None:
    with pytest.raises(TypeError):
        impl.LatencyHistogram(1, 100)


def test_reinitialising_is_refused(impl) -> None:
    h = impl.LatencyHistogram()
    h.record(5)
    with pytest.raises(RuntimeError):
        h.__init__(highest=10)
    assert h.count == 1 and h.highest == 3.6e9


@pytest.mark.parametrize("sf", [1, 2, 3, 4, 5])
def test_layouts_agree_between_impls(sf) -> None:
    pure = _hist_py.LatencyHistogram(lowest=0.5, highest=1e6, significant_figures=sf)
    if NATIVE is not None:
        nat = NATIVE.LatencyHistogram(lowest=0.5, highest=1e6, significant_figures=sf)
        assert nat.bucket_count == pure.bucket_count


# -- record ---------------------------------------------------------------------------


def test_record_basic_stats(impl) -> None:
    h = impl.LatencyHistogram()
    for v in (5, 1.5, 250.25, 1000):
        h.record(v)
    assert h.count == 4
    assert h.min == 1.5 and h.max == 1000.0
    assert h.sum == 5 + 1.5 + 250.25 + 1000
    assert h.mean == pytest.approx((5 + 1.5 + 250.25 + 1000) / 4)


def test_record_count_argument(impl) -> None:
    h = impl.LatencyHistogram()
    h.record(10, 5)
    h.record(20, count=0)
    h.record(30, True)
    assert h.count == 6 and h.sum == 80.0 and h.max == 30.0
    with pytest.raises(ValueError):
        h.record(10, -1)
    with pytest.raises(TypeError):
        h.record(10, 1.5)
    with pytest.raises(TypeError):
        h.record(10, "2")
    assert h.count == 6


@pytest.mark.parametrize("bad", [-1, -0.001, -math.inf, math.nan, -(10**400)])
def test_record_rejects_negative_and_nan(impl, bad) -> None:
    h = impl.LatencyHistogram()
    with pytest.raises(ValueError):
        h.record(bad)
    assert h.count == 0


@pytest.mark.parametrize("bad", ["1", b"1", None, 1j, [1], object()])
def test_record_rejects_non_numbers(impl, bad) -> None:
    h = impl.LatencyHistogram()
    with pytest.raises(TypeError):
        h.record(bad)
    assert h.count == 0


@pytest.mark.parametrize(
    "value", [np.float64(3.5), np.float32(3.5), np.int64(3), np.uint8(3), Decimal("3.5"), Fraction(7, 2), True]
)
def test_record_accepts_real_numbers(impl, value) -> None:
    h = impl.LatencyHistogram()
    h.record(value)
    assert h.count == 1 and h.max == float(value)


def test_negative_zero_is_zero(impl) -> None:
    h = impl.LatencyHistogram()
    h.record(-0.0)
    assert h.count == 1 and math.copysign(1.0, h.min) == 1.0 and h.max == 0.0


def test_overflow_clamps_to_highest(impl) -> None:
    h = impl.LatencyHistogram(lowest=1, highest=1000)
    h.record(500)
    h.record(2000)
    h.record(math.inf)
    h.record(10**400)  # beyond the double range: +inf, clamped
    h.record(5000, count=3)
    assert h.count == 7 and h.overflow == 6
    assert h.max == 1000.0 and h.sum == 500 + 6 * 1000
    assert h.quantile(1.0) == 1000.0
    assert h.quantile(0.5) == pytest.approx(1000, rel=REL[2])


def test_below_lowest_goes_to_lowest_bucket(impl) -> None:
    h = impl.LatencyHistogram(lowest=10, highest=1e6)
    h.record(0)
    h.record(3)
    h.record(10)
    h.record(10.1)
    assert h.count == 4 and h.min == 0.0 and h.overflow == 0
    bk = h.buckets()
    assert len(bk) == 2 and bk[0][1] == 4 and bk[0][0] == pytest.approx(10 * (1 + 1 / 64))
    # the lowest bucket answers its midpoint, clamped to [min, max]
    assert h.quantile(0.5) == pytest.approx(10 * (1 + 1 / 128))
    assert h.quantile(0.0) == 0.0
    z = impl.LatencyHistogram()
    z.record(0, 10)
    assert z.quantiles([0, 0.5, 1]) == [0.0, 0.0, 0.0]


# -- empty histogram and quantile arguments --------------------------------------------


def test_empty_histogram_answers_nan(impl) -> None:
    h = impl.LatencyHistogram()
    assert math.isnan(h.quantile(0.5)) and math.isnan(h.quantile(0)) and math.isnan(h.quantile(1))
    assert all(math.isnan(x) for x in h.quantiles([0.1, 0.9]))
    assert math.isnan(h.min) and math.isnan(h.max) and math.isnan(h.mean)
    assert h.buckets() == [(math.inf, 0)]


@pytest.mark.parametrize("q", [-0.01, 1.01, math.nan, math.inf, -math.inf])
def test_quantile_out_of_range(impl, q) -> None:
    h = impl.LatencyHistogram()
    h.record(1)
    with pytest.raises(ValueError):
        h.quantile(q)
    with pytest.raises(ValueError):
        h.quantiles([0.5, q])


@pytest.mark.parametrize("q", ["0.5", None, 0.5j])
def test_quantile_wrong_type(impl, q) -> None:
    h = impl.LatencyHistogram()
    with pytest.raises(TypeError):
        h.quantile(q)
    with pytest.raises(TypeError):
        h.quantiles([q])
    with pytest.raises(TypeError):
        h.quantiles(5)


def test_quantile_ends_are_exact(impl) -> None:
    h = impl.LatencyHistogram()
    h.record_many([3.3, 77.7, 1234.5])
    assert h.quantile(0) == 3.3 and h.quantile(1) == 1234.5
    assert h.quantile(0.5) == pytest.approx(77.7, rel=REL[2])


def test_quantiles_keep_order(impl) -> None:
    h = impl.LatencyHistogram()
    h.record_many(np.arange(1, 10001, dtype=np.float64))
    qs = [0.99, 0.0, 0.5, 1.0, 0.25, 0.5]
    got = h.quantiles(qs)
    assert got == [h.quantile(q) for q in qs]
    assert got[1] == 1.0 and got[3] == 10000.0
    assert h.quantiles([]) == []
    assert h.quantiles(iter([0.5])) == [h.quantile(0.5)]


# -- record_many ------------------------------------------------------------------------

DATA = [0.0, 0.5, 1.0, 7.0, 99.0, 1e3, 123456.0, 5e9]


@pytest.mark.parametrize(
    "make",
    [
        lambda: np.array(DATA, dtype=np.float64),
        lambda: np.array(DATA, dtype=np.float32),
        lambda: np.array(DATA[:-2] + [1000.0, 60000.0], dtype=np.float16),
        lambda: np.array(DATA, dtype=np.float64).reshape(2, 4),
        lambda: np.repeat(np.array(DATA, dtype=np.float64), 2)[::2],
        lambda: np.array(DATA, dtype=np.dtype(">f8")),
        lambda: array.array("d", DATA),
        lambda: memoryview(array.array("d", DATA)),
        lambda: list(DATA),
        lambda: tuple(DATA),
        lambda: (x for x in DATA),
        lambda: np.array(DATA, dtype=object),
    ],
)
def test_record_many_float_inputs(impl, make) -> None:
    src = make()
    if isinstance(src, np.ndarray) and src.dtype != object:
        expected = np.asarray(src, dtype=np.float64).ravel().tolist()
    else:
        expected = list(DATA)
    h, ref = impl.LatencyHistogram(), impl.LatencyHistogram()
    h.record_many(src)
    for v in expected:
        ref.record(v)
    assert h.count == len(DATA) and h.overflow == ref.overflow
    assert h.buckets() == ref.buckets()
    assert h.min == ref.min and h.max == ref.max


@pytest.mark.parametrize(
    "make",
    [
        lambda v: np.array(v, dtype=np.int64),
        lambda v: np.array(v, dtype=np.int32),
        lambda v: np.array(v, dtype=np.uint64),
        lambda v: np.array(v, dtype=np.uint16),
        lambda v: array.array("q", v),
        lambda v: array.array("i", v),
        lambda v: array.array("B", v),
        lambda v: list(v),
    ],
)
def test_record_many_int_inputs(impl, make) -> None:
    vals = [0, 1, 2, 3, 100, 200, 255]
    h, ref = impl.LatencyHistogram(), impl.LatencyHistogram()
    h.record_many(make(vals))
    for v in vals:
        ref.record(v)
    assert h.count == len(vals) and h.buckets() == ref.buckets()
    assert h.min == 0.0 and h.max == 255.0 and h.sum == float(sum(vals))


def test_record_many_bool_and_empty(impl) -> None:
    h = impl.LatencyHistogram()
    h.record_many(np.array([True, False, True]))
    assert h.count == 3 and h.sum == 2.0
    for empty in ([], np.array([], dtype=np.float64), np.array([], dtype=np.int64), array.array("d"), ()):
        h.record_many(empty)
    assert h.count == 3


@pytest.mark.parametrize(
    ("batch", "exc"),
    [
        (np.array([1.0, 2.0, -1.0]), ValueError),
        (np.array([1.0, math.nan]), ValueError),
        (np.array([5, -3], dtype=np.int64), ValueError),
        (np.array([5, -3], dtype=np.int8), ValueError),
        (array.array("d", [1.0, -0.5]), ValueError),
        ([1.0, 2.0, -7], ValueError),
        ([1.0, math.nan], ValueError),
        ([1.0, "2"], TypeError),
        ([1.0, None], TypeError),
        (np.array([1, "x"], dtype=object), TypeError),
        (np.array([1 + 1j]), TypeError),
        (np.array(["1"]), TypeError),
        (np.array([1], dtype="datetime64[s]"), TypeError),
        ("123", TypeError),
        (b"123", TypeError),
        (bytearray(b"1"), TypeError),
        (5, TypeError),
        (None, TypeError),
    ],
)
def test_record_many_errors_record_nothing(impl, batch, exc) -> None:
    h = impl.LatencyHistogram()
    h.record(42)
    before = h.to_bytes()
    with pytest.raises(exc):
        h.record_many(batch)
    assert h.to_bytes() == before and h.count == 1


def test_record_many_error_names_first_bad_element(impl) -> None:
    h = impl.LatencyHistogram()
    a = np.ones(5000)
    a[3000] = -2.0
    a[4000] = math.nan
    with pytest.raises(ValueError, match="element 3000 is negative"):
        h.record_many(a)
    a[3000] = 1.0
    with pytest.raises(ValueError, match="element 4000 is NaN"):
        h.record_many(a)
    assert h.count == 0


def test_record_many_large_batch_matches_record_loop(impl) -> None:
    rng = np.random.default_rng(7)
    a = rng.lognormal(6, 3, 50_000)  # > the GIL-release threshold in C
    a[::97] = 0.0
    h, ref = impl.LatencyHistogram(), impl.LatencyHistogram()
    h.record_many(a)
    for v in a[:2000].tolist():
        ref.record(v)
    ref.record_many(a[2000:])
    assert h.count == ref.count == a.size
    assert h.buckets() == ref.buckets()
    assert h.overflow == ref.overflow == int(np.count_nonzero(a > 3.6e9))
    assert h.min == ref.min and h.max == ref.max
    assert h.sum == pytest.approx(float(np.minimum(a, 3.6e9).sum()), rel=1e-12)


# -- accuracy -----------------------------------------------------------------------------


@HYP
@given(
    values=st.lists(values_in_range, min_size=1, max_size=300),
    qs=st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=1, max_size=8),
)
def test_quantile_relative_error_vs_numpy(impl, values, qs) -> None:
    h = impl.LatencyHistogram()
    h.record_many(values)
    s = sorted(values)
    got = h.quantiles(qs)
    for q, x in zip(qs, got):
        exact = rank_value(s, q)
        assert abs(x - exact) <= REL[2] * exact * (1 + 1e-12)
        npv = float(np.percentile(values, q * 100, method="inverted_cdf"))
        # numpy's rank can differ by one at float ties of q*n; accept its neighbours
        r = max(math.ceil(q * len(s)), 1)
        neigh = s[max(r - 2, 0) : r + 1]
        assert npv in neigh
        if npv == exact:
            assert abs(x - npv) <= REL[2] * npv * (1 + 1e-12)


@pytest.mark.parametrize("sf", [1, 2, 3, 4, 5])
def test_relative_error_bound_per_significant_figures(impl, sf) -> None:
    h = impl.LatencyHistogram(lowest=1, highest=1e7, significant_figures=sf)
    rng = np.random.default_rng(sf)
    a = rng.lognormal(7, 2.5, 20_000).clip(1, 1e7)
    h.record_many(a)
    s = np.sort(a)
    qs = np.linspace(0, 1, 201).tolist()
    worst = max(abs(x - rank_value(s, q)) / rank_value(s, q) for q, x in zip(qs, h.quantiles(qs)))
    assert worst <= REL[sf] * (1 + 1e-12) and REL[sf] <= 10.0**-sf


@HYP
@given(
    values=st.lists(st.floats(min_value=0.0, max_value=1e12, allow_nan=False), min_size=0, max_size=200)
)
def test_buckets_are_prometheus_cumulative(impl, values) -> None:
    h = impl.LatencyHistogram(lowest=1, highest=1e10)
    h.record_many(values)
    bk = h.buckets()
    assert bk[-1] == (math.inf, len(values))
    clamped = [min(v, 1e10) for v in values]
    prev_ub, prev_cum = -1.0, 0
    for ub, cum in bk[:-1]:
        assert ub > prev_ub and cum > prev_cum
        assert cum == sum(1 for v in clamped if v < ub)  # exclusive upper bounds
        prev_ub, prev_cum = ub, cum


# -- merge / reset ------------------------------------------------------------------------


def test_merge(impl) -> None:
    a, b = impl.LatencyHistogram(), impl.LatencyHistogram()
    a.record_many([1, 2, 3])
    b.record_many([100, 5e9])
    a.merge(b)
    assert a.count == 5 and a.overflow == 1 and a.max == 3.6e9 and a.min == 1.0
    assert a.sum == 6 + 100 + 3.6e9
    assert b.count == 2
    a.merge(impl.LatencyHistogram())
    assert a.count == 5
    a.merge(a)
    assert a.count == 10 and a.overflow == 2 and a.sum == 2 * (6 + 100 + 3.6e9)


def test_merge_errors(impl) -> None:
    a = impl.LatencyHistogram()
    for other in (
        impl.LatencyHistogram(highest=1e6),
        impl.LatencyHistogram(lowest=2),
        impl.LatencyHistogram(significant_figures=3),
    ):
        with pytest.raises(ValueError, match="different layouts"):
            a.merge(other)
    for bad in (None, 3, "x", [1, 2]):
        with pytest.raises(TypeError):
            a.merge(bad)
    assert a.count == 0


def test_reset(impl) -> None:
    h = impl.LatencyHistogram()
    empty = h.to_bytes()
    h.record_many([1, 5e9, 77])
    h.reset()
    assert h.count == 0 and h.overflow == 0 and h.sum == 0.0 and math.isnan(h.min)
    assert h.to_bytes() == empty and h.buckets() == [(math.inf, 0)]
    h.record(3)
    assert h.count == 1 and h.min == 3.0 and h.max == 3.0


# -- serialization ------------------------------------------------------------------------


def test_round_trip_and_compactness(impl) -> None:
    H = impl.LatencyHistogram
    h = H(lowest=0.25, highest=1e8, significant_figures=3)
    empty = h.to_bytes()
    assert empty[:4] == b"OMXH" and empty[4] == 1 and len(empty) == 51
    h.record_many(np.random.default_rng(3).lognormal(5, 2, 10_000))
    h.record(5e9)
    b = h.to_bytes()
    assert len(b) < h.bucket_count * 3  # sparse varints, not 8 bytes per bucket
    g = H.from_bytes(b)
    assert g.to_bytes() == b
    assert (g.lowest, g.highest, g.significant_figures) == (0.25, 1e8, 3)
    assert (g.count, g.overflow, g.sum, g.min, g.max) == (h.count, h.overflow, h.sum, h.min, h.max)
    assert g.buckets() == h.buckets() and g.quantiles([0.1, 0.5, 0.999]) == h.quantiles([0.1, 0.5, 0.999])
    assert H.from_bytes(bytearray(b)).to_bytes() == b
    assert H.from_bytes(memoryview(b)).to_bytes() == b
    assert H.from_bytes(empty).count == 0
    h.record(1)
    one = H()
    one.record(12345)
    assert len(one.to_bytes()) <= 60


def test_pickle_and_copy(impl) -> None:
    h = impl.LatencyHistogram(highest=1e6)
    h.record_many([1, 2, 3e6])
    for g in (pickle.loads(pickle.dumps(h)), copy.copy(h), copy.deepcopy(h)):
        assert type(g) is type(h) and g.to_bytes() == h.to_bytes() and g is not h
    g.record(5)
    assert h.count == 3


def _reseal(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def test_from_bytes_rejects_corruption(impl) -> None:
    H = impl.LatencyHistogram
    h = H()
    h.record_many([1, 2, 300, 4e4, 5e9])
    b = h.to_bytes()
    for cut in range(len(b)):
        with pytest.raises(ValueError):
            H.from_bytes(b[:cut])
    with pytest.raises(ValueError):
        H.from_bytes(b + b"\x00")
    for pos in range(len(b)):
        for bit in (0x01, 0x80):
            bad = bytearray(b)
            bad[pos] ^= bit
            with pytest.raises(ValueError):
                H.from_bytes(bytes(bad))
    with pytest.raises(ValueError, match="bad magic"):
        H.from_bytes(b"XXXX" + b[4:])
    with pytest.raises(ValueError, match="version"):
        H.from_bytes(_reseal(b[:4] + b"\x02" + b[5:-4]))
    with pytest.raises(ValueError, match="checksum"):
        H.from_bytes(b[:-1] + bytes([b[-1] ^ 1]))
    with pytest.raises(ValueError, match="truncated"):
        H.from_bytes(b"")


def _encode(sf=2, lowest=1.0, highest=3.6e9, s=1.0, mn=1.0, mx=1.0, ovf=b"\x00", body=b"\x00\x01"):
    head = struct.pack("<4sBBddddd", b"OMXH", 1, sf, lowest, highest, s, mn, mx)
    return _reseal(head + ovf + body)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sf": 0},
        {"sf": 9},
        {"lowest": 0.0},
        {"highest": 0.5},
        {"highest": math.nan},
        {"body": b"\xff\x0f\x01"},  # bucket index beyond the layout
        {"body": b"\x00\x00"},  # zero count
        {"body": b"\x00"},  # truncated pair
        {"body": b"\x00\x80"},  # truncated varint
        {"body": b"\x00" + b"\xff" * 10 + b"\x01"},  # varint over 64 bits
        {"ovf": b"\x02"},  # overflow > total
        {"ovf": b"\x80"},  # truncated overflow varint
        {"mn": -1.0},
        {"mn": -0.0, "mx": 0.0},
        {"mn": 2.0, "mx": 1.0},
        {"mx": 4e9},
        {"s": -1.0},
        {"mn": math.nan},
        {"body": b"", "s": 1.0},  # empty but non-zero sum
        {"body": b"", "s": 0.0, "mn": 1.0, "mx": 0.0},  # empty but min != inf
    ],
)
def test_from_bytes_rejects_inconsistent_content(impl, kwargs) -> None:
    with pytest.raises(ValueError, match="corrupt"):
        impl.LatencyHistogram.from_bytes(_encode(**kwargs))


def test_from_bytes_accepts_hand_built(impl) -> None:
    h = impl.LatencyHistogram.from_bytes(_encode())
    assert h.count == 1 and h.quantile(0.5) == 1.0
    e = impl.LatencyHistogram.from_bytes(_encode(body=b"", s=0.0, mn=math.inf, mx=0.0))
    assert e.count == 0


@pytest.mark.parametrize("bad", ["abc", 5, None, [1, 2]])
def test_from_bytes_wrong_type(impl, bad) -> None:
    with pytest.raises(TypeError):
        impl.LatencyHistogram.from_bytes(bad)


# -- native <-> pure interoperability ------------------------------------------------------


def _apply_ops(H, ops):
    h = H(lowest=0.5, highest=1e9)
    for op, arg in ops:
        if op == "record":
            h.record(*arg)
        elif op == "many":
            h.record_many(np.asarray(arg, dtype=np.float64))
        elif op == "ints":
            h.record_many(np.asarray(arg, dtype=np.int64))
        elif op == "list":
            h.record_many(arg)
        elif op == "reset":
            h.reset()
    return h


op_strategy = st.one_of(
    st.tuples(st.just("record"), st.tuples(st.floats(0, 2e9), st.integers(0, 5))),
    st.tuples(st.just("many"), st.lists(st.floats(0, 2e9), max_size=30)),
    st.tuples(st.just("ints"), st.lists(st.integers(0, 2**40), max_size=30)),
    st.tuples(st.just("list"), st.lists(st.floats(0, 1e4), max_size=10)),
    st.tuples(st.just("reset"), st.none()),
)


@needs_native
@HYP
@given(ops=st.lists(op_strategy, max_size=12), big=st.integers(0, 3))
def test_native_and_pure_are_byte_identical(ops, big) -> None:
    if big:  # also exercise the large-batch (private histogram) path in C
        ops = [*ops, ("many", np.random.default_rng(big).lognormal(4, 3, 1000 * big).tolist())]
    n = _apply_ops(NATIVE.LatencyHistogram, ops)
    p = _apply_ops(_hist_py.LatencyHistogram, ops)
    nb, pb = n.to_bytes(), p.to_bytes()
    assert nb == pb
    assert n.buckets() == p.buckets()
    qs = [0, 0.01, 0.5, 0.9, 0.999, 1]
    assert n.quantiles(qs) == p.quantiles(qs) or (n.count == 0 and p.count == 0)
    assert (n.count, n.overflow, n.sum) == (p.count, p.overflow, p.sum)
    assert NATIVE.LatencyHistogram.from_bytes(pb).to_bytes() == pb
    assert _hist_py.LatencyHistogram.from_bytes(nb).to_bytes() == nb


@needs_native
def test_merge_across_implementations() -> None:
    n, p = NATIVE.LatencyHistogram(), _hist_py.LatencyHistogram()
    n.record_many([1, 2, 3])
    p.record_many([10, 20, 5e9])
    n.merge(p)
    p.merge(n)
    assert n.count == 6 and p.count == 9 and n.overflow == 1 and p.overflow == 2
    with pytest.raises(ValueError):
        n.merge(_hist_py.LatencyHistogram(highest=10))
    with pytest.raises(ValueError):
        p.merge(NATIVE.LatencyHistogram(highest=10))


@needs_native
def test_native_uninitialised_instance_is_safe() -> None:
    h = NATIVE.LatencyHistogram.__new__(NATIVE.LatencyHistogram)
    with pytest.raises(RuntimeError):
        h.record(1)
    with pytest.raises(RuntimeError):
        h.quantile(0.5)
    assert "uninitialised" in repr(h)


# -- model-based state machine ------------------------------------------------------------


class HistModel(RuleBasedStateMachine):
    """Both implementations (when built) against a list-of-values model."""

    def __init__(self) -> None:
        super().__init__()
        self.impls = [_hist_py.LatencyHistogram] + ([NATIVE.LatencyHistogram] if NATIVE else [])
        self.hs = [H(lowest=1, highest=1e6) for H in self.impls]
        self.model: list[float] = []

    @rule(v=st.floats(0, 2e6), c=st.integers(1, 3))
    def record(self, v, c) -> None:
        for h in self.hs:
            h.record(v, c)
        self.model += [min(v, 1e6)] * c

    @rule(vs=st.lists(st.floats(0, 2e6), max_size=20))
    def record_many(self, vs) -> None:
        for h in self.hs:
            h.record_many(vs)
        self.model += [min(v, 1e6) for v in vs]

    @rule(vs=st.lists(st.floats(0, 2e6), max_size=20), kind=st.integers(0, 1))
    def merge(self, vs, kind) -> None:
        for h in self.hs:
            other = self.impls[kind % len(self.impls)](lowest=1, highest=1e6)
            other.record_many(vs)
            h.merge(other)
        self.model += [min(v, 1e6) for v in vs]

    @rule()
    def reset(self) -> None:
        for h in self.hs:
            h.reset()
        self.model = []

    @rule()
    def round_trip(self) -> None:
        self.hs = [type(h).from_bytes(h.to_bytes()) for h in self.hs]

    @precondition(lambda self: len(self.hs) == 2)
    @invariant()
    def identical(self) -> None:
        assert self.hs[0].to_bytes() == self.hs[1].to_bytes()

    @invariant()
    def agrees_with_model(self) -> None:
        s = sorted(self.model)
        for h in self.hs:
            assert h.count == len(s)
            if not s:
                assert math.isnan(h.quantile(0.5))
                continue
            assert h.min == s[0] and h.max == s[-1]
            assert h.sum == pytest.approx(math.fsum(s), rel=1e-9, abs=1e-9)
            for q, x in zip((0.0, 0.3, 0.5, 0.99, 1.0), h.quantiles([0.0, 0.3, 0.5, 0.99, 1.0])):
                exact = rank_value(s, q)
                tol = REL[2] * exact if exact >= 1 else 1 + 1 / 64
                assert abs(x - exact) <= tol * (1 + 1e-12)


TestHistModel = HistModel.TestCase
TestHistModel.settings = settings(max_examples=40, stateful_step_count=15, deadline=None)


# -- threads -----------------------------------------------------------------------------


def test_threaded_record_sums_exactly(impl) -> None:
    h = impl.LatencyHistogram(highest=1e5)
    n_threads, per = 4, 3000
    barrier = threading.Barrier(n_threads)

    def work(t: int) -> None:
        barrier.wait()
        for i in range(per):
            h.record((t * 7919 + i * 31) % 200_000, 1)
        h.record_many(np.arange(per, dtype=np.int64) * (t + 1))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    ref = impl.LatencyHistogram(highest=1e5)
    for t in range(n_threads):
        for i in range(per):
            ref.record((t * 7919 + i * 31) % 200_000, 1)
        ref.record_many(np.arange(per, dtype=np.int64) * (t + 1))
    assert h.count == ref.count == 2 * n_threads * per
    assert h.buckets() == ref.buckets()
    assert h.overflow == ref.overflow and h.sum == ref.sum  # integers: exact in any order
    assert h.min == ref.min and h.max == ref.max


# -- selector -----------------------------------------------------------------------------


def test_selector() -> None:
    assert _hist.PUBLIC == ("LatencyHistogram",)
    assert _hist.IMPLEMENTATIONS["py"] is _hist_py
    expected = NATIVE.LatencyHistogram if NATIVE is not None else _hist_py.LatencyHistogram
    assert _hist.LatencyHistogram is expected


@pytest.mark.slow
def test_threaded_stress_with_readers(impl) -> None:
    """Writers (record and large GIL-free record_many) race readers; totals stay exact."""
    h = impl.LatencyHistogram(highest=1e6)
    n_threads, rounds = 6, 150
    batch = np.random.default_rng(5).lognormal(6, 3, 40_000)
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer(t: int) -> None:
        try:
            for r in range(rounds):
                h.record_many(batch)
                for i in range(200):
                    h.record(float((t * 131 + r * 17 + i) % 5000))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def reader() -> None:
        other = impl.LatencyHistogram(highest=1e6)
        try:
            while not stop.is_set():
                qs = h.quantiles([0.1, 0.5, 0.99])
                assert all(math.isnan(x) for x in qs) or qs == sorted(qs)
                other.merge(impl.LatencyHistogram.from_bytes(h.to_bytes()))
                other.reset()
                h.buckets()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    ws = [threading.Thread(target=writer, args=(t,)) for t in range(n_threads)]
    rd = threading.Thread(target=reader)
    rd.start()
    for w in ws:
        w.start()
    for w in ws:
        w.join(timeout=240)
    stop.set()
    rd.join(timeout=60)
    assert not errors
    assert h.count == n_threads * rounds * (batch.size + 200)
    ref = impl.LatencyHistogram(highest=1e6)
    for t in range(n_threads):
        for r in range(rounds):
            ref.record_many(batch)
            for i in range(200):
                ref.record(float((t * 131 + r * 17 + i) % 5000))
    assert h.buckets() == ref.buckets() and h.overflow == ref.overflow
    assert h.min == ref.min and h.max == ref.max
