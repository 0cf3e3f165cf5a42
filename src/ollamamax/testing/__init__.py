"""Test helpers: an emulated Ollama host.

Owns: the public names of the emulator (``FakeOllama``, ``ThreadedFakeOllama``,
``HttpError``, ``VirtualTimeLoop``) and nothing else; the modules behind them are private. It must not
import them eagerly, so that importing the pytest plugin stays cheap.

* :class:`FakeOllama` is one emulated ``ollama serve`` on loopback: the native ``/api/*``
  routes, the OpenAI-compatible ``/v1/*`` routes, a scheduler (loads, slots, eviction,
  keep-alive, queue limit) and fault switches (``fail_rate``, ``midstream_fail_rate``,
  ``busy``, ``hanging``, ``kill()``)::

      async with FakeOllama(["llama3.2", "nomic-embed-text"], load_delay=0, tokens_per_sec=0) as host:
          client = ollama.AsyncClient(host=host.url)

* :class:`ThreadedFakeOllama` runs one on a background thread's loop, for synchronous
  clients (``with ThreadedFakeOllama(...) as host: ollama.Client(host=host.url)``).
* ``ollamamax mock --port 11435 --models llama3.2,qwen3:8b`` runs one from the shell.
* The pytest plugin (entry point ``ollamamax``) provides the ``fake_ollama`` factory
  fixture: ``host = await fake_ollama(models=[...], load_delay=0)``; hosts stop at teardown.
* ``GET /_mock/stats`` (and ``host.stats()``) report per model ``in_flight``, ``queued``,
  ``served``, ``rejected_503``, ``loads``, ``evictions``, ``failed``, plus totals and
  loaded models.
* :class:`VirtualTimeLoop` is an event loop on virtual time (no sockets): the emulator's
  scheduler and engine run on it without waiting, for simulators.
* :mod:`ollamamax.testing.workload` (a public module, imported on its own): seeded traces
  of a fleet's traffic (``Scenario``, ``make_trace``), the one definition the fleet
  simulator and ``tools/bench_fleet.py`` replay.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["FakeOllama", "HttpError", "ThreadedFakeOllama", "VirtualTimeLoop"]

_LAZY = {
    "FakeOllama": "._server",
    "HttpError": "._errors",
    "ThreadedFakeOllama": "._threaded",
    "VirtualTimeLoop": "._virtualtime",
}

if TYPE_CHECKING:
    from ._errors import HttpError
    from ._server import FakeOllama
    from ._threaded import ThreadedFakeOllama
    from ._virtualtime import VirtualTimeLoop


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'ollamamax.testing' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(mod, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
