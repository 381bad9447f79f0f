"""The shared mesh VirtualService of one host under concurrent pull requests, on a real API server.

Issue 4, item 6: 50 PRs opened and 25 of them closed concurrently leave exactly the 25 open routes,
default route last. Plus: a team's own VirtualService is adopted and given back unchanged; one the
bot created goes with its last preview route.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections import Counter
from typing import Any

import pytest

from bot import mesh_routes, metrics
from bot.kube import Kube, NotFound, collection_path
from bot.manifests import VIRTUAL_SERVICE_API, plan_preview
from bot.naming import PreviewKey, mesh_route_name, short_hash
from bot.repo_config import RepoConfig, ServiceConfig
from bot.settings import ClusterSettings
from tests.plugins.cluster import Cluster
from tests.plugins.kubeproxy import FaultProxy

pytestmark = pytest.mark.cluster

CONFIG = RepoConfig(services=(ServiceConfig(name="a", image="x:{sha}", port=8080),))
SHA = "b" * 40
PRS = 50


@pytest.fixture
def kube(direct: Kube) -> Kube:
    return direct


def mesh_route(settings: ClusterSettings, number: int) -> tuple[str, str, dict[str, Any]]:
    """(mesh host, key, route) of PR `number`'s service `a`."""
    # One repository per test namespace: teardown finds a key's routes cluster-wide, and other tests'
    # namespaces may still be terminating.
    repo_id = int(short_hash(settings.namespace, 8), 16)
    service = plan_preview(settings, CONFIG, PreviewKey(f"acme/{settings.namespace}", number, repo_id),
                           SHA).services[0]
    return service.mesh_host, service.mesh_route["name"], service.mesh_route


def vs_collection(settings: ClusterSettings) -> str:
    return collection_path(VIRTUAL_SERVICE_API, "virtualservices", settings.routing_namespace)


def conflicts() -> float:
    return metrics.REGISTRY.get_sample_value("preview_bot_mesh_update_conflicts_total") or 0.0


def assert_routes(spec: dict[str, Any], host: str, keys: list[str], tail: list[dict[str, Any]]) -> None:
    """Exactly `keys` (sorted, once each, exact header match), then `tail` unchanged."""
    http = spec["http"]
    names = [r.get("name") for r in http]
    assert names == [*sorted(keys), *(r.get("name") for r in tail)], names
    assert len(set(names)) == len(names), f"duplicate routes: {names}"
    for route in http[: len(keys)]:
        assert route["match"] == [{"headers": {"x-preview": {"exact": route["name"]}}, "port": 8080}], route
        assert route["route"][0]["destination"]["host"].startswith(route["name"] + "-a."), route
    assert http[len(keys):] == tail
    assert not http[-1].get("match"), "the last route must catch everything"
    assert spec["hosts"] == [host]


