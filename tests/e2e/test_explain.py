"""`/preview explain` on a pull request: the reply explains that PR's hosts from the live objects."""

from __future__ import annotations

import pytest

from bot import comment
from tests.e2e.harness import REPO, key_of, running_bot
from tests.fakegithub import FakeGitHub, issue_comment_event, pull_request_event
from tests.plugins.cluster import Cluster

pytestmark = pytest.mark.cluster


def bot_replies(fake: FakeGitHub, number: int) -> list[str]:
    """The bot's comments other than its sticky one."""
    return [str(c["body"]) for c in fake.comments(REPO, number)
            if c["user"]["type"] == "Bot" and comment.MARKER not in str(c["body"])]


async def test_explain_command_replies_with_the_prs_routes(shop: FakeGitHub, cluster: Cluster,
                                                           namespace: str) -> None:
    key = key_of(shop, REPO, 31)
    mesh_host = f"a.{namespace}.svc.cluster.local"
    async with running_bot(shop, cluster, namespace) as bot:
        for number in (30, 31):
            shop.add_pull(REPO, number)
            await bot.send("pull_request", pull_request_event(shop, REPO, number, "opened"))
        await bot.settle()
        await bot.send("issue_comment", issue_comment_event(shop, REPO, 31, "/preview explain", user="mallory"))
        await bot.send("issue_comment", issue_comment_event(shop, REPO, 31, "/preview explain", user="alice"))
        await bot.settle()
    replies = bot_replies(shop, 31)
    refused, [reply] = replies[:1], replies[1:]
    assert "needs write access" in refused[0]
    assert f"How requests reach the preview `{key.value}`" in reply
    # The gateway host with and without the key, the mesh host with and without it.
    assert reply.count(f"reaches `{key.value}-a.{namespace}.svc.cluster.local` (this preview)") == 3
    assert f"`{mesh_host}` called without the header: reaches `{mesh_host}`" in reply
    assert f"x-preview: {key.value} is not {key_of(shop, REPO, 30).value}" in reply
    assert "Warnings" not in reply


async def test_explain_without_a_preview(shop: FakeGitHub, cluster: Cluster, namespace: str) -> None:
    async with running_bot(shop, cluster, namespace, PREVIEW_GATEWAY="istio-system/none") as bot:
        shop.add_pull(REPO, 32, draft=True)
        await bot.send("issue_comment", issue_comment_event(shop, REPO, 32, "/preview explain", user="alice"))
        await bot.settle()
    [reply] = bot_replies(shop, 32)
    assert "Nothing to explain" in reply and key_of(shop, REPO, 32).value in reply
