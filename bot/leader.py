"""Leader election on a coordination.k8s.io Lease, so only one replica runs the reconciler.

Webhook handling stays active on every replica: that is safe because each PR's work is
level-triggered and the shared mesh objects are updated with optimistic concurrency.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from bot.errors import first_line
from bot.kube import Conflict, Kube, collection_path
from bot.timestamps import format_micro_time, parse_time

log = logging.getLogger(__name__)
# Seconds until the next try after a failed round, at most: a third of a long lease (PREVIEW_LEASE_SECONDS
# up to 1,000,000) would leave the reconciler without a leader for days after one API hiccup.
RETRY_SECONDS = 5.0


def _now() -> datetime:
    return datetime.now(UTC)


class LeaderElector:
    def __init__(self, kube: Kube, *, namespace: str, name: str, identity: str,
                 lease_seconds: int = 30) -> None:
        self.kube = kube
        self.identity = identity
        self.lease_seconds = lease_seconds
        self._collection = collection_path("coordination.k8s.io/v1", "leases", namespace)
        self._path = f"{self._collection}/{name}"
        self._name = name
        self._namespace = namespace
        self.is_leader = False
        self._renewed_at = -float("inf")

    def _spec(self, transitions: int, acquired: str | None = None) -> dict[str, Any]:
        now = format_micro_time(_now())
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
            renewed = parse_time(spec.get("renewTime")) or datetime.min.replace(tzinfo=UTC)
            duration = timedelta(seconds=int(spec.get("leaseDurationSeconds") or self.lease_seconds))
            if holder != self.identity and holder and renewed + duration > _now():
                return self._became(False)
            transitions = int(spec.get("leaseTransitions") or 0) + (0 if holder == self.identity else 1)
            acquired = spec.get("acquireTime") if holder == self.identity else None
            await self.kube.call("PUT", self._path, body={**lease, "spec": self._spec(transitions, acquired)})
            return self._became(True)
        except Conflict:
            return self._became(False)  # another replica wrote first; it leads this round

    @property
    def leading(self) -> bool:
        """Leader, and renewed recently enough that no other replica can have taken the lease (it may
        only after renewTime + duration; we stop at two thirds of that)."""
        return self.is_leader and time.monotonic() - self._renewed_at < self.lease_seconds * 2 / 3

    async def run(self) -> None:
        """Acquire, then renew every third of the lease, for as long as the task runs."""
        while True:
            delay = await self.round()
            await asyncio.sleep(delay)

    async def round(self) -> float:
        """One acquire-or-renew; returns the seconds until the next: a third of the lease, or at most
        RETRY_SECONDS after a failure (logged with the API server's status and the Lease's namespace)."""
        try:
            if await self.try_acquire_or_renew():
                self._renewed_at = time.monotonic()
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
