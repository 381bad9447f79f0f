"""The services of the end-to-end test, one per process: ``python _services.py NAME MODE [URL]``.

Each binds 127.0.0.1 on a free port, prints ``PORT <n>`` and serves until terminated.
Every hop answers JSON ``{"hop", "seen": current_preview(), "downstream": <next answer>}``.
NAME: ``a`` aiohttp (+ aiohttp client), ``b`` ASGI/Starlette on uvicorn (+ httpx),
``c`` WSGI on wsgiref (+ requests), ``d`` a bare http.server sink echoing the headers.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from preview_propagation import Mode, current_preview

TIMEOUT = 10


def _listen() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


def _announce(port: int) -> None:
    print(f"PORT {port}", flush=True)


def run_a(mode: Mode, downstream: str) -> None:
    import aiohttp
    from aiohttp import web

    import preview_propagation.aiohttp as pa

    async def handler(request: web.Request) -> web.Response:
        seen = current_preview()
        await asyncio.sleep(random.random() / 50)  # interleave concurrent requests
        session: aiohttp.ClientSession = request.app["session"]
        async with session.get(downstream) as resp:
            body = await resp.json()
        return web.json_response({"hop": "a", "seen": seen, "downstream": body})

    async def session_ctx(app: web.Application) -> Any:
        app["session"] = aiohttp.ClientSession(
            trace_configs=[pa.trace_config(mode=mode)],
            timeout=aiohttp.ClientTimeout(total=TIMEOUT),
        )
        yield
        await app["session"].close()

    app = web.Application(middlewares=[pa.make_middleware(mode=mode)])
    app.cleanup_ctx.append(session_ctx)
    app.router.add_get("/", handler)
    sock = _listen()
    _announce(sock.getsockname()[1])
    web.run_app(app, sock=sock, print=None, access_log=None, handle_signals=True)


def run_b(mode: Mode, downstream: str) -> None:
    import httpx
    import uvicorn
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from preview_propagation.asgi import PreviewMiddleware
    from preview_propagation.httpx import async_request_hook

    client = httpx.AsyncClient(
        event_hooks={"request": [async_request_hook(mode=mode)]}, timeout=TIMEOUT
    )

    async def handler(request: Request) -> JSONResponse:
        seen = current_preview()
        await asyncio.sleep(random.random() / 50)
        resp = await client.get(downstream)
        return JSONResponse({"hop": "b", "seen": seen, "downstream": resp.json()})

    app = Starlette(
        routes=[Route("/", handler)], middleware=[Middleware(PreviewMiddleware, mode=mode)]
    )
    sock = _listen()
    _announce(sock.getsockname()[1])
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietWSGIHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def run_c(mode: Mode, downstream: str) -> None:
    from preview_propagation.requests import PreviewSession
    from preview_propagation.wsgi import PreviewMiddleware

    # One session shared by all server threads: the hook must read each thread's own key.
    session = PreviewSession(mode=mode)
    # In baggage mode C adds its own entry, which must survive the merge.
    extra = {"baggage": "tenant=acme"} if mode == "baggage" else {}

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen = current_preview()
        body = session.get(downstream, headers=extra, timeout=TIMEOUT).json()
        data = json.dumps({"hop": "c", "seen": seen, "downstream": body}).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [data]

    server = make_server(
        "127.0.0.1",
        0,
        PreviewMiddleware(app, mode=mode),
        server_class=_ThreadingWSGIServer,
        handler_class=_QuietWSGIHandler,
    )
    _announce(server.server_port)
    server.serve_forever()


class _SinkHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        data = json.dumps(
            {
                "hop": "d",
                "x_preview": self.headers.get_all("X-PREVIEW"),
                "baggage": self.headers.get_all("baggage"),
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def run_d(mode: Mode, downstream: str) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SinkHandler)
    server.daemon_threads = True
    _announce(server.server_port)
    server.serve_forever()


if __name__ == "__main__":
    name, mode = sys.argv[1], sys.argv[2]
    url = sys.argv[3] if len(sys.argv) > 3 else ""
    {"a": run_a, "b": run_b, "c": run_c, "d": run_d}[name](mode, url)  # type: ignore[arg-type]
