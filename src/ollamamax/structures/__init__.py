"""The native core: four data structures, each a selector, a Cython wrapper over C and a
pure-Python twin.

``ring`` (``RingQueue``, ``AsyncRingQueue``), ``pool`` (``ObjectPool``), ``lfu``
(``LFUCache``) and ``hist`` (``LatencyHistogram``) each pick the compiled ``_<name>_c``
module or the pure ``_<name>_py`` twin once, at import, through
:func:`ollamamax._compat.load_native` (``OLLAMAMAX_NO_EXTENSIONS=1`` selects the pure
ones).  The pure twin is the executable specification; both pass the same tests.
This layer knows nothing of Ollama, HTTP or the dispatcher, and imports nothing of
ollamamax but ``_compat``.  Names are resolved lazily so that importing one structure
does not load the others.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "AsyncRingQueue",
    "LFUCache",
    "LatencyHistogram",
    "ObjectPool",
    "QueueEmpty",
    "QueueFull",
    "RingQueue",
]

_LAZY = {
    "RingQueue": ".ring",
    "AsyncRingQueue": ".ring",
    "QueueEmpty": ".exceptions",
    "QueueFull": ".exceptions",
    "ObjectPool": ".pool",
    "LFUCache": ".lfu",
    "LatencyHistogram": ".hist",
}

if TYPE_CHECKING:  # type checkers see the pure-Python specification
    from ._hist_py import LatencyHistogram
    from ._lfu_py import LFUCache
    from ._pool_py import ObjectPool
    from ._ring_py import AsyncRingQueue, RingQueue
    from .exceptions import QueueEmpty, QueueFull


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'ollamamax.structures' has no attribute {name!r}")
    value = getattr(importlib.import_module(mod, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
