"""Deploy when the build is ready: `wait_for` gates a preview on check runs and commit statuses, and an
image that is not pushed yet is waited for, not reported as a failure. The whole bot over HTTP, the fake
GitHub (checked against GitHub's OpenAPI description, events from real example payloads) and the real
control plane, whose kwok runs the project's test Stage for images containing "not-pushed"."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from kubernetes import client as k8s

from bot import comment
from bot.naming import PreviewKey
from bot.reconcile import UNFINISHED
from tests.e2e.harness import ClusterView, RunningBot, running_bot
from tests.fakegithub import (
    FakeGitHub,
    check_run_event,
    issue_comment_event,
    pull_request_event,
    status_event,
)
from tests.plugins.cluster import Cluster

pytestmark = pytest.mark.cluster

GATED = "acme/gated"
GATED_CONFIG = """\
wait_for: [build-images]
services:
  - name: a
    image: registry.example.com/acme/a:{sha}
    port: 8080
"""
SHA_A, SHA_B = "a1" * 20, "b2" * 20
READS = frozenset({"GET", "HEAD"})


@dataclass(frozen=True)
class Calls:
    reads: int
    writes: int
    written: tuple[str, ...]


def calls_since(fake: FakeGitHub, start: int) -> Calls:
    seen = fake.requests[start:]
    writes = tuple(f"{r.method} {r.path}" for r in seen if r.method not in READS)
    return Calls(reads=sum(r.method in READS for r in seen), writes=len(writes), written=writes)


@pytest.fixture
async def bot(fake_github: FakeGitHub, cluster: Cluster, namespace: str) -> AsyncIterator[RunningBot]:
    fake_github.add_repo(GATED, files={".github/preview.yml": GATED_CONFIG}, collaborators={"alice": "write"})
    async with running_bot(fake_github, cluster, namespace) as running:
        yield running


def sticky(fake: FakeGitHub, repo: str, number: int) -> str:
    bodies = [str(c["body"]) for c in fake.comments(repo, number) if comment.MARKER in str(c["body"])]
    assert len(bodies) == 1, bodies
    return bodies[0]


def states_by_sha(fake: FakeGitHub, repo: str) -> dict[str, list[list[str]]]:
    found: dict[str, list[list[str]]] = {}
    for d in fake.deployments(repo):
        found.setdefault(d["sha"], []).append([s["state"] for s in fake.statuses(repo, d["id"])])
    return found


async def open_pr(bot: RunningBot, number: int, sha: str, repo: str = GATED) -> None:
    bot.fake.add_pull(repo, number, head_sha=sha)
    assert await bot.send("pull_request", pull_request_event(bot.fake, repo, number, "opened")) == 202
    await bot.settle()


async def send_check(bot: RunningBot, run: Any, repo: str = GATED) -> Calls:
    start = len(bot.fake.requests)
    assert await bot.send("check_run", check_run_event(bot.fake, repo, run)) == 202
    await bot.settle()
    return calls_since(bot.fake, start)


def images(view: ClusterView) -> list[str]:
    return [d.spec.template.spec.containers[0].image for d in view.deployments().values()]


async def test_a_forks_check_runs_cost_no_request(bot: RunningBot, view: ClusterView) -> None:
    """A fork's workflows make as many check runs as its author likes, named as they like (a matrix job per
    entry, on every push): their events are not read at all, so they cannot spend the installation's rate
    limit. GitHub gives a fork's suite no head branch and no pull requests; a fork's PR deploys only on a
    writer's `/preview <sha>` anyway."""
    await bot.startup_pass()  # its own reads are not the events'
    bot.fake.add_pull(GATED, 5, user="outsider", fork=True, head_sha=SHA_B)
    assert await bot.send("pull_request", pull_request_event(bot.fake, GATED, 5, "opened")) == 202
    await bot.settle()
    start = len(bot.fake.requests)
    for i in range(20):
        run = bot.fake.add_check_run(GATED, SHA_B, "build-images" if i % 2 else f"matrix ({i})",
                                     status="completed", conclusion="success")
        assert await bot.send("check_run", check_run_event(bot.fake, GATED, run)) == 202
    await bot.settle()
    assert calls_since(bot.fake, start) == Calls(reads=0, writes=0, written=())
    assert view.deployments() == {}

    # A check run of the repository's own branch is still read, and deploys the PR waiting for it.
    await open_pr(bot, 6, SHA_A)
    run = bot.fake.add_check_run(GATED, SHA_A, "build-images", status="completed", conclusion="success")
    await bot.send("check_run", check_run_event(bot.fake, GATED, run))
    await bot.settle()
    assert list(view.deployments()) == [PreviewKey(GATED, 6, bot.fake.repos[GATED].id).object_name("a")]


