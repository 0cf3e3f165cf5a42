"""Selects the native or the pure-Python ``ObjectPool`` (see ``ollamamax._compat``)."""

from __future__ import annotations

from .._compat import load_native
from . import _pool_py

__all__ = ["ObjectPool", "PoolInfo"]

PUBLIC = ("ObjectPool",)

_c = load_native("structures._pool_c")
IMPLEMENTATIONS = {"c": _c, "py": _pool_py}

ObjectPool = (_c or _pool_py).ObjectPool
PoolInfo = _pool_py.PoolInfo
