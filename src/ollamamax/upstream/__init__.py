"""The upstream side: HTTP/1.1 to the Ollama hosts.

``http1`` (byte-level parsing and head building), ``connection`` (the asyncio protocol per
keep-alive connection, the response object, the per-host pool), ``client``
(:class:`Upstream`: one host's client with prebuilt request heads and the forwarded-header
rule), ``streams`` (the pass-through and replay streams a front end writes out).

This layer knows HTTP and nothing of Ollama's semantics beyond the in-band error line a
failed stream ends with; it imports only ``wire``.
"""
