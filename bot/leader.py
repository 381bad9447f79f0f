"""Leader election on a coordination.k8s.io Lease, so only one replica runs the reconciler.

Webhook handling stays active on every replica: that is safe because each PR's work is
level-triggered and the shared mesh objects are updated with optimistic concurrency.

Expiry is judged on the local clock only, as client-go's leaderelection does: another holder's lease is
expired once its record (holder, times, duration, transitions) has not changed for leaseDurationSeconds
since this replica saw it change. The holder's renewTime is never compared with the local clock, so
replicas whose clocks disagree (a node 45 s ahead) never both lead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from bot.errors import first_line
from bot.kube import Conflict, collection_path
from bot.timestamps import format_micro_time

log = logging.getLogger(__name__)
# Seconds until the next try after a failed round, at most: a third of a long lease (PREVIEW_LEASE_SECONDS
# up to 1,000,000) would leave the reconciler without a leader for days after one API hiccup.
RETRY_SECONDS = 5.0


def _now() -> datetime:
    return datetime.now(UTC)


class LeaseStore(Protocol):
    """What the elector needs of bot.kube.Kube."""

    async def get(self, path: str) -> dict[str, Any] | None: ...
    async def call(self, method: str, path: str, *, body: Any = None) -> Any: ...


_RECORD = ("holderIdentity", "leaseDurationSeconds", "acquireTime", "renewTime", "leaseTransitions")


class LeaderElector:
    """`wall`: the time written into the Lease (informational); `clock`: monotonic seconds, the only time
    expiry is judged by."""

    def __init__(self, kube: LeaseStore, *, namespace: str, name: str, identity: str,
                 lease_seconds: int = 30, wall: Callable[[], datetime] = _now,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.kube = kube
        self.identity = identity
        self.lease_seconds = lease_seconds
        self._wall = wall
        self._clock = clock
        self._observed: tuple[Any, ...] | None = None  # the Lease's record as last seen
        self._observed_at = 0.0  # clock() when it was first seen so
        self._collection = collection_path("coordination.k8s.io/v1", "leases", namespace)
        self._path = f"{self._collection}/{name}"
        self._name = name
        self._namespace = namespace
        self.is_leader = False
        self._renewed_at = -float("inf")

    def _spec(self, transitions: int, acquired: str | None = None) -> dict[str, Any]:
        now = format_micro_time(self._wall())
        return {"holderIdentity": self.identity, "leaseDurationSeconds": self.lease_seconds,
                "acquireTime": acquired or now, "renewTime": now, "leaseTransitions": transitions}

    async def try_acquire_or_renew(self) -> bool:
        """One round: take a free or expired lease, renew our own; False when another holds it."""
        try:
            lease = await self.kube.get(self._path)
            if lease is None:
                await self.kube.call("POST", self._collection, body={
                    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self._name, "namespace": self._namespace},
                    "spec": self._spec(0)})
                return self._became(True)
            spec = lease.get("spec") or {}
            holder = spec.get("holderIdentity")
            self._observe(spec)
            duration = int(spec.get("leaseDurationSeconds") or self.lease_seconds)
            if holder != self.identity and holder and self._clock() < self._observed_at + duration:
                return self._became(False)
            transitions = int(spec.get("leaseTransitions") or 0) + (0 if holder == self.identity else 1)
            acquired = spec.get("acquireTime") if holder == self.identity else None
            new_spec = self._spec(transitions, acquired)
            await self.kube.call("PUT", self._path, body={**lease, "spec": new_spec})
            self._observe(new_spec)
            return self._became(True)
        except Conflict:
            return self._became(False)  # another replica wrote first; it leads this round

    def _observe(self, spec: dict[str, Any]) -> None:
        """Note when the Lease's record was first seen as it is now (`clock`)."""
        record = tuple(spec.get(field) for field in _RECORD)
        if record != self._observed:
            self._observed, self._observed_at = record, self._clock()

    @property
    def leading(self) -> bool:
        """Leader, and renewed recently enough that no other replica can have taken the lease (another
        may only once it has seen no change for the lease's duration since our write, and the round was
        timed from before the write; we stop at two thirds of that)."""
        return self.is_leader and self._clock() - self._renewed_at < self.lease_seconds * 2 / 3

    async def run(self) -> None:
        """Acquire, then renew every third of the lease, for as long as the task runs."""
        while True:
            delay = await self.round()
            await asyncio.sleep(delay)

    async def round(self) -> float:
        """One acquire-or-renew; returns the seconds until the next: a third of the lease, or at most
        RETRY_SECONDS after a failure (logged with the API server's status and the Lease's namespace)."""
        try:
            started = self._clock()  # before the write: others count the lease's duration from after it
            if await self.try_acquire_or_renew():
                self._renewed_at = started
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # an API hiccup: leadership lapses by itself if it lasts
            log.warning("lease renewal failed for Lease %s/%s: %s", self._namespace, self._name,
                        first_line(str(exc), 300) or type(exc).__name__)
            return min(self.lease_seconds / 3, RETRY_SECONDS)
        return self.lease_seconds / 3

    def _became(self, leader: bool) -> bool:
        if leader != self.is_leader:
            log.info("leadership %s", "acquired" if leader else "lost", extra={"identity": self.identity})
        self.is_leader = leader
        return leader

    async def release(self) -> None:
        """Hand the lease over at shutdown instead of making others wait for it to expire."""
        if not self.is_leader:
            return
        lease = await self.kube.get(self._path)
        if lease and (lease.get("spec") or {}).get("holderIdentity") == self.identity:
            lease["spec"]["holderIdentity"] = None
            with contextlib.suppress(Conflict):
                await self.kube.call("PUT", self._path, body=lease)
        self.is_leader = False
