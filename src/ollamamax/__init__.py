"""ollamamax: run many Ollama hosts as one.

The public names are resolved lazily (PEP 562) so that ``import ollamamax`` and the
``ollamamax`` command stay cheap: the native core, aiohttp and the dispatcher are
imported the first time one of their names is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "AsyncRingQueue",
    "Dispatcher",
    "LFUCache",
    "LatencyHistogram",
    "ObjectPool",
    "QueueEmpty",
    "QueueFull",
    "RingQueue",
    "__version__",
    "create_app",
]

# name -> module that defines it (relative to this package)
_LAZY = {
    "RingQueue": "._ring",
    "AsyncRingQueue": "._ring",
    "QueueEmpty": "._errors",
    "QueueFull": "._errors",
    "ObjectPool": "._pool",
    "LFUCache": "._lfu",
    "LatencyHistogram": "._hist",
    "Dispatcher": ".dispatch",
    "create_app": ".dispatch.app",
}

if TYPE_CHECKING:  # type checkers see the pure-Python specification
    from ._errors import QueueEmpty, QueueFull
    from ._hist_py import LatencyHistogram
    from ._lfu_py import LFUCache
    from ._pool_py import ObjectPool
    from ._ring_py import AsyncRingQueue, RingQueue
    from .dispatch import Dispatcher
    from .dispatch.app import create_app


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'ollamamax' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(mod, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
