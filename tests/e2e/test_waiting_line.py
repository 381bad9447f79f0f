"""A pull request refused at the repository's cap (PREVIEW_MAX_PER_REPO) waits in line and is deployed by
itself, oldest first, when a slot frees: the real `serve` (tests/e2e/harness.py), the fake GitHub, the real
kube-apiserver. The line lives in the repository's slots Lease, so a restart loses nothing."""

from __future__ import annotations

import pytest

from bot import comment, naming
from tests.e2e.harness import CONFIG, REPO, ClusterView, RunningBot, key_of, running_bot
from tests.fakegithub import FakeGitHub, check_run_event, pull_request_event
from tests.fakegithub.state import fake_sha
from tests.plugins.cluster import Cluster

pytestmark = pytest.mark.cluster

CAP = {"PREVIEW_MAX_PER_REPO": "1"}


def sticky(fake: FakeGitHub, number: int) -> str:
    [found] = [c for c in fake.comments(REPO, number) if comment.MARKER in str(c["body"])]
    return str(found["body"])


def live(fake: FakeGitHub, view: ClusterView) -> dict[int, str]:
    """PR number -> the commit its live preview runs."""
    found = {}
    for name, deployment in view.deployments().items():
        number = next(n for n in fake.repos[REPO].pulls if key_of(fake, REPO, n).object_name("a") == name)
        found[number] = deployment.metadata.annotations[naming.SHA_ANNOTATION]
    return found


async def event(bot: RunningBot, number: int, action: str, **extra: str) -> None:
    assert await bot.send("pull_request", pull_request_event(bot.fake, REPO, number, action, **extra)) == 202
    await bot.settle()


async def test_a_refused_pull_request_waits_and_is_deployed_at_its_head_when_a_slot_frees(
        shop: FakeGitHub, cluster: Cluster, namespace: str, view: ClusterView) -> None:
    async with running_bot(shop, cluster, namespace, **CAP) as bot:
        shop.add_pull(REPO, 1)
        await event(bot, 1, "opened")
        shop.add_pull(REPO, 2)
        await event(bot, 2, "opened")
        assert live(shop, view) == {1: shop.repos[REPO].pulls[1].head_sha}
        body = sticky(shop, 2)
        assert "Preview: waiting for a slot" in body, body
        assert "this repository already has 1 live preview (the limit is 1)" in body
        assert "1st in line (when this was written): it is deployed by itself" in body
        # A push while it waits: it keeps its place, and what deploys later is the new head.
        head = fake_sha("pr-2-second")
        shop.push(REPO, 2, head)
        await event(bot, 2, "synchronize")
        assert live(shop, view) == {1: shop.repos[REPO].pulls[1].head_sha}
        assert "1st in line" in sticky(shop, 2)

        before = len(shop.comments(REPO, 2))
        await event(bot, 1, "closed")
        assert live(shop, view) == {2: head}
        body = sticky(shop, 2)
        assert "Preview: ready" in body and f"Commit: `{head[:12]}`" in body, body
        assert len(shop.comments(REPO, 2)) == before  # nobody commented: the sticky comment was edited
        assert [d["sha"] for d in shop.deployments(REPO) if d["environment"] == "preview-2"] == [head]
        assert (await bot.bot.arbiter.lines())[1] == []  # the line is empty, and left the index


async def test_who_left_the_line_is_not_deployed_and_the_next_one_is(
        shop: FakeGitHub, cluster: Cluster, namespace: str, view: ClusterView) -> None:
    """PR 1 live; 2, 3 and 4 wait in that order. 2 is closed and 3 becomes a draft (GitHub sends
    `converted_to_draft`, which the bot does not act on) while they wait: when 1 closes, neither is
    deployed, 3 is told why it no longer waits, and 4 gets the slot."""
    async with running_bot(shop, cluster, namespace, **CAP) as bot:
        for number in (1, 2, 3, 4):
            shop.add_pull(REPO, number)
            await event(bot, number, "opened")
        assert list(live(shop, view)) == [1]
        assert "3rd in line" in sticky(shop, 4)
        await event(bot, 2, "closed")
        await event(bot, 3, "converted_to_draft")
        assert "Preview: waiting for a slot" in sticky(shop, 3)

        await event(bot, 1, "closed")
        assert list(live(shop, view)) == [4]
        assert "Preview: ready" in sticky(shop, 4)
        assert "Preview: ready" not in sticky(shop, 2) and "Preview: ready" not in sticky(shop, 3)
        assert [d for d in shop.deployments(REPO) if d["environment"] in ("preview-2", "preview-3")] == []
        assert "No longer waiting for a preview slot: the pull request is a draft" in sticky(shop, 3)
        assert (await bot.bot.arbiter.lines())[1] == []


async def test_a_pull_request_closed_while_waiting_is_not_deployed(
        shop: FakeGitHub, cluster: Cluster, namespace: str, view: ClusterView) -> None:
    async with running_bot(shop, cluster, namespace, **CAP) as bot:
        for number in (1, 2):
            shop.add_pull(REPO, number)
            await event(bot, number, "opened")
        assert "1st in line" in sticky(shop, 2)
        await event(bot, 2, "closed")
        line, _ = await bot.bot.arbiter.line_of(key_of(shop, REPO, 2), set(), 1)
        assert line.waiting == ()  # the close took it out of the line
        await event(bot, 1, "closed")
        assert live(shop, view) == {}
        assert [d for d in shop.deployments(REPO) if d["environment"] == "preview-2"] == []
        assert "Preview: ready" not in sticky(shop, 2)


