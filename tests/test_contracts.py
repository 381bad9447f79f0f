"""Contracts between the bot and the header-propagation helper that services install."""

from __future__ import annotations

import re

import preview_propagation
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot import mesh_routes
from bot.naming import PreviewKey
from tests.baggage_cases import cases

repos = st.from_regex(r"[a-z][a-z0-9-]{0,10}/[a-z][a-z0-9._-]{0,10}", fullmatch=True)


@given(repo=repos, number=st.integers(min_value=1, max_value=10**6))
def test_bot_and_helper_agree_on_the_baggage_regex(repo: str, number: int) -> None:
    key = PreviewKey(repo, number, 1296269).value
    assert mesh_routes.baggage_regex(key) == preview_propagation.baggage_match_regex(key)
    assert preview_propagation.is_valid_key(key)


@given(number=st.integers(min_value=1, max_value=999))
def test_baggage_regex_matches_whole_entries_only(number: int) -> None:
    key = PreviewKey("acme/shop", number, 1296269).value
    pattern = re.compile(mesh_routes.baggage_regex(key))
    assert pattern.fullmatch(f"tenant=acme, preview={key};ttl=1")
    assert not pattern.fullmatch(f"preview={key}0")
    assert not pattern.fullmatch(f"x-preview={key}")


KEY, OTHER = PreviewKey("acme/shop", 6, 1296269).value, PreviewKey("acme/shop", 5, 1296269).value


@pytest.mark.parametrize(("header", "expected", "why"), cases(KEY, OTHER))
def test_mesh_regex_and_helper_read_each_table_line_alike(header: str, expected: str | None, why: str) -> None:
    """The bot's regex (what Envoy routes by; tests/e2e/test_mesh_baggage.py sends the same lines through it)
    matches a line exactly for the key the helper reads from it (the W3C rule in bot.mesh_routes)."""
    assert preview_propagation.baggage_preview(header) == expected, why
    for key in (KEY, OTHER):
        assert bool(re.fullmatch(mesh_routes.baggage_regex(key), header)) is (key == expected), (key, why)


def test_the_gateways_baggage_is_read_by_the_rule() -> None:
    """What the gateway sends behind a preview URL (bot.mesh_routes.entry_headers, `%REQ(baggage)%` being the
    client's line) carries the key by both readings, whatever preview member the client sent."""
    for client, _, _ in cases(OTHER, "preview-1-000000"):
        with_client, alone = mesh_routes.entry_headers(KEY, header_name="x-preview", mode="baggage")
        template = (with_client if client else alone)[1]["set"]["baggage"]
        line = template.replace("%REQ(baggage)%", client)
        assert preview_propagation.baggage_preview(line) == KEY, client
        assert re.fullmatch(mesh_routes.baggage_regex(KEY), line), client


def test_header_name_is_the_helpers() -> None:
    assert preview_propagation.HEADER.lower() == "x-preview"
