from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

from preview_propagation import (
    baggage_match_regex,
    baggage_preview,
    current_preview,
    merge_baggage,
    outgoing_headers,
    parse_baggage,
    preview_context,
)


def test_parse_baggage() -> None:
    assert parse_baggage(" a = 1 ;p=2 , b=x%20y,,bad, =v, c=") == [
        ("a", "1", "a = 1 ;p=2"),
        ("b", "x y", "b=x%20y"),
        ("c", "", "c="),
    ]
    assert parse_baggage(None) == []


@pytest.mark.parametrize(
    ("header", "key"),
    [
        ("preview=preview-1", "preview-1"),
        ("a=1, preview = preview-1 ;ttl=3, b=2", "preview-1"),
        ("preview=preview%2D1", "preview-1"),  # percent-decoded
        ("preview=k,preview=k", "k"),  # duplicates that agree
        ("preview=a,preview=b", "b"),  # the last one wins
        ("preview=b,preview=Bad", None),  # the last one is no key
        ("preview=Bad", None),
        ("preview=a%0D%0Ab", None),  # CRLF smuggled through percent-encoding
        ("xpreview=k, a=1;preview=k", None),  # not the member "preview"
        ("", None),
        (None, None),
    ],
)
def test_baggage_preview(header: str | None, key: str | None) -> None:
    assert baggage_preview(header) == key


def test_merge_keeps_other_entries_and_replaces_preview() -> None:
    assert merge_baggage(None, "k") == "preview=k"
    assert merge_baggage("a=1;p, preview=old, b=x%20y", "k") == "a=1;p,b=x%20y,preview=k"


def _table() -> object:
    # Loaded by path: the bot's tests read the same file (tests run with --import-mode=importlib).
    spec = importlib.util.spec_from_file_location(
        "baggage_table", Path(__file__).with_name("baggage_table.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cases = _table().cases  # type: ignore[attr-defined]

KEY = "preview-123-ab12cd"
TABLE_KEY, TABLE_OTHER = "preview-6-ab12cd", "preview-5-ab12cd"
MATCHING = [
    f"preview={KEY}",
    f"preview={KEY};ttl=60",
    f"a=1,preview={KEY}",
    f"a=1, preview={KEY} ;p=1, b=2",
    f"a=1;x=y,preview={KEY},b=2",
    f"userId=alice,serverNode=DF%2028,preview={KEY}",
    merge_baggage("tenant=acme,preview=old", KEY),  # what our outbound hooks produce
]
NOT_MATCHING = [
    "preview=preview-12",
    "preview=preview-123",
    f"preview={KEY}x",
    f"preview={KEY}-2",
    f"xpreview={KEY}",
    f"a=1;preview={KEY}",  # a property of another member, not a member
    f"a=preview={KEY}",
    f"preview=other,b={KEY}",
    f"preview={KEY},preview=other",  # the last preview member wins
    "",
]


@pytest.mark.parametrize("header", MATCHING)
def test_regex_matches(header: str) -> None:
    assert re.fullmatch(baggage_match_regex(KEY), header)


@pytest.mark.parametrize("header", NOT_MATCHING)
def test_regex_does_not_match(header: str) -> None:
    assert not re.search(baggage_match_regex(KEY), header)


def test_regex_prefix_key_does_not_match_longer_key() -> None:
    assert not re.search(baggage_match_regex("preview-12"), "preview=preview-123")
    assert not re.search(baggage_match_regex("preview-12"), "a=1,preview=preview-123;p,b=2")
    assert re.search(baggage_match_regex("preview-123"), "preview=preview-123")


def test_regex_is_pure_and_rejects_bad_keys() -> None:
    assert baggage_match_regex(KEY) == baggage_match_regex(KEY)
    for bad in ["", "A", ".*", "a|b"]:
        with pytest.raises(ValueError):
            baggage_match_regex(bad)


@pytest.mark.parametrize(("header", "expected", "why"), cases(TABLE_KEY, TABLE_OTHER))
def test_helper_and_regex_follow_the_shared_table(
    header: str, expected: str | None, why: str
) -> None:
    """One rule (W3C baggage, last `preview` member wins, values percent-decoded): the helper
    reads the key the table says, and the bot's regex matches exactly that key's line."""
    assert baggage_preview(header) == expected, why
    for key in (TABLE_KEY, TABLE_OTHER):
        assert bool(re.fullmatch(baggage_match_regex(key), header)) is (key == expected), (key, why)


def test_merged_baggage_carries_the_key_by_the_table_rule() -> None:
    for header, _, _ in cases(TABLE_KEY, TABLE_OTHER):
        merged = merge_baggage(header, TABLE_KEY)
        assert baggage_preview(merged) == TABLE_KEY
        assert re.fullmatch(baggage_match_regex(TABLE_KEY), merged)


def test_otel_baggage_is_set_and_read() -> None:
    from opentelemetry import baggage, context

    with preview_context("preview-1", mode="baggage"):
        assert baggage.get_baggage("preview") == "preview-1"
    assert baggage.get_baggage("preview") is None
    # Header mode leaves OTel alone.
    with preview_context("preview-1"):
        assert baggage.get_baggage("preview") is None

    # Outbound falls back to OTel baggage set by someone else (e.g. OTel instrumentation).
    token = context.attach(baggage.set_baggage("preview", "preview-2"))
    try:
        assert current_preview() is None
        assert outgoing_headers(lambda _: None, mode="baggage") == {"baggage": "preview=preview-2"}
        assert outgoing_headers(lambda _: None) == {}  # header mode ignores OTel
        with preview_context("preview-3"):  # our own context wins
            assert outgoing_headers(lambda _: None, mode="baggage") == {
                "baggage": "preview=preview-3"
            }
    finally:
        context.detach(token)

    token = context.attach(baggage.set_baggage("preview", "Bad\nKey"))
    try:
        assert outgoing_headers(lambda _: None, mode="baggage") == {}
    finally:
        context.detach(token)


def test_baggage_mode_without_opentelemetry(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules makes "from opentelemetry import ..." raise ImportError.
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    with preview_context("preview-1", mode="baggage"):
        assert outgoing_headers(lambda _: "a=1", mode="baggage") == {
            "baggage": "a=1,preview=preview-1"
        }
    assert outgoing_headers(lambda _: None, mode="baggage") == {}
