"""Per-pull-request ordered work: one PR's jobs run strictly in order, different PRs in parallel, with a
bound on how many run at once and on how many wait.

Coalescing: a job submitted with a `slot` (e.g. "converge") replaces the key's pending job of the same
slot, merged with it by `merge`, and moves to the end of the key's pending work (see bot.coalesce for
why the end). So a flood of events for one PR holds one pending job, not one per event.

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


class QueueClosed(Exception):
    """The queue is draining for shutdown and takes no new work."""


class QueueFull(Exception):
    """`max_pending` jobs already wait; the caller refuses the work (webhook: 503)."""


class _Entry:
    __slots__ = ("job", "slot", "supersedes")

    def __init__(self, job: Job, slot: Hashable | None, supersedes: bool) -> None:
        self.job = job
        self.slot = slot
        self.supersedes = supersedes


class WorkQueue:
    def __init__(self, max_concurrency: int, max_pending: int = 10_000, min_interval: float = 0.0) -> None:
        self._pending: dict[Hashable, deque[_Entry]] = {}
        self._workers: dict[Hashable, asyncio.Task[None]] = {}
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

    def has_pending(self, key: Hashable) -> bool:
        """True when newer work for `key` that supersedes the running job waits behind it."""
        return any(entry.supersedes for entry in self._pending.get(key) or ())

    def submit(self, key: Hashable, job: Job, *, supersedes: bool = True, slot: Hashable | None = None,
               merge: Merge | None = None) -> bool:
        """Queue `job` after `key`'s earlier work; returns True when it was merged into a pending job.

        A job that `supersedes` (an event) lets the running job stop waiting early; a follow-up check
        (supersedes=False) does not. With `slot`, a pending job of the same slot is replaced by
        `merge(pending, job)` (default: `job`) at the end of the key's work.
        Raises QueueClosed while draining, QueueFull when `max_pending` jobs already wait."""
        if not self.accepting:
            raise QueueClosed
        pending = self._pending.get(key)
        if slot is not None and pending:
            for entry in pending:
                if entry.slot == slot:
                    pending.remove(entry)
                    merged = merge(entry.job, job) if merge is not None else job
                    pending.append(_Entry(merged, slot, entry.supersedes or supersedes))
                    return True
        if self._waiting >= self.max_pending:
            raise QueueFull
        if pending is None:
            pending = self._pending[key] = deque()
        pending.append(_Entry(job, slot, supersedes))
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
