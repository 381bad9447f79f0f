"""A PR's queued work runs in arrival order, merged or not (bot.coalesce "Order rule"): the whole bot over
HTTP, the fake GitHub, the real kube-apiserver (kwok).

A deploy is held waiting for its image (the kwok test Stage for images containing "not-pushed"), so the
deliveries that follow queue up behind it, as they do behind any slow rollout."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client as k8s

from bot import commands, comment
from tests.e2e.harness import ClusterView, running_bot
from tests.fakegithub import FakeGitHub, issue_comment_event, pull_request_event
from tests.plugins.cluster import Cluster

pytestmark = pytest.mark.cluster

SLOW = "acme/slowci"
CONFIG = "services:\n  - name: a\n    image: registry.example.com/acme/not-pushed-a:{sha}\n    port: 8080\n"
SHA_A, SHA_B = "a1" * 20, "b2" * 20


async def eventually(what: str, pred: Callable[[], Any], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := pred()):
        assert time.monotonic() < deadline, f"not within {timeout:.0f}s: {what}"
        await asyncio.sleep(0.25)
    return value


async def push_images_until_cancelled(core: k8s.CoreV1Api, namespace: str) -> None:
    """CI pushes every image, again and again: each pod the kwok Stage holds starts (annotation)."""
    while True:
        for pod in await asyncio.to_thread(lambda: core.list_namespaced_pod(namespace).items):
            if (pod.metadata.annotations or {}).get("preview-bot.test/image-pushed") == "true":
                continue
            with contextlib.suppress(k8s.ApiException):  # a pod deleted meanwhile
                await asyncio.to_thread(core.patch_namespaced_pod, pod.metadata.name, namespace, {
                    "metadata": {"annotations": {"preview-bot.test/image-pushed": "true"}}})
        await asyncio.sleep(0.3)


async def test_a_push_a_stop_then_a_label_at_that_head_ends_stopped(
        fake_github: FakeGitHub, cluster: Cluster, namespace: str, view: ClusterView) -> None:
    """A deploy runs; a push, `/preview stop`, then a label at the pushed head arrive. One by one: the
    push deploys, the stop stops, the label (no preview label in this config) asks for nothing. The
    label's event must not merge into the push's pending job ahead of the stop, whose `synchronize` would
    then deploy the head again after the stop."""
    fake_github.add_repo(SLOW, files={".github/preview.yml": CONFIG}, collaborators={"alice": "write"})
    core = k8s.CoreV1Api(view.api)
    async with running_bot(fake_github, cluster, namespace) as bot:
        await bot.startup_pass()  # its discovery queues nothing for this PR, opened after it
        fake_github.add_pull(SLOW, 9, head_sha=SHA_A)
        assert await bot.send("pull_request", pull_request_event(fake_github, SLOW, 9, "opened")) == 202
        await eventually("the first deploy waits for its image", lambda: any(
            "Waiting for the image" in str(c["body"]) for c in fake_github.comments(SLOW, 9)))

        fake_github.push(SLOW, 9, SHA_B)
        assert await bot.send("pull_request", pull_request_event(fake_github, SLOW, 9, "synchronize")) == 202
        stop = issue_comment_event(fake_github, SLOW, 9, "/preview stop", user="alice")
        assert await bot.send("issue_comment", stop) == 202
        assert await bot.send("pull_request", pull_request_event(fake_github, SLOW, 9, "labeled", label="bug")) == 202
        # Three jobs wait: the push's (which took the held deploy over), the stop, the label's.
        assert bot.bot.queue.waiting == 3

        pushing = asyncio.create_task(push_images_until_cancelled(core, namespace))
        try:
            await bot.settle()
        finally:
            pushing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pushing

    assert view.deployments() == {}, "the stop is the last word: nothing runs"
    assert [r["content"] for r in fake_github.reactions(SLOW, comment_id=int(stop["comment"]["id"]))] == ["+1"]
    [sticky] = [c for c in fake_github.comments(SLOW, 9) if comment.MARKER in str(c["body"])]
    assert "Stopped by @alice with `/preview stop`" in str(sticky["body"])
    assert comment.stopped_at(str(sticky["body"])) == SHA_B, "stopped at the pushed head"
    # Every GitHub Deployment of the PR is retired by the stop: none is left active.
    for deployment in fake_github.deployments(SLOW):
        assert fake_github.statuses(SLOW, deployment["id"])[-1]["state"] == "inactive"


async def test_a_stop_does_not_wait_for_a_rollout(
        fake_github: FakeGitHub, cluster: Cluster, namespace: str, view: ClusterView) -> None:
    """`/preview stop` while the deploy waits for an image CI has not pushed (up to the image pull grace,
    600 s by default): the stop cuts the wait short and stops the PR at once; the deploy's rest, run
    after the stop, holds (stopped at that head). The image is never pushed here."""
    fake_github.add_repo(SLOW, files={".github/preview.yml": CONFIG}, collaborators={"alice": "write"})
    async with running_bot(fake_github, cluster, namespace) as bot:
        await bot.startup_pass()
        fake_github.add_pull(SLOW, 9, head_sha=SHA_A)
        assert await bot.send("pull_request", pull_request_event(fake_github, SLOW, 9, "opened")) == 202
        await eventually("the deploy waits for its image", lambda: any(
            "Waiting for the image" in str(c["body"]) for c in fake_github.comments(SLOW, 9)))
        assert view.deployments()

        stop = issue_comment_event(fake_github, SLOW, 9, "/preview stop", user="alice")
        assert await bot.send("issue_comment", stop) == 202
        sticky = await eventually("stopped while the image is still missing", lambda: next(
            (c for c in fake_github.comments(SLOW, 9) if "Stopped by @alice" in str(c["body"])), None))
        await bot.settle()

    assert comment.stopped_at(str(sticky["body"])) == SHA_A
    assert view.deployments() == {}, "the deploy's rest held: nothing runs"
    assert [r["content"] for r in fake_github.reactions(SLOW, comment_id=int(stop["comment"]["id"]))] == ["+1"]
    for deployment in fake_github.deployments(SLOW):
        assert fake_github.statuses(SLOW, deployment["id"])[-1]["state"] == "inactive"


async def test_a_strangers_stop_does_not_leave_a_deploy_half_done(
        fake_github: FakeGitHub, cluster: Cluster, namespace: str, view: ClusterView) -> None:
    """A stop from someone without write access cuts the image wait short too (who may stop is known only
    when the stop runs), changes nothing, and the deploy's rest then finishes it: ready once CI pushes."""
    fake_github.add_repo(SLOW, files={".github/preview.yml": CONFIG}, collaborators={"alice": "write"})
    core = k8s.CoreV1Api(view.api)
    async with running_bot(fake_github, cluster, namespace) as bot:
        await bot.startup_pass()
        fake_github.add_pull(SLOW, 9, head_sha=SHA_A)
        assert await bot.send("pull_request", pull_request_event(fake_github, SLOW, 9, "opened")) == 202
        await eventually("the deploy waits for its image", lambda: any(
            "Waiting for the image" in str(c["body"]) for c in fake_github.comments(SLOW, 9)))
        stop = issue_comment_event(fake_github, SLOW, 9, "/preview stop", user="mallory")
        assert await bot.send("issue_comment", stop) == 202
        await eventually("the stranger is answered while the image is still missing", lambda: any(
            commands.ANSWER_MARKER in str(c["body"]) for c in fake_github.comments(SLOW, 9)))
        pushing = asyncio.create_task(push_images_until_cancelled(core, namespace))
        try:
            await bot.settle()
        finally:
            pushing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pushing

    assert list(view.deployments()), "the preview runs"
    [sticky] = [c for c in fake_github.comments(SLOW, 9) if comment.MARKER in str(c["body"])]
    assert "Stopped" not in str(sticky["body"])
    states = [fake_github.statuses(SLOW, d["id"])[-1]["state"] for d in fake_github.deployments(SLOW)]
    assert "success" in states, states


