"""bot.leader and bot.arbiter's PR lock: a Lease held by another replica expires on each replica's own
clock, whatever the other replicas' clocks say (client-go's leader election rule)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from bot import slots
from bot.arbiter import Arbiter, PrLock
from bot.errors import TemporaryError
from bot.leader import LeaderElector
from bot.naming import PreviewKey
from tests.unit.fakes import FakeLeases

LEASE = 30
PATH = "/apis/coordination.k8s.io/v1/namespaces/preview-bot/leases/preview-bot-reconciler"
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


class Replica:
    """One replica's clocks: `wall` (its node's time of day, `skew` off the true one) and a monotonic
    clock; `advance` moves both by the same true duration."""

    def __init__(self, skew: float = 0.0) -> None:
        self.skew = timedelta(seconds=skew)
        self.elapsed = 0.0
        self.monotonic = 500.0

    def wall(self) -> datetime:
        return T0 + timedelta(seconds=self.elapsed) + self.skew

    def clock(self) -> float:
        return self.monotonic

    def advance(self, seconds: float) -> None:
        self.elapsed += seconds
        self.monotonic += seconds


def elector(leases: FakeLeases, replica: Replica, identity: str) -> LeaderElector:
    return LeaderElector(leases, namespace="preview-bot", name="preview-bot-reconciler", identity=identity,
                         lease_seconds=LEASE, wall=replica.wall, clock=replica.clock)


def advance(seconds: float, *replicas: Replica) -> None:
    for replica in replicas:
        replica.advance(seconds)


async def test_a_replica_whose_clock_is_ahead_does_not_take_a_live_lease() -> None:
    leases = FakeLeases()
    on_time, ahead = Replica(), Replica(skew=45)
    a, b = elector(leases, on_time, "replica-a"), elector(leases, ahead, "replica-b")
    assert await a.try_acquire_or_renew()
    for _round in range(12):  # two minutes of renewals every third of the lease
        assert not await b.try_acquire_or_renew()
        advance(LEASE / 3, on_time, ahead)
        assert await a.try_acquire_or_renew()
    assert leases.objects[PATH]["spec"]["holderIdentity"] == "replica-a"
    assert leases.objects[PATH]["spec"]["leaseTransitions"] == 0


async def test_a_replica_whose_clock_is_behind_takes_over_a_dead_leader_after_one_lease_duration() -> None:
    leases = FakeLeases()
    on_time, behind = Replica(), Replica(skew=-45)
    a, b = elector(leases, on_time, "replica-a"), elector(leases, behind, "replica-b")
    assert await a.try_acquire_or_renew()
    assert not await b.try_acquire_or_renew()  # b sees the record: its own clock starts counting
    # a dies (no renewal, no release). b waits one lease duration on its own clock, however old or new
    # renewTime looks to it.
    advance(LEASE - 0.1, on_time, behind)
    assert not await b.try_acquire_or_renew()
    advance(0.2, on_time, behind)
    assert await b.try_acquire_or_renew()
    spec = leases.objects[PATH]["spec"]
    assert (spec["holderIdentity"], spec["leaseTransitions"]) == ("replica-b", 1)


async def test_a_renewal_restarts_the_others_count_and_a_released_lease_is_free_at_once() -> None:
    leases = FakeLeases()
    first, second = Replica(skew=-300), Replica(skew=300)
    a, b = elector(leases, first, "replica-a"), elector(leases, second, "replica-b")
    assert await a.try_acquire_or_renew()
    assert not await b.try_acquire_or_renew()
    advance(LEASE - 1, first, second)
    assert await a.try_acquire_or_renew()  # a change b sees: counting starts again
    advance(LEASE - 1, first, second)
    assert not await b.try_acquire_or_renew()
    await a.release()
    assert await b.try_acquire_or_renew()


KEY = PreviewKey("acme/shop", 7, 1296269)


class Ticking(Replica):
    """A replica whose monotonic clock moves one second each time it is read (a waiter's polls)."""

    def clock(self) -> float:
        self.advance(1.0)
        return self.monotonic


def arbiter(leases: FakeLeases, replica: Replica, identity: str) -> Arbiter:
    return Arbiter(leases, namespace="preview-bot", identity=identity, poll=0.001,  # type: ignore[arg-type]
                   lock_seconds=LEASE, wall=replica.wall, clock=replica.clock)


async def hold(arbiter_: Arbiter) -> PrLock:
    """The PR's lock taken, its holder then dead (no renewal, no release)."""
    lock = PrLock(arbiter_, KEY)
    await lock.acquire(supersedes=False, timeout=1)
    assert lock._task is not None
    lock._task.cancel()
    return lock


async def test_a_replica_whose_clock_is_ahead_does_not_take_a_live_pr_lock() -> None:
    leases = FakeLeases()
    holder = await hold(arbiter(leases, Replica(), "replica-a"))
    with pytest.raises(TemporaryError, match="busy on another replica"):
        await PrLock(arbiter(leases, Replica(skew=45), "replica-b"), KEY).acquire(supersedes=False, timeout=0.05)
    assert [lease["spec"]["holderIdentity"] for lease in leases.objects.values()] == [holder.arbiter.token]


async def test_a_dead_holders_pr_lock_is_taken_after_one_duration_on_the_waiters_clock_behind_or_not() -> None:
    leases = FakeLeases()
    await hold(arbiter(leases, Replica(), "replica-a"))
    waiter = Ticking(skew=-45)  # renewTime looks 45 s in the future to it
    other = arbiter(leases, waiter, "replica-b")
    taken = PrLock(other, KEY)
    await taken.acquire(supersedes=False, timeout=30)
    assert taken._task is not None
    taken._task.cancel()
    assert [lease["spec"]["holderIdentity"] for lease in leases.objects.values()] == [other.token]
    assert LEASE <= waiter.elapsed <= LEASE + 3


# -- the line for a preview slot and its index (bot.arbiter) --------------------------------------------------

SHOP = "acme/shop"


def pr(number: int) -> PreviewKey:
    return PreviewKey(SHOP, number, 1296269)


def waits(number: int) -> slots.Waiter:
    return slots.Waiter(pr(number).value, number, "a" * 40, slots.EVENT, "2026-12-01T12:00:00Z")


async def test_claims_and_line_are_one_record_that_another_replica_reads() -> None:
    leases = FakeLeases()
    a, b = arbiter(leases, Replica(), "pod-a"), arbiter(leases, Replica(), "pod-b")
    assert (await a.claim_or_wait(pr(1), set(), 1, waiter=waits(1))).granted
    assert (await b.claim_or_wait(pr(2), set(), 1, waiter=waits(2))).place == 1
    assert (await a.claim_or_wait(pr(3), set(), 1, waiter=waits(3))).place == 2
    assert (await a.claim_or_wait(pr(2), set(), 1, waiter=waits(2))).place == 1  # asks again: same place
    assert (await b.lines())[1] == [(1296269, SHOP)]
    # The slot frees: the first in line may take it, the second may not (it is kept for the first).
    line = await b.release_slot(pr(1))
    assert line.keys() == [pr(2).value, pr(3).value]
    assert not (await a.claim_or_wait(pr(3), set(), 1, waiter=waits(3))).granted
    assert (await a.claim_or_wait(pr(2), set(), 1, waiter=waits(2))).granted
    line, free = await b.line_of(pr(2), {pr(2).value}, 1)
    assert line.keys() == [pr(3).value] and free == 0


async def test_an_index_entry_removed_on_an_old_read_comes_back_or_stays() -> None:
    """The reconciler decides an entry is stale on an index read made before it found the line empty; a
    PR that joined meanwhile touched the index, so the removal fails (409): its line stays findable."""
    leases = FakeLeases()
    a, b = arbiter(leases, Replica(), "pod-a"), arbiter(leases, Replica(), "pod-b")
    assert (await a.claim_or_wait(pr(1), set(), 1)).granted
    assert (await a.claim_or_wait(pr(2), set(), 1, waiter=waits(2))).place == 1
    index, _ = await b.lines()  # the reconciler's read...
    await a.release_slot(pr(2))  # ...the line empties...
    assert (await a.claim_or_wait(pr(3), set(), 1, waiter=waits(3))).place == 1  # ...and a PR joins it
    await b.unindex(1296269, index)  # decided on the old read: refused
    assert (await b.lines())[1] == [(1296269, SHOP)]
    await a.release_slot(pr(3))
    index, _ = await b.lines()
    await b.unindex(1296269, index)  # nobody came since: gone
    assert (await b.lines())[1] == []
