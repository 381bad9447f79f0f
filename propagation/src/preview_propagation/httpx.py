"""httpx: request event hooks for ``httpx.Client`` and ``httpx.AsyncClient``.

Usage:

httpx.Client(event_hooks={"request": [request_hook()]})
httpx.AsyncClient(event_hooks={"request": [async_request_hook()]})
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx

from ._core import HEADER, Mode, outgoing_headers

__all__ = ["async_request_hook", "request_hook"]


def _apply(request: httpx.Request, mode: Mode, header: str) -> None:
    def get(name: str) -> str | None:
        values = request.headers.get_list(name)
        return ",".join(values) if values else None

    for name, value in outgoing_headers(get, mode=mode, header=header).items():
        request.headers[name] = value  # replaces every existing value of that header


def request_hook(*, mode: Mode = "header", header: str = HEADER) -> Callable[[httpx.Request], None]:
    """A sync ``request`` event hook; it runs in the calling thread, so sees its context."""

    def hook(request: httpx.Request) -> None:
        _apply(request, mode, header)

    return hook


def async_request_hook(
    *, mode: Mode = "header", header: str = HEADER
) -> Callable[[httpx.Request], Awaitable[None]]:
    """An async ``request`` event hook; it runs in the calling task, so sees its context."""

    async def hook(request: httpx.Request) -> None:
        _apply(request, mode, header)

    return hook
