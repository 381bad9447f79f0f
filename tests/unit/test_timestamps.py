"""The one parser of GitHub's and Kubernetes' times (bot.timestamps)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from bot.timestamps import format_micro_time, parse_time


@pytest.mark.parametrize(("text", "moment"), [
    ("2024-05-01T12:00:00Z", datetime(2024, 5, 1, 12, tzinfo=UTC)),  # GitHub, Kubernetes Time
    ("2024-05-01T12:00:00.123456Z", datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)),  # MicroTime
    ("2024-05-01T14:00:00+02:00", datetime(2024, 5, 1, 12, tzinfo=UTC)),
])
def test_times_are_read_in_utc(text: str, moment: datetime) -> None:
    parsed = parse_time(text)
    assert parsed == moment
    assert parsed is not None and parsed.utcoffset() is not None


@pytest.mark.parametrize("text", [None, "", "yesterday", "2024-13-01T00:00:00Z"])
def test_missing_or_damaged_times_are_none(text: str | None) -> None:
    assert parse_time(text) is None


def test_micro_time_round_trips() -> None:
    moment = datetime(2024, 5, 1, 12, 0, 0, 5, tzinfo=UTC)
    assert format_micro_time(moment) == "2024-05-01T12:00:00.000005Z"
    assert parse_time(format_micro_time(moment)) == moment
