"""requests: ``PreviewSession`` or ``install(session)``.

requests has no pre-send hook, so we wrap the session's transport adapters: ``send``
on an adapter runs for every request, redirects included, with the final headers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import requests
from requests.adapters import BaseAdapter

from ._core import HEADER, Mode, outgoing_headers

__all__ = ["PreviewAdapter", "PreviewSession", "install"]


class PreviewAdapter(BaseAdapter):
    """Wraps another adapter and adds the current preview key before it sends."""

    def __init__(self, inner: BaseAdapter, *, mode: Mode = "header", header: str = HEADER):
        super().__init__()
        self.inner = inner
        self.mode: Mode = mode
        self.header = header

    def send(  # type: ignore[override]  # BaseAdapter.send's stub differs; we pass through
        self, request: requests.PreparedRequest, **kwargs: Any
    ) -> requests.Response:
        headers = request.headers
        for name, value in outgoing_headers(
            headers.get, mode=self.mode, header=self.header
        ).items():
            headers[name] = value
        return self.inner.send(request, **kwargs)

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name: str) -> Any:
        # Keep e.g. adapter.max_retries reachable for code that inspects mounted adapters;
        # "inner" itself is refused so a half-built copy (pickle, copy) cannot recurse.
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


def install(
    session: requests.Session, *, mode: Mode = "header", header: str = HEADER
) -> requests.Session:
    """Wrap every adapter mounted on ``session`` (idempotent); returns the session."""
    adapters: Mapping[str, BaseAdapter] = dict(session.adapters)
    for prefix, adapter in adapters.items():
        if not isinstance(adapter, PreviewAdapter):
            session.mount(prefix, PreviewAdapter(adapter, mode=mode, header=header))
    return session


class PreviewSession(requests.Session):
    """A ``requests.Session`` whose default adapters forward the preview key.

    Adapters you mount later are not wrapped: call :func:`install` again after mounting.
    """

    def __init__(self, *, mode: Mode = "header", header: str = HEADER) -> None:
        super().__init__()
        install(self, mode=mode, header=header)
