from __future__ import annotations

from typing import Any
from wsgiref.util import setup_testing_defaults

import pytest

from preview_propagation import current_preview
from preview_propagation.wsgi import PreviewMiddleware


def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [])
    return [(current_preview() or "-").encode()]


def _call(mw: PreviewMiddleware, **headers: str) -> bytes:
    environ: dict[str, Any] = {f"HTTP_{k}": v for k, v in headers.items()}
    setup_testing_defaults(environ)
    body = b"".join(mw(environ, lambda *a: None))
    assert current_preview() is None
    return body


@pytest.mark.parametrize(
    ("value", "expected"),
    [("preview-1", b"preview-1"), ("Preview-1", b"-"), ("a,b", b"-"), ("x" * 64, b"-")],
)
def test_header(value: str, expected: bytes) -> None:
    assert _call(PreviewMiddleware(app), X_PREVIEW=value) == expected


def test_absent_custom_and_baggage() -> None:
    assert _call(PreviewMiddleware(app)) == b"-"
    assert _call(PreviewMiddleware(app, header="X-Route"), X_ROUTE="preview-2") == b"preview-2"
    mw = PreviewMiddleware(app, mode="baggage")
    assert _call(mw, BAGGAGE="a=1, preview=preview-3") == b"preview-3"
    assert _call(mw, X_PREVIEW="preview-3") == b"-"
