"""Shared fixtures.

``impl`` runs a data-structure test against both implementations: ``native`` (the
Cython/C modules) and ``pure`` (the pure-Python twins).  Each selector module
(``ollamamax.structures.ring``, ``.pool``, ``.lfu``, ``.hist``) publishes
``IMPLEMENTATIONS = {"c": <namespace or None>, "py": <namespace>}`` and ``PUBLIC``
(the names it exports); the fixture resolves a name through them.
"""

from __future__ import annotations

import importlib

import pytest

SELECTORS = ("ring", "pool", "lfu", "hist")


class _Impl:
    """Attribute access resolves public names against one implementation."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.native = kind == "c"

    def __getattr__(self, name: str):
        for sel_name in SELECTORS:
            sel = importlib.import_module(f"ollamamax.structures.{sel_name}")
            if name in sel.PUBLIC:
                ns = sel.IMPLEMENTATIONS[self.kind]
                if ns is None:
                    pytest.skip(f"native {sel_name} not available (pure-Python run)")
                return getattr(ns, name)
        raise AttributeError(name)

    def __repr__(self) -> str:
        return f"<impl {self.kind}>"


@pytest.fixture(params=["c", "py"], ids=["native", "pure"])
def impl(request: pytest.FixtureRequest) -> _Impl:
    return _Impl(request.param)


@pytest.fixture(params=["fast", "aiohttp"])
def front(request: pytest.FixtureRequest) -> str:
    """Which HTTP front end serves a gateway test: ``fast`` (``fastpath.start_server``, what
    ``ollamamax serve`` runs: the fast path with aiohttp behind it) or ``aiohttp`` (the app
    alone, as when mounted in another aiohttp service)."""
    return request.param