async def test_waits_for_the_check_then_deploys(bot: RunningBot, view: ClusterView) -> None:
    fake = bot.fake
    await open_pr(bot, 1, SHA_A)
    body = sticky(fake, GATED, 1)
    assert "waiting for checks" in body and "`build-images` (not reported yet)" in body
    assert view.deployments() == {}
    [gate] = fake.deployments(GATED)
    [waiting] = fake.statuses(GATED, gate["id"])
    assert (waiting["state"], waiting["description"]) == \
        ("queued", "waiting for checks: `build-images` (not reported yet)")

    run = fake.add_check_run(GATED, SHA_A, "build-images", status="in_progress")
    calls = await send_check(bot, run)
    assert "waiting for checks: `build-images` (in progress)" in sticky(fake, GATED, 1)
    assert fake.statuses(GATED, gate["id"])[-1]["description"] == "waiting for checks: `build-images` (in progress)"
    assert calls.writes == 2, calls.written  # one deployment status, one comment edit
    assert view.deployments() == {}

    fake.update_check_run(GATED, run, status="completed", conclusion="success")
    calls = await send_check(bot, run)
    assert images(view) == [f"registry.example.com/acme/a:{SHA_A}"]
    assert next(iter(view.deployments().values())).status.available_replicas == 1
    body = sticky(fake, GATED, 1)
    assert "ready" in body and "https://preview-1-api-a.example.com" in body
    assert states_by_sha(fake, GATED) == {SHA_A: [["queued", "queued", "inactive"], ["in_progress", "success"]]}
    success = fake.statuses(GATED, fake.deployments(GATED)[-1]["id"])[-1]
    assert success["environment_url"] == "https://preview-1-api-a.example.com"
    print(f"\ncheck succeeded -> deployed: {calls.reads} reads, {calls.writes} writes: {calls.written}")
    # create deployment, mark the wait inactive, in_progress, comment, success, comment
    assert calls.writes == 6, calls.written


async def test_a_failed_check_deploys_nothing_and_links_it(bot: RunningBot, view: ClusterView) -> None:
    fake = bot.fake
    await open_pr(bot, 2, SHA_A)
    run = fake.add_check_run(GATED, SHA_A, "build-images", status="completed", conclusion="failure")
    await send_check(bot, run)
    assert view.deployments() == {}
    body = sticky(fake, GATED, 2)
    assert "not deployed" in body.lower() and "check `build-images` concluded failure" in body
    link = f"https://github.com/{GATED}/runs/{run.id}"
    assert f"]({link})" in body
    [gate] = fake.deployments(GATED)
    final = fake.statuses(GATED, gate["id"])[-1]
    assert (final["state"], final["description"], final["log_url"]) == \
        ("failure", "not deployed: check `build-images` concluded failure", link)
    # The same delivery again changes nothing and writes nothing.
    calls = await send_check(bot, run)
    assert calls.writes == 0, calls.written
    # A re-run that succeeds deploys (the failure was the build's, not the commit's verdict).
    rerun = fake.add_check_run(GATED, SHA_A, "build-images", status="completed", conclusion="success")
    await send_check(bot, rerun)
    assert images(view) == [f"registry.example.com/acme/a:{SHA_A}"]


