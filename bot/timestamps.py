"""Timestamps as GitHub and Kubernetes write them (pure).

GitHub answers RFC 3339 / ISO 8601 times in UTC with a trailing `Z` (GitHub REST docs, "Timezones");
Kubernetes writes `Time` as RFC 3339 seconds and `MicroTime` (Lease `acquireTime`/`renewTime`) with
microseconds (Kubernetes API conventions, "Objects": times).
"""

from __future__ import annotations

from datetime import datetime


def parse_time(text: str | None) -> datetime | None:
    """The moment `text` names (timezone-aware when it carries `Z` or an offset); None when it is empty
    or not an ISO 8601 time, so a damaged annotation never stops a pass."""
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def format_micro_time(moment: datetime) -> str:
    """Kubernetes `MicroTime` of a UTC moment, e.g. `2024-05-01T12:00:00.123456Z`."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
