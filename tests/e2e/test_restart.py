"""Restart safety and orderly shutdown of a real `preview-bot serve` process.

A process killed mid-deploy (SIGKILL: a crash, an OOM kill, a node going away) leaves a GitHub deployment
in progress and maybe half the cluster objects; the next process's startup pass (`discover_missed` and
the first reconcile with its stuck-deploy check) must finish the job. SIGTERM must keep intake open
for PREVIEW_SHUTDOWN_DELAY (/readyz 503), then stop it (503), let in-flight work finish within
PREVIEW_DRAIN_TIMEOUT and exit 0.

Hanging a deploy: the fake GitHub holds the bot's request to the deployment statuses endpoint. Held
requests answer 502 after the delay (never applied): the fake's request would otherwise land after the
restarted bot's work, which real GitHub never does. The fake waits out a held request when it closes,
so the delays are only as long as the tests need.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import Callable

import aiohttp
import pytest

from tests.e2e.harness import REPO, ClusterView, key_of
from tests.e2e.procs import (
    BotProcess,
    BotProcesses,
    cluster_state,
    deployment_history,
    eventually,
    preview_problems,
    route_problems,
    sticky_comments,
)
from tests.fakegithub import FakeGitHub, issue_comment_event, pull_request_event

pytestmark = pytest.mark.cluster

STATUSES = r"/deployments/\d+/statuses$"
HEAD = "d" * 40
HOLD = 15.0  # a held status request: far longer than it takes to kill the bot holding it
DRAIN_TIMEOUT = 20
CONVERGE_TIMEOUT = 60.0


def status_requested(fake: FakeGitHub, state: str) -> bool:
    """The bot has sent (maybe not yet been answered) a deployment status `state`."""
    return any(r.method == "POST" and re.search(STATUSES, r.path) and isinstance(r.body, dict)
               and r.body.get("state") == state for r in fake.requests)


def logged(bot: BotProcess, message: str) -> list[dict[str, object]]:
    return [record for record in bot.logs() if record.get("message") == message]


async def until(predicate: Callable[[], object], timeout: float, what: str, procs: BotProcesses) -> None:
    async def check() -> list[str]:
        return [] if predicate() else [what]
    problems = await eventually(check, timeout, interval=0.05)
    assert not problems, f"timed out after {timeout} s waiting for: {what}\n{procs.tails()}"


async def start_quiet(fake: FakeGitHub, procs: BotProcesses, name: str, **env: str) -> BotProcess:
    """Start a bot and wait until its startup pass has listed the open PRs, so a PR opened afterwards
    is deployed by its webhook alone, not also by the startup discovery."""
    listed = sum(1 for call in fake.calls if call.operation_id == "pulls/list")
    bot = await procs.start(name, **env)
    await until(lambda: sum(1 for call in fake.calls if call.operation_id == "pulls/list") > listed, 30,
                f"bot {name}'s startup pass to list the open pull requests", procs)
    return bot


async def exit_code(bot: BotProcess, timeout: float) -> int:
    try:
        return await bot.wait(max(timeout, 0.1))
    except TimeoutError:
        pytest.fail(f"bot {bot.name} still runs {timeout:.0f} s after SIGTERM\n{bot.tail()}")


async def assert_converged(fake: FakeGitHub, view: ClusterView, namespace: str, procs: BotProcesses,
                           number: int, sha: str) -> None:
    """The PR's only preview runs `sha`, routed; GitHub shows one finished deployment, one comment."""
    key = key_of(fake, REPO, number)

    async def check() -> list[str]:
        state = await cluster_state(view, namespace)
        problems = preview_problems(fake, state, REPO, number, sha, strict_history=True)
        problems += route_problems(state, [key.value])
        if sorted(state.deployments) != [key.object_name("a")]:
            problems.append(f"cluster Deployments are {sorted(state.deployments)}")
        return problems

    problems = await eventually(check, CONVERGE_TIMEOUT)
    assert not problems, "did not converge:\n" + "\n".join(problems) + "\n" + procs.tails()


async def test_killed_before_its_first_status_the_next_process_finishes_the_deploy(
        shop: FakeGitHub, procs: BotProcesses, view: ClusterView, namespace: str) -> None:
    a = await start_quiet(shop, procs, "a")
    shop.inject("POST", STATUSES, status=502, delay=HOLD, times=1)  # holds the first status: in_progress
    shop.add_pull(REPO, 1, head_sha=HEAD)
    assert await a.send("pull_request", pull_request_event(shop, REPO, 1, "opened")) == 202
    await until(lambda: status_requested(shop, "in_progress"), 30, "the bot to post in_progress", procs)
    [(first, first_states)] = deployment_history(shop, REPO, 1)
    assert first_states == []

    await a.kill()
    shop.clear_faults()
    await procs.start("b")  # no event: its startup pass must find the PR

    await assert_converged(shop, view, namespace, procs, 1, HEAD)
    history = deployment_history(shop, REPO, 1)
    assert history[0][0]["id"] == first["id"] and history[0][1] == ["inactive"]
    assert len(sticky_comments(shop, REPO, 1)) == 1


