"""Per-pull-request ordered work: one PR's jobs run strictly in order, different PRs in parallel, with a
bound on how many run at once and on how many wait.

Coalescing: a job submitted with a `slot` (e.g. "converge") merges, by `merge`, into the key's LAST
pending job when that one is of the same slot; otherwise it is queued as a new job. So merging only ever
joins jobs that are next to each other in arrival order, and the merged job keeps its place: the key's
work runs in arrival order, merged or not (bot.coalesce, "Order rule"). A flood of events for one PR
holds one pending job (plus one per command or check job that came in between, each its own job anyway).

Taking over: a running job may stop waiting early (a deploy waiting for its rollout: the `superseded`
callback of bot.previews.Previewer.deploy) only when the job next in line does its work too: a
mergeable job of the same slot, into which the running job is then merged (`supersedes_running`), or a
job submitted with `takes_over` (a `/preview stop`: bot.webhook.enqueue), which then queues, right
behind itself, the job that finishes the running one's work (it holds if the stop did: bot.coalesce).
Any other job (a command, a check, a resume) waits for the running one to finish: its outcome would be
lost otherwise (a `/preview explain` converges nothing).

Pace: with `min_interval`, a key's mergeable jobs start at most that often (commands never wait).

Bound: at most `max_pending` jobs wait in all (running ones not counted). A submit that would add one
more raises QueueFull; a merge into a pending job adds nothing and is always taken.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Hashable

from bot import metrics

log = logging.getLogger(__name__)
Job = Callable[[], Awaitable[None]]
Merge = Callable[[Job, Job], Job]
# A job that may cut the running one short without doing its work: given the running job, the job that
# finishes that work after it (None: it may not take this one over).
TakeOver = Callable[[Job], Job | None]


class QueueClosed(Exception):
    """The queue is draining for shutdown and takes no new work."""


class QueueFull(Exception):
    """`max_pending` jobs already wait; the caller refuses the work (webhook: 503)."""


class _Entry:
    __slots__ = ("carries_running", "job", "merge", "slot", "takes_over")

    def __init__(self, job: Job, slot: Hashable | None, merge: Merge | None,
                 takes_over: TakeOver | None = None) -> None:
        self.job = job
        self.slot = slot
        self.merge = merge
        self.takes_over = takes_over
        self.carries_running = False  # the running job was merged into this one (supersedes_running)


class WorkQueue:
    def __init__(self, max_concurrency: int, max_pending: int = 10_000, min_interval: float = 0.0) -> None:
        self._pending: dict[Hashable, deque[_Entry]] = {}
        self._workers: dict[Hashable, asyncio.Task[None]] = {}
        self._running: dict[Hashable, _Entry] = {}  # key -> its job running now
        self._slots = asyncio.Semaphore(max_concurrency)
        self._waiting = 0
        self.max_pending = max_pending
        # A key's mergeable (slot) jobs start at most once per `min_interval` seconds: under a flood the
        # events in between merge into the waiting job instead of each costing a converge.
        self.min_interval = min_interval
        self.accepting = True

    @property
    def depth(self) -> int:
        """Jobs waiting plus keys with a running job."""
        return self._waiting + len(self._workers)

    @property
    def waiting(self) -> int:
        return self._waiting

    def pending_jobs(self, key: Hashable) -> list[Job]:
        """`key`'s jobs waiting behind its running one, in order (a copy)."""
        return [entry.job for entry in self._pending.get(key) or ()]

    def supersedes_running(self, key: Hashable) -> bool:
        """True when `key`'s running job may stop early because the job next in line will do its work:
        that job takes it over (`takes_over` gives the rest, queued right behind it), or it is of the
        running job's slot and mergeable, and the running job is merged into it
        (once, on the first call that finds it; `merge(running, next)`). So stopping early loses
        nothing, whatever the next job decides; any other next job (a command, a check) waits for the
        running one to finish. A running job that asks and then finishes anyway is done again inside the
        merged job: converging is idempotent (bot.coalesce)."""
        running = self._running.get(key)
        pending = self._pending.get(key)
        if running is None or not pending:
            return False
        first = pending[0]
        if first.carries_running:
            return True
        if first.takes_over is not None:
            rest = first.takes_over(running.job)
            if rest is None:
                return False
            # Right behind it, before anything that arrived later; never merged into (no slot). It may
            # make one more job wait than max_pending: one per such job, which itself counted.
            pending.insert(1, _Entry(rest, None, None))
            self._waiting += 1
            first.carries_running = True
            metrics.QUEUE_DEPTH.set(self.depth)
            return True
        if running.slot is None or first.slot != running.slot or first.merge is None:
            return False
        first.job = first.merge(running.job, first.job)
        first.carries_running = True
        return True

    def submit(self, key: Hashable, job: Job, *, slot: Hashable | None = None, merge: Merge | None = None,
               takes_over: TakeOver | None = None) -> bool:
        """Queue `job` after `key`'s earlier work; returns True when it was merged into a pending job.

        With `slot`: when `key`'s last pending job is of the same slot, it becomes `merge(pending, job)`
        (default: `job`) where it stands; a pending job with anything else behind it is never merged
        into (the order of a PR's work is its arrival order). `merge` also lets the job take the running
        job over (`supersedes_running`). With `takes_over`, a job next in line may cut a running mergeable
        job short and have `takes_over(running)` finish its work right behind it (`supersedes_running`).
        Raises QueueClosed while draining, QueueFull when `max_pending` jobs already wait."""
        if not self.accepting:
            raise QueueClosed
        pending = self._pending.get(key)
        if slot is not None and pending and pending[-1].slot == slot:
            last = pending[-1]
            last.job = merge(last.job, job) if merge is not None else job
            return True
        if self._waiting >= self.max_pending:
            raise QueueFull
        if pending is None:
            pending = self._pending[key] = deque()
        pending.append(_Entry(job, slot, merge, takes_over))
        self._waiting += 1
        if key not in self._workers:
            self._workers[key] = asyncio.create_task(self._work(key), name=f"queue:{key}")
        metrics.QUEUE_DEPTH.set(self.depth)
        return False

    async def _work(self, key: Hashable) -> None:
        loop = asyncio.get_running_loop()
        last_start = -float("inf")
        try:
            while self._pending.get(key):
                wait = last_start + self.min_interval - loop.time()
                if self._pending[key][0].slot is not None and wait > 0:
                    await asyncio.sleep(wait)
                    continue
                async with self._slots:
                    # Taken only once a slot is free: until then later events still merge into it.
                    entry = self._pending[key].popleft()
                    self._waiting -= 1
                    last_start = loop.time()
                    self._running[key] = entry
                    try:
                        await entry.job()
                    except asyncio.CancelledError:
                        raise
                    except Exception:
                        # The one record of the failure (the job itself does not log it): counted too.
                        metrics.JOBS.labels(outcome="failed").inc()
                        log.exception("background job failed", extra={"queue_key": str(key)})
                    else:
                        metrics.JOBS.labels(outcome="ok").inc()
                    finally:
                        del self._running[key]
                metrics.QUEUE_DEPTH.set(self.depth)
        finally:
            self._waiting -= len(self._pending.pop(key, ()))
            self._workers.pop(key, None)
            metrics.QUEUE_DEPTH.set(self.depth)

    async def join(self) -> None:
        while self._workers:
            await asyncio.gather(*list(self._workers.values()), return_exceptions=True)

    async def drain(self, timeout: float) -> bool:
        """Stop intake, let running work finish within `timeout`; True if nothing had to be cancelled."""
        self.accepting = False
        try:
            await asyncio.wait_for(self.join(), timeout)
            return True
        except TimeoutError:
            for task in list(self._workers.values()):
                task.cancel()
            await asyncio.gather(*list(self._workers.values()), return_exceptions=True)
            return False
