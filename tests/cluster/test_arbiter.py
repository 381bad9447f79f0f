"""bot/arbiter.py on a real API server: the per-PR lock and the per-repository slots hold across
"replicas" (separate Arbiter objects, each with its own identity and Kubernetes client)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client as k8s

from bot import metrics, slots
from bot.arbiter import Arbiter, lock_name, slots_name
from bot.kube import Kube
from bot.naming import PreviewKey
from bot.settings import ClusterSettings
from tests.plugins.cluster import Cluster

pytestmark = pytest.mark.cluster

KEY = PreviewKey("acme/shop", 7, 1296269)


@pytest.fixture
def replicas(cluster: Cluster, settings: ClusterSettings, namespace: str) -> Iterator[list[Arbiter]]:
    kubes = [Kube.from_environment(settings, kubeconfig=str(cluster.kubeconfig), timeout=10.0) for _ in range(2)]
    yield [Arbiter(kube, namespace=namespace, identity=f"replica-{i}", poll=0.1, lock_seconds=3)
           for i, kube in enumerate(kubes)]
    for kube in kubes:
        kube.close()


async def test_one_prs_lock_is_held_by_one_replica_at_a_time(replicas: list[Arbiter]) -> None:
    inside: list[str] = []
    overlaps: list[list[str]] = []

    async def work(arbiter: Arbiter, n: int) -> None:
        async with arbiter.pr_lock(KEY, supersedes=False, timeout=60):
            inside.append(f"{arbiter.identity}#{n}")
            if len(inside) > 1:
                overlaps.append(list(inside))
            await asyncio.sleep(0.05)
            inside.remove(f"{arbiter.identity}#{n}")

    leases = metrics.REGISTRY.get_sample_value("preview_bot_kubernetes_lease_requests_total") or 0.0
    await asyncio.gather(*(work(replicas[i % 2], i) for i in range(8)))
    assert overlaps == []
    # Lease requests are counted apart (they follow time while a lock is held, not events).
    assert (metrics.REGISTRY.get_sample_value("preview_bot_kubernetes_lease_requests_total") or 0.0) - leases >= 16


async def test_a_waiting_newer_event_supersedes_the_holder_within_a_second(replicas: list[Arbiter]) -> None:
    first, second = replicas

    async def holder() -> float:
        async with first.pr_lock(KEY, supersedes=True, timeout=10) as lock:
            started = time.monotonic()
            while not lock.superseded:
                await asyncio.sleep(0.05)
                assert time.monotonic() - started < 5, "never saw the waiting replica"
            seen = time.monotonic()
        return seen

    async def waiter() -> float:
        await asyncio.sleep(0.3)
        asked = time.monotonic()
        async with second.pr_lock(KEY, supersedes=True, timeout=10) as lock:
            assert lock.held and not lock.superseded
        return asked

    seen, asked = await asyncio.gather(holder(), waiter())
    assert seen - asked < 1.5


async def test_a_crashed_holders_lock_expires_and_is_taken_over(replicas: list[Arbiter], cluster: Cluster,
                                                               namespace: str) -> None:
    crashed, other = replicas
    lock = crashed.pr_lock(KEY, supersedes=False, timeout=10)
    held = await lock.__aenter__()
    assert held._task is not None
    held._task.cancel()  # the process died: no renewal, no release
    started = time.monotonic()
    async with other.pr_lock(KEY, supersedes=True, timeout=20) as taken:
        waited = time.monotonic() - started
        assert taken.held
        await held.refresh()
        assert held.lost  # the old holder would not report anything as done
    assert 1.0 < waited < 10, waited
    # The taker deleted it when done; the crashed one's release finds nothing of its own.
    await crashed.kube.delete(f"{crashed.collection}/{lock_name(KEY)}")
    api = k8s.CoordinationV1Api(cluster.api_client())
    assert [lease.metadata.name for lease in api.list_namespaced_lease(namespace).items] == []


async def test_eight_claims_on_two_replicas_take_exactly_the_cap(replicas: list[Arbiter]) -> None:
    keys = [PreviewKey("acme/shop", n, 1296269) for n in range(1, 9)]
    results = await asyncio.gather(*(replicas[i % 2].claim_slot(key, set(), 3) for i, key in enumerate(keys)))
    assert sorted(granted for granted, _used in results) == [False] * 5 + [True] * 3
    granted = [key for key, (ok, _used) in zip(keys, results, strict=True) if ok]
    # A live preview from before slots existed counts too; a released slot is free again.
    assert await replicas[0].claim_slot(PreviewKey("acme/shop", 50, 1296269), set(), 3) == (False, 3)
    await replicas[1].release_slot(granted[0])
    assert await replicas[0].claim_slot(PreviewKey("acme/shop", 51, 1296269), {"preview-99-old"}, 3) == (False, 3)
    assert (await replicas[0].claim_slot(PreviewKey("acme/shop", 52, 1296269), set(), 3))[0] is True
    # Another repository has slots of its own.
    assert (await replicas[1].claim_slot(PreviewKey("other/shop", 1, 1296270), set(), 3))[0] is True


async def test_a_repository_with_no_claim_and_nobody_in_line_keeps_no_lease(replicas: list[Arbiter], cluster: Cluster,
                                                                             namespace: str) -> None:
    """A repository the App left, or that stopped using previews, must leave nothing behind in the cluster;
    a claim racing with the release that deletes the Lease still holds."""
    api = k8s.CoordinationV1Api(cluster.api_client())

    def leases() -> list[str]:
        return sorted(lease.metadata.name for lease in api.list_namespaced_lease(namespace).items)

    keys = [PreviewKey("acme/shop", n, 1296269) for n in (1, 2)]
    assert (await replicas[0].claim_slot(keys[0], set(), 1))[0] is True
    waiter = slots.Waiter(keys[1].value, 2, "2" * 40, slots.EVENT, "2026-01-01T00:00:00Z")
    assert (await replicas[1].claim_or_wait(keys[1], set(), 1, waiter=waiter)).granted is False
    await replicas[0].release_slot(keys[0])
    assert slots_name(keys[0]) in leases()  # keys[1] still waits in line
    await replicas[1].leave_line(keys[1])
    assert slots_name(keys[0]) not in leases()

    # The last claim is released, and the Lease deleted, between another claim's read and its write.
    assert (await replicas[0].claim_slot(keys[1], set(), 3))[0] is True
    read = replicas[1]._slots

    async def read_then_released(key: PreviewKey) -> tuple[dict[str, Any] | None, dict[str, str], slots.Line]:
        replicas[1]._slots = read  # type: ignore[method-assign]
        found = await read(key)
        await replicas[0].release_slot(keys[1])
        return found

    replicas[1]._slots = read_then_released  # type: ignore[method-assign]
    assert await replicas[1].claim_slot(keys[0], set(), 3) == (True, 0)
    assert await replicas[0].claim_slot(keys[1], set(), 3) == (True, 1)  # the claim of keys[0] held
    await asyncio.gather(replicas[0].release_slot(keys[0]), replicas[1].release_slot(keys[1]))
    assert slots_name(keys[0]) not in leases()
