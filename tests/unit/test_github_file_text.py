"""bot.github.client.RepoClient.file_text: absent, readable and unreadable files (a stub `gh`)."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from bot.errors import ConfigError
from bot.github.client import RepoClient
from bot.github.errors import NotFound


class Contents:
    """Answers "Get repository content" with one file's bytes, or 404 when `body` is None."""

    def __init__(self, body: bytes | None) -> None:
        self.body = body

    async def getitem(self, url: str, url_vars: Any = None) -> dict[str, Any]:
        if self.body is None:
            raise NotFound(404, "Not Found")
        return {"type": "file", "encoding": "base64", "content": base64.b64encode(self.body).decode()}


async def test_a_file_that_is_not_utf8_is_a_config_error_not_an_absent_file() -> None:
    """It used to read as None: the repository then counted as one without previews, silently."""
    client = RepoClient(Contents(b"services:\n  - name: a\xff\n"), "acme/shop", 1)  # type: ignore[arg-type]
    with pytest.raises(ConfigError) as info:
        await client.file_text(".github/preview.yml")
    assert str(info.value) == ".github/preview.yml: is not UTF-8 text (byte 21)"


async def test_text_and_absence() -> None:
    assert await RepoClient(Contents(b"trigger: auto\n"), "acme/shop", 1).file_text("x") == "trigger: auto\n"  # type: ignore[arg-type]
    assert await RepoClient(Contents(None), "acme/shop", 1).file_text("x") is None  # type: ignore[arg-type]
