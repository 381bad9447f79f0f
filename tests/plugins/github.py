"""pytest plugin: `fake_github`, a started FakeGitHub per test (see tests/fakegithub), and `http`, a client
session to talk to it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.fakegithub import FakeGitHub
from tests.fakegithub.spec import ensure_installed


@pytest.fixture
async def fake_github() -> AsyncIterator[FakeGitHub]:
    ensure_installed()  # npm install of the pinned packages, once, under a file lock; raises on failure
    fake = FakeGitHub()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.close()
    # The fake checks its own answers against GitHub's response schemas: a drift is a bug in the fake.
    assert not fake.response_errors, "fake GitHub strayed from GitHub's description:\n" + "\n".join(
        fake.response_errors)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
