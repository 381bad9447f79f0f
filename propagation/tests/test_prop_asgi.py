from __future__ import annotations

from typing import Any

import pytest

from preview_propagation import current_preview
from preview_propagation.asgi import PreviewMiddleware

seen: list[tuple[str, str | None]] = []


async def app(scope: Any, receive: Any, send: Any) -> None:
    seen.append((scope["type"], current_preview()))


async def _call(mw: PreviewMiddleware, scope: dict[str, Any]) -> str | None:
    seen.clear()

    async def receive() -> dict[str, Any]:
        return {}

    async def send(message: Any) -> None:
        pass

    await mw(scope, receive, send)
    assert current_preview() is None  # nothing leaks out of the request
    return seen[-1][1]


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([(b"x-preview", b"preview-1")], "preview-1"),
        ([], None),
        ([(b"x-preview", b"PREVIEW-1")], None),
        ([(b"x-preview", b"a"), (b"x-preview", b"b")], None),
        ([(b"x-preview", b"a\xff")], None),
    ],
)
async def test_http(headers: list[tuple[bytes, bytes]], expected: str | None) -> None:
    scope = {"type": "http", "headers": headers}
    assert await _call(PreviewMiddleware(app), scope) == expected


async def test_websocket_custom_header_and_baggage() -> None:
    ws = {"type": "websocket", "headers": [(b"x-route", b"preview-2")]}
    assert await _call(PreviewMiddleware(app, header="X-Route"), ws) == "preview-2"
    bag = {"type": "http", "headers": [(b"baggage", b"a=1"), (b"baggage", b"preview=k;p")]}
    assert await _call(PreviewMiddleware(app, mode="baggage"), bag) == "k"


async def test_lifespan_passes_through() -> None:
    assert await _call(PreviewMiddleware(app), {"type": "lifespan"}) is None
    assert seen == [("lifespan", None)]


async def test_starlette_and_fastapi_style_usage() -> None:
    import httpx
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def view(request: Request) -> PlainTextResponse:
        return PlainTextResponse(current_preview() or "-")

    starlette_app = Starlette(routes=[Route("/", view)])
    starlette_app.add_middleware(PreviewMiddleware)
    transport = httpx.ASGITransport(app=starlette_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
        assert (await client.get("/", headers={"X-PREVIEW": "preview-1"})).text == "preview-1"
        assert (await client.get("/")).text == "-"
