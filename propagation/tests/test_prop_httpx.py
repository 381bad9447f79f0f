from __future__ import annotations

import httpx

from preview_propagation import preview_context
from preview_propagation.httpx import async_request_hook, request_hook

captured: list[httpx.Request] = []


def _handler(request: httpx.Request) -> httpx.Response:
    captured.append(request)
    return httpx.Response(200)


def test_sync_hook() -> None:
    client = httpx.Client(
        transport=httpx.MockTransport(_handler), event_hooks={"request": [request_hook()]}
    )
    with client:
        with preview_context("preview-1"):
            client.get("http://svc/", headers={"X-PREVIEW": "stale"})
        client.get("http://svc/")
        client.get("http://svc/", headers={"X-PREVIEW": "explicit"})
    assert [r.headers.get_list("x-preview") for r in captured[-3:]] == [
        ["preview-1"],
        [],
        ["explicit"],
    ]


async def test_async_hook_baggage_mode() -> None:
    client = httpx.AsyncClient(
        transport=httpx.MockTransport(_handler),
        event_hooks={"request": [async_request_hook(mode="baggage")]},
    )
    async with client:
        with preview_context("preview-1"):
            await client.get("http://svc/", headers=[("baggage", "a=1"), ("baggage", "b=2")])
        await client.get("http://svc/", headers={"baggage": "a=1"})
    first, second = captured[-2:]
    assert first.headers.get_list("baggage") == ["a=1,b=2,preview=preview-1"]
    assert "x-preview" not in first.headers
    assert second.headers.get_list("baggage") == ["a=1"]


async def test_async_hook_custom_header() -> None:
    client = httpx.AsyncClient(
        transport=httpx.MockTransport(_handler),
        event_hooks={"request": [async_request_hook(header="X-Route")]},
    )
    async with client:
        with preview_context("preview-1"):
            await client.get("http://svc/")
    assert captured[-1].headers["x-route"] == "preview-1"
