"""Forward the preview routing key (``X-PREVIEW``) from incoming to outgoing requests.

Istio routes a request to a PR preview when it carries ``X-PREVIEW: <key>``; every
service must copy that header from the request it is handling onto the calls it makes.
Server-side middlewares put the key into a ``ContextVar``; client-side hooks read it back.
Integrations live in submodules so that importing this package needs no third-party code:
``preview_propagation.aiohttp``, ``.asgi``, ``.wsgi``, ``.httpx``, ``.requests``.
"""

from ._core import (
    BAGGAGE_HEADER,
    BAGGAGE_KEY,
    HEADER,
    KEY_PATTERN,
    Mode,
    baggage_match_regex,
    baggage_preview,
    current_preview,
    incoming_key,
    is_valid_key,
    merge_baggage,
    outgoing_headers,
    parse_baggage,
    preview_context,
)

__all__ = [
    "BAGGAGE_HEADER",
    "BAGGAGE_KEY",
    "HEADER",
    "KEY_PATTERN",
    "Mode",
    "baggage_match_regex",
    "baggage_preview",
    "current_preview",
    "incoming_key",
    "is_valid_key",
    "merge_baggage",
    "outgoing_headers",
    "parse_baggage",
    "preview_context",
]
