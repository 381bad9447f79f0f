"""Where preview routes go when a team has its own mesh VirtualService for the host, on a real API server.

Issue 8, item 4: Istio uses one mesh VirtualService per host, cluster-wide (the oldest of those exported
everywhere), so the bot finds it in any namespace (hosts resolved as Istio does), adds its routes to it
keeping the team's, or refuses naming it; in both orders (the team's older, the team's newer than the
bot's). The data-plane side of the same cases is in tests/mesh/.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from bot import mesh_routes
from bot.errors import MeshRoutingError
from bot.kube import Kube, collection_path
from bot.manifests import VIRTUAL_SERVICE_API, plan_preview
from bot.naming import PreviewKey, mesh_route_name
from bot.repo_config import RepoConfig, ServiceConfig
from bot.settings import ClusterSettings

pytestmark = pytest.mark.cluster

CONFIG = RepoConfig(services=(ServiceConfig(name="a", image="x:{sha}", port=8080),))
SHA = "c" * 40


@pytest.fixture
def kube(direct: Kube) -> Kube:
    return direct


def key_of(settings: ClusterSettings, number: int) -> PreviewKey:
    """Keys are cluster-wide (teardown removes a key's routes wherever they are): one repository per test."""
    return PreviewKey(f"acme/{settings.namespace}", number, int(settings.namespace.split("-")[-1], 16) + 1)


def route_of(settings: ClusterSettings, number: int) -> tuple[str, str, dict[str, Any]]:
    service = plan_preview(settings, CONFIG, key_of(settings, number), SHA).services[0]
    return service.mesh_host, service.mesh_route["name"], service.mesh_route


def vs_path(namespace: str, name: str) -> str:
    return f"{collection_path(VIRTUAL_SERVICE_API, 'virtualservices', namespace)}/{name}"


def team_vs(namespace: str, name: str, host: str, *, export_to: list[str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "hosts": [host],
        "http": [{"name": "main", "timeout": "3s", "retries": {"attempts": 2},
                  "route": [{"destination": {"host": host if "." in host else f"{host}.{namespace}.svc.cluster.local",
                                             "port": {"number": 8080}}}]}],
    }
    if export_to is not None:
        spec["exportTo"] = export_to
    return {"apiVersion": VIRTUAL_SERVICE_API, "kind": "VirtualService",
            "metadata": {"name": name, "namespace": namespace, "labels": {"team": "a"}}, "spec": spec}


async def create(kube: Kube, body: dict[str, Any]) -> dict[str, Any]:
    meta = body["metadata"]
    created: dict[str, Any] = await kube.call(
        "POST", collection_path(VIRTUAL_SERVICE_API, "virtualservices", meta["namespace"]), body=body)
    return created


def names_for(items: list[dict[str, Any]], host: str) -> list[str]:
    return sorted(f"{i['metadata']['namespace']}/{i['metadata']['name']}" for i in items
                  if host in (i.get("spec") or {}).get("hosts", []))


@pytest.mark.parametrize("written", ["fqdn", "short"])
async def test_team_older_in_another_namespace_gets_the_routes(kube: Kube, settings: ClusterSettings,
                                                               team_namespace: str, written: str) -> None:
    """Before: the bot looked only in the routing namespace and created a second VirtualService that Istio
    ignored (the team's is older). Now the routes go into the team's, which keeps its own routes."""
    host, key1, route1 = route_of(settings, 1)
    _, key2, route2 = route_of(settings, 2)
    # `a` in namespace N is a.N.svc.cluster.local for Istio: only a team VS in the service's namespace
    # can name it short, so the short form lives in the routing (= preview) namespace here.
    namespace, name = (team_namespace, "aa-team-a") if written == "fqdn" else (settings.namespace, "aa-team-a")
    created = await create(kube, team_vs(namespace, name, host if written == "fqdn" else "a", export_to=["*"]))

    await kube.check_mesh_hosts([host])
    assert await kube.add_mesh_route(host, route1)
    assert await kube.add_mesh_route(host, route2)

    adopted = await kube.get(vs_path(namespace, name))
    assert adopted is not None
    assert mesh_routes.preview_keys(adopted["spec"]) == [key1, key2]
    assert adopted["spec"]["http"][2:] == created["spec"]["http"], "the team's routes are kept, after the previews"
    assert adopted["spec"]["hosts"] == created["spec"]["hosts"] and adopted["spec"]["exportTo"] == ["*"]
    assert await kube.get(vs_path(settings.routing_namespace, mesh_route_name(host))) is None, \
        "the bot created a second mesh VirtualService for the host"

    assert await kube.remove_routes_of_key(key1) == 1
    assert await kube.remove_mesh_route(host, key2)
    after = await kube.get(vs_path(namespace, name))
    assert after is not None and after["spec"] == created["spec"], "the team's VirtualService is given back unchanged"
    assert after["metadata"]["uid"] == created["metadata"]["uid"]


async def test_team_newer_than_the_bots_takes_the_routes_and_the_bots_goes(kube: Kube, settings: ClusterSettings,
                                                                          team_namespace: str) -> None:
    """Before: the bot kept writing its own (older) VirtualService, so Istio dropped the team's routes. Now a
    deploy, or the reconciler, moves every preview route into the team's and deletes the bot's."""
    host, key1, route1 = route_of(settings, 1)
    _, key2, route2 = route_of(settings, 2)
    _, key3, route3 = route_of(settings, 3)
    own = vs_path(settings.routing_namespace, mesh_route_name(host))
    assert await kube.add_mesh_route(host, route1)
    assert await kube.add_mesh_route(host, route2)
    assert await kube.misplaced_mesh_routes() == []
    # Named to sort after the bot's, so that Istio's order (time, then name) is "team newer" even
    # within the same second.
    team = await create(kube, team_vs(team_namespace, "zz-team-a", host, export_to=["*"]))

    [(misplaced_host, ref, decision)] = await kube.misplaced_mesh_routes()
    assert (misplaced_host, str(ref), str(decision.target)) == (
        host, f"{settings.routing_namespace}/{mesh_route_name(host)}", f"{team_namespace}/zz-team-a")

    await kube.check_mesh_hosts([host])
    assert await kube.add_mesh_route(host, route3)  # PR 3 deploys: everything moves
    moved = await kube.get(vs_path(team_namespace, "zz-team-a"))
    assert moved is not None
    assert mesh_routes.preview_keys(moved["spec"]) == [key1, key2, key3]
    assert moved["spec"]["http"][3:] == team["spec"]["http"]
    assert await kube.get(own) is None, "the bot's VirtualService still competes with the team's"
    assert names_for(await kube.all_virtual_services(), host) == [f"{team_namespace}/zz-team-a"]
    assert await kube.misplaced_mesh_routes() == []


async def test_reconciler_folds_the_bots_routes_into_a_newer_team_virtual_service(
        kube: Kube, settings: ClusterSettings, team_namespace: str) -> None:
    host, key1, route1 = route_of(settings, 1)
    assert await kube.add_mesh_route(host, route1)
    await create(kube, team_vs(team_namespace, "zz-team-a", host, export_to=["*"]))
    assert await kube.fold_mesh_routes(host)
    moved = await kube.get(vs_path(team_namespace, "zz-team-a"))
    assert moved is not None and mesh_routes.preview_keys(moved["spec"]) == [key1]
    assert await kube.get(vs_path(settings.routing_namespace, mesh_route_name(host))) is None
    assert not await kube.fold_mesh_routes(host), "a second pass changes nothing"


@pytest.mark.parametrize(
    ("export_to", "hosts", "reason"),
    [
        (None, "fqdn", "exportTo is unset"),
        (["."], "fqdn", 'exportTo is ["."]'),
        (["*"], "a.NS", "short form"),
        (["*"], "a.NS.svc", "short form"),
        (["*"], "*.NS.svc.cluster.local", "wildcard"),
    ],
)
async def test_refused_naming_the_virtual_service_and_nothing_is_written(
        kube: Kube, settings: ClusterSettings, team_namespace: str, export_to: list[str] | None, hosts: str,
        reason: str) -> None:
    host, _, route1 = route_of(settings, 1)
    written = host if hosts == "fqdn" else hosts.replace("NS", settings.namespace)
    team = await create(kube, team_vs(team_namespace, "team-a", written, export_to=export_to))
    before = await kube.all_virtual_services()

    with pytest.raises(MeshRoutingError) as refused:
        await kube.check_mesh_hosts([host])
    assert f"VirtualService {team_namespace}/team-a" in str(refused.value)
    assert reason in str(refused.value)
    with pytest.raises(MeshRoutingError):
        await kube.add_mesh_route(host, route1)

    after = await kube.get(vs_path(team_namespace, "team-a"))
    assert after is not None and after["metadata"]["resourceVersion"] == team["metadata"]["resourceVersion"]
    assert names_for(await kube.all_virtual_services(), host) == names_for(before, host)
    assert await kube.get(vs_path(settings.routing_namespace, mesh_route_name(host))) is None


async def test_gateway_bound_virtual_service_for_the_host_does_not_compete(
        kube: Kube, settings: ClusterSettings, team_namespace: str) -> None:
    host, key1, route1 = route_of(settings, 1)
    gateway_only = team_vs(team_namespace, "edge", host)
    gateway_only["spec"]["gateways"] = ["istio-system/edge"]
    await create(kube, copy.deepcopy(gateway_only))
    await kube.check_mesh_hosts([host])
    assert await kube.add_mesh_route(host, route1)
    own = await kube.get(vs_path(settings.routing_namespace, mesh_route_name(host)))
    assert own is not None and mesh_routes.preview_keys(own["spec"]) == [key1]
    assert own["spec"]["exportTo"] == ["*"]


async def test_the_bots_existing_virtual_service_gets_export_to(kube: Kube, settings: ClusterSettings) -> None:
    """VirtualServices written before exportTo was set get it at their next update."""
    host, key1, route1 = route_of(settings, 1)
    _, key2, route2 = route_of(settings, 2)
    assert await kube.add_mesh_route(host, route1)
    path = vs_path(settings.routing_namespace, mesh_route_name(host))
    old = await kube.get(path)
    assert old is not None
    del old["spec"]["exportTo"]
    await kube.call("PUT", path, body=old)
    assert await kube.add_mesh_route(host, route2)
    now = await kube.get(path)
    assert now is not None and now["spec"]["exportTo"] == ["*"]
    assert mesh_routes.preview_keys(now["spec"]) == [key1, key2]


async def test_removing_routes_by_key_leaves_gateway_virtual_services_alone(kube: Kube,
                                                                           settings: ClusterSettings) -> None:
    """Gateway routes are named by the key too, but they are not mesh routes: teardown deletes them whole."""
    plan = plan_preview(settings, CONFIG, key_of(settings, 1), SHA)
    service = plan.services[0]
    await kube.apply_preview(plan)
    assert await kube.add_mesh_route(service.mesh_host, service.mesh_route)
    gateway_path = vs_path(settings.routing_namespace, service.gateway_route["metadata"]["name"])
    before = await kube.get(gateway_path)
    assert before is not None
    # (Cluster-wide: other tests' namespaces may still hold theirs.)
    mine = [i["metadata"]["name"] for i in await kube.mesh_services()
            if i["metadata"]["namespace"] == settings.routing_namespace]
    assert mine == [mesh_route_name(service.mesh_host)]
    assert await kube.remove_routes_of_key(service.mesh_route["name"]) == 1
    after = await kube.get(gateway_path)
    assert after is not None and after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
