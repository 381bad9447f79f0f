"""Framework-free core: the context variable, key validation and W3C baggage helpers."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Literal
from urllib.parse import unquote

from . import _otel

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

log = logging.getLogger("preview_propagation")

HEADER = "X-PREVIEW"
BAGGAGE_HEADER = "baggage"
BAGGAGE_KEY = "preview"
# A DNS-1123 label: every key the bot issues is one, so anything else is junk or an attack.
KEY_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
# fullmatch on the unanchored body: "$" alone would also accept a trailing "\n".
_KEY_RE = re.compile(KEY_PATTERN[1:-1])

Mode = Literal["header", "baggage"]
"""``header``: plain ``X-PREVIEW`` header; ``baggage``: ``preview=<key>`` in W3C ``baggage``."""

_current: ContextVar[str | None] = ContextVar("preview_propagation_key", default=None)


def is_valid_key(value: object) -> bool:
    """True if ``value`` is a preview key we are willing to forward."""
    return isinstance(value, str) and _KEY_RE.fullmatch(value) is not None


def _accept(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip(" \t")  # optional whitespace around header values is legal HTTP
    if is_valid_key(value):
        return value
    # Never log the value itself: it is attacker-controlled and may be huge.
    log.debug("ignoring invalid preview key (%d chars)", len(value))
    return None


def current_preview() -> str | None:
    """The preview key of the request being handled, or None."""
    return _current.get()


@contextmanager
def preview_context(key: str | None, *, mode: Mode = "header") -> Iterator[str | None]:
    """Make ``key`` the current preview key inside the block; invalid keys count as None.

    Yields the accepted key. In ``baggage`` mode the key is also put into
    OpenTelemetry baggage when ``opentelemetry-api`` is installed, so OTel
    instrumentation and propagators see it too.
    """
    accepted = _accept(key)
    token = _current.set(accepted)
    otel_token = _otel.attach(BAGGAGE_KEY, accepted) if mode == "baggage" and accepted else None
    try:
        yield accepted
    finally:
        if otel_token is not None:
            _otel.detach(otel_token)
        _current.reset(token)


# --- W3C baggage (https://www.w3.org/TR/baggage/) -------------------------------------------


def parse_baggage(value: str | None) -> list[tuple[str, str, str]]:
    """Split a baggage header into ``(key, decoded_value, raw_member)`` triples.

    Members are ``key=value;prop...`` separated by commas; malformed members are skipped.
    The raw member is kept so that merging never rewrites other services' entries.
    """
    members: list[tuple[str, str, str]] = []
    for raw in (value or "").split(","):
        raw = raw.strip(" \t")
        key, sep, rest = raw.partition(";")[0].partition("=")
        key = key.strip(" \t")
        if not sep or not key:
            continue
        members.append((key, unquote(rest.strip(" \t")), raw))
    return members


def baggage_preview(value: str | None) -> str | None:
    """The valid ``preview`` entry of a baggage header, or None (also if entries disagree)."""
    found = {v for k, v, _ in parse_baggage(value) if k == BAGGAGE_KEY}
    if len(found) != 1:
        return None
    return _accept(found.pop())


def merge_baggage(existing: str | None, key: str) -> str:
    """``existing`` baggage with its ``preview`` entries replaced by ``preview=<key>``."""
    kept = [raw for k, _, raw in parse_baggage(existing) if k != BAGGAGE_KEY]
    # Keys are DNS labels, so they need no percent-encoding.
    return ",".join([*kept, f"{BAGGAGE_KEY}={key}"])


def baggage_match_regex(key: str) -> str:
    """The regex the bot uses: an Istio VirtualService match on the ``baggage`` header.

    It matches a baggage header that has the member ``preview=<key>`` (with optional
    properties) anywhere in the list, and nothing that merely starts with ``<key>``.
    """
    if not is_valid_key(key):
        raise ValueError("preview key must be a DNS-1123 label")
    # The key is [a-z0-9-] only, so it needs no escaping (RE2 and Python agree on the rest).
    return rf"^(.*,)?\s*{BAGGAGE_KEY}={key}\s*(;[^,]*)?(,.*)?$"


# --- glue used by every integration ---------------------------------------------------------

HeaderGetter = Callable[[str], "str | None"]
"""Case-insensitive lookup; repeated headers should be joined with ``,``."""


def _check_mode(mode: str) -> None:
    if mode not in ("header", "baggage"):  # a typo must not silently mean "header"
        raise ValueError(f"mode must be 'header' or 'baggage', not {mode!r}")


def incoming_key(get: HeaderGetter, *, mode: Mode = "header", header: str = HEADER) -> str | None:
    """The valid preview key of an incoming request, or None."""
    _check_mode(mode)
    if mode == "baggage":
        return baggage_preview(get(BAGGAGE_HEADER))
    # A repeated header arrives joined with "," and so fails validation: ambiguous means none.
    return _accept(get(header))


def outgoing_headers(
    get: HeaderGetter, *, mode: Mode = "header", header: str = HEADER
) -> dict[str, str]:
    """Headers to set (overwriting) on an outgoing request; empty when there is no key."""
    _check_mode(mode)
    key = current_preview()
    if mode == "baggage":
        # Fall back to OTel baggage, e.g. when OTel instrumentation extracted it for us.
        key = key or _accept(_otel.get(BAGGAGE_KEY))
        return {BAGGAGE_HEADER: merge_baggage(get(BAGGAGE_HEADER), key)} if key else {}
    return {header: key} if key else {}
