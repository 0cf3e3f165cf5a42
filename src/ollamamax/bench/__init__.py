"""``ollamamax bench``: a closed-loop load generator for any Ollama API endpoint.

This package module owns only the public surface: it re-exports the names users and the
``ollamamax`` command import (``add_arguments`` and ``main`` for the subcommand;
``run_bench``, ``LevelResult``, ``Progress``, ``UsageError``, ``parse_concurrency``,
``parse_duration`` and the rest for programs and tests).  It must not hold logic of its own,
and must stay cheap to import: the ``ollamamax`` command imports it to build its parser, so
nothing here (or in the modules it imports) loads aiohttp, numpy, uvloop, matplotlib or the
native histogram at import time.

Point it at a gateway (``ollamamax serve``), a real Ollama or the emulator
(``ollamamax mock``); for each concurrency level it runs C workers for a fixed time and
prints one table row: requests/s, latency p50/p90/p99, time to first token p50/p99,
tokens/s (aggregate and per request) and errors by kind.

The modules, each with one concern (none imports this package module):

* :mod:`.command` -- the CLI: options, checks, wiring, exit status;
* :mod:`.options` -- parsing durations and concurrency lists (:class:`UsageError`);
* :mod:`.request` -- endpoints, paths, defaults, request bodies;
* :mod:`.client` -- one HTTP request and its classification, model discovery;
* :mod:`.loop` -- the closed loop (:func:`run_bench`; the method and coordinated omission);
* :mod:`.results` -- :class:`LevelResult`, rates, percentiles, its JSON form;
* :mod:`.progress` -- the progress bar;
* :mod:`.report` -- the text table, summary, metadata and ``--json`` document;
* :mod:`.plot` -- the optional matplotlib chart (``--plot``).
"""

from __future__ import annotations

# Re-exports. ``__all__`` is kept as it was before the split; the other names imported here
# were public attributes of the old ``ollamamax.bench`` module and stay importable from it.
from .client import discover_model  # noqa: F401
from .command import add_arguments, main
from .loop import CONNECTION_BACKOFF, run_bench  # noqa: F401
from .options import UsageError, parse_concurrency, parse_duration  # noqa: F401
from .plot import write_plot  # noqa: F401
from .progress import Progress  # noqa: F401
from .report import format_header, format_row, metadata  # noqa: F401
from .request import DEFAULT_MODEL, DEFAULT_PROMPT, ENDPOINTS  # noqa: F401
from .results import QUANTILES, LevelResult  # noqa: F401

__all__ = ["LevelResult", "add_arguments", "main", "parse_concurrency", "parse_duration", "run_bench"]