async def test_a_push_while_waiting_only_ever_deploys_the_new_head(bot: RunningBot, view: ClusterView) -> None:
    fake = bot.fake
    await open_pr(bot, 3, SHA_A)
    fake.push(GATED, 3, SHA_B)
    assert await bot.send("pull_request", pull_request_event(fake, GATED, 3, "synchronize")) == 202
    await bot.settle()
    assert f"Commit: `{SHA_B[:12]}`" in sticky(fake, GATED, 3)
    # The old commit's build finishes: it is no PR's head any more, so nothing happens and nothing is written.
    old = fake.add_check_run(GATED, SHA_A, "build-images", status="completed", conclusion="success")
    calls = await send_check(bot, old)
    assert calls.writes == 0, calls.written
    assert view.deployments() == {}
    new = fake.add_check_run(GATED, SHA_B, "build-images", status="completed", conclusion="success")
    await send_check(bot, new)
    assert images(view) == [f"registry.example.com/acme/a:{SHA_B}"]
    by_sha = states_by_sha(fake, GATED)
    assert by_sha[SHA_A] == [["queued", "inactive"]]  # only ever a wait, ended by the push
    assert ["in_progress", "success"] in by_sha[SHA_B]
    assert not any(s in ("in_progress", "success") for run in by_sha[SHA_A] for s in run)


async def test_a_push_that_waits_or_fails_keeps_showing_the_live_preview(bot: RunningBot, view: ClusterView) -> None:
    """The preview of the earlier commit serves until the new one deploys: while the new head waits for
    its checks, and after they fail, the comment still gives its commit and URL as live."""
    fake = bot.fake
    await open_pr(bot, 6, SHA_A)
    await send_check(bot, fake.add_check_run(GATED, SHA_A, "build-images", status="completed", conclusion="success"))
    assert images(view) == [f"registry.example.com/acme/a:{SHA_A}"]
    fake.push(GATED, 6, SHA_B)
    assert await bot.send("pull_request", pull_request_event(fake, GATED, 6, "synchronize")) == 202
    await bot.settle()
    for step in ("waiting", "failed"):
        body = sticky(fake, GATED, 6)
        assert images(view) == [f"registry.example.com/acme/a:{SHA_A}"], step
        assert body.index(f"Commit: `{SHA_B[:12]}`") < body.index("**Still live**") \
            < body.index(f"Commit: `{SHA_A[:12]}`") < body.index("https://preview-6-api-a.example.com"), step
        if step == "waiting":
            assert "waiting for checks" in body
            await send_check(bot, fake.add_check_run(GATED, SHA_B, "build-images", status="completed",
                                                     conclusion="failure"))
        else:
            assert "concluded failure" in body
    await send_check(bot, fake.add_check_run(GATED, SHA_B, "build-images", status="completed", conclusion="success"))
    body = sticky(fake, GATED, 6)
    assert images(view) == [f"registry.example.com/acme/a:{SHA_B}"]
    assert "Still live" not in body and SHA_A[:12] not in body and f"Commit: `{SHA_B[:12]}`" in body