async def test_killed_after_the_objects_exist_but_before_success_the_next_process_finishes(
        shop: FakeGitHub, procs: BotProcesses, view: ClusterView, namespace: str) -> None:
    a = await start_quiet(shop, procs, "a")
    shop.inject("POST", STATUSES, status=None, times=1)  # in_progress goes through...
    shop.inject("POST", STATUSES, status=502, delay=HOLD, times=1)  # ...success, after readiness, is held
    shop.add_pull(REPO, 1, head_sha=HEAD)
    assert await a.send("pull_request", pull_request_event(shop, REPO, 1, "opened")) == 202
    await until(lambda: status_requested(shop, "success"), 60, "the bot to post success", procs)
    state = await cluster_state(view, namespace)
    key = key_of(shop, REPO, 1)
    assert key.object_name("a") in state.deployments
    assert [r["name"] for r in state.routes] == [key.value, "default"]
    [(first, first_states)] = deployment_history(shop, REPO, 1)
    assert first_states == ["in_progress"]

    await a.kill()
    shop.clear_faults()
    await procs.start("b")

    await assert_converged(shop, view, namespace, procs, 1, HEAD)
    history = deployment_history(shop, REPO, 1)
    assert history[0][0]["id"] == first["id"] and history[0][1] == ["in_progress", "inactive"]


async def test_sigterm_refuses_new_deliveries_and_drains_in_flight_work(
        shop: FakeGitHub, procs: BotProcesses, view: ClusterView, namespace: str) -> None:
    # No shutdown delay: the slow deploy must still run when intake closes.
    a = await start_quiet(shop, procs, "a", PREVIEW_DRAIN_TIMEOUT=str(DRAIN_TIMEOUT), PREVIEW_SHUTDOWN_DELAY="0")
    shop.inject("POST", STATUSES, status=None, times=1)  # in_progress
    shop.inject("POST", STATUSES, status=None, delay=3, times=1)  # success: slow, then applied
    shop.add_pull(REPO, 1, head_sha=HEAD)
    shop.add_pull(REPO, 2)
    assert await a.send("pull_request", pull_request_event(shop, REPO, 1, "opened")) == 202
    await until(lambda: deployment_history(shop, REPO, 1), 30, "a GitHub deployment for #1", procs)

    await a.terminate()
    deadline = time.monotonic() + DRAIN_TIMEOUT + 5
    await until(lambda: logged(a, "shutting down: intake closed, draining work") or not a.running, 10,
                "the bot to start its shutdown", procs)
    late = pull_request_event(shop, REPO, 2, "opened")
    answers: list[int | str] = []
    while a.running and time.monotonic() < deadline:
        try:
            answers.append(await a.send("pull_request", late, timeout=5))
        except (aiohttp.ClientError, TimeoutError) as exc:
            answers.append(type(exc).__name__)  # the listener is gone: the process is about to exit
            break
        await asyncio.sleep(0.2)
    returncode = await exit_code(a, deadline - time.monotonic())

    assert returncode == 0, a.tail()
    assert 503 in answers and 202 not in answers, answers
    assert [states for _, states in deployment_history(shop, REPO, 1)] == [["in_progress", "success"]]
    assert deployment_history(shop, REPO, 2) == []
    [stopped] = logged(a, "stopped")
    assert stopped["drained"] is True
    state = await cluster_state(view, namespace)
    assert preview_problems(shop, state, REPO, 1, HEAD) == []
    assert sorted(state.deployments) == [key_of(shop, REPO, 1).object_name("a")]


async def readiness(bot: BotProcess) -> str:
    """/readyz's status field, or why it could not be read."""
    try:
        async with bot.session.get(f"{bot.base_url}/readyz", timeout=aiohttp.ClientTimeout(total=5)) as response:
            return str((await response.json()).get("status"))
    except (aiohttp.ClientError, TimeoutError) as exc:
        return type(exc).__name__


async def test_after_sigterm_deliveries_are_accepted_for_the_shutdown_delay_then_drained(
        shop: FakeGitHub, procs: BotProcesses, view: ClusterView, namespace: str) -> None:
    """Kubernetes takes a terminating pod out of its Service's endpoints as it sends SIGTERM; the ingress
    learns that a moment later and still sends deliveries to it, and GitHub does not redeliver a refused
    one. For PREVIEW_SHUTDOWN_DELAY after SIGTERM the bot answers /readyz 503 and still accepts deliveries,
    whose work is drained before it exits; a second SIGTERM ends the delay."""
    a = await start_quiet(shop, procs, "a", PREVIEW_SHUTDOWN_DELAY="600", PREVIEW_DRAIN_TIMEOUT=str(DRAIN_TIMEOUT))
    shop.add_pull(REPO, 1, head_sha=HEAD)
    assert await readiness(a) == "ready", a.tail()

    await a.terminate()

    async def terminating() -> list[str]:
        status = await readiness(a)
        return [] if status == "terminating" else [f"/readyz says {status}"]
    problems = await eventually(terminating, 10, interval=0.05)
    assert not problems, f"{problems}\n{a.tail()}"
    assert await a.send("pull_request", pull_request_event(shop, REPO, 1, "opened")) == 202
    [lingering] = logged(a, "terminating: not ready, still accepting deliveries")
    assert lingering["delay"] == 600
    assert a.running and not logged(a, "shutting down: intake closed, draining work")

    await a.terminate()  # the second signal: intake closes, the accepted delivery's work drains
    assert await exit_code(a, DRAIN_TIMEOUT + 5) == 0, a.tail()
    [stopped] = logged(a, "stopped")
    assert stopped["drained"] is True
    assert [states for _, states in deployment_history(shop, REPO, 1)] == [["in_progress", "success"]]
    state = await cluster_state(view, namespace)
    assert preview_problems(shop, state, REPO, 1, HEAD) == []


