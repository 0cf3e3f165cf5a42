"""The ``ollamamax`` command.

Each subcommand lives in its own module, imported only when that subcommand runs,
and exposes ``add_arguments(parser)`` and ``main(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ._version import __version__

# subcommand -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("ollamamax.demo", "start 3 emulated hosts and a gateway, drive a workload, print tables"),
    "serve": ("ollamamax.ops.serve", "run the gateway in front of Ollama hosts"),
    "mock": ("ollamamax.testing.cli", "run an emulated Ollama host (for tests, demos, benchmarks)"),
    "bench": ("ollamamax.bench", "load-test any Ollama API endpoint at several concurrency levels"),
    "simulate": ("ollamamax.testing.simcli",
                 "replay a seeded fleet workload through the scheduler and simple routers in virtual time"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ollamamax", description="Run many Ollama hosts as one.")
    parser.add_argument("--version", action="version", version=f"ollamamax {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (modname, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=modname)
        # Arguments are added lazily in main() once the subcommand is known; but argparse
        # needs them before parsing, so import the (cheap) argument definitions here.
        importlib.import_module(modname).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    mod = importlib.import_module(args._module)
    return int(mod.main(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
