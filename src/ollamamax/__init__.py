"""ollamamax: run many Ollama hosts as one.

The public names are resolved lazily (PEP 562) so that ``import ollamamax`` and the
``ollamamax`` command stay cheap: the native core, aiohttp and the dispatcher are
imported the first time one of their names is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__

__all__ = [
    "AsyncRingQueue",
    "Dispatcher",
    "DispatcherTransport",
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
    "RingQueue": ".structures.ring",
    "AsyncRingQueue": ".structures.ring",
    "QueueEmpty": ".structures.exceptions",
    "QueueFull": ".structures.exceptions",
    "ObjectPool": ".structures.pool",
    "LFUCache": ".structures.lfu",
    "LatencyHistogram": ".structures.hist",
    "Dispatcher": ".dispatch.dispatcher",
    "DispatcherTransport": ".frontends.transport",
    "create_app": ".ops.app",
}

if TYPE_CHECKING:  # type checkers see the pure-Python specification
    from .dispatch.dispatcher import Dispatcher
    from .frontends.transport import DispatcherTransport
    from .ops.app import create_app
    from .structures import (
        AsyncRingQueue,
        LatencyHistogram,
        LFUCache,
        ObjectPool,
        QueueEmpty,
        QueueFull,
        RingQueue,
    )


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
