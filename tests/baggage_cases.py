"""The shared table of W3C baggage inputs (propagation/tests/baggage_cases.json, filled in by
propagation/tests/baggage_table.py): the helper, the bot's regex and real Envoy must all read the same key."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_TABLE = Path(__file__).resolve().parents[1] / "propagation" / "tests" / "baggage_table.py"


def cases(key: str, other: str) -> list[tuple[str, str | None, str]]:
    """(header line, the key it carries or None, why) for every row of the table."""
    spec = importlib.util.spec_from_file_location("baggage_table", _TABLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result: list[tuple[str, str | None, str]] = module.cases(key, other)
    return result
