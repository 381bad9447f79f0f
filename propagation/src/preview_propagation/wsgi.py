"""WSGI middleware (Flask, Django, plain WSGI apps).

    app.wsgi_app = PreviewMiddleware(app.wsgi_app)     # Flask

The key is current while the wrapped app is called, which is where frameworks run the
view; a streamed body produced lazily after the call returns does not see it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from ._core import HEADER, Mode, incoming_key, preview_context

__all__ = ["PreviewMiddleware"]

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]


class PreviewMiddleware:
    """Makes the request's preview key current while the wrapped app handles it."""

    def __init__(self, app: WSGIApp, *, mode: Mode = "header", header: str = HEADER) -> None:
        self.app = app
        self.mode: Mode = mode
        self.header = header

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        def get(name: str) -> str | None:
            # WSGI servers already join repeated headers with ",".
            value = environ.get("HTTP_" + name.upper().replace("-", "_"))
            return value if isinstance(value, str) else None

        key = incoming_key(get, mode=self.mode, header=self.header)
        with preview_context(key, mode=self.mode):
            return self.app(environ, start_response)
