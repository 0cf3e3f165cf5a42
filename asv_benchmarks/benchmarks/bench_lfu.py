"""asv benchmarks for LFUCache (native vs pure, and third-party peers).

Conventions follow numpy's asv suite: ``params``/``param_names``, ``setup`` builds the
fixture, ``time_*`` times one unit of work, ``peakmem_*`` the peak memory and
``track_*`` a non-time figure (hit ratios).  Traces are Zipf(0.9) on 100k keys,
capacity 10k, generated in ``setup`` with fixed seeds.
"""

from __future__ import annotations

import numpy as np

try:
    from ollamamax.structures import lfu as _lfu
except ImportError:
    try:  # commits before the structures/ package
        from ollamamax import _lfu  # type: ignore[no-redef]
    except ImportError:  # a commit from before this structure: asv shows n/a, not failed
        _lfu = None  # type: ignore[assignment]

# Fixed, not filtered by what is built: asv discovers the parameters once and indexes
# into them on every commit, so the list must not change with the commit or the build.
# A missing implementation is skipped in setup (_ns raises NotImplementedError).
IMPLS = ["c", "py"]
CAPACITY = 10_000
N_KEYS = 100_000


def _ns(impl: str):
    if _lfu is None:
        raise NotImplementedError("ollamamax.structures.lfu is not in this commit")  # asv skips
    ns = getattr(_lfu, "IMPLEMENTATIONS", {}).get(impl)
    if ns is None:
        raise NotImplementedError(f"implementation {impl!r} not available")  # asv skips
    return ns


def _zipf(n_ops: int, seed: int, s: float = 0.9) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = np.arange(1, N_KEYS + 1, dtype=np.float64) ** -s
    cdf = np.cumsum(w)
    cdf /= cdf[-1]
    perm = rng.permutation(N_KEYS).astype(np.int64)
    return perm[np.minimum(np.searchsorted(cdf, rng.random(n_ops), side="right"), N_KEYS - 1)]


def _trace(kind: str, n_ops: int) -> list:
    if kind == "zipf":
        return _zipf(n_ops, 1).tolist()
    if kind == "shift":
        half = n_ops // 2
        return np.concatenate([_zipf(half, 2), _zipf(n_ops - half, 3) + N_KEYS]).tolist()
    # one-off sequential scans: 2000 unique keys after every 8000 Zipf ops
    z = _zipf(n_ops, 4).tolist()
    out: list = []
    nxt = 10 * N_KEYS
    for i in range(0, n_ops, 8000):
        out += z[i:i + 8000] + list(range(nxt, nxt + 2000))
        nxt += 2000
    return out[:n_ops]


def _get_or_set(cache, keys: list, start: int = 0) -> int:
    get = cache.get
    hits = 0
    for i, k in enumerate(keys):
        if get(k) is None:
            cache[k] = k
        elif i >= start:
            hits += 1
    return hits


class LFUGetOrSet:
    """A 100k-op Zipf(0.9) get-or-set loop on a warm cache."""

    params = [IMPLS + ["dict"]]
    param_names = ["impl"]
    timeout = 120

    def setup(self, impl: str) -> None:
        self.keys = _zipf(100_000, 5).tolist()
        self.cache = {} if impl == "dict" else _ns(impl).LFUCache(CAPACITY)
        _get_or_set(self.cache, _zipf(100_000, 6).tolist())

    def time_get_or_set(self, impl: str) -> None:
        _get_or_set(self.cache, self.keys)


class LFUOps:
    """Single-operation costs on a cache holding 1000 keys (1000 calls each)."""

    params = [IMPLS]
    param_names = ["impl"]

    def setup(self, impl: str) -> None:
        self.cache = _ns(impl).LFUCache(CAPACITY)
        for i in range(1000):
            self.cache[i] = b"value"

    def time_get_hit(self, impl: str) -> None:
        get = self.cache.get
        for i in range(1000):
            get(i)

    def time_get_miss(self, impl: str) -> None:
        get = self.cache.get
        for i in range(-1000, 0):
            get(i)

    def time_contains(self, impl: str) -> None:
        c = self.cache
        for i in range(1000):
            i in c  # noqa: B015

    def time_set_existing(self, impl: str) -> None:
        s = self.cache.set
        for i in range(1000):
            s(i, b"other")


class LFUHitRatio:
    """Hit ratios (``track_``) on 300k-op traces; shift is measured on the second half."""

    params = [IMPLS, ["zipf", "shift", "scan"]]
    param_names = ["impl", "trace"]
    timeout = 300
    unit = "ratio"

    def setup(self, impl: str, trace: str) -> None:
        _ns(impl)  # skip before building the trace when the implementation is missing
        self.keys = _trace(trace, 300_000)

    def track_hit_ratio(self, impl: str, trace: str) -> float:
        start = len(self.keys) // 2 if trace == "shift" else 0
        hits = _get_or_set(_ns(impl).LFUCache(CAPACITY), self.keys, start)
        return hits / (len(self.keys) - start)


class LFUMemory:
    """Peak memory of a full cache of 10k small bytes values."""

    params = [IMPLS]
    param_names = ["impl"]

    def setup(self, impl: str) -> None:
        _ns(impl)  # asv skips (n/a) when the implementation is missing

    def peakmem_full_cache(self, impl: str) -> None:
        c = _ns(impl).LFUCache(CAPACITY)
        for i in range(2 * CAPACITY):
            c[i] = b"x" * 64
