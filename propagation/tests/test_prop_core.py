from __future__ import annotations

import asyncio
import logging

import pytest

from preview_propagation import (
    HEADER,
    current_preview,
    incoming_key,
    is_valid_key,
    outgoing_headers,
    preview_context,
)


@pytest.mark.parametrize("key", ["a", "0", "preview-123-ab12cd", "a" * 63, "a--b"])
def test_valid_keys(key: str) -> None:
    assert is_valid_key(key)


@pytest.mark.parametrize(
    "key",
    [
        "",
        "-a",
        "a-",
        "A",
        "preview-1A",
        "a" * 64,
        "a\n",
        "a\r\nx: y",
        "a b",
        "a_b",
        "a.b",
        "a,b",
        "é",
        None,
        5,
    ],
)
def test_invalid_keys(key: object) -> None:
    assert not is_valid_key(key)


def test_context_sets_and_restores() -> None:
    assert current_preview() is None
    with preview_context("preview-1") as outer:
        assert outer == current_preview() == "preview-1"
        with preview_context("preview-2"):
            assert current_preview() == "preview-2"
        with preview_context(None):
            assert current_preview() is None
        assert current_preview() == "preview-1"
    assert current_preview() is None


def test_context_drops_invalid_and_strips_whitespace() -> None:
    with preview_context("Bad\r\nKey") as key:
        assert key is None and current_preview() is None
    with preview_context(" preview-1\t") as key:
        assert key == "preview-1"


async def test_tasks_keep_their_own_key() -> None:
    async def worker(key: str) -> str | None:
        with preview_context(key):
            await asyncio.sleep(0.01)  # let the other tasks run in between
            return current_preview()

    keys = [f"preview-{i}" for i in range(20)]
    assert await asyncio.gather(*(worker(k) for k in keys)) == keys


def _getter(headers: dict[str, str]):  # type: ignore[no-untyped-def]
    lower = {k.lower(): v for k, v in headers.items()}
    return lambda name: lower.get(name.lower())


def test_incoming_key() -> None:
    assert incoming_key(_getter({"x-preview": "preview-1"})) == "preview-1"
    assert incoming_key(_getter({})) is None
    assert incoming_key(_getter({"X-PREVIEW": "preview-1,preview-2"})) is None
    assert incoming_key(_getter({"X-Route": "k"}), header="x-route") == "k"
    assert incoming_key(_getter({"baggage": "preview=k"}), mode="baggage") == "k"
    assert incoming_key(_getter({"X-PREVIEW": "k"}), mode="baggage") is None
    with pytest.raises(ValueError):
        incoming_key(_getter({}), mode="Header")  # type: ignore[arg-type]


def test_outgoing_headers() -> None:
    none = _getter({})
    assert outgoing_headers(none) == {}
    with preview_context("preview-1"):
        assert outgoing_headers(none) == {HEADER: "preview-1"}
        assert outgoing_headers(none, header="X-Route") == {"X-Route": "preview-1"}
        assert outgoing_headers(_getter({"baggage": "a=1"}), mode="baggage") == {
            "baggage": "a=1,preview=preview-1"
        }


def test_value_is_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    secret = "Secret-Value-xyz"
    with caplog.at_level(logging.DEBUG, logger="preview_propagation"), preview_context(secret):
        pass
    assert caplog.records  # the drop is visible at debug level ...
    assert all(r.levelno < logging.INFO for r in caplog.records)
    assert secret not in caplog.text  # ... but without the value
