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
#
# One rule, the same as the bot's mesh match (its regex is baggage_match_regex below):
# - list members are separated by ","; a member is
#   ``key OWS "=" OWS value *(OWS ";" OWS property)`` and the OWS (spaces, tabs) around key
#   and value is trimmed ("Header Content"); a member without "=" is not a ``preview`` member;
# - the value is URL-encoded, so it is percent-decoded (``preview%2D1`` is ``preview-1``);
#   keys are not;
# - keys may repeat, and the spec lets producers and consumers agree on which duplicate
#   counts ("Mutating baggage"): the **last** ``preview`` member wins, as OpenTelemetry's W3C
#   propagators read them, so a member appended by the gateway or this helper beats a stale one;
# - when the last ``preview`` member's value is not a valid key, the request carries no key.
# Several ``baggage`` lines are read joined with "," (RFC 9110 section 5.3). Envoy matches them
# line by line, so the mesh agrees for one line, which is what the gateway and this helper send.

_OWS = " \t"


def parse_baggage(value: str | None) -> list[tuple[str, str, str]]:
    """Split a baggage header into ``(key, decoded_value, raw_member)`` triples, in order.

    Members are ``key=value;prop...`` separated by commas; OWS around key and value is
    trimmed; members without ``=`` or with an empty key are skipped. The raw member is kept so
    that merging never rewrites other services' entries.
    """
    members: list[tuple[str, str, str]] = []
    for raw in (value or "").split(","):
        raw = raw.strip(_OWS)
        key, sep, rest = raw.partition(";")[0].partition("=")
        key = key.strip(_OWS)
        if not sep or not key:
            continue
        members.append((key, unquote(rest.strip(_OWS)), raw))
    return members


def baggage_preview(value: str | None) -> str | None:
    """The key in the last ``preview`` member of a baggage header; None if none or not a key."""
    found = [v for k, v, _ in parse_baggage(value) if k == BAGGAGE_KEY]
    if not found:
        return None
    # No trimming after decoding: an encoded space (``%20``) is part of the value (then no key).
    if is_valid_key(found[-1]):
        return found[-1]
    log.debug("ignoring invalid preview key in baggage (%d chars)", len(found[-1]))
    return None


def merge_baggage(existing: str | None, key: str) -> str:
    """``existing`` baggage with its ``preview`` entries replaced by ``preview=<key>``, last."""
    kept = [raw for k, _, raw in parse_baggage(existing) if k != BAGGAGE_KEY]
    # Keys are DNS labels, so they need no percent-encoding.
    return ",".join([*kept, f"{BAGGAGE_KEY}={key}"])


_REGEX_OWS = r"[ \t]*"
_REGEX_KEY_CHAR = "[^,;=]"


def _regex_not_member_key(word: str) -> str:
    # A member key (no ",;=") that, OWS-trimmed, is not ``word``: a proper prefix of it, text
    # that leaves it at some character, or ``word`` followed by more than OWS.
    def after(i: int) -> str:
        if i == len(word):
            return rf"{_REGEX_OWS}[^,;= \t]{_REGEX_KEY_CHAR}*"
        c = word[i]
        return rf"(?:{c}{after(i + 1)}|[^,;={c}]{_REGEX_KEY_CHAR}*)?"

    return rf"{_REGEX_OWS}(?:{word[0]}{after(1)}|[^,;= \t{word[0]}]{_REGEX_KEY_CHAR}*)?"


def _regex_encoded(key: str) -> str:
    # Each character as itself or percent-encoded (hex digits in either case).
    parts = []
    for char in key:
        code = "".join(f"[{h}{h.lower()}]" if h.isalpha() else h for h in f"{ord(char):02X}")
        parts.append(f"(?:{char}|%{code})")
    return "".join(parts)


def baggage_match_regex(key: str) -> str:
    """The regex the bot uses: an Istio VirtualService match on one ``baggage`` header line.

    It matches exactly when :func:`baggage_preview` of that line is ``key`` (the rule above):
    the last ``preview`` member is ``preview=<key>``, with OWS around ``=``, any character
    percent-encoded, and optional properties. RE2 (Envoy) and Python ``re`` read it alike.
    """
    if not is_valid_key(key):
        raise ValueError("preview key must be a DNS-1123 label")
    other = rf"(?:[^,;=]*(?:;[^,]*)?|{_regex_not_member_key(BAGGAGE_KEY)}=[^,]*)"
    return (
        rf"^(?:.*,)?{_REGEX_OWS}{BAGGAGE_KEY}{_REGEX_OWS}={_REGEX_OWS}{_regex_encoded(key)}"
        rf"{_REGEX_OWS}(?:;[^,]*)?(?:,{other})*$"
    )


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
