"""JSON-lines logging with the event's delivery id, repo, PR and action; secrets scrubbed."""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

from bot.errors import ConfigError

EVENT_FIELDS: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("event_fields", default={})  # noqa: B039

# Defence in depth: tokens never get logged on purpose, and if one slips into a message it is masked.
_SECRET = re.compile(
    r"(gh[pousr]_[A-Za-z0-9_]{8,}|github_pat_[A-Za-z0-9_]{8,}|eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"
    r"|-----BEGIN[^-]*PRIVATE KEY-----[^-]*-----END[^-]*PRIVATE KEY-----|(?i:bearer|token)\s+[A-Za-z0-9_.~+/-]{8,}=*)"
)
_STANDARD = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


def scrub(text: str) -> str:
    return _SECRET.sub("[redacted]", text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": scrub(record.getMessage()),
        }
        entry.update(EVENT_FIELDS.get())
        for name, value in vars(record).items():
            if name not in _STANDARD and not name.startswith("_"):
                entry[name] = value
        for name, value in entry.items():
            if isinstance(value, str):
                entry[name] = scrub(value)
        if record.exc_info:
            entry["exception"] = scrub(self.formatException(record.exc_info))
        return json.dumps(entry, default=str)


def setup(level: str = "INFO", stream: TextIO | None = None) -> None:
    """JSON lines on `stream` (default stdout) from `level` up."""
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def setup_from_environment(env: Mapping[str, str], default: str, stream: TextIO) -> None:
    """`setup` at LOG_LEVEL (else `default`); raises ConfigError naming LOG_LEVEL when it is not a level."""
    level = (env.get("LOG_LEVEL") or default).upper()
    if level not in LOG_LEVELS:
        raise ConfigError("environment", "LOG_LEVEL", f"must be one of {', '.join(LOG_LEVELS)}, got {level!r}")
    setup(level, stream)
