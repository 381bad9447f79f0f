"""Who may trigger what, and what a repository config may ask for (issue: hardening, security policy)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from collections.abc import AsyncIterator

import pytest

from bot import commands, comment, logs
from bot.reconcile import UNFINISHED
from tests.e2e.harness import CONFIG, REPO, SECRET, ClusterView, RunningBot, key_of, running_bot
from tests.fakegithub import FakeGitHub, check_run_event, issue_comment_event, pull_request_event
from tests.plugins.cluster import Cluster

pytestmark = pytest.mark.cluster



@pytest.fixture
async def bot(shop: FakeGitHub, cluster: Cluster, namespace: str) -> AsyncIterator[RunningBot]:
    async with running_bot(shop, cluster, namespace) as running:
        yield running


def sticky(fake: FakeGitHub, repo: str, number: int) -> str:
    [found] = [c for c in fake.comments(repo, number) if comment.MARKER in c["body"]]
    return str(found["body"])


def answers(fake: FakeGitHub, repo: str, number: int) -> list[str]:
    """The bot's answers to people without write access (bot.commands.ANSWER_MARKER)."""
    return [str(c["body"]) for c in fake.comments(repo, number) if commands.ANSWER_MARKER in str(c["body"])]


def bot_replies(fake: FakeGitHub, repo: str, number: int) -> list[str]:
    return [str(c["body"]) for c in fake.comments(repo, number)
            if c["user"]["type"] == "Bot" and comment.MARKER not in str(c["body"])]


async def test_commands_need_write_permission(bot: RunningBot, view: ClusterView) -> None:
    bot.fake.add_pull(REPO, 1, draft=True)  # drafts are not deployed on their own
    for user in ("mallory", "tina", "mallory"):
        payload = issue_comment_event(bot.fake, REPO, 1, "/preview", user=user)
        assert await bot.send("issue_comment", payload) == 202
        await bot.settle()
        assert bot.fake.reactions(REPO, comment_id=payload["comment"]["id"]) == []
    assert view.deployments() == {}
    assert bot.fake.deployments(REPO) == []
    [refusal] = answers(bot.fake, REPO, 1)  # once per PR, however many try
    assert "@mallory `/preview deploy` needs write access" in refusal

    await bot.send("issue_comment", issue_comment_event(bot.fake, REPO, 1, "/preview", user="alice"))
    await bot.settle()
    assert list(view.deployments()) == [key_of(bot.fake, REPO, 1).object_name("a")]

    await bot.send("issue_comment", issue_comment_event(bot.fake, REPO, 1, "/preview stop", user="mallory"))
    await bot.settle()
    assert list(view.deployments()) == [key_of(bot.fake, REPO, 1).object_name("a")]
    assert len(answers(bot.fake, REPO, 1)) == 1


async def test_strangers_get_one_answer_per_pull_request_across_a_restart(shop: FakeGitHub, cluster: Cluster,
                                                                          namespace: str) -> None:
    """The answer is its own record, on GitHub: a new process (or another replica) finds it."""
    shop.add_pull(REPO, 10, draft=True)
    writes = 0
    for _process in range(2):
        async with running_bot(shop, cluster, namespace) as bot:
            before = len(shop.requests)
            for body in ("/preview help", "/preview frobnicate", "/preview stop") * 3:
                await bot.send("issue_comment", issue_comment_event(shop, REPO, 10, body, user="mallory"))
            await bot.settle()
            writes += sum(r.method in ("POST", "PATCH", "PUT", "DELETE") and "/access_tokens" not in r.path
                          for r in shop.requests[before:])
    [answer] = answers(shop, REPO, 10)
    assert answer.startswith(commands.ANSWER_MARKER) and commands.HELP_TEXT in answer
    assert writes == 1
    assert all(r == [] for r in (shop.reactions(REPO, comment_id=c["id"]) for c in shop.comments(REPO, 10)))


async def test_help_and_unknown_subcommands(bot: RunningBot) -> None:
    bot.fake.add_pull(REPO, 2, draft=True)
    payload = issue_comment_event(bot.fake, REPO, 2, "/preview frobnicate", user="mallory")
    await bot.send("issue_comment", payload)
    await bot.settle()
    [reply] = answers(bot.fake, REPO, 2)
    assert "Unknown command `/preview frobnicate`" in reply and "preview-bot commands" in reply
    assert bot.fake.reactions(REPO, comment_id=payload["comment"]["id"]) == []

    for body, reaction in (("/preview frobnicate", "confused"), ("/preview help", "eyes")):
        payload = issue_comment_event(bot.fake, REPO, 2, body, user="alice")
        await bot.send("issue_comment", payload)
        await bot.settle()
        assert [r["content"] for r in bot.fake.reactions(REPO, comment_id=payload["comment"]["id"])] == [reaction]
    assert len([r for r in bot_replies(bot.fake, REPO, 2) if "preview-bot commands" in r]) == 3