async def test_a_slot_freed_while_the_bot_was_down_goes_to_the_waiting_pull_request(
        shop: FakeGitHub, cluster: Cluster, namespace: str, view: ClusterView) -> None:
    """The line survives a restart (it is in the cluster): PR 1 is closed while no bot runs (GitHub never
    redelivers); the next process's start-up pass removes its preview and deploys PR 2."""
    async with running_bot(shop, cluster, namespace, **CAP) as bot:
        for number in (1, 2):
            shop.add_pull(REPO, number)
            await event(bot, number, "opened")
        assert "Preview: waiting for a slot" in sticky(shop, 2)
    pull_request_event(shop, REPO, 1, "closed")  # closed on GitHub; the event reaches no one
    async with running_bot(shop, cluster, namespace, **CAP) as bot:
        await bot.startup_pass()
        await bot.settle()
        assert live(shop, view) == {2: shop.repos[REPO].pulls[2].head_sha}
        assert "Preview: ready" in sticky(shop, 2)


async def test_the_reconcilers_pass_serves_a_line_whose_freed_slot_was_missed(
        shop: FakeGitHub, cluster: Cluster, namespace: str, view: ClusterView) -> None:
    """The replica that freed the slot never offered it (it died between the teardown and the deploy of
    the waiter: here, its hook is switched off): the next pass finds the line and a free slot, and deploys
    the waiter. A pass with nobody waiting asks GitHub nothing for lines."""
    async with running_bot(shop, cluster, namespace, **CAP) as bot:
        await bot.startup_pass()
        for number in (1, 2):
            shop.add_pull(REPO, number)
            await event(bot, number, "opened")
        hook, bot.bot.previewer.on_slot_freed = bot.bot.previewer.on_slot_freed, None
        await event(bot, 1, "closed")
        bot.bot.previewer.on_slot_freed = hook
        assert live(shop, view) == {}
        assert "Preview: waiting for a slot" in sticky(shop, 2)

        await bot.bot.reconcile_once()
        await bot.settle()
        assert live(shop, view) == {2: shop.repos[REPO].pulls[2].head_sha}
        assert "Preview: ready" in sticky(shop, 2)

        # Nobody waits now: a pass reads GitHub for the live preview's repository only, as before.
        before = len(shop.requests)
        await bot.bot.reconcile_once()
        await bot.settle()
        paths = [r.path for r in shop.requests[before:]]
        assert not [p for p in paths if "/pulls/2" in p or "/issues/2/" in p], paths


async def test_a_waiter_is_deployed_as_its_own_event_would_be_once_its_checks_succeed(
        fake_github: FakeGitHub, cluster: Cluster, namespace: str, view: ClusterView) -> None:
    """`wait_for` holds for a waiter too: offered the slot while its new head is still building, it is not
    deployed (the comment says it waits for checks) and the slot stays free; the check's success deploys it."""
    fake_github.add_repo(REPO, files={".github/preview.yml": "wait_for: [build-images]\n" + CONFIG})
    async with running_bot(fake_github, cluster, namespace, **CAP) as bot:
        for number in (1, 2):
            pull = fake_github.add_pull(REPO, number)
            fake_github.add_check_run(REPO, pull.head_sha, "build-images", status="completed", conclusion="success")
            await event(bot, number, "opened")
        assert list(live(fake_github, view)) == [1]
        assert "1st in line" in sticky(fake_github, 2)
        head = fake_sha("pr-2-building")
        fake_github.push(REPO, 2, head)
        run = fake_github.add_check_run(REPO, head, "build-images", status="in_progress")
        await event(bot, 2, "synchronize")

        await event(bot, 1, "closed")
        assert live(fake_github, view) == {}
        assert "Preview: waiting for checks" in sticky(fake_github, 2)
        fake_github.update_check_run(REPO, run, status="completed", conclusion="success")
        assert await bot.send("check_run", check_run_event(fake_github, REPO, run)) == 202
        await bot.settle()
        assert live(fake_github, view) == {2: head}
        assert "Preview: ready" in sticky(fake_github, 2)


async def test_under_trigger_label_a_waiter_whose_label_went_leaves_the_line(
        fake_github: FakeGitHub, cluster: Cluster, namespace: str, view: ClusterView) -> None:
    """`trigger: label`: PR 2's label is removed while it waits and the `unlabeled` event is lost; offered
    the slot, it is read again from GitHub, leaves the line with the reason, and PR 3 gets the slot."""
    fake_github.add_repo(REPO, files={".github/preview.yml": "trigger: label\nlabel: preview\n" + CONFIG})
    async with running_bot(fake_github, cluster, namespace, **CAP) as bot:
        for number in (1, 2, 3):
            fake_github.add_pull(REPO, number)
            await event(bot, number, "labeled", label="preview")
        assert list(live(fake_github, view)) == [1]
        assert "2nd in line" in sticky(fake_github, 3)
        pull_request_event(fake_github, REPO, 2, "unlabeled", label="preview")  # the event is lost

        await event(bot, 1, "closed")
        assert list(live(fake_github, view)) == [3]
        assert "No longer waiting for a preview slot: the `preview` label is no longer on the pull request" \
            in sticky(fake_github, 2)
        assert [d for d in fake_github.deployments(REPO) if d["environment"] == "preview-2"] == []