async def test_events_for_other_commits_checks_and_apps_write_nothing(bot: RunningBot, view: ClusterView) -> None:
    fake = bot.fake
    await open_pr(bot, 4, SHA_A)
    fake.add_pull(GATED, 5, head_sha="e5" * 20, draft=True)  # drafts do not deploy by themselves
    cases: dict[str, Callable[[], tuple[str, dict[str, Any]]]] = {
        "a check nobody waits for": lambda: ("check_run", check_run_event(fake, GATED, fake.add_check_run(
            GATED, SHA_A, "unit-tests", status="completed", conclusion="failure"))),
        "another App's check nobody waits for": lambda: ("check_run", check_run_event(fake, GATED, fake.add_check_run(
            GATED, SHA_A, "lint", status="completed", conclusion="success", app="other-ci"))),
        "a status nobody waits for": lambda: ("status", status_event(fake, GATED, fake.set_commit_status(
            GATED, SHA_A, "ci/docs", "failure"))),
        "the awaited check on a commit that is no PR's head": lambda: ("check_run", check_run_event(
            fake, GATED, fake.add_check_run(GATED, fake.repos[GATED].branches["main"], "build-images",
                                            status="completed", conclusion="success"))),
        "the awaited check on a draft's head": lambda: ("check_run", check_run_event(fake, GATED, fake.add_check_run(
            GATED, "e5" * 20, "build-images", status="completed", conclusion="success"))),
        "the awaited check queued again, as the PR already shows": lambda: ("check_run", check_run_event(
            fake, GATED, fake.add_check_run(GATED, SHA_A, "build-images", status="queued"))),
    }
    figures = {}
    for what, make in cases.items():
        if what.startswith("the awaited check queued"):
            # The PR shows "(queued)" once; after that the same news changes nothing.
            event, payload = make()
            await bot.send(event, payload)
            await bot.settle()
        event, payload = make()
        start = len(fake.requests)
        assert await bot.send(event, payload) == 202
        await bot.settle()
        calls = calls_since(fake, start)
        figures[what] = calls
        assert calls.writes == 0, (what, calls.written)
    print("\n" + "\n".join(f"{what}: {c.reads} reads, {c.writes} writes" for what, c in figures.items()))
    assert figures["a check nobody waits for"].reads == 1  # the config only
    assert figures["the awaited check on a commit that is no PR's head"].reads == 2  # + the open PRs
    assert view.deployments() == {}


async def test_a_commit_status_context_gates_too(fake_github: FakeGitHub, cluster: Cluster, namespace: str,
                                                 view: ClusterView) -> None:
    fake_github.add_repo("acme/jenkins", files={".github/preview.yml": GATED_CONFIG.replace(
        "[build-images]", "[ci/images]")})
    async with running_bot(fake_github, cluster, namespace) as bot:
        await open_pr(bot, 6, SHA_A, repo="acme/jenkins")
        pending = fake_github.set_commit_status("acme/jenkins", SHA_A, "ci/images", "pending")
        assert await bot.send("status", status_event(fake_github, "acme/jenkins", pending)) == 202
        await bot.settle()
        assert "`ci/images` (pending)" in sticky(fake_github, "acme/jenkins", 6)
        done = fake_github.set_commit_status("acme/jenkins", SHA_A, "ci/images", "success",
                                             target_url="https://ci.example.com/6")
        assert await bot.send("status", status_event(fake_github, "acme/jenkins", done)) == 202
        await bot.settle()
    assert images(view) == [f"registry.example.com/acme/a:{SHA_A}"]


async def test_preview_command_overrides_the_wait(bot: RunningBot, view: ClusterView) -> None:
    fake = bot.fake
    await open_pr(bot, 7, SHA_A)
    assert view.deployments() == {}
    assert await bot.send("issue_comment", issue_comment_event(fake, GATED, 7, "/preview", user="alice")) == 202
    await bot.settle()
    assert images(view) == [f"registry.example.com/acme/a:{SHA_A}"]
    assert "ready" in sticky(fake, GATED, 7)
    deployments = len(fake.deployments(GATED))
    # The build finishing later does not deploy the same commit again.
    run = fake.add_check_run(GATED, SHA_A, "build-images", status="completed", conclusion="success")
    calls = await send_check(bot, run)
    assert calls.writes == 0, calls.written
    assert len(fake.deployments(GATED)) == deployments


async def stop(bot: RunningBot, number: int) -> None:
    assert await bot.send("issue_comment", issue_comment_event(bot.fake, GATED, number, "/preview stop",
                                                               user="alice")) == 202
    await bot.settle()


def environment_deployments(fake: FakeGitHub, number: int) -> list[dict[str, Any]]:
    return [d for d in fake.deployments(GATED) if d["environment"] == f"preview-{number}"]


def assert_stopped_at(fake: FakeGitHub, number: int, sha: str) -> None:
    body = sticky(fake, GATED, number)
    assert "Preview: stopped" in body and comment.stopped_at(body) == sha, body
    assert environment_deployments(fake, number) == []


