"""``create_app``: the gateway application with its observability routes, assembled.

The front end (``frontends.aiohttp_app.build_app``) serves the Ollama and OpenAI APIs;
this adds ``/metrics``, ``/ollamamax/`` and ``/ollamamax/status`` (``metrics``).  Assembly
only: no behaviour of its own.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from aiohttp import web

from ..frontends.badrequests import quiet_malformed_requests
from ..frontends.aiohttp_app import build_app
from ..frontends.rules import (
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_MAX_BODY_SIZE,
    DEFAULT_SEND_TIMEOUT,
)
from .metrics import install_observability

__all__ = ["create_app"]


def create_app(
    dispatcher: Any,
    *,
    api_keys: Iterable[str] = (),
    admin_keys: Iterable[str] = (),
    max_body_size: int = DEFAULT_MAX_BODY_SIZE,
    disconnect_check_interval: float = 0.25,
    send_timeout: float | None = DEFAULT_SEND_TIMEOUT,
    body_timeout: float | None = DEFAULT_BODY_TIMEOUT,
    observability: bool = True,
    public_observability: bool = False,
    origins: Iterable[str] | str | None = None,
    listener_loopback: bool | None = None,
) -> web.Application:
    """An aiohttp application serving the Ollama and OpenAI APIs through ``dispatcher``.

    ``dispatcher`` is a started :class:`~ollamamax.dispatch.Dispatcher` (or anything with the
    same ``handle()``); the application does not own it and never closes it.  Mount it in
    another aiohttp service with ``parent.add_subapp("/ollama", create_app(d))``, or serve it
    with :func:`ollamamax.frontends.fastpath.start_server` (what ``ollamamax serve`` does).

    With ``observability`` (the default) the app also serves ``GET /metrics`` (Prometheus),
    ``/ollamamax/`` (HTML status page) and ``/ollamamax/status`` (JSON) and records this
    process's GC pauses; see :mod:`ollamamax.ops.metrics`.  They need an API key when keys
    are set, unless ``public_observability``.

    ``send_timeout`` (default 60 s): a client that accepts no bytes of its answer for this
    long is disconnected, its request cancelled and its host slot freed.  ``body_timeout``
    (default 60 s): a request body not fully arrived this long after its head gets 408.
    Both apply on either front end; None turns one off.

    ``origins``: origins browsers may call from, added to Ollama's defaults (None: the
    defaults plus ``OLLAMA_ORIGINS``); ``listener_loopback``: whether the server listens on
    a loopback address (the Host check then refuses a non-local ``Host`` with 403; None: not
    known, no check).  See ``frontends.rules``.
    """
    quiet_malformed_requests()
    app = build_app(dispatcher, api_keys=api_keys, admin_keys=admin_keys, max_body_size=max_body_size,
                    disconnect_check_interval=disconnect_check_interval,
                    send_timeout=send_timeout, body_timeout=body_timeout,
                    origins=origins, listener_loopback=listener_loopback)
    if observability:
        install_observability(app, dispatcher, public=public_observability)
    return app
