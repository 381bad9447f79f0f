"""bot.github.client.RepoClient.file_text: absent, readable and unreadable files (a stub `gh`)."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from bot.errors import ConfigError
from bot.github.client import RepoClient
from bot.github.errors import NotFound


class Contents:
    """Answers "Get repository content" with one file's bytes, or 404 when `body` is None; a file over
    1 MB as GitHub does (empty `content`, `encoding: none`)."""

    def __init__(self, body: bytes | None) -> None:
        self.body = body

    async def getitem(self, url: str, url_vars: Any = None) -> dict[str, Any]:
        if self.body is None:
            raise NotFound(404, "Not Found")
        if len(self.body) > 1 << 20:
            return {"type": "file", "encoding": "none", "content": "", "size": len(self.body)}
        return {"type": "file", "encoding": "base64", "content": base64.b64encode(self.body).decode(),
                "size": len(self.body)}


async def test_a_file_that_is_not_utf8_is_a_config_error_not_an_absent_file() -> None:
    """It used to read as None: the repository then counted as one without previews, silently."""
    client = RepoClient(Contents(b"services:\n  - name: a\xff\n"), "acme/shop", 1)  # type: ignore[arg-type]
    with pytest.raises(ConfigError) as info:
        await client.file_text(".github/preview.yml")
    assert str(info.value) == ".github/preview.yml: is not UTF-8 text (byte 21)"


async def test_text_and_absence() -> None:
    assert await RepoClient(Contents(b"trigger: auto\n"), "acme/shop", 1).file_text("x") == "trigger: auto\n"  # type: ignore[arg-type]
    assert await RepoClient(Contents(None), "acme/shop", 1).file_text("x") is None  # type: ignore[arg-type]


async def test_a_file_over_1_mb_is_a_config_error_naming_its_size() -> None:
    """GitHub gives no content for it: it used to read as an empty file ("must be a mapping")."""
    client = RepoClient(Contents(b"#" * 1_200_000), "acme/shop", 1)  # type: ignore[arg-type]
    with pytest.raises(ConfigError) as info:
        await client.file_text(".github/preview.yml")
    assert str(info.value).startswith(".github/preview.yml: is 1200000 bytes; GitHub's contents API returns files up")
