"""Pure ASGI middleware (Starlette, FastAPI, Quart, plain ASGI apps).

Usage:

app = PreviewMiddleware(app)                      # any ASGI app
app.add_middleware(PreviewMiddleware)             # FastAPI / Starlette
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from ._core import HEADER, Mode, incoming_key, preview_context

__all__ = ["PreviewMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class PreviewMiddleware:
    """Makes the request's preview key current while the wrapped app handles it."""

    def __init__(self, app: ASGIApp, *, mode: Mode = "header", header: str = HEADER) -> None:
        self.app = app
        self.mode: Mode = mode
        self.header = header

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):  # e.g. lifespan: nothing to carry
            await self.app(scope, receive, send)
            return
        headers: list[tuple[bytes, bytes]] = scope.get("headers", [])

        def get(name: str) -> str | None:
            # ASGI header names are lower-cased bytes; values are latin-1 per the spec.
            wanted = name.lower().encode("latin-1")
            values = [v.decode("latin-1") for k, v in headers if k == wanted]
            return ",".join(values) if values else None

        key = incoming_key(get, mode=self.mode, header=self.header)
        with preview_context(key, mode=self.mode):
            await self.app(scope, receive, send)
