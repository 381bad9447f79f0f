"""What one new preview costs in GitHub requests, counted at the fake GitHub (counting, not timing).

The physical minimum is five writes (a Deployment, its in_progress and success statuses, the sticky
comment created then edited) and one read (the config); the PR's current head is read too (another
replica may be handling a newer push), and a created sticky comment is checked against a twin made
by another replica at the same moment."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.e2e.harness import REPO, RunningBot, running_bot
from tests.fakegithub import FakeGitHub, pull_request_event
from tests.plugins.cluster import Cluster

pytestmark = pytest.mark.cluster

MAX_CALLS = 8
MAX_WRITES = 5
WRITES = ("POST", "PATCH", "PUT", "DELETE")


@pytest.fixture
async def bot(shop: FakeGitHub, cluster: Cluster, namespace: str) -> AsyncIterator[RunningBot]:
    async with running_bot(shop, cluster, namespace) as running:
        yield running


async def preview_calls(bot: RunningBot, number: int) -> list[tuple[str, str]]:
    """The requests one new preview of PR `number` costs (numbers no other test of this process uses:
    the bot's process-wide caches remember comments by repository and number)."""
    before = len(bot.fake.calls)
    bot.fake.add_pull(REPO, number)
    assert await bot.send("pull_request", pull_request_event(bot.fake, REPO, number, "opened")) == 202
    await bot.settle()
    assert "ready" in bot.fake.comments(REPO, number)[-1]["body"]
    return [(c.method, str(c.path_template)) for c in bot.fake.calls[before:]]


async def test_one_new_preview_costs_at_most_8_github_requests_and_5_writes(bot: RunningBot) -> None:
    first = await preview_calls(bot, 701)
    # The first event of an installation also mints its token (then cached for the hour).
    assert [c for c in first if c[1].endswith("/access_tokens")] == [
        ("POST", "/app/installations/{installation_id}/access_tokens")]
    calls = await preview_calls(bot, 702)
    writes = [c for c in calls if c[0] in WRITES]
    assert len(calls) <= MAX_CALLS, calls
    assert len(writes) <= MAX_WRITES, writes
    assert sorted(c for c in calls if c[0] == "GET") == sorted([
        ("GET", "/repos/{owner}/{repo}/contents/{path}"),
        ("GET", "/repos/{owner}/{repo}/pulls/{pull_number}"),
        ("GET", "/repos/{owner}/{repo}/issues/{issue_number}/comments"),
    ]), calls
