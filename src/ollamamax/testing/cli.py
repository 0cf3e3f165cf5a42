"""``ollamamax mock``: run one emulated Ollama host until interrupted.

Owns: the command-line options of ``ollamamax mock`` (mapped one to one onto
:class:`~._server.FakeOllama` arguments), signal handling and the start/stop messages.
It must not import more than argparse at module level (the ``ollamamax`` command
imports every subcommand's ``add_arguments``): aiohttp and the emulator load inside
:func:`main`.
"""

from __future__ import annotations

import argparse

__all__ = ["add_arguments", "main", "parse_bytes"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=11435, help="port (default 11435; 0 picks a free one)")
    parser.add_argument(
        "--models",
        default="llama3.2",
        help="comma-separated models present on the host, e.g. llama3.2,qwen3:8b,nomic-embed-text",
    )
    parser.add_argument("--preload", default="", help="comma-separated models loaded at start (no delay)")
    parser.add_argument("--tokens-per-sec", type=float, default=50.0, help="generation speed; 0 = as fast as possible")
    parser.add_argument(
        "--prompt-eval-tps",
        type=float,
        default=0.0,
        help="prompt evaluation speed in tokens/s, with a prompt cache per parallel slot (a continued "
        "conversation evaluates only its new tokens); 0 (default) = no prompt cache, prompt time 1/10 of generation",
    )
    parser.add_argument("--load-delay", type=float, default=2.0, help="seconds to load a model")
    parser.add_argument("--num-parallel", type=int, default=1, help="slots per loaded model (OLLAMA_NUM_PARALLEL)")
    parser.add_argument("--max-queue", type=int, default=512, help="waiting requests before 503 (OLLAMA_MAX_QUEUE)")
    parser.add_argument("--max-loaded-models", type=int, default=1, help="resident models (OLLAMA_MAX_LOADED_MODELS)")
    parser.add_argument(
        "--vram",
        default="0",
        help="memory for resident models, in bytes (suffixes KB/MB/GB/TB and KiB/MiB/GiB/TiB allowed); a cold "
        "model evicts idle models until it fits; 0 (default) = no memory limit",
    )
    parser.add_argument("--keep-alive", default="5m", help="default keep_alive (Go duration or seconds)")
    parser.add_argument("--fail-rate", type=float, default=0.0, help="probability of a 500 before the first byte")
    parser.add_argument("--midstream-fail-rate", type=float, default=0.0, help="probability of an in-band error mid-stream")
    parser.add_argument("--response-tokens", default="8,24", help="min,max tokens per answer (default 8,24)")
    parser.add_argument("--host-id", default=None, help="value of the X-Ollama-Host-Id header (default mock-PORT)")
    parser.add_argument(
        "--tool-calls",
        choices=("always", "named", "never"),
        default="always",
        help="when a model offered tools calls one: always (default; the tool the last user message names, "
        "else the first), named (only a tool the message names), never",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed for generated text and fault decisions")
    parser.add_argument("--no-uvloop", action="store_true", help="use the default asyncio loop even if uvloop is installed")


def _split(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_bytes(text: str) -> int:
    """``4000000000``, ``4GB``, ``3.5 GiB`` -> bytes (ValueError on anything else)."""
    t = text.strip().upper()
    i = len(t)
    while i and not (t[i - 1].isdigit() or t[i - 1] == "."):
        i -= 1
    num, unit = t[:i].strip(), t[i:].strip()
    if not num or unit not in _UNITS:
        raise ValueError(f"not a byte count: {text!r}")
    value = float(num) * _UNITS[unit]
    if value < 0:
        raise ValueError(f"not a byte count: {text!r}")
    return int(value)


def main(args: argparse.Namespace) -> int:
    import asyncio
    import signal
    import sys

    from ._server import FakeOllama

    try:
        lo, hi = (int(x) for x in args.response_tokens.split(","))
    except ValueError:
        print(f"ollamamax mock: --response-tokens must be MIN,MAX, got {args.response_tokens!r}", file=sys.stderr)
        return 2
    keep_alive: str | float = args.keep_alive
    try:
        keep_alive = float(keep_alive)
    except ValueError:
        pass
    try:
        vram = parse_bytes(args.vram)
    except ValueError as exc:
        print(f"ollamamax mock: --vram: {exc}", file=sys.stderr)
        return 2

    async def run() -> int:
        try:
            host = FakeOllama(
                _split(args.models),
                host=args.host,
                port=args.port,
                tokens_per_sec=args.tokens_per_sec,
                load_delay=args.load_delay,
                num_parallel=args.num_parallel,
                max_queue=args.max_queue,
                max_loaded_models=args.max_loaded_models,
                keep_alive=keep_alive,
                fail_rate=args.fail_rate,
                midstream_fail_rate=args.midstream_fail_rate,
                host_id=args.host_id,
                seed=args.seed,
                preload=_split(args.preload),
                response_tokens=(lo, hi),
                prompt_eval_tps=args.prompt_eval_tps,
                vram=vram,
                tool_calls=args.tool_calls,
            )
        except ValueError as exc:
            print(f"ollamamax mock: {exc}", file=sys.stderr)
            return 2
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError):  # pragma: no cover - Windows
                signal.signal(sig, lambda *_: loop.call_soon_threadsafe(stop.set))
        try:
            await host.start()
        except OSError as exc:
            print(f"ollamamax mock: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
            return 1
        models = ", ".join(i.display for i in host.models.values())
        print(f"ollamamax mock: listening on {host.url} (host id {host.host_id}; models: {models})", flush=True)
        try:
            await stop.wait()
        finally:
            await host.stop(timeout=1.0)
        print("ollamamax mock: stopped", flush=True)
        return 0

    if not args.no_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(run())
    return asyncio.run(run())


def _standalone(argv: list[str] | None = None) -> int:
    """``python -m ollamamax.testing.cli ...`` (same options as ``ollamamax mock``)."""
    parser = argparse.ArgumentParser(prog="ollamamax mock", description="run an emulated Ollama host")
    add_arguments(parser)
    return main(parser.parse_args(argv))


if __name__ == "__main__":
    import sys

    sys.exit(_standalone())
