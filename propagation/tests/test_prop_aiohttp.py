from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

import preview_propagation.aiohttp as pa
from preview_propagation import current_preview, preview_context


async def _echo(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "current": current_preview(),
            "x_preview": request.headers.getall("X-PREVIEW", None),
            "baggage": request.headers.getall("baggage", None),
        }
    )


@pytest.fixture
async def server() -> AsyncIterator[TestServer]:
    app = web.Application(middlewares=[pa.middleware])
    app.router.add_get("/", _echo)
    baggage_app = web.Application(middlewares=[pa.make_middleware(mode="baggage")])
    baggage_app.router.add_get("/", _echo)
    app.add_subapp("/baggage", baggage_app)
    async with TestServer(app, host="127.0.0.1") as srv:
        yield srv


async def _get(url: Any, headers: Any = None, **session_kw: Any) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession(**session_kw) as session,
        session.get(url, headers=headers) as resp,
    ):
        body: dict[str, Any] = await resp.json()
        return body


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"X-PREVIEW": "preview-1"}, "preview-1"),
        ({"x-preview": "preview-1"}, "preview-1"),
        ({}, None),
        ({"X-PREVIEW": "Preview-1"}, None),
        ([("X-PREVIEW", "a"), ("X-PREVIEW", "b")], None),
    ],
)
async def test_middleware(server: TestServer, headers: Any, expected: str | None) -> None:
    assert (await _get(server.make_url("/"), headers))["current"] == expected


async def test_middleware_baggage_mode(server: TestServer) -> None:
    url = server.make_url("/baggage/")
    assert (await _get(url, {"baggage": "a=1,preview=preview-1"}))["current"] == "preview-1"
    assert (await _get(url, {"X-PREVIEW": "preview-1"}))["current"] is None


async def test_trace_config_adds_the_current_key(server: TestServer) -> None:
    url = server.make_url("/")
    tc = [pa.trace_config()]
    with preview_context("preview-1"):
        body = await _get(url, {"X-PREVIEW": "stale"}, trace_configs=tc)
    assert body["x_preview"] == ["preview-1"]  # the current key replaces what was there
    assert (await _get(url, trace_configs=tc))["x_preview"] is None
    # Without a current key an explicit header is left alone.
    assert (await _get(url, {"X-PREVIEW": "preview-9"}, trace_configs=tc))["x_preview"] == [
        "preview-9"
    ]


async def test_trace_config_baggage_mode(server: TestServer) -> None:
    tc = [pa.trace_config(mode="baggage")]
    with preview_context("preview-1"):
        body = await _get(server.make_url("/"), {"baggage": "a=1"}, trace_configs=tc)
    assert body["baggage"] == ["a=1,preview=preview-1"]
    assert body["x_preview"] is None