async def test_drain_timeout_bounds_shutdown_and_a_restart_converges(
        shop: FakeGitHub, procs: BotProcesses, view: ClusterView, namespace: str) -> None:
    drain_timeout = 1
    a = await start_quiet(shop, procs, "a", PREVIEW_DRAIN_TIMEOUT=str(drain_timeout), PREVIEW_SHUTDOWN_DELAY="0")
    shop.inject("POST", STATUSES, status=None, times=1)  # in_progress
    shop.inject("POST", STATUSES, status=502, delay=30, times=1)  # success: held far past the drain
    shop.add_pull(REPO, 1, head_sha=HEAD)
    assert await a.send("pull_request", pull_request_event(shop, REPO, 1, "opened")) == 202
    await until(lambda: status_requested(shop, "success"), 60, "the bot to post success", procs)

    await a.terminate()
    returncode = await exit_code(a, drain_timeout + 5)
    assert returncode == 0, a.tail()
    [stopped] = logged(a, "stopped")
    assert stopped["drained"] is False  # the deploy was cancelled, not waited for

    shop.clear_faults()
    await procs.start("b")
    await assert_converged(shop, view, namespace, procs, 1, HEAD)


async def test_sigterm_while_github_is_unreachable_at_start_exits_at_once(procs: BotProcesses) -> None:
    """The start-up check of the App key retries while GitHub is unreachable; it runs in the background,
    so it holds up neither serving nor a SIGTERM (the drain has nothing to wait for)."""
    with socket.socket() as closed:  # a loopback port nothing listens on: connections are refused
        closed.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{closed.getsockname()[1]}"
    a = await procs.start("a", GITHUB_API_URL=dead, PREVIEW_DRAIN_TIMEOUT=str(DRAIN_TIMEOUT),
                          PREVIEW_SHUTDOWN_DELAY="0")
    await a.terminate()
    assert await exit_code(a, DRAIN_TIMEOUT) == 0, a.tail()
    [stopped] = logged(a, "stopped")
    assert stopped["drained"] is True
    # The key check (GitHub retried for seconds) was cancelled, not waited for: it said nothing.
    assert not [r for r in a.logs() if "App key" in str(r.get("message"))], a.tail()


async def test_a_stopped_preview_stays_stopped_after_a_restart_until_a_push(
        shop: FakeGitHub, procs: BotProcesses, view: ClusterView, namespace: str) -> None:
    """Discovery after a restart looks for deploys lost while down; a preview stopped with `/preview stop`
    (or removed when idle) has no objects either, and must not come back, until a push."""
    a = await start_quiet(shop, procs, "a")
    shop.add_pull(REPO, 1, head_sha=HEAD)
    assert await a.send("pull_request", pull_request_event(shop, REPO, 1, "opened")) == 202
    await assert_converged(shop, view, namespace, procs, 1, HEAD)
    assert await a.send("issue_comment", issue_comment_event(shop, REPO, 1, "/preview stop", user="alice")) == 202

    def stopped() -> bool:
        bodies = [str(c["body"]) for c in sticky_comments(shop, REPO, 1)]
        return bool(bodies) and "Preview: stopped" in bodies[0]
    await until(stopped, 60, "the sticky comment to say stopped", procs)
    assert (await cluster_state(view, namespace)).deployments == {}
    deployments = len(deployment_history(shop, REPO, 1))
    await a.kill()

    b = await procs.start("b")
    await until(lambda: logged(b, "discovery done"), 60, "b's start-up discovery", procs)
    [done] = logged(b, "discovery done")
    assert done["resumed"] == 0, b.tail()
    assert (await cluster_state(view, namespace)).deployments == {}
    assert len(deployment_history(shop, REPO, 1)) == deployments
    await b.kill()

    shop.push(REPO, 1, "e" * 40)  # while no bot runs: its event is lost
    c = await procs.start("c")
    await until(lambda: logged(c, "discovery done"), 60, "c's start-up discovery", procs)
    assert logged(c, "discovery done")[0]["resumed"] == 1
    await assert_converged(shop, view, namespace, procs, 1, "e" * 40)