class PerFlowConflicts:
    """Stands in for metrics.MESH_CONFLICTS: counts as the real one does, and per asyncio task."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.by_task: Counter[str] = Counter()

    def inc(self, amount: float = 1) -> None:
        self.real.inc(amount)
        task = asyncio.current_task()
        self.by_task[task.get_name() if task else "?"] += int(amount)


async def test_fifty_prs_open_and_half_close_concurrently(kube: Kube, settings: ClusterSettings,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    per_flow = PerFlowConflicts(metrics.MESH_CONFLICTS)
    monkeypatch.setattr(metrics, "MESH_CONFLICTS", per_flow)
    host = mesh_route(settings, 1)[0]
    assert host == f"a.{settings.namespace}.svc.cluster.local"
    closed = {n for n in range(1, PRS + 1) if n % 2}

    async def flow(number: int) -> None:
        _, key, route = mesh_route(settings, number)
        await kube.add_mesh_route(host, route)
        if number in closed:
            await kube.remove_mesh_route(host, key)

    before, started = conflicts(), time.monotonic()
    tasks = [asyncio.create_task(flow(n), name=f"pr-{n}") for n in range(1, PRS + 1)]
    results = await asyncio.gather(*tasks, return_exceptions=True)
    elapsed, raced = time.monotonic() - started, conflicts() - before
    worst = per_flow.by_task.most_common(3)
    print(f"\n{PRS} PR flows ({len(closed)} closed): {raced:.0f} conflicts retried, {elapsed:.2f} s; "
          f"most retried flows: {worst}")

    failures = {n: repr(r) for n, r in zip(range(1, PRS + 1), results, strict=True) if isinstance(r, BaseException)}
    assert not failures, f"{len(failures)} flows failed: {failures}"
    vs = await kube.get(f"{vs_collection(settings)}/{mesh_route_name(host)}")
    assert vs is not None
    open_keys = [mesh_route(settings, n)[1] for n in range(1, PRS + 1) if n not in closed]
    assert_routes(vs["spec"], host, open_keys, [mesh_routes.default_route(host)])
    assert mesh_routes.preview_keys(vs["spec"]) == sorted(open_keys)
    # Only one mesh VirtualService for the host.
    assert [item["metadata"]["name"] for item in await kube.virtual_services()] == [mesh_route_name(host)]


async def test_team_virtual_service_is_adopted_and_given_back_unchanged(kube: Kube, settings: ClusterSettings) -> None:
    host = mesh_route(settings, 1)[0]
    team_routes = [
        {"name": "api-v2", "match": [{"uri": {"prefix": "/api/v2"}}],
         "route": [{"destination": {"host": host, "subset": "v2"}}]},
        {"name": "main", "route": [{"destination": {"host": host, "port": {"number": 8080}}}]},
    ]
    team = {"apiVersion": VIRTUAL_SERVICE_API, "kind": "VirtualService",
            "metadata": {"name": "team-a", "namespace": settings.routing_namespace, "labels": {"team": "a"}},
            "spec": {"hosts": [host], "exportTo": ["*"], "http": copy.deepcopy(team_routes)}}
    created = await kube.call("POST", vs_collection(settings), body=team)
    team_path = f"{vs_collection(settings)}/team-a"

    numbers = [3, 1, 2]
    await asyncio.gather(*(kube.add_mesh_route(host, mesh_route(settings, n)[2]) for n in numbers))

    adopted = await kube.get(team_path)
    assert adopted is not None
    assert_routes(adopted["spec"], host, [mesh_route(settings, n)[1] for n in numbers], team_routes)
    assert [i["metadata"]["name"] for i in await kube.virtual_services()] == ["team-a"], \
        "the bot created a second mesh VirtualService next to the team's"

    await asyncio.gather(*(kube.remove_mesh_route(host, mesh_route(settings, n)[1]) for n in numbers))

    after = await kube.get(team_path)
    assert after is not None, "the team's VirtualService was deleted"
    assert after["spec"] == created["spec"]
    assert after["metadata"].get("labels") == {"team": "a"}
    assert not (after["metadata"].get("annotations") or {})
    assert after["metadata"]["uid"] == created["metadata"]["uid"]
    # A no-op removal does not write at all.
    rv = after["metadata"]["resourceVersion"]
    assert not await kube.remove_mesh_route(host, mesh_route(settings, 1)[1])
    assert (await kube.get(team_path))["metadata"]["resourceVersion"] == rv


async def test_bot_virtual_service_goes_with_its_last_route(kube: Kube, settings: ClusterSettings) -> None:
    host, key1, route1 = mesh_route(settings, 1)
    _, key2, route2 = mesh_route(settings, 2)
    path = f"{vs_collection(settings)}/{mesh_route_name(host)}"

    assert await kube.add_mesh_route(host, route1)
    assert await kube.add_mesh_route(host, route2)
    assert not await kube.add_mesh_route(host, route2)  # same route again: no write
    vs = await kube.get(path)
    assert vs is not None
    assert vs["metadata"]["labels"]["preview-bot.dev/role"] == "mesh-routes"
    assert_routes(vs["spec"], host, [key1, key2], [mesh_routes.default_route(host)])

    assert await kube.remove_routes_of_key(key1) == 1
    vs = await kube.get(path)
    assert vs is not None, "deleted while a preview route remained"
    assert_routes(vs["spec"], host, [key2], [mesh_routes.default_route(host)])

    assert await kube.remove_mesh_route(host, key2)
    assert await kube.get(path) is None, "the bot's VirtualService outlived its last preview route"
    assert not await kube.remove_mesh_route(host, key2)


async def test_add_racing_the_delete_of_the_last_route(cluster: Cluster, kube: Kube, fault_proxy: FaultProxy,
                                                       settings: ClusterSettings) -> None:
    """PR 2 reads the bot's VirtualService, PR 1 (its only route) closes and deletes it, then PR 2 writes.

    The write of PR 2 (a PUT with the old resourceVersion) meets an object that no longer exists."""
    host, key1, route1 = mesh_route(settings, 1)
    _, key2, route2 = mesh_route(settings, 2)
    path = f"{vs_collection(settings)}/{mesh_route_name(host)}"
    slow = Kube.from_environment(settings, kubeconfig=str(fault_proxy.kubeconfig()), timeout=10.0)
    try:
        assert await kube.add_mesh_route(host, route1)
        fault_proxy.inject("PUT", path + "$", status=None, delay=2.0)  # PR 2's write is slow to arrive
        adding = asyncio.create_task(slow.add_mesh_route(host, route2))
        deadline = time.monotonic() + 5
        while not fault_proxy.calls_to("PUT", path + "$"):
            assert time.monotonic() < deadline, "PR 2 never wrote"
            await asyncio.sleep(0.02)
        assert await kube.remove_mesh_route(host, key1)  # deletes the VirtualService: no route left
        try:
            await adding
        except NotFound as exc:
            pytest.fail(f"PR 2's add_mesh_route failed instead of re-creating the VirtualService: {exc!r}; "
                        f"proxy saw {fault_proxy.statuses('*', path + '$')}", pytrace=False)
    finally:
        slow.close()
    vs = await kube.get(path)
    assert vs is not None, "PR 2's route was lost"
    assert_routes(vs["spec"], host, [key2], [mesh_routes.default_route(host)])

