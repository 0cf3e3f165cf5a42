"""A plain aiohttp reverse proxy: the reference row of tools/bench_gateway.sh.

What any aiohttp service would write in a few lines: one ``web.Application`` with a
catch-all route, one ``ClientSession`` (keep-alive pool, ``limit`` connections) and the
backends taken in turn.  The request body is read whole and forwarded; a reply with an
NDJSON / SSE content type is streamed through chunk by chunk, anything else is read
whole and answered.  No routing logic, accounting, retries or limits: the floor of what
an aiohttp-based gateway can cost.  uvloop when installed (as ``ollamamax serve``).

    python tools/bench_gateway/aiohttp_proxy.py --listen 127.0.0.1:PORT \\
        --backend http://127.0.0.1:B1 --backend http://127.0.0.1:B2
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import signal

import aiohttp
from aiohttp import web

STREAM_TYPES = ("application/x-ndjson", "text/event-stream")


def build_app(backends: list[str], limit: int) -> web.Application:
    app = web.Application()
    turn = itertools.cycle(backends)

    async def on_startup(app: web.Application) -> None:
        app["session"] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=limit, limit_per_host=0),
            timeout=aiohttp.ClientTimeout(total=None, connect=5),
            auto_decompress=False,
        )

    async def on_cleanup(app: web.Application) -> None:
        await app["session"].close()

    async def handler(request: web.Request) -> web.StreamResponse:
        session: aiohttp.ClientSession = app["session"]
        body = await request.read()
        ctype_in = request.headers.get("Content-Type", "application/json")
        async with session.request(request.method, next(turn) + request.path_qs, data=body or None,
                                   headers={"Content-Type": ctype_in}) as up:
            ctype = up.headers.get("Content-Type", "")
            if up.status == 200 and ctype.startswith(STREAM_TYPES):
                resp = web.StreamResponse(status=200, headers={"Content-Type": ctype})
                await resp.prepare(request)
                async for chunk in up.content.iter_any():
                    await resp.write(chunk)
                await resp.write_eof()
                return resp
            data = await up.read()
            return web.Response(status=up.status, body=data, headers={"Content-Type": ctype or "text/plain"})

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


async def serve(host: str, port: int, backends: list[str], limit: int) -> None:
    runner = web.AppRunner(build_app(backends, limit), access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    print(f"aiohttp proxy: http://{host}:{port} -> {', '.join(backends)}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--listen", default="127.0.0.1:11512", help="HOST:PORT")
    p.add_argument("--backend", action="append", required=True, help="backend base URL (repeatable)")
    p.add_argument("--limit", type=int, default=136, help="upstream connection pool size")
    a = p.parse_args()
    host, _, port = a.listen.rpartition(":")
    backends = [b.rstrip("/") for b in a.backend]
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(host, int(port), backends, a.limit))
    else:
        uvloop.run(serve(host, int(port), backends, a.limit))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
