"""Front ends: the ways a request reaches the dispatcher.

``rules`` (API keys, admin routes, body limit: one set of rules for every front end),
``aiohttp_app`` (the gateway as an aiohttp application, also mountable as a
sub-application), ``fastpath`` (the lean HTTP/1.1 server ``ollamamax serve`` listens with,
handing unusual requests to the aiohttp app), ``transport`` (an httpx transport, to run the
official ``ollama`` / ``openai`` clients in-process).

A front end owns transport concerns only: it turns HTTP into ``dispatcher.handle(...)`` and
writes back the :class:`~ollamamax.wire.response.DispatchResponse` unchanged.  It never
decides Ollama semantics or placement, and never imports ``ops``.
"""