@pytest.mark.parametrize("deployed_first", [False, True], ids=["while-waiting", "after-a-preview-command"])
async def test_a_stop_holds_when_the_awaited_check_then_succeeds(bot: RunningBot, view: ClusterView,
                                                                 deployed_first: bool) -> None:
    """`/preview stop` while the PR waits for its build: the build succeeding later is no push, so it
    deploys nothing and writes nothing; a push brings the preview back (README: only a push since the stop)."""
    fake = bot.fake
    number = 21 if deployed_first else 20
    await open_pr(bot, number, SHA_A)
    run = fake.add_check_run(GATED, SHA_A, "build-images", status="in_progress")
    await send_check(bot, run)
    if deployed_first:  # a maintainer deployed before the build was done, then stopped it
        assert await bot.send("issue_comment", issue_comment_event(fake, GATED, number, "/preview",
                                                                   user="alice")) == 202
        await bot.settle()
        assert images(view) == [f"registry.example.com/acme/a:{SHA_A}"]
    await stop(bot, number)
    assert view.deployments() == {}
    assert_stopped_at(fake, number, SHA_A)
    assert (fake.repos[GATED].id, number) not in bot.bot.ctx.waits  # the stop ended the wait

    fake.update_check_run(GATED, run, status="completed", conclusion="success")
    calls = await send_check(bot, run)
    assert calls.writes == 0, calls.written
    assert view.deployments() == {}
    assert_stopped_at(fake, number, SHA_A)

    fake.push(GATED, number, SHA_B)
    assert await bot.send("pull_request", pull_request_event(fake, GATED, number, "synchronize")) == 202
    await bot.settle()
    assert "waiting for checks" in sticky(fake, GATED, number)
    await send_check(bot, fake.add_check_run(GATED, SHA_B, "build-images", status="completed", conclusion="success"))
    assert images(view) == [f"registry.example.com/acme/a:{SHA_B}"]
    assert "Preview: ready" in sticky(fake, GATED, number)


async def test_a_stop_while_waiting_ends_the_wait_and_no_resume_brings_it_back(
        bot: RunningBot, view: ClusterView) -> None:
    """A stop forgets the PR's wait, so its timeout reports nothing; and a resume queued for the PR all the
    same (a wait that ran out just before, the reconciler) deploys nothing and shows no wait."""
    fake = bot.fake
    gated_id = fake.repos[GATED].id
    await open_pr(bot, 22, SHA_A)
    assert (gated_id, 22) in bot.bot.ctx.waits
    await stop(bot, 22)
    assert_stopped_at(fake, 22, SHA_A)
    assert bot.bot.check_waits(now=time.time() + 3601) == []
    await bot.settle()
    assert_stopped_at(fake, 22, SHA_A)

    start = len(fake.requests)
    bot.bot.reconciler.resume(gated_id, GATED, 22, UNFINISHED)
    await bot.settle()
    calls = calls_since(fake, start)
    assert calls.writes == 0, calls.written
    assert_stopped_at(fake, 22, SHA_A)
    assert (gated_id, 22) not in bot.bot.ctx.waits
    assert view.deployments() == {}


async def test_a_check_that_never_appears_is_reported_after_the_wait_timeout(
        bot: RunningBot, view: ClusterView) -> None:
    fake = bot.fake
    await open_pr(bot, 8, SHA_A)
    gated_id = fake.repos[GATED].id
    assert (gated_id, 8) in bot.bot.ctx.waits
    assert bot.bot.check_waits() == []  # not due yet
    # An hour passes (the default wait_timeout is 60 minutes): the wait began when its Deployment was made.
    for d in fake.repos[GATED].deployments:
        d.created_at -= 3601
    assert bot.bot.check_waits(now=time.time() + 3601) == [(gated_id, GATED, 8)]
    await bot.settle()
    body = sticky(fake, GATED, 8)
    assert "`build-images` did not succeed within the wait timeout" in body
    [gate] = fake.deployments(GATED)
    assert fake.statuses(GATED, gate["id"])[-1]["state"] == "failure"
    assert view.deployments() == {}
    assert (GATED, 8) not in bot.bot.ctx.waits


