"""Deterministic cache-access traces for the LFU benchmarks and hit-ratio tests.

Every generator takes a ``seed`` and returns a numpy ``int64`` array of keys, so a
trace is the same in every run and for every cache compared on it.

- :func:`zipf_trace`: ``n_ops`` draws from a Zipf(``s``) law over ``n_keys`` keys
  (rank ``r`` has probability proportional to ``r**-s``); ranks are mapped to keys
  through a random permutation so that "hot" does not mean "small integer".
- :func:`shifted_zipf_trace`: two halves with the same law but independent
  rank->key permutations: the hot set changes completely halfway through.
- :func:`scan_zipf_trace`: a Zipf trace with bursts of one-off sequential keys
  (never seen again) mixed in, the classic pattern that flushes an LRU cache.

Sizes used by the benchmarks: 1M operations, 100k keys, capacity 10k.
"""

from __future__ import annotations

import numpy as np

__all__ = ["hit_ratio", "scan_zipf_trace", "shifted_zipf_trace", "zipf_trace"]


def _zipf_ranks(rng: np.random.Generator, n_ops: int, n_keys: int, s: float) -> np.ndarray:
    weights = np.arange(1, n_keys + 1, dtype=np.float64) ** -s
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    ranks = np.searchsorted(cdf, rng.random(n_ops), side="right")
    return np.minimum(ranks, n_keys - 1).astype(np.int64)


def zipf_trace(n_ops: int = 1_000_000, n_keys: int = 100_000, s: float = 0.9, seed: int = 1) -> np.ndarray:
    """``n_ops`` keys drawn from Zipf(``s``) over ``n_keys`` keys."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n_keys).astype(np.int64)
    return perm[_zipf_ranks(rng, n_ops, n_keys, s)]


def shifted_zipf_trace(
    n_ops: int = 1_000_000, n_keys: int = 100_000, s: float = 0.9, seed: int = 2
) -> np.ndarray:
    """Zipf(``s``) whose hot set changes at ``n_ops // 2``.

    The second half draws from a disjoint key range (offset by ``n_keys``) with its
    own permutation, so nothing popular in the first half is requested again.
    """
    rng = np.random.default_rng(seed)
    half = n_ops // 2
    first = rng.permutation(n_keys).astype(np.int64)[_zipf_ranks(rng, half, n_keys, s)]
    second = rng.permutation(n_keys).astype(np.int64)[_zipf_ranks(rng, n_ops - half, n_keys, s)]
    return np.concatenate([first, second + n_keys])


def scan_zipf_trace(
    n_ops: int = 1_000_000,
    n_keys: int = 100_000,
    s: float = 0.9,
    scan_len: int = 2_000,
    scan_every: int = 8_000,
    seed: int = 3,
) -> np.ndarray:
    """Zipf(``s``) ops with a burst of ``scan_len`` one-off sequential keys after
    every ``scan_every`` Zipf ops (with the defaults 20% of all ops are scan ops).

    Scan keys start at ``n_keys`` and are never repeated.
    """
    rng = np.random.default_rng(seed)
    period = scan_every + scan_len
    n_periods = -(-n_ops // period)
    zipf = rng.permutation(n_keys).astype(np.int64)[_zipf_ranks(rng, n_periods * scan_every, n_keys, s)]
    out = np.empty(n_periods * period, dtype=np.int64)
    view = out.reshape(n_periods, period)
    view[:, :scan_every] = zipf.reshape(n_periods, scan_every)
    view[:, scan_every:] = n_keys + np.arange(n_periods * scan_len, dtype=np.int64).reshape(n_periods, scan_len)
    return out[:n_ops]


def hit_ratio(cache, trace, start: int = 0) -> float:
    """Replay ``trace`` as a get-or-set loop on ``cache`` (``get`` then ``cache[k] = k``
    on a miss); return the hit ratio over ``trace[start:]`` (the whole trace warms)."""
    keys = trace.tolist() if hasattr(trace, "tolist") else list(trace)
    get = cache.get
    hits = 0
    for i, k in enumerate(keys):
        if get(k) is None:
            cache[k] = k
        elif i >= start:
            hits += 1
    return hits / max(1, len(keys) - start)
