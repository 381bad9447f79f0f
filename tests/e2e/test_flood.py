"""A flood of deliveries for one PR merges into one pending job and converges to the PR's head; a
`/preview stop` inside a flood is not lost and gets its reaction."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from bot import comment
from tests.e2e.harness import REPO, ClusterView, RunningBot, key_of, running_bot
from tests.fakegithub import FakeGitHub, issue_comment_event, pull_request_event
from tests.plugins.cluster import Cluster

pytestmark = pytest.mark.cluster

PUSHES = 60


@pytest.fixture
async def bot(shop: FakeGitHub, cluster: Cluster, namespace: str) -> AsyncIterator[RunningBot]:
    async with running_bot(shop, cluster, namespace, PREVIEW_MAX_QUEUE="4") as running:
        yield running


def image(view: ClusterView, fake: FakeGitHub, number: int) -> str:
    name = key_of(fake, REPO, number).object_name("a")
    return str(view.deployments()[name].spec.template.spec.containers[0].image)


async def test_a_flood_of_pushes_converges_to_the_head_with_few_deploys(bot: RunningBot, view: ClusterView) -> None:
    bot.fake.add_pull(REPO, 1, head_sha="0" * 40)
    assert await bot.send("pull_request", pull_request_event(bot.fake, REPO, 1, "opened")) == 202
    flood = []
    for i in range(1, PUSHES + 1):
        bot.fake.push(REPO, 1, f"{i:040x}")
        flood.append(pull_request_event(bot.fake, REPO, 1, "synchronize"))
    waiting: list[int] = []

    async def send(payload: dict[str, object]) -> int:
        status = await bot.send("pull_request", payload)
        waiting.append(bot.bot.queue.waiting)
        return status

    statuses = await asyncio.gather(*(send(p) for p in flood))
    # The queue holds 4 jobs at most, yet nothing was refused: the flood took one place.
    assert statuses == [202] * PUSHES
    assert max(waiting) <= 1
    await bot.settle()

    head = f"{PUSHES:040x}"
    assert image(view, bot.fake, 1).endswith(head)
    [sticky] = [c for c in bot.fake.comments(REPO, 1) if comment.MARKER in str(c["body"])]
    assert head[:12] in str(sticky["body"]) and "ready" in str(sticky["body"])
    deployments = bot.fake.deployments(REPO)
    # One per job that ran: the first, and the merged rest (one more if a job began mid-flood).
    assert 1 < len(deployments) <= 3, [d["sha"] for d in deployments]
    newest = max(deployments, key=lambda d: d["id"])
    assert newest["sha"] == head
    assert [s["state"] for s in bot.fake.statuses(REPO, newest["id"])][-1] == "success"


async def test_a_stop_inside_a_flood_is_kept_and_answered(bot: RunningBot, view: ClusterView) -> None:
    bot.fake.add_pull(REPO, 2, head_sha="1" * 40)
    assert await bot.send("pull_request", pull_request_event(bot.fake, REPO, 2, "opened")) == 202
    for i in range(10):
        bot.fake.push(REPO, 2, f"{i + 2:040x}")
        assert await bot.send("pull_request", pull_request_event(bot.fake, REPO, 2, "synchronize")) == 202
    stop = issue_comment_event(bot.fake, REPO, 2, "/preview stop", user="alice")
    assert await bot.send("issue_comment", stop) == 202
    await bot.settle()
    # The stop came after every push: the PR ends without a preview, and the command got its +1.
    assert view.deployments() == {}
    assert [r["content"] for r in bot.fake.reactions(REPO, comment_id=int(stop["comment"]["id"]))] == ["+1"]
    [sticky] = [c for c in bot.fake.comments(REPO, 2) if comment.MARKER in str(c["body"])]
    assert "/preview stop" in str(sticky["body"])

    # A push after the stop deploys the new head again (the last thing that happened wins).
    bot.fake.push(REPO, 2, "f" * 40)
    assert await bot.send("pull_request", pull_request_event(bot.fake, REPO, 2, "synchronize")) == 202
    await asyncio.wait_for(bot.settle(), 180)
    assert image(view, bot.fake, 2).endswith("f" * 40)
