"""pytest plugin (entry point ``pytest11: ollamamax``): the ``fake_ollama`` fixture.

Owns: the factory fixture and the teardown of the hosts it made. It must stay cheap to
import and must never fail (it is loaded for every project that has ollamamax
installed): the emulator is imported inside the fixture only.

``host = await fake_ollama(models=["llama3.2"], load_delay=0, tokens_per_sec=0)``
returns a started :class:`ollamamax.testing.FakeOllama`; every host made by the
factory is stopped at teardown. The fixture needs pytest-asyncio; without it this
plugin defines nothing (it is loaded for every project that has ollamamax installed,
so it must stay cheap and must not fail).
"""

from __future__ import annotations

from typing import Any

try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - exercised only without pytest-asyncio
    pytest_asyncio = None  # type: ignore[assignment]

__all__ = ["fake_ollama"]

if pytest_asyncio is not None:

    @pytest_asyncio.fixture
    async def fake_ollama() -> Any:
        """Factory fixture: ``await fake_ollama(**FakeOllama kwargs)`` -> started FakeOllama."""
        from ._server import FakeOllama

        hosts: list[FakeOllama] = []

        async def factory(*args: Any, **kwargs: Any) -> FakeOllama:
            host = FakeOllama(*args, **kwargs)
            await host.start()
            hosts.append(host)
            return host

        try:
            yield factory
        finally:
            for h in reversed(hosts):
                await h.stop()