def image(view: ClusterView, name: str) -> str:
    return str(view.deployments()[name].spec.template.spec.containers[0].image)


async def test_a_fork_is_deployed_only_at_the_commit_a_maintainer_names(bot: RunningBot, view: ClusterView) -> None:
    bot.fake.add_pull(REPO, 3, user="outsider", fork=True, head_sha="1" * 40)
    await bot.send("pull_request", pull_request_event(bot.fake, REPO, 3, "opened"))
    await bot.settle()
    assert view.deployments() == {}
    assert "comes from a fork" in sticky(bot.fake, REPO, 3) and f"`/preview {'1' * 40}`" in sticky(bot.fake, REPO, 3)

    # A bare `/preview` cannot say which commit was reviewed: nothing, and the reply names the head.
    await bot.send("issue_comment", issue_comment_event(bot.fake, REPO, 3, "/preview", user="alice"))
    await bot.settle()
    assert view.deployments() == {}
    assert f"comment `/preview {'1' * 40}`" in bot_replies(bot.fake, REPO, 3)[-1]

    await bot.send("issue_comment", issue_comment_event(bot.fake, REPO, 3, f"/preview {'1' * 40}", user="alice"))
    await bot.settle()
    name = key_of(bot.fake, REPO, 3).object_name("a")
    assert image(view, name).endswith("1" * 40)

    # A push waits for a new approval.
    bot.fake.push(REPO, 3, "2" * 40)
    await bot.send("pull_request", pull_request_event(bot.fake, REPO, 3, "synchronize"))
    await bot.settle()
    assert image(view, name).endswith("1" * 40)
    assert "comes from a fork" in sticky(bot.fake, REPO, 3) and f"`/preview {'2' * 40}`" in sticky(bot.fake, REPO, 3)

    # The race: the maintainer names the head they reviewed, the author pushes before the job runs.
    approval = issue_comment_event(bot.fake, REPO, 3, f"/preview {'2' * 40}", user="alice")
    bot.fake.push(REPO, 3, "3" * 40)
    await bot.send("issue_comment", approval)
    await bot.settle()
    assert image(view, name).endswith("1" * 40)
    reply = bot_replies(bot.fake, REPO, 3)[-1]
    assert f"`{'2' * 40}` is not the head" in reply and f"comment `/preview {'3' * 40}`" in reply
    assert [r["content"] for r in bot.fake.reactions(REPO, comment_id=approval["comment"]["id"])] == ["confused"]

    await bot.send("issue_comment", issue_comment_event(bot.fake, REPO, 3, f"/preview {'3' * 40}", user="alice"))
    await bot.settle()
    assert image(view, name).endswith("3" * 40)


GATED_CONFIG = "wait_for: [build-images]\n" + CONFIG


async def test_the_bot_never_deploys_a_fork_commit_no_maintainer_approved(shop: FakeGitHub, cluster: Cluster,
                                                                          namespace: str, view: ClusterView) -> None:
    """What the bot starts by itself (a resume of a deploy cut short, a wait for checks that ran out, a check
    event) reads the fork's head when it runs: its author may have pushed since the reconciler looked, and a
    fork's workflows name their check runs as they please. Only the commit a maintainer named deploys."""
    shop.add_repo("acme/gated", files={".github/preview.yml": GATED_CONFIG}, collaborators={"alice": "write"})
    approved, pushed = "1" * 40, "6" * 40
    async with running_bot(shop, cluster, namespace) as bot:
        numbers = {REPO: 3, "acme/gated": 4}  # the default host template has no repository in it
        for repo, number in numbers.items():
            shop.add_pull(repo, number, user="outsider", fork=True, head_sha=approved)
            await bot.send("pull_request", pull_request_event(shop, repo, number, "opened"))
            await bot.send("issue_comment", issue_comment_event(shop, repo, number, f"/preview {approved}",
                                                                user="alice"))
        await bot.settle()
        for repo, number in numbers.items():
            name, repo_id = key_of(shop, repo, number).object_name("a"), shop.repos[repo].id
            # Finishing the approved commit's deploy (the process ended mid-deploy) stays possible.
            await bot.bot.reconciler.redeploy(repo_id, repo, number, UNFINISHED)
            assert image(view, name).endswith(approved)

            shop.push(repo, number, pushed)  # after the pass saw the approved commit unfinished, before the job ran
            run = shop.add_check_run(repo, pushed, "build-images", status="completed", conclusion="success")
            await bot.send("check_run", check_run_event(shop, repo, run))
            await bot.settle()
            await bot.bot.reconciler.redeploy(repo_id, repo, number, UNFINISHED)
            bot.bot.check_waits(now=time.time() + 10 * 86400)
            await bot.settle()
            assert image(view, name).endswith(approved), repo
            body = sticky(shop, repo, number)
            assert "comes from a fork" in body and f"`/preview {pushed}`" in body, body
            assert "Still live" in body and f"`{approved[:12]}`" in body  # the approved commit keeps serving
            assert pushed not in {d["sha"] for d in shop.deployments(repo)}

            await bot.send("issue_comment", issue_comment_event(shop, repo, number, f"/preview {pushed}", user="alice"))
            await bot.settle()
            assert image(view, name).endswith(pushed)


