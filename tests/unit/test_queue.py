"""bot.queue: per-key ordering, bounded parallelism across keys, drain."""

from __future__ import annotations

import asyncio
import logging

import pytest

from bot.queue import Job, QueueClosed, WorkQueue


def recorder(log: list[str], name: str, delay: float = 0.0, fail: bool = False):  # type: ignore[no-untyped-def]
    async def job() -> None:
        log.append(f"start {name}")
        await asyncio.sleep(delay)
        log.append(f"end {name}")
        if fail:
            raise RuntimeError(f"job {name} failed")
    return job


async def test_jobs_of_one_key_run_strictly_in_order() -> None:
    queue = WorkQueue(max_concurrency=4)
    log: list[str] = []
    # Decreasing delays: with any parallelism inside a key, later jobs would finish first.
    for i in range(5):
        queue.submit(("acme/shop", 1), recorder(log, str(i), delay=0.01 * (5 - i)))
    await queue.join()
    assert log == [f"{what} {i}" for i in range(5) for what in ("start", "end")]
    assert queue.depth == 0


async def test_work_submitted_while_running_joins_the_same_key_in_order() -> None:
    queue = WorkQueue(max_concurrency=2)
    log: list[str] = []
    gate = asyncio.Event()

    async def first() -> None:
        log.append("first")
        await gate.wait()

    queue.submit("k", first)
    await asyncio.sleep(0)
    assert log == ["first"]
    queue.submit("k", recorder(log, "second"))
    assert not queue.supersedes_running("k"), "no slot: the second job does not take the first one over"
    assert queue.depth == 2
    assert not queue.supersedes_running("other")
    gate.set()
    await queue.join()
    assert log == ["first", "start second", "end second"]
    assert not queue.supersedes_running("k")


async def test_keys_run_in_parallel_bounded_by_max_concurrency() -> None:
    queue = WorkQueue(max_concurrency=3)
    running = 0
    peak = 0
    release = asyncio.Event()
    started = asyncio.Event()

    async def job() -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        if running == 3:
            started.set()
        await release.wait()
        running -= 1

    for key in range(10):
        queue.submit(key, job)
    await asyncio.wait_for(started.wait(), 2)
    for _ in range(5):
        await asyncio.sleep(0)
    assert running == 3, "exactly max_concurrency jobs run at once"
    release.set()
    await asyncio.wait_for(queue.join(), 2)
    assert peak == 3
    assert running == 0


async def test_different_keys_overlap() -> None:
    queue = WorkQueue(max_concurrency=2)
    log: list[str] = []
    queue.submit("a", recorder(log, "a", delay=0.05))
    queue.submit("b", recorder(log, "b", delay=0.01))
    await queue.join()
    assert log == ["start a", "start b", "end b", "end a"]


async def test_failing_job_does_not_stop_later_jobs_of_the_same_key(caplog: pytest.LogCaptureFixture) -> None:
    queue = WorkQueue(max_concurrency=1)
    log: list[str] = []
    queue.submit("k", recorder(log, "1", fail=True))
    queue.submit("k", recorder(log, "2"))
    queue.submit("k", recorder(log, "3", fail=True))
    queue.submit("k", recorder(log, "4"))
    with caplog.at_level(logging.ERROR, logger="bot.queue"):
        await queue.join()
    assert log == [f"{what} {i}" for i in range(1, 5) for what in ("start", "end")]
    failures = [r for r in caplog.records if r.name == "bot.queue"]
    assert len(failures) == 2
    assert all(r.exc_info and "failed" in str(r.exc_info[1]) for r in failures)
    assert queue.depth == 0


async def test_drain_waits_for_running_work() -> None:
    queue = WorkQueue(max_concurrency=2)
    log: list[str] = []
    queue.submit("a", recorder(log, "a", delay=0.02))
    queue.submit("a", recorder(log, "a2"))
    assert await queue.drain(timeout=2) is True
    assert log == ["start a", "end a", "start a2", "end a2"]
    assert queue.depth == 0


async def test_drain_with_timeout_cancels_and_reports_it() -> None:
    queue = WorkQueue(max_concurrency=2)
    cancelled = asyncio.Event()
    started = asyncio.Event()
    log: list[str] = []

    async def forever() -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    queue.submit("slow", forever)
    queue.submit("slow", recorder(log, "never"))
    await started.wait()
    loop = asyncio.get_running_loop()
    began = loop.time()
    assert await queue.drain(timeout=0.05) is False
    assert loop.time() - began < 2
    assert cancelled.is_set()
    assert log == []
    assert queue.depth == 0