async def test_an_image_pushed_after_the_deploy_is_waited_for(
        fake_github: FakeGitHub, cluster: Cluster, namespace: str, view: ClusterView) -> None:
    """No `wait_for`: the pod sits in ErrImagePull/ImagePullBackOff (kwok test Stage) until CI pushes the
    image; the bot says so, keeps watching, and reports success by itself, with no new push."""
    config = "services:\n  - name: a\n    image: registry.example.com/acme/not-pushed-a:{sha}\n    port: 8080\n"
    fake_github.add_repo("acme/slowci", files={".github/preview.yml": config})
    core = k8s.CoreV1Api(view.api)
    async with running_bot(fake_github, cluster, namespace) as bot:
        fake_github.add_pull("acme/slowci", 9, head_sha=SHA_A)
        assert await bot.send("pull_request", pull_request_event(fake_github, "acme/slowci", 9, "opened")) == 202

        async def eventually(what: str, pred: Callable[[], Any], timeout: float = 60) -> Any:
            deadline = time.monotonic() + timeout
            while not (value := pred()):
                assert time.monotonic() < deadline, f"not within {timeout:.0f}s: {what}"
                await asyncio.sleep(0.25)
            return value

        def pulling() -> list[Any]:
            pods = core.list_namespaced_pod(namespace).items
            return [p for p in pods for c in (p.status.container_statuses or [])
                    if c.state.waiting and c.state.waiting.reason in ("ErrImagePull", "ImagePullBackOff")]

        [pod] = await eventually("the pod waits for its image", pulling)
        await eventually("the PR says it waits for the image", lambda: any(
            "Waiting for the image" in str(c["body"]) for c in fake_github.comments("acme/slowci", 9)))
        # Held there (ImagePullBackOff follows ErrImagePull) and still not reported as a failure.
        await eventually("ImagePullBackOff", lambda: any(
            c.state.waiting.reason == "ImagePullBackOff" for p in pulling() for c in p.status.container_statuses))
        [record] = fake_github.deployments("acme/slowci")
        assert [s["state"] for s in fake_github.statuses("acme/slowci", record["id"])] == \
            ["in_progress", "in_progress"]
        # CI pushes the image: the pod starts. No event reaches the bot; it notices by itself.
        core.patch_namespaced_pod(pod.metadata.name, namespace,
                                  {"metadata": {"annotations": {"preview-bot.test/image-pushed": "true"}}})
        await bot.settle()
    final = fake_github.statuses("acme/slowci", record["id"])[-1]
    assert (final["state"], final["environment_url"]) == ("success", "https://preview-9-api-a.example.com")
    body = sticky(fake_github, "acme/slowci", 9)
    assert "ready" in body and "Waiting for the image" not in body
    assert len(fake_github.deployments("acme/slowci")) == 1  # no push, no second deploy
    assert PreviewKey("acme/slowci", 9, fake_github.repos["acme/slowci"].id).object_name("a") in view.deployments()


async def _eventually(what: str, pred: Callable[[], Any], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := pred()):
        assert time.monotonic() < deadline, f"not within {timeout:.0f}s: {what}"
        await asyncio.sleep(0.25)
    return value


def _push_images(core: k8s.CoreV1Api, namespace: str) -> None:
    """CI pushes the images: the kwok test Stage starts the pods that waited for them."""
    for pod in core.list_namespaced_pod(namespace).items:
        core.patch_namespaced_pod(pod.metadata.name, namespace,
                                  {"metadata": {"annotations": {"preview-bot.test/image-pushed": "true"}}})


