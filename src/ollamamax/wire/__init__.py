"""The Ollama and OpenAI wire: what requests and answers look like, and nothing else.

``routes`` is the one route table (method, path, Go request struct, field checks, whether
a route loads a model, is cacheable, needs an admin key, streams by default);
``validate`` parses a request body the way Ollama's Go server does and checks only what
routing needs; ``errors`` builds error bodies in both dialects (Ollama's and OpenAI's);
``ollama`` holds the server's exact texts (Go decoder errors, the busy message);
``names`` canonicalises model names; ``response`` is the :class:`DispatchResponse` contract
between the dispatcher and its front ends, with the ``X-Ollamamax-*`` header names.

This layer does no I/O and keeps no state; it imports nothing of ollamamax above it.
"""
