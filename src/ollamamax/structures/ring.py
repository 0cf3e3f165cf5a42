"""Selector for RingQueue / AsyncRingQueue: native (Cython/C) or pure Python.

``IMPLEMENTATIONS["c"]`` binds the native ``RingQueue`` and an ``AsyncRingQueue``
subclass built on it; ``IMPLEMENTATIONS["py"]`` is the pure-Python twin.  The
module-level names are the selected implementation (native unless
``OLLAMAMAX_NO_EXTENSIONS`` is set or the extension is missing).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import TYPE_CHECKING, TypeVar

from .._compat import load_native
from . import _ring_py
from .exceptions import QueueEmpty, QueueFull

__all__ = ["AsyncRingQueue", "IMPLEMENTATIONS", "PUBLIC", "QueueEmpty", "QueueFull", "RingQueue"]

PUBLIC = ("RingQueue", "AsyncRingQueue", "QueueEmpty", "QueueFull")

_c = load_native("structures._ring_c")
_T = TypeVar("_T")

_py_ns = SimpleNamespace(
    RingQueue=_ring_py.RingQueue,
    AsyncRingQueue=_ring_py.AsyncRingQueue,
    QueueEmpty=QueueEmpty,
    QueueFull=QueueFull,
)

if _c is not None:

    _native_ring = _c.RingQueue

    class _NativeAsyncRingQueue(_ring_py.AsyncRingQueue[_T]):
        __slots__ = ()
        _ring_type = _native_ring

    _NativeAsyncRingQueue.__name__ = _NativeAsyncRingQueue.__qualname__ = "AsyncRingQueue"
    _c_ns: SimpleNamespace | None = SimpleNamespace(
        RingQueue=_c.RingQueue,
        AsyncRingQueue=_NativeAsyncRingQueue,
        QueueEmpty=QueueEmpty,
        QueueFull=QueueFull,
    )
else:
    _c_ns = None

IMPLEMENTATIONS: dict[str, SimpleNamespace | None] = {"c": _c_ns, "py": _py_ns}

if TYPE_CHECKING:
    from ._ring_py import AsyncRingQueue, RingQueue
else:
    _selected = _c_ns if _c_ns is not None else _py_ns
    RingQueue = _selected.RingQueue
    AsyncRingQueue = _selected.AsyncRingQueue
