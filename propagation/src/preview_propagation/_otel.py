"""Optional OpenTelemetry baggage bridge: every import is lazy so the API stays optional."""

from __future__ import annotations

from typing import Any


def attach(key: str, value: str) -> Any | None:
    """Put ``key=value`` into the current OTel baggage; returns a token for :func:`detach`."""
    try:
        from opentelemetry import baggage, context
    except ImportError:
        return None
    return context.attach(baggage.set_baggage(key, value))


def detach(token: Any) -> None:
    from opentelemetry import context

    context.detach(token)


def get(key: str) -> str | None:
    """The OTel baggage entry ``key`` as a string, or None (also without OpenTelemetry)."""
    try:
        from opentelemetry import baggage
    except ImportError:
        return None
    value = baggage.get_baggage(key)
    return value if isinstance(value, str) else None
