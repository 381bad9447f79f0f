"""aiohttp: a server middleware and a client ``TraceConfig``.

Usage:

app = web.Application(middlewares=[preview_propagation.aiohttp.middleware])
session = aiohttp.ClientSession(trace_configs=[preview_propagation.aiohttp.trace_config()])
"""

from __future__ import annotations

from types import SimpleNamespace

from aiohttp import ClientSession, TraceConfig, TraceRequestStartParams, web
from aiohttp.typedefs import Handler, Middleware

from ._core import HEADER, Mode, incoming_key, outgoing_headers, preview_context

__all__ = ["make_middleware", "middleware", "trace_config"]


def make_middleware(*, mode: Mode = "header", header: str = HEADER) -> Middleware:
    """A server middleware that makes the request's preview key current for the handler."""

    @web.middleware
    async def preview_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        # getall + join: a repeated header becomes "a,b" and is then rejected as ambiguous.
        def get(name: str) -> str | None:
            values = request.headers.getall(name, [])
            return ",".join(values) if values else None

        with preview_context(incoming_key(get, mode=mode, header=header), mode=mode):
            return await handler(request)

    return preview_middleware


middleware: Middleware = make_middleware()
"""The default (``X-PREVIEW`` header) server middleware."""


def trace_config(*, mode: Mode = "header", header: str = HEADER) -> TraceConfig:
    """A client ``TraceConfig`` that adds the current key to every request of the session.

    ``on_request_start`` runs in the caller's task, so it sees the caller's context, and
    aiohttp builds the request from the very headers object it passes us.
    """

    async def on_request_start(
        session: ClientSession, ctx: SimpleNamespace, params: TraceRequestStartParams
    ) -> None:
        headers = params.headers

        def get(name: str) -> str | None:
            values = headers.getall(name, [])
            return ",".join(values) if values else None

        for name, value in outgoing_headers(get, mode=mode, header=header).items():
            headers[name] = value  # replaces every existing value of that header

    config = TraceConfig()
    config.on_request_start.append(on_request_start)
    return config
