"""Selects the native or the pure-Python ``ObjectPool`` (see ``ollamamax._ext``)."""

from __future__ import annotations

from . import _pool_py
from ._ext import load_native

__all__ = ["ObjectPool", "PoolInfo"]

PUBLIC = ("ObjectPool",)

_c = load_native("_pool_c")
IMPLEMENTATIONS = {"c": _c, "py": _pool_py}

ObjectPool = (_c or _pool_py).ObjectPool
PoolInfo = _pool_py.PoolInfo