async def test_the_image_pull_grace_is_honoured_past_the_ready_timeout(
        fake_github: FakeGitHub, cluster: Cluster, namespace: str, view: ClusterView) -> None:
    """The defaults give CI 600 s to push an image (PREVIEW_IMAGE_PULL_GRACE) but a preview 300 s to become
    Available (PREVIEW_READY_TIMEOUT). Scaled down (2 s and 120 s): an image pushed after the ready timeout,
    within the grace, is waited for, never reported as a failure."""
    config = "services:\n  - name: a\n    image: registry.example.com/acme/not-pushed-a:{sha}\n    port: 8080\n"
    fake_github.add_repo("acme/slowci", files={".github/preview.yml": config})
    core = k8s.CoreV1Api(view.api)
    async with running_bot(fake_github, cluster, namespace, PREVIEW_READY_TIMEOUT="2",
                           PREVIEW_IMAGE_PULL_GRACE="120") as bot:
        fake_github.add_pull("acme/slowci", 9, head_sha=SHA_A)
        assert await bot.send("pull_request", pull_request_event(fake_github, "acme/slowci", 9, "opened")) == 202
        await _eventually("the PR says it waits for the image", lambda: any(
            "Waiting for the image" in str(c["body"]) for c in fake_github.comments("acme/slowci", 9)))
        await asyncio.sleep(3)  # past the ready timeout, well within the grace
        [record] = fake_github.deployments("acme/slowci")
        assert [s["state"] for s in fake_github.statuses("acme/slowci", record["id"])] == \
            ["in_progress", "in_progress"]
        _push_images(core, namespace)
        await bot.settle()
    assert [s["state"] for s in fake_github.statuses("acme/slowci", record["id"])][-1] == "success"
    body = sticky(fake_github, "acme/slowci", 9)
    assert "ready" in body and "failed" not in body.lower()
    assert len(fake_github.deployments("acme/slowci")) == 1


async def test_a_preview_reported_failed_that_becomes_available_is_reported_ready_by_the_next_pass(
        fake_github: FakeGitHub, cluster: Cluster, namespace: str, view: ClusterView) -> None:
    """An image pushed after the grace: the deploy reports failure, then the pod starts. The next
    reconciliation pass sees it Available (from the Deployments it lists, marked failed by the deploy),
    deploys the head again and the PR says ready; its earlier failed deployment goes inactive."""
    config = "services:\n  - name: a\n    image: registry.example.com/acme/not-pushed-a:{sha}\n    port: 8080\n"
    fake_github.add_repo("acme/slowci", files={".github/preview.yml": config})
    core = k8s.CoreV1Api(view.api)
    name = PreviewKey("acme/slowci", 9, fake_github.repos["acme/slowci"].id).object_name("a")
    async with running_bot(fake_github, cluster, namespace, PREVIEW_READY_TIMEOUT="2",
                           PREVIEW_IMAGE_PULL_GRACE="1") as bot:
        fake_github.add_pull("acme/slowci", 9, head_sha=SHA_A)
        assert await bot.send("pull_request", pull_request_event(fake_github, "acme/slowci", 9, "opened")) == 202
        await bot.settle()
        [failed] = fake_github.deployments("acme/slowci")
        assert fake_github.statuses("acme/slowci", failed["id"])[-1]["state"] == "failure"
        assert "did not appear within 1 s" in sticky(fake_github, "acme/slowci", 9)
        # A pass while it is still not Available corrects nothing and asks GitHub for nothing per preview.
        assert [a.kind for a in (await bot.bot.reconcile_once()).actions] == []
        _push_images(core, namespace)
        await _eventually("the Deployment is Available", lambda: (
            view.deployments()[name].status.available_replicas or 0) >= 1)
        report = await bot.bot.reconcile_once()
        assert [(a.kind, a.reason) for a in report.actions] == [("resume", "reported failed, Available now")]
        await bot.settle()
        assert [a.kind for a in (await bot.bot.reconcile_once()).actions] == []  # corrected once: mark gone
        await bot.settle()
    body = sticky(fake_github, "acme/slowci", 9)
    assert "ready" in body and "did not appear" not in body
    states = {d["id"]: fake_github.statuses("acme/slowci", d["id"])[-1]["state"]
              for d in fake_github.deployments("acme/slowci")}
    assert sorted(states.values()) == ["inactive", "success"] and states[failed["id"]] == "inactive"
    assert "preview-bot.dev/rollout-failed" not in (view.deployments()[name].metadata.annotations or {})
