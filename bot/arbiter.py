"""Check-then-act on shared state, decided by the API server, so it holds across replicas.

In-process locks only order one replica's work; deploy/ runs two, and GitHub spreads deliveries over
both. Two kinds of objects, both `coordination.k8s.io` Leases in the bot's own namespace
(`POD_NAMESPACE`), written only with create-if-absent (POST) or a resourceVersion precondition (PUT),
so a concurrent writer gets 409 and re-reads:

- **one Lease per pull request** (`preview-bot-lock-<preview key>`): its deploys and teardowns run one at
  a time across replicas, like the per-PR queue orders them inside one. The holder renews it every third
  of its duration. A replica that finds it held and comes with a newer event bumps the Lease's
  `preview-bot.dev/waiting` counter: the holder sees it at its next renewal and stops early, as it does
  for a newer event queued in its own process (the newer event deploys the head it reads under the lock).
  A holder that crashed stops renewing: the Lease expires and is taken over; the same identity (a
  restarted process of the same pod) takes it over at once. Expiry is judged on the waiting replica's
  own clock, as client-go's leader election does: the Lease's record has not changed for its duration
  since the waiter saw it change (renewTime is another node's clock: one 45 s ahead would take a live lock).
- **one Lease per repository** (`preview-bot-slots-<repo hash>`) whose `preview-bot.dev/claims`
  annotation lists the previews holding one of the `PREVIEW_MAX_PER_REPO` slots, and whose
  `preview-bot.dev/line` annotation lists the pull requests refused at the cap that wait for one, oldest
  first (see slots.py). Both change in one write, so a slot and a place in line are never lost or given
  twice. The write that leaves neither a claim nor a waiter deletes the Lease instead (with the
  resourceVersion read), so a repository with no preview left has none;
- **one index Lease** (`preview-bot-lines`) whose `preview-bot.dev/lines` annotation names the repositories
  that may have a line, so that the reconciler finds them with one GET (404 while nobody ever waited),
  without `list` on Leases (deploy/ grants none). A PR joining a line touches it *after* writing the line;
  an entry is removed only with the resourceVersion read *before* its repository's line was found empty,
  so a removal racing a join fails with 409 (or the join adds it back): an entry is never lost while its
  line has waiters, except when a replica dies between the two writes (the next PR joining that line, or a
  teardown in that repository, serves it then).

The Lease fields follow Kubernetes' own leader election (holderIdentity, leaseDurationSeconds,
renewTime; kubernetes.io/docs/concepts/architecture/leases).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from bot import naming, slots
from bot.errors import TemporaryError
from bot.kube import Conflict, Kube, NotFound, collection_path
from bot.naming import PreviewKey
from bot.timestamps import format_micro_time

log = logging.getLogger(__name__)

LEASE_API = "coordination.k8s.io/v1"
WAITING_ANNOTATION = "preview-bot.dev/waiting"
LINES_LEASE = "preview-bot-lines"
LINES_ANNOTATION = "preview-bot.dev/lines"
LOCK_SECONDS = 30
_ATTEMPTS = 50


def _now() -> datetime:
    return datetime.now(UTC)


def _repository(key: PreviewKey) -> str:
    # By the numeric id when known, so a renamed repository and its legacy (name-keyed) previews share
    # one lock per PR and one set of slots.
    return f"id-{key.repo_id}" if key.repo_id is not None else key.repo_hash


def lock_name(key: PreviewKey) -> str:
    return naming.dns_label(f"preview-bot-lock-{_repository(key)}-{key.number}")


def slots_name(key: PreviewKey) -> str:
    return naming.dns_label(f"preview-bot-slots-{_repository(key)}")




class PrLock:
    """A held per-PR Lease. `superseded` turns True when another replica waits with a newer event;
    `held` turns False when renewals stop succeeding (then nothing may be reported as done)."""

    def __init__(self, arbiter: Arbiter, key: PreviewKey) -> None:
        self.arbiter = arbiter
        self.key = key
        self.path = f"{arbiter.collection}/{lock_name(key)}"
        self.superseded = False
        self.lost = False
        self._waiting_seen = 0
        self._renewed_at = -float("inf")
        self._task: asyncio.Task[None] | None = None
        self._observed: tuple[Any, ...] | None = None  # another holder's record as last seen
        self._observed_at = 0.0  # arbiter.clock() when it was first seen so

    @property
    def held(self) -> bool:
        return not self.lost and time.monotonic() - self._renewed_at < self.arbiter.lock_seconds * 2 / 3

    def _spec(self, acquired: str | None = None) -> dict[str, Any]:
        now = format_micro_time(self.arbiter.wall())
        return {"holderIdentity": self.arbiter.token, "leaseDurationSeconds": self.arbiter.lock_seconds,
                "acquireTime": acquired or now, "renewTime": now}

    def _free_for_us(self, lease: dict[str, Any]) -> bool:
        spec = lease.get("spec") or {}
        holder = str(spec.get("holderIdentity") or "")
        if not holder or holder == self.arbiter.token:
            return True
        if holder.split(" ", 1)[0] == self.arbiter.identity:
            return True  # an earlier process of this same pod: it is gone
        record = tuple(spec.get(name) for name in ("holderIdentity", "leaseDurationSeconds", "acquireTime",
                                                   "renewTime"))
        now = self.arbiter.clock()
        if record != self._observed:
            self._observed, self._observed_at = record, now
        return now >= self._observed_at + int(spec.get("leaseDurationSeconds") or self.arbiter.lock_seconds)

    async def acquire(self, *, supersedes: bool, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        signalled = None  # the uid of the Lease we told that we wait
        while True:
            lease = await self.arbiter.kube.get(self.path)
            try:
                if lease is None:
                    await self.arbiter.kube.call("POST", self.arbiter.collection, body={
                        "apiVersion": LEASE_API, "kind": "Lease",
                        "metadata": {"name": lock_name(self.key), "namespace": self.arbiter.namespace,
                                     "labels": {naming.MANAGED_BY_LABEL: naming.MANAGED_BY}},
                        "spec": self._spec()})
                    break
                if self._free_for_us(lease):
                    self._waiting_seen = int((lease["metadata"].get("annotations") or {}).get(WAITING_ANNOTATION) or 0)
                    await self.arbiter.kube.call("PUT", self.path, body={**lease, "spec": self._spec()})
                    break
                if supersedes and signalled != lease["metadata"].get("uid"):
                    annotations = dict(lease["metadata"].get("annotations") or {})
                    annotations[WAITING_ANNOTATION] = str(int(annotations.get(WAITING_ANNOTATION) or 0) + 1)
                    await self.arbiter.kube.call("PUT", self.path, body={
                        **lease, "metadata": {**lease["metadata"], "annotations": annotations}})
                    signalled = lease["metadata"].get("uid")
            except (Conflict, NotFound):
                # Another replica wrote first: read again, after a moment when many wait.
                await asyncio.sleep(random.uniform(0, self.arbiter.poll / 2))  # noqa: S311 - jitter
                continue
            if time.monotonic() >= deadline:
                raise TemporaryError(f"pull request {self.key.repo}#{self.key.number} is busy on another "
                                     f"replica for more than {timeout:.0f} s")
            await asyncio.sleep(self.arbiter.poll * random.uniform(0.5, 1.5))  # noqa: S311 - jitter
        self._renewed_at = time.monotonic()
        self._task = asyncio.create_task(self._renew_forever(), name=f"pr-lock:{self.key.value}")

    async def _renew_forever(self) -> None:
        """Renew every third of the duration; in between, look for a waiting replica every `poll` seconds
        so that a deploy learns of a newer event within about a second."""
        last = time.monotonic()
        while not self.lost:
            await asyncio.sleep(self.arbiter.poll * 2)
            try:
                if time.monotonic() - last >= self.arbiter.lock_seconds / 3:
                    await self.renew()
                    last = time.monotonic()
                else:
                    await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # an API hiccup: `held` lapses by itself if it lasts
                log.warning("could not renew the lock of %s: %s", self.key.value, type(exc).__name__)

    def _observe(self, lease: dict[str, Any] | None) -> bool:
        """Update `lost` and `superseded` from a fresh read; True while we hold the Lease."""
        if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.arbiter.token:
            if not self.lost:
                log.warning("lost the lock of %s to another replica", self.key.value)
            self.lost = True
            return False
        waiting = int((lease["metadata"].get("annotations") or {}).get(WAITING_ANNOTATION) or 0)
        if waiting > self._waiting_seen:
            self.superseded = True
        return True

    async def refresh(self) -> None:
        """Read the Lease now: is another replica waiting with a newer event, do we still hold it?"""
        self._observe(await self.arbiter.kube.get(self.path))

    async def renew(self) -> None:
        for _attempt in range(_ATTEMPTS):
            lease = await self.arbiter.kube.get(self.path)
            if not self._observe(lease):
                return
            assert lease is not None
            renewed = {**lease, "spec": self._spec(lease["spec"].get("acquireTime"))}
            try:
                await self.arbiter.kube.call("PUT", self.path, body=renewed)
            except Conflict:
                continue
            self._renewed_at = time.monotonic()
            return

    async def release(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        lease = await self.arbiter.kube.get(self.path)
        if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.arbiter.token:
            return
        # Deleted rather than emptied: one object per open PR at most. The precondition keeps a
        # replica that took it over meanwhile from losing it.
        with contextlib.suppress(Conflict, NotFound):
            await self.arbiter.kube.delete(self.path, resource_version=lease["metadata"]["resourceVersion"])


class Arbiter:
    """`wall`: the time written into Leases and claims; `clock`: monotonic seconds, by which another
    holder's lock expires."""

    def __init__(self, kube: Kube, *, namespace: str, identity: str, poll: float = 0.5,
                 lock_seconds: int = LOCK_SECONDS, stale_claim: timedelta = timedelta(minutes=10),
                 wall: Callable[[], datetime] = _now, clock: Callable[[], float] = time.monotonic) -> None:
        self.kube = kube
        self.wall = wall
        self.clock = clock
        self.lock_seconds = lock_seconds
        self.namespace = namespace
        self.identity = identity.replace(" ", "-")
        self.token = f"{self.identity} {uuid.uuid4().hex[:12]}"
        self.collection = collection_path(LEASE_API, "leases", namespace)
        self.poll = poll
        self.stale_claim = stale_claim
        self._local: dict[str, tuple[asyncio.Lock, list[int]]] = {}  # lock, users
        self._holders: dict[str, PrLock] = {}

    @contextlib.asynccontextmanager
    async def pr_lock(self, key: PreviewKey, *, supersedes: bool, timeout: float) -> AsyncIterator[PrLock]:
        """Hold the PR's Lease for the block (and this process's own lock for it: the reconciler runs
        beside the per-PR queue)."""
        entry = self._local.setdefault(key.value, (asyncio.Lock(), [0]))
        entry[1][0] += 1
        try:
            if supersedes and key.value in self._holders:
                self._holders[key.value].superseded = True  # a newer event of this process waits
            async with entry[0]:
                lock = PrLock(self, key)
                await lock.acquire(supersedes=supersedes, timeout=timeout)
                self._holders[key.value] = lock
                try:
                    yield lock
                finally:
                    self._holders.pop(key.value, None)
                    try:
                        await lock.release()
                    except Exception as exc:  # it expires by itself
                        log.warning("could not release the lock of %s: %s", key.value, type(exc).__name__)
        finally:
            entry[1][0] -= 1
            if not entry[1][0]:
                self._local.pop(key.value, None)

    # -- slots and the line ------------------------------------------------------------------------------

    async def _slots(self, key: PreviewKey) -> tuple[dict[str, Any] | None, dict[str, str], slots.Line]:
        lease = await self.kube.get(f"{self.collection}/{slots_name(key)}")
        annotations = ((lease or {}).get("metadata") or {}).get("annotations") or {}
        line = slots.parse_line(annotations.get(slots.LINE_ANNOTATION))
        return lease, slots.parse_claims(annotations.get(slots.CLAIMS_ANNOTATION)), line

    async def _write(self, key: PreviewKey, lease: dict[str, Any] | None, claims: dict[str, str],
                     line: slots.Line) -> None:
        """Claims and line in one write, with the resourceVersion they were decided on (409: re-read)."""
        annotations = {slots.CLAIMS_ANNOTATION: slots.render_claims(claims),
                       slots.LINE_ANNOTATION: slots.render_line(line)}
        await self._put(slots_name(key), lease, annotations)

    async def _store(self, key: PreviewKey, lease: dict[str, Any], claims: dict[str, str], line: slots.Line) -> None:
        """`_write`, or, with no claim and nobody in line left, delete the Lease (with the resourceVersion read:
        409 when another writer came first): a repository the App left, or that stopped using previews,
        leaves nothing behind in the cluster. A claim that finds it gone creates it again."""
        if claims or line.waiting:
            await self._write(key, lease, claims, line)
        else:
            await self.kube.delete(f"{self.collection}/{slots_name(key)}",
                                   resource_version=lease["metadata"]["resourceVersion"])

    async def _put(self, name: str, lease: dict[str, Any] | None, annotations: dict[str, str]) -> None:
        """Create the Lease `name` with `annotations`, or replace them in `lease` as read (its
        resourceVersion is the precondition: 409 when another writer came first)."""
        if lease is None:
            await self.kube.call("POST", self.collection, body={
                "apiVersion": LEASE_API, "kind": "Lease",
                "metadata": {"name": name, "namespace": self.namespace, "annotations": annotations,
                             "labels": {naming.MANAGED_BY_LABEL: naming.MANAGED_BY}},
                "spec": {}})
        else:
            meta = lease["metadata"]
            await self.kube.call("PUT", f"{self.collection}/{name}", body={
                **lease, "metadata": {**meta, "annotations": {**(meta.get("annotations") or {}), **annotations}}})

    async def claim_slot(self, key: PreviewKey, live: set[str], cap: int) -> tuple[bool, int]:
        """Take one of the repository's `cap` slots for `key` (kept if it has one); (granted, slots used
        by others). Atomic across replicas: the write carries the resourceVersion it was decided on."""
        claim = await self.claim_or_wait(key, live, cap)
        return claim.granted, claim.used

    async def claim_or_wait(self, key: PreviewKey, live: set[str], cap: int, *,
                            waiter: slots.Waiter | None = None) -> slots.Claim:
        """Take one of the repository's `cap` slots for `key`, unless PRs waiting in line before it take
        the free ones first (slots.decide); granted, it leaves the line. Refused with a `waiter`, the PR
        joins the line (or keeps its place there, with what it now asks for); without one it does not
        wait. Atomic across replicas: one write of claims and line, with the resourceVersion read."""
        for _attempt in range(_ATTEMPTS):
            lease, claims, line = await self._slots(key)
            try:
                if key.value in claims:
                    if line.place(key.value) is not None:
                        await self._write(key, lease, claims, slots.leave(line, key.value))
                    return slots.Claim(True, slots.used_count(claims, live, key.value))
                now = self.wall()
                ahead = slots.ahead_of(line, key.value, slots.holding(claims, live, now, self.stale_claim))
                granted, updated = slots.decide(claims, live, key.value, cap, now, self.stale_claim, ahead)
                if granted:
                    await self._write(key, lease, updated, slots.leave(line, key.value))
                    return slots.Claim(True, len(updated) - 1)
                used = slots.used_count(updated, live, key.value)
                if waiter is None:
                    return slots.Claim(False, used, line.place(key.value), ahead=ahead)
                joined, place = slots.join(replace(line, repo_id=key.repo_id, repo=key.repo), waiter)
                if place is None:
                    return slots.Claim(False, used, line_full=True, ahead=ahead)
                if joined != line:
                    await self._write(key, lease, claims, joined)
            except (Conflict, NotFound):  # NotFound: the Lease went with its last claim since the read
                await asyncio.sleep(random.uniform(0, 0.1))  # noqa: S311 - jitter
                continue
            if key.repo_id is not None:
                await self._index(key.repo_id, key.repo)  # after the line: see the module docstring
            return slots.Claim(False, used, place, ahead=ahead)
        raise TemporaryError(f"could not claim a preview slot of {key.repo} after {_ATTEMPTS} conflicts")

    async def release_slot(self, key: PreviewKey) -> slots.Line:
        """Free the preview's slot and take it out of the line (it is gone, or asks for nothing any more);
        returns the line as left, so that the caller offers the slot to who waits (no extra read)."""
        return await self._leave(key, release=True, what=f"release the preview slot of {key.value}")

    async def leave_line(self, key: PreviewKey) -> slots.Line:
        """Take the PR out of its repository's line (a no-op when it does not wait); returns the line left."""
        return await self._leave(key, release=False, what=f"take {key.value} out of the line")

    async def _leave(self, key: PreviewKey, *, release: bool, what: str) -> slots.Line:
        """Out of the line, and with `release` its claim dropped too: read, change, write under the Lease's
        resourceVersion, again on a conflict; nothing written when there is nothing to change."""
        for _attempt in range(_ATTEMPTS):
            lease, claims, line = await self._slots(key)
            claimed = release and key.value in claims
            if lease is None or (not claimed and line.place(key.value) is None):
                return line
            if claimed:
                claims.pop(key.value)
            line = slots.leave(line, key.value)
            try:
                await self._store(key, lease, claims, line)
            except (Conflict, NotFound):
                continue
            return line
        raise TemporaryError(f"could not {what} after {_ATTEMPTS} conflicts")

    async def line_of(self, key: PreviewKey, live: set[str], cap: int) -> tuple[slots.Line, int]:
        """The line of `key`'s repository and how many slots are free for it now (slots.free_slots)."""
        _, claims, line = await self._slots(key)
        return line, slots.free_slots(claims, live, cap, self.wall(), self.stale_claim)

    @staticmethod
    def _index_entries(lease: dict[str, Any] | None) -> dict[str, list[Any]]:
        """The index's entries, repository id (text) -> [full name, touches]; unreadable ones are dropped."""
        text = (((lease or {}).get("metadata") or {}).get("annotations") or {}).get(LINES_ANNOTATION)
        return {str(k): v for k, v in slots.json_object(text).items() if isinstance(v, list) and len(v) == 2}

    async def _lines_index(self) -> tuple[dict[str, Any] | None, dict[str, list[Any]]]:
        lease = await self.kube.get(f"{self.collection}/{LINES_LEASE}")
        return lease, self._index_entries(lease)

    async def _index(self, repo_id: int, repo: str) -> None:
        """Name the repository in the index; always a write (the count of touches goes up), so that a
        removal decided on an older read fails."""
        for _attempt in range(_ATTEMPTS):
            lease, entries = await self._lines_index()
            touches = entries.get(str(repo_id), [repo, 0])[1]
            entries[str(repo_id)] = [repo, int(touches) + 1 if isinstance(touches, int) else 1]
            try:
                await self._put(LINES_LEASE, lease, {LINES_ANNOTATION: json.dumps(entries, separators=(",", ":"))})
            except (Conflict, NotFound):
                await asyncio.sleep(random.uniform(0, 0.1))  # noqa: S311 - jitter
                continue
            return
        raise TemporaryError(f"could not index the line of {repo} after {_ATTEMPTS} conflicts")

    async def lines(self) -> tuple[dict[str, Any] | None, list[tuple[int, str]]]:
        """The repositories that may have PRs waiting for a slot, (repository id, full name), from one GET
        of the index Lease (404 while nobody ever waited), and the index as read, for `unindex`."""
        lease, entries = await self._lines_index()
        found = []
        for repo_id, (repo, _touches) in sorted(entries.items()):
            if repo_id.isdigit():
                found.append((int(repo_id), str(repo)))
        return lease, found

    async def unindex(self, repo_id: int, index: dict[str, Any] | None) -> None:
        """Drop the repository from the index, whose line was found empty after `index` was read; a no-op
        when anyone touched the index since (409: a PR joined meanwhile)."""
        entries = self._index_entries(index)
        if index is None or str(repo_id) not in entries:
            return
        del entries[str(repo_id)]
        with contextlib.suppress(Conflict, NotFound):
            await self._put(LINES_LEASE, index, {LINES_ANNOTATION: json.dumps(entries, separators=(",", ":"))})