async def test_submit_after_drain_raises_queue_closed() -> None:
    queue = WorkQueue(max_concurrency=1)
    assert await queue.drain(timeout=1) is True
    assert queue.accepting is False
    ran: list[str] = []
    with pytest.raises(QueueClosed):
        queue.submit("k", recorder(ran, "late"))
    await asyncio.sleep(0.01)
    assert ran == []
    assert queue.depth == 0


def _jobs(outcome: str) -> float:
    from bot import metrics

    return metrics.REGISTRY.get_sample_value("preview_bot_jobs_total", {"outcome": outcome}) or 0.0


async def test_an_event_that_fails_is_logged_once_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    """An event's handler raises what nothing turned into a PR comment (here the API server's 403): one
    error record with one traceback and the event's fields (not one from the dispatch and one from the
    queue), and preview_bot_jobs_total{outcome="failed"} counts it."""
    from typing import Any

    from gidgethub import routing, sansio

    from bot.context import Context
    from bot.kube import KubeError

    router = routing.Router()

    @router.register("pull_request")
    async def refused(_event: sansio.Event, _gh: Any, _ctx: Any) -> None:
        raise KubeError(403, "Forbidden", 'leases.coordination.k8s.io is forbidden in namespace "kube-system"')

    class Auth:
        async def installation_api(self, _installation: int) -> object:
            return object()

    queue = WorkQueue(max_concurrency=1)
    ctx = Context(settings=None, kube=None, auth=Auth(), previewer=None, queue=queue,  # type: ignore[arg-type]
                  router=router, reporter=None)  # type: ignore[arg-type]
    event = sansio.Event({"action": "opened", "installation": {"id": 7},
                          "repository": {"id": 1, "full_name": "acme/shop"}, "pull_request": {"number": 3}},
                         event="pull_request", delivery_id="d-1")
    failed, ok = _jobs("failed"), _jobs("ok")
    with caplog.at_level(logging.INFO):
        queue.submit("k", lambda: ctx.dispatch(event))
        queue.submit("k", recorder([], "next"))
        await queue.join()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [(r.name, r.getMessage()) for r in errors] == [("bot.queue", "background job failed")]
    assert errors[0].exc_info and isinstance(errors[0].exc_info[1], KubeError)
    assert (_jobs("failed"), _jobs("ok")) == (failed + 1, ok + 1)


async def test_a_job_that_takes_over_queues_the_running_jobs_rest_right_behind_itself() -> None:
    """A job submitted with `takes_over` (a `/preview stop`) next in line cuts a running mergeable job short;
    `takes_over(running)` then runs right after it, before work that arrived later, and is never merged."""
    queue = WorkQueue(max_concurrency=1)
    log: list[str] = []
    gate = asyncio.Event()

    async def running() -> None:
        log.append("running")
        await gate.wait()

    def rest_of(job: object) -> Job | None:
        return recorder(log, "rest") if job is running else None

    queue.submit("k", running, slot="converge", merge=lambda _old, new: new)
    await asyncio.sleep(0)
    queue.submit("k", recorder(log, "stop"), takes_over=rest_of)
    queue.submit("k", recorder(log, "push"), slot="converge", merge=lambda _old, new: new)
    assert queue.supersedes_running("k")
    assert queue.supersedes_running("k"), "asked again: still taken over, the rest queued once"
    assert queue.waiting == 3
    queue.submit("k", recorder(log, "push again"), slot="converge", merge=lambda _old, new: new)
    assert queue.waiting == 3, "later events merge behind the rest, not into it"
    gate.set()
    await queue.join()
    assert log == ["running", "start stop", "end stop", "start rest", "end rest", "start push again",
                   "end push again"]


async def test_a_job_that_takes_over_leaves_jobs_it_cannot_finish_running() -> None:
    """A running job that `takes_over` cannot finish (it returns None) is not cut short."""
    queue = WorkQueue(max_concurrency=1)
    gate = asyncio.Event()

    async def running() -> None:
        await gate.wait()

    queue.submit("k", running, slot="admit")
    await asyncio.sleep(0)
    queue.submit("k", recorder([], "stop"), takes_over=lambda _job: None)
    assert not queue.supersedes_running("k")
    gate.set()
    await queue.join()
