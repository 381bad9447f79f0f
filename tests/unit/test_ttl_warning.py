"""bot.ttl_warning: when the idle-TTL warning is due (pure part)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.kube import LivePreview
from bot.settings import load_cluster_settings
from bot.ttl_warning import period, warning_due, warning_text
from tests.unit.test_settings import base_env

START = datetime(2026, 1, 1, tzinfo=UTC)
TTL, BEFORE = timedelta(days=7), timedelta(hours=24)


def preview(pushed: datetime | None = START, keep: bool = False, sha: str = "a" * 40) -> LivePreview:
    pushed_at = pushed.strftime("%Y-%m-%dT%H:%M:%SZ") if pushed else None
    return LivePreview(key="preview-1-abcdef", repo="acme/shop", number=1, sha=sha, services=("a",),
                       created="2025-12-01T00:00:00Z", pushed_at=pushed_at, keep=keep)


@pytest.mark.parametrize(("idle", "due"), [
    (timedelta(days=5), False),
    (timedelta(days=6), False),          # exactly TTL - before: not yet
    (timedelta(days=6, seconds=1), True),
    (timedelta(days=6, hours=23), True),
    (timedelta(days=7), True),
    (timedelta(days=7, seconds=1), False),  # past the TTL: removal, not a warning
])
def test_window(idle: timedelta, due: bool) -> None:
    assert warning_due(preview(), START + idle, TTL, BEFORE, None) is due


def test_once_per_idle_period_and_never_when_kept_or_disabled() -> None:
    now = START + timedelta(days=6, hours=12)
    p = preview()
    assert not warning_due(p, now, TTL, BEFORE, period(p))
    assert warning_due(p, now, TTL, BEFORE, "2025-12-25T00:00:00Z@" + "a" * 12)  # an earlier period's warning
    pushed = preview(sha="b" * 40)  # a push in the same second is still a new period
    assert warning_due(pushed, now, TTL, BEFORE, period(p))
    assert not warning_due(preview(keep=True), now, TTL, BEFORE, None)
    assert not warning_due(p, now, TTL, timedelta(0), None)
    # No pushed-at annotation: the period starts at creation.
    assert period(preview(pushed=None)) == "2025-12-01T00:00:00Z@" + "a" * 12


@given(st.integers(min_value=0, max_value=10 * 86400))
def test_due_only_inside_the_window(seconds: int) -> None:
    now = START + timedelta(seconds=seconds)
    assert warning_due(preview(), now, TTL, BEFORE, None) == (TTL - BEFORE < now - START <= TTL)


def test_text_says_when_and_how_to_keep() -> None:
    text = warning_text(preview(), START + timedelta(days=6, hours=1), TTL)
    assert "removed in about 23 hours" in text and "idle for 7 days" in text
    assert "`/preview keep`" in text and "push a commit" in text
    assert "about 5 minutes" in warning_text(preview(), START + TTL - timedelta(minutes=5), TTL)


def test_setting() -> None:
    from bot.errors import ConfigError
    from bot.settings import load_settings

    env = base_env()
    assert load_settings(env).ttl_warning_hours == 24.0
    assert load_settings({**env, "PREVIEW_TTL_WARNING": "0"}).ttl_warning_hours == 0
    assert load_settings({**env, "PREVIEW_TTL_WARNING": "2.5"}).ttl_warning_hours == 2.5
    for bad in ("-1", "soon", "nan", "inf"):
        with pytest.raises(ConfigError, match="PREVIEW_TTL_WARNING"):
            load_settings({**env, "PREVIEW_TTL_WARNING": bad})
    assert load_cluster_settings(env)