async def test_a_stop_does_not_wait_for_a_preview_commands_rollout(
        fake_github: FakeGitHub, cluster: Cluster, namespace: str, view: ClusterView) -> None:
    """The same with the deploy a writer's `/preview` started (`trigger: command`): the stop cuts it short,
    and the command's rest, run after the stop, holds."""
    fake_github.add_repo(SLOW, files={".github/preview.yml": "trigger: command\n" + CONFIG},
                         collaborators={"alice": "write"})
    async with running_bot(fake_github, cluster, namespace) as bot:
        await bot.startup_pass()
        fake_github.add_pull(SLOW, 9, head_sha=SHA_A)
        deploy = issue_comment_event(fake_github, SLOW, 9, "/preview", user="alice")
        assert await bot.send("issue_comment", deploy) == 202
        await eventually("the deploy waits for its image", lambda: any(
            "Waiting for the image" in str(c["body"]) for c in fake_github.comments(SLOW, 9)))
        stop = issue_comment_event(fake_github, SLOW, 9, "/preview stop", user="alice")
        assert await bot.send("issue_comment", stop) == 202
        await eventually("stopped while the image is still missing", lambda: any(
            "Stopped by @alice" in str(c["body"]) for c in fake_github.comments(SLOW, 9)))
        await bot.settle()

    assert view.deployments() == {}, "the command's rest held: nothing runs"
    assert [r["content"] for r in fake_github.reactions(SLOW, comment_id=int(deploy["comment"]["id"]))] == ["+1"]
    for deployment in fake_github.deployments(SLOW):
        assert fake_github.statuses(SLOW, deployment["id"])[-1]["state"] == "inactive"
