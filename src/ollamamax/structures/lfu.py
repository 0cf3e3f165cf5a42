"""Selects the native or the pure-Python ``LFUCache`` (see ``ollamamax._compat``)."""

from __future__ import annotations

from .._compat import load_native
from . import _lfu_py

__all__ = ["CacheInfo", "LFUCache"]

PUBLIC = ("LFUCache",)

_c = load_native("structures._lfu_c")
IMPLEMENTATIONS = {"c": _c, "py": _lfu_py}

LFUCache = (_c or _lfu_py).LFUCache
CacheInfo = _lfu_py.CacheInfo
