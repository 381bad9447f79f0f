"""Per-pull-request ordered work: one PR's events run strictly in arrival order, different PRs in
parallel, with a bound on how many run at once."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Hashable

from bot import metrics

log = logging.getLogger(__name__)
Job = Callable[[], Awaitable[None]]


class QueueClosed(Exception):
    """The queue is draining for shutdown and takes no new work."""


class WorkQueue:
    def __init__(self, max_concurrency: int) -> None:
        self._pending: dict[Hashable, deque[tuple[Job, bool]]] = {}
        self._workers: dict[Hashable, asyncio.Task[None]] = {}
        self._slots = asyncio.Semaphore(max_concurrency)
        self.accepting = True

    @property
    def depth(self) -> int:
        return sum(len(q) for q in self._pending.values()) + len(self._workers)

    def has_pending(self, key: Hashable) -> bool:
        """True when newer work for `key` that supersedes the running job waits behind it."""
        return any(supersedes for _job, supersedes in self._pending.get(key) or ())

    def submit(self, key: Hashable, job: Job, *, supersedes: bool = True) -> None:
        """Queue `job` after `key`'s earlier work. A job that `supersedes` (an event) lets the running
        job stop waiting early; a follow-up check (supersedes=False) does not."""
        if not self.accepting:
            raise QueueClosed
        self._pending.setdefault(key, deque()).append((job, supersedes))
        if key not in self._workers:
            self._workers[key] = asyncio.create_task(self._work(key), name=f"queue:{key}")
        metrics.QUEUE_DEPTH.set(self.depth)

    async def _work(self, key: Hashable) -> None:
        try:
            while self._pending.get(key):
                job, _supersedes = self._pending[key].popleft()
                async with self._slots:
                    try:
                        await job()
                    except asyncio.CancelledError:
                        raise
                    except Exception:
                        log.exception("background job failed", extra={"queue_key": str(key)})
                metrics.QUEUE_DEPTH.set(self.depth)
        finally:
            self._pending.pop(key, None)
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
