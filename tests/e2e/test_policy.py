"""Who may trigger what, and what a repository config may ask for (issue: hardening, security policy)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import AsyncIterator

import pytest

from bot import comment, logs
from tests.e2e.harness import CONFIG, REPO, SECRET, ClusterView, RunningBot, key_of, running_bot
from tests.fakegithub import FakeGitHub, issue_comment_event, pull_request_event
from tests.plugins.cluster import Cluster

pytestmark = pytest.mark.cluster



@pytest.fixture
async def bot(shop: FakeGitHub, cluster: Cluster, namespace: str) -> AsyncIterator[RunningBot]:
    async with running_bot(shop, cluster, namespace) as running:
        yield running


def sticky(fake: FakeGitHub, repo: str, number: int) -> str:
    [found] = [c for c in fake.comments(repo, number) if comment.MARKER in c["body"]]
    return str(found["body"])


async def test_commands_need_write_permission(bot: RunningBot, view: ClusterView) -> None:
    bot.fake.add_pull(REPO, 1, draft=True)  # drafts are not deployed on their own
    for user in ("mallory", "tina", "mallory"):
        payload = issue_comment_event(bot.fake, REPO, 1, "/preview", user=user)
        assert await bot.send("issue_comment", payload) == 202
        await bot.settle()
        assert [r["content"] for r in bot.fake.reactions(REPO, comment_id=payload["comment"]["id"])] == ["-1"]
    assert view.deployments() == {}
    assert bot.fake.deployments(REPO) == []
    refusals = [c for c in bot.fake.comments(REPO, 1) if "needs write access" in c["body"]]
    assert len(refusals) == 2  # once per user, however often they try

    await bot.send("issue_comment", issue_comment_event(bot.fake, REPO, 1, "/preview", user="alice"))
    await bot.settle()
    assert list(view.deployments()) == [key_of(bot.fake, REPO, 1).object_name("a")]

    await bot.send("issue_comment", issue_comment_event(bot.fake, REPO, 1, "/preview stop", user="mallory"))
    await bot.settle()
    assert list(view.deployments()) == [key_of(bot.fake, REPO, 1).object_name("a")]


async def test_help_and_unknown_subcommands(bot: RunningBot) -> None:
    bot.fake.add_pull(REPO, 2, draft=True)
    payload = issue_comment_event(bot.fake, REPO, 2, "/preview frobnicate", user="mallory")
    await bot.send("issue_comment", payload)
    await bot.settle()
    replies = [c["body"] for c in bot.fake.comments(REPO, 2) if "preview-bot commands" in c["body"]]
    assert len(replies) == 1 and "Unknown command `/preview frobnicate`" in replies[0]
    assert [r["content"] for r in bot.fake.reactions(REPO, comment_id=payload["comment"]["id"])] == ["confused"]


async def test_fork_waits_for_approval_and_each_push_needs_a_new_one(bot: RunningBot, view: ClusterView) -> None:
    bot.fake.add_pull(REPO, 3, user="outsider", fork=True, head_sha="1" * 40)
    await bot.send("pull_request", pull_request_event(bot.fake, REPO, 3, "opened"))
    await bot.settle()
    assert view.deployments() == {}
    assert "comes from a fork" in sticky(bot.fake, REPO, 3)

    await bot.send("issue_comment", issue_comment_event(bot.fake, REPO, 3, "/preview", user="alice"))
    await bot.settle()
    name = key_of(bot.fake, REPO, 3).object_name("a")
    assert view.deployments()[name].spec.template.spec.containers[0].image.endswith("1" * 40)

    bot.fake.push(REPO, 3, "2" * 40)
    await bot.send("pull_request", pull_request_event(bot.fake, REPO, 3, "synchronize"))
    await bot.settle()
    assert view.deployments()[name].spec.template.spec.containers[0].image.endswith("1" * 40)
    assert "comes from a fork" in sticky(bot.fake, REPO, 3)

    await bot.send("issue_comment", issue_comment_event(bot.fake, REPO, 3, "/preview", user="alice"))
    await bot.settle()
    assert view.deployments()[name].spec.template.spec.containers[0].image.endswith("2" * 40)


async def test_draft_waits_until_ready_for_review(bot: RunningBot, view: ClusterView) -> None:
    bot.fake.add_pull(REPO, 4, draft=True)
    await bot.send("pull_request", pull_request_event(bot.fake, REPO, 4, "opened"))
    await bot.settle()
    assert view.deployments() == {}
    await bot.send("pull_request", pull_request_event(bot.fake, REPO, 4, "ready_for_review"))
    await bot.settle()
    assert list(view.deployments()) == [key_of(bot.fake, REPO, 4).object_name("a")]


async def test_label_trigger(fake_github: FakeGitHub, cluster: Cluster, namespace: str, view: ClusterView) -> None:
    fake_github.add_repo("acme/labels", files={".github/preview.yml": "trigger: label\nlabel: deploy-me\n" + CONFIG})
    async with running_bot(fake_github, cluster, namespace) as bot:
        fake_github.add_pull("acme/labels", 5)
        await bot.send("pull_request", pull_request_event(fake_github, "acme/labels", 5, "opened"))
        await bot.settle()
        assert view.deployments() == {}
        await bot.send("pull_request", pull_request_event(fake_github, "acme/labels", 5, "labeled", label="bug"))
        await bot.settle()
        assert view.deployments() == {}
        await bot.send("pull_request", pull_request_event(fake_github, "acme/labels", 5, "labeled",
                                                          label="deploy-me"))
        await bot.settle()
        assert list(view.deployments()) == [key_of(fake_github, "acme/labels", 5).object_name("a")]
        await bot.send("pull_request", pull_request_event(fake_github, "acme/labels", 5, "unlabeled",
                                                          label="deploy-me"))
        await bot.settle()
        assert view.deployments() == {}


@pytest.mark.parametrize(("config", "field"), [
    ("services:\n  - name: a\n    image: docker.io/evil/miner:{sha}\n    port: 80\n", "services[0].image"),
    ("services:\n  - name: a\n    image: registry.example.com/a:{sha}\n    port: 80\n    replicas: 9\n",
     "services[0].replicas"),
    ("services:\n  - name: a\n    image: registry.example.com/a:{sha}\n    port: 80\n"
     "    resources: {limits: {memory: 64Gi}}\n", "services[0].resources.limits.memory"),
])
async def test_policy_is_the_operators(fake_github: FakeGitHub, cluster: Cluster, namespace: str,
                                       view: ClusterView, config: str, field: str) -> None:
    fake_github.add_repo("acme/greedy", files={".github/preview.yml": config})
    async with running_bot(fake_github, cluster, namespace, PREVIEW_ALLOWED_IMAGES="registry.example.com/",
                           PREVIEW_MAX_REPLICAS="2") as bot:
        fake_github.add_pull("acme/greedy", 6)
        await bot.send("pull_request", pull_request_event(fake_github, "acme/greedy", 6, "opened"))
        await bot.settle()
    assert f".github/preview.yml: {field}" in sticky(fake_github, "acme/greedy", 6)
    assert view.deployments() == {}
    assert fake_github.deployments("acme/greedy") == []


async def test_previews_per_repository_are_capped(fake_github: FakeGitHub, cluster: Cluster, namespace: str,
                                                  view: ClusterView) -> None:
    fake_github.add_repo(REPO, files={".github/preview.yml": CONFIG})
    async with running_bot(fake_github, cluster, namespace, PREVIEW_MAX_PER_REPO="1") as bot:
        for number in (7, 8):
            fake_github.add_pull(REPO, number)
            await bot.send("pull_request", pull_request_event(fake_github, REPO, number, "opened"))
            await bot.settle()
    assert list(view.deployments()) == [key_of(fake_github, REPO, 7).object_name("a")]
    assert "limit is 1" in sticky(fake_github, REPO, 8)


async def test_the_cap_holds_for_a_burst_of_pull_requests(fake_github: FakeGitHub, cluster: Cluster, namespace: str,
                                                          view: ClusterView) -> None:
    """PREVIEW_MAX_PER_REPO=3 and 8 PRs opened at once, all processed concurrently: exactly 3 previews,
    never more at any moment; the 5 others are told about the limit."""
    fake_github.add_repo(REPO, files={".github/preview.yml": CONFIG})
    numbers = list(range(21, 29))
    peak = 0
    done = asyncio.Event()

    async def watch() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, len(await asyncio.to_thread(view.deployments)))
            await asyncio.sleep(0.05)

    async with running_bot(fake_github, cluster, namespace, PREVIEW_MAX_PER_REPO="3",
                           PREVIEW_MAX_CONCURRENCY="8") as bot:
        for number in numbers:
            fake_github.add_pull(REPO, number)
        watcher = asyncio.create_task(watch())
        answers = await asyncio.gather(*(bot.send("pull_request", pull_request_event(fake_github, REPO, n, "opened"))
                                         for n in numbers))
        assert answers == [202] * len(numbers)
        await bot.settle()
        done.set()
        await watcher
    live = sorted(view.deployments())
    assert len(live) == 3 and peak == 3, (live, peak)
    deployed = {n for n in numbers if key_of(fake_github, REPO, n).object_name("a") in live}
    for number in numbers:
        body = sticky(fake_github, REPO, number)
        if number in deployed:
            assert "Preview: ready" in body
        else:
            assert "the limit is 3" in body and "already has 3 live previews" in body, body
    assert {int(d["environment"].removeprefix("preview-")) for d in fake_github.deployments(REPO)} == deployed


async def test_secrets_never_reach_the_logs(fake_github: FakeGitHub, cluster: Cluster, namespace: str) -> None:
    fake_github.add_repo(REPO, files={".github/preview.yml": CONFIG}, collaborators={"alice": "write"})
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.DEBUG)
    try:
        async with running_bot(fake_github, cluster, namespace) as bot:
            fake_github.add_pull(REPO, 9)
            await bot.send("pull_request", pull_request_event(fake_github, REPO, 9, "opened"))
            fake_github.inject("POST", r"/issues/9/comments$", status=502, times=1)
            await bot.send("issue_comment", issue_comment_event(fake_github, REPO, 9, "/preview", user="alice"))
            await bot.send("pull_request", pull_request_event(fake_github, REPO, 9, "closed"))
            await bot.settle()
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    output = stream.getvalue()
    assert output, "the bot logged nothing at all"
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert any(line.get("delivery") and line.get("repo") == REPO and line.get("pr") == 9 for line in lines)
    assert SECRET not in output
    assert fake_github.tokens, "the bot never got a token: the test proves nothing"
    for token in fake_github.tokens:
        assert token not in output
    key_body = fake_github.private_key_pem.splitlines()[1]
    assert key_body not in output
    assert "eyJ" not in output  # no JWT