async def test_another_apps_comment_with_the_bots_markers_is_not_the_bots(shop: FakeGitHub, cluster: Cluster,
                                                                          namespace: str, view: ClusterView) -> None:
    """Another App may post text a stranger chose (a coverage report listing a fork's file names, a PR title
    quoted back). Its comment carrying the bot's hidden markers is not the bot's: not the sticky comment the
    bot edits and reads (a stop recorded at the head keeps discovery from deploying), nor the day's answer to
    people without write access."""
    coverage = shop.other_app("codecov")
    shop.add_pull(REPO, 6)
    head = shop.repos[REPO].pulls[6].head_sha
    forged = (f"{comment.MARKER}\n<!-- preview-bot:stopped-at {head} -->\n{commands.ANSWER_MARKER}\n"
              "| file | coverage |\n| --- | --- |\n| src/app.py | 91% |")
    foreign = shop.add_comment(REPO, 6, forged, user="", app=coverage)
    async with running_bot(shop, cluster, namespace) as bot:
        await bot.startup_pass()
        await bot.settle()
        assert list(view.deployments()) == [key_of(shop, REPO, 6).object_name("a")]  # discovered, not "stopped"
        await bot.send("issue_comment", issue_comment_event(shop, REPO, 6, "/preview stop", user="mallory"))
        await bot.settle()
    comments = shop.comments(REPO, 6)
    assert [c["body"] for c in comments if c["id"] == foreign["id"]] == [forged]  # never edited
    ours = [c for c in comments if c["user"]["login"] == shop.bot.login]
    assert [comment.MARKER in c["body"] for c in ours] == [True, False]  # its own sticky comment, then the answer
    assert "@mallory `/preview stop` needs write access" in ours[1]["body"]


async def test_a_forks_pushes_rewrite_its_waiting_comment_at_most_once_a_period(bot: RunningBot,
                                                                                 view: ClusterView) -> None:
    """A fork's author can push as often as they like, and every write of the bot spends the App's content
    budget, shared by every repository (PREVIEW_GITHUB_CONTENT_PER_HOUR): a push rewrites the comment that asks
    for approval only once in FORK_NOTICE_PERIOD. A comment that says something else is always rewritten."""
    fake = bot.fake
    fake.add_pull(REPO, 8, user="outsider", fork=True, head_sha="1" * 40)
    await bot.send("pull_request", pull_request_event(fake, REPO, 8, "opened"))
    await bot.settle()

    def writes_since(start: int) -> list[str]:
        return [f"{r.method} {r.path}" for r in fake.requests[start:] if r.method not in ("GET", "HEAD")]

    start = len(fake.requests)
    for digit in "2345":
        fake.push(REPO, 8, digit * 40)
        await bot.send("pull_request", pull_request_event(fake, REPO, 8, "synchronize"))
        await bot.settle()
    assert writes_since(start) == []
    body = sticky(fake, REPO, 8)
    assert "waiting for approval" in body and f"`/preview {'1' * 40}`" in body  # the first push's notice stays
    for _cycle in range(3):  # closing and reopening: the first close says so, then nothing changes
        for action in ("closed", "reopened"):
            await bot.send("pull_request", pull_request_event(fake, REPO, 8, action))
            await bot.settle()
    assert len(writes_since(start)) == 1 and "Preview: stopped" in sticky(fake, REPO, 8)

    # A writer who names the commit the comment shows is told the head; naming the head deploys it.
    await bot.send("issue_comment", issue_comment_event(fake, REPO, 8, f"/preview {'1' * 40}", user="alice"))
    await bot.settle()
    assert f"comment `/preview {'5' * 40}`" in bot_replies(fake, REPO, 8)[-1]
    await bot.send("issue_comment", issue_comment_event(fake, REPO, 8, f"/preview {'5' * 40}", user="alice"))
    await bot.settle()
    assert "Preview: ready" in sticky(fake, REPO, 8)

    # The next push says at once that the preview serves an older commit; later ones wait for the period.
    for digit in "67":
        fake.push(REPO, 8, digit * 40)
        await bot.send("pull_request", pull_request_event(fake, REPO, 8, "synchronize"))
        await bot.settle()
    body = sticky(fake, REPO, 8)
    assert "waiting for approval" in body and f"`/preview {'6' * 40}`" in body and "Still live" in body
    bot.bot.ctx.fork_notices.clear()  # the period is over
    fake.push(REPO, 8, "8" * 40)
    await bot.send("pull_request", pull_request_event(fake, REPO, 8, "synchronize"))
    await bot.settle()
    assert f"`/preview {'8' * 40}`" in sticky(fake, REPO, 8)
    assert image(view, key_of(fake, REPO, 8).object_name("a")).endswith("5" * 40)


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
        assert comment.stopped_at(sticky(fake_github, "acme/labels", 5)) is not None
        # The label added again is a person asking, like `/preview`: the stop at this head does not hold.
        await bot.send("pull_request", pull_request_event(fake_github, "acme/labels", 5, "labeled",
                                                          label="deploy-me"))
        await bot.settle()
        assert list(view.deployments()) == [key_of(fake_github, "acme/labels", 5).object_name("a")]


