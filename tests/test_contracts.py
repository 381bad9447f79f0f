"""Contracts between the bot and the header-propagation helper that services install."""

from __future__ import annotations

import re

import preview_propagation
from hypothesis import given
from hypothesis import strategies as st

from bot import mesh_routes
from bot.naming import PreviewKey

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


def test_header_name_is_the_helpers() -> None:
    assert preview_propagation.HEADER.lower() == "x-preview"
