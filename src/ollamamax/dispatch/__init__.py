"""The dispatcher: the engine that runs many Ollama hosts as one.

``Dispatcher`` answers every Ollama and OpenAI-compatible route over a set of hosts (see
``dispatcher.py`` for the request path and the parts it composes); ``DispatcherConfig``
and ``HostConfig`` hold its knobs; ``DispatchResponse`` is what ``Dispatcher.handle()``
returns to a front end; ``ResponseError`` is what the embedded API raises.

Embedded use, no gateway hop (names and return shapes follow ``ollama.AsyncClient``)::

    from ollamamax.dispatch import Dispatcher, HostConfig

    async with Dispatcher(["http://gpu1:11434", HostConfig("http://gpu2:11434", max_concurrency=4)],
                          strategy="affinity") as d:
        reply = await d.chat(model="llama3.2", messages=[{"role": "user", "content": "hi"}])
        async for part in await d.generate(model="llama3.2", prompt="hi", stream=True):
            print(part["response"], end="")
        print(d.status())

Errors raise :class:`ResponseError` (same ``error`` / ``status_code`` / ``str()`` as
``ollama.ResponseError``).  Per-host in-flight limit: ``HostConfig.max_concurrency``, else
``DispatcherConfig.max_in_flight_per_host`` (default 8).

This layer acts (it talks to hosts and keeps requests moving); decisions about where a
request goes are ``placement``'s; it never imports a front end.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ..fleet.config import HostConfig
from ..wire.response import DispatchResponse
from .config import DispatcherConfig

__all__ = ["DispatchResponse", "Dispatcher", "DispatcherConfig", "HostConfig", "ResponseError"]

if TYPE_CHECKING:
    from ..wire.errors import ResponseError
    from .dispatcher import Dispatcher

# The engine (and the native core) load on first use, so that `ollamamax serve --help` and
# the other subcommands, which import ollamamax.ops.serve to build their parsers, start fast.
_LAZY = {"Dispatcher": ".dispatcher", "ResponseError": "..wire.errors"}


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'ollamamax.dispatch' has no attribute {name!r}")
    value = getattr(importlib.import_module(mod, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