@pytest.mark.parametrize(("config", "error"), [
    ("trigger: label\nlabel: deploy-me\n" + CONFIG.replace("port: 8080", "port: '8080'"),
     "`.github/preview.yml: services[0].port: "),
    ("trigger: label\nlabel: deploy-me\nservices: [\n", "`.github/preview.yml: line "),
], ids=["invalid-field", "invalid-yaml"])
async def test_a_label_that_asks_for_a_preview_reports_a_broken_config(
        fake_github: FakeGitHub, cluster: Cluster, namespace: str, view: ClusterView, config: str, error: str) -> None:
    """README: an invalid config is reported in the PR comment. Under `trigger: label` the label is what asks,
    so adding it reports the error as a push does; another label says nothing when the file still says
    which label asks (with YAML that cannot be read at all, any label added reports it)."""
    fake_github.add_repo("acme/broken", files={".github/preview.yml": config})
    async with running_bot(fake_github, cluster, namespace) as bot:
        fake_github.add_pull("acme/broken", 9, labels=["bug", "deploy-me"])
        if "services[0].port" in error:
            await bot.send("pull_request", pull_request_event(fake_github, "acme/broken", 9, "labeled", label="bug"))
            await bot.settle()
            assert fake_github.comments("acme/broken", 9) == []
        await bot.send("pull_request", pull_request_event(fake_github, "acme/broken", 9, "labeled",
                                                          label="deploy-me"))
        await bot.settle()
    body = sticky(fake_github, "acme/broken", 9)
    assert "Preview: configuration error" in body and f"Nothing was deployed: {error}" in body, body
    assert view.deployments() == {}
    assert fake_github.deployments("acme/broken") == []


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
    fake_github.add_repo(REPO, files={".github/preview.yml": CONFIG}, collaborators={"alice": "write"})
    async with running_bot(fake_github, cluster, namespace, PREVIEW_MAX_PER_REPO="1") as bot:
        for number in (7, 8):
            fake_github.add_pull(REPO, number)
            await bot.send("pull_request", pull_request_event(fake_github, REPO, number, "opened"))
            await bot.settle()
        assert list(view.deployments()) == [key_of(fake_github, REPO, 7).object_name("a")]
        body = sticky(fake_github, REPO, 8)
        assert "this repository already has 1 live preview (the limit is 1)" in body, body
        assert "1st in line (when this was written): it is deployed by itself" in body, body
        # A writer's `/preview` meanwhile is refused too: it keeps its place in line.
        await bot.send("issue_comment", issue_comment_event(fake_github, REPO, 8, "/preview", user="alice"))
        await bot.settle()
        assert list(view.deployments()) == [key_of(fake_github, REPO, 7).object_name("a")]
        assert "1st in line" in sticky(fake_github, REPO, 8)
        # What the refusal says works: a slot freed, the refused PR is deployed without anyone asking.
        await bot.send("issue_comment", issue_comment_event(fake_github, REPO, 7, "/preview stop", user="alice"))
        await bot.settle()
        assert list(view.deployments()) == [key_of(fake_github, REPO, 8).object_name("a")]
        assert "Preview: ready" in sticky(fake_github, REPO, 8)


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
