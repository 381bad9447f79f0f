"""The shared table of baggage inputs (baggage_cases.json), filled in for two keys."""

from __future__ import annotations

import json
from pathlib import Path

CASES_FILE = Path(__file__).with_name("baggage_cases.json")


def cases(key: str, other: str) -> list[tuple[str, str | None, str]]:
    """(header line, the key it carries or None, why) for each row, `key` and `other` put in."""
    values = {
        "key": key,
        "other": other,
        "key_pct": key.replace("-", "%2D"),
        "key_pct_lower": key.replace("-", "%2d"),
        "key_first_pct": f"%{ord(key[0]):02X}{key[1:]}",
        "key_upper": key.upper(),
        "key_short": key[:-1],
    }
    rows = json.loads(CASES_FILE.read_text())["cases"]
    return [
        (
            row["header"].format(**values),
            None if row["expect"] is None else row["expect"].format(**values),
            row["why"],
        )
        for row in rows
    ]
