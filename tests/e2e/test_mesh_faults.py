"""The routing faults a real Istio data plane showed (issue 8, item 4), proven fixed with real requests.

Each test failed before its fix, on istiod + Envoy (tests/plugins/mesh.py), with the whole bot writing
its objects:
- multi-port: a request with the key to the real service's other port reached the preview's one port;
- exportTo: under `defaultVirtualServiceExportTo: ["."]` sidecars (and the gateway) in other
  namespaces ignored the bot's VirtualServices, so every key reached the real service;
- a team's own mesh VirtualService for the host in another namespace: Istio uses the oldest, so either
  the preview routes (team's older) or the team's routes (team's newer) were ignored while the bot
  reported "ready".
istiod's `pilot_vservice_dup_domain` shows that no two mesh VirtualServices claim the host afterwards.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from bot import comment
from bot.naming import mesh_route_name
from tests.e2e.harness import REPO, ClusterView, RunningBot, running_bot
from tests.e2e.harness import key_of as harness_key
from tests.fakegithub import FakeGitHub, pull_request_event
from tests.plugins.cluster import Cluster
from tests.plugins.mesh import Answer, Mesh

pytestmark = [pytest.mark.cluster, pytest.mark.mesh]

TEAM_HEADER = "x-team-route"  # set by the team's own route: proves the team's routes are in use


def fqdn(name: str, namespace: str) -> str:
    return f"{name}.{namespace}.svc.cluster.local"


def preview_of(fake: FakeGitHub, number: int, namespace: str, service: str = "a") -> str:
    return fqdn(harness_key(fake, REPO, number).object_name(service), namespace)


def key_of(fake: FakeGitHub, number: int) -> dict[str, str]:
    return {"x-preview": harness_key(fake, REPO, number).value}


async def open_pr(bot: RunningBot, number: int) -> None:
    bot.fake.add_pull(REPO, number, head_sha=f"{number:x}".rjust(40, "b"))
    assert await bot.send("pull_request", pull_request_event(bot.fake, REPO, number, "opened")) == 202
    await bot.settle()


def sticky_title(fake: FakeGitHub, number: int) -> str:
    [body] = [str(c["body"]) for c in fake.comments(REPO, number) if comment.MARKER in str(c["body"])]
    return body.split("\n")[1] + "\n" + body


def team_virtual_service(namespace: str, name: str, host: str, *, export_to: list[str] | None) -> dict[str, Any]:
    spec: dict[str, Any] = {"hosts": [host], "http": [{
        "name": "team-main",
        "headers": {"request": {"set": {TEAM_HEADER: "yes"}}},
        "route": [{"destination": {"host": host}}]}]}
    if export_to is not None:
        spec["exportTo"] = export_to
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


@pytest.fixture
async def bot(shop: FakeGitHub, cluster: Cluster, namespace: str, mesh: Mesh) -> AsyncIterator[RunningBot]:
    async with running_bot(shop, cluster, namespace, **mesh.bot_env) as running:
        yield running


@pytest.fixture
def team_namespace(mesh: Mesh) -> str:
    """A namespace of its own for the team's VirtualService (neither the bot's nor the client's)."""
    return mesh.namespace("team")


async def test_the_key_to_another_port_stays_on_the_real_service(bot: RunningBot, mesh: Mesh,
                                                                namespace: str) -> None:
    """Real service `a` on 8080 and 9090; the preview serves 8080 (the config's port)."""
    real = mesh.real_service(namespace, "a", ports=(8080, 9090)).host
    await open_pr(bot, 31)
    preview = preview_of(bot.fake, 31, namespace)

    answer = await mesh.wait_for(mesh.client, real, preview, key_of(bot.fake, 31), port=8080)
    assert answer.port == 8080
    # Fault: the preview route had no match.port, so this went to the preview's 8080.
    other = await mesh.request(mesh.client, real, key_of(bot.fake, 31), port=9090)
    assert (other.workload, other.port) == (real, 9090), mesh.explain(mesh.client, f"{real}:9090", other)
    plain = await mesh.request(mesh.client, real, port=9090)
    assert (plain.workload, plain.port) == (real, 9090)


async def test_routes_work_from_other_namespaces_under_a_private_export_default(
        bot: RunningBot, mesh: Mesh, namespace: str) -> None:
    """The client sidecar (namespace mesh-client) and the gateway (istio-system) are not in the routing
    namespace: with exportTo unset they saw none of the bot's VirtualServices."""
    mesh.set_mesh_config(defaultVirtualServiceExportTo=["."])
    real = mesh.real_service(namespace, "a").host
    await open_pr(bot, 32)
    preview = preview_of(bot.fake, 32, namespace)

    _, seen = await mesh.wait_for(mesh.client, real, preview, key_of(bot.fake, 32))
    assert seen["x-preview"] == key_of(bot.fake, 32)["x-preview"]
    assert (await mesh.request(mesh.client, real)).workload == real
    _, seen = await mesh.wait_for(mesh.gateway, "preview-32-api-a.example.com", preview)
    assert seen["x-preview"] == key_of(bot.fake, 32)["x-preview"]


@pytest.mark.parametrize("form", ["fqdn", "short"])
async def test_team_virtual_service_older_in_another_namespace_carries_the_preview_routes(
        bot: RunningBot, mesh: Mesh, namespace: str, team_namespace: str, view: ClusterView, form: str) -> None:
    """Fault: the bot made a second VirtualService in its routing namespace; Istio kept the team's (older)
    and the key reached the real service while the PR comment said "ready". `short`: the team names the
    host `a` in the Service's own namespace, which Istio expands to the FQDN (the bot compared strings)."""
    real = mesh.real_service(namespace, "a").host
    if form == "fqdn":
        mesh.apply(team_virtual_service(team_namespace, "aa-team-a", real, export_to=["*"]))
    else:
        team = team_virtual_service(namespace, "aa-team-a", real, export_to=["*"])
        team["spec"]["hosts"] = ["a"]
        mesh.apply(team)
    await mesh.wait_until(mesh.client, real, lambda a: a.headers.get(TEAM_HEADER) == "yes")

    await open_pr(bot, 33)
    assert "ready" in sticky_title(bot.fake, 33).split("\n")[0]
    answer = await mesh.wait_for(mesh.client, real, preview_of(bot.fake, 33, namespace), key_of(bot.fake, 33))
    assert TEAM_HEADER not in answer.headers
    plain = await mesh.request(mesh.client, real)
    assert plain.workload == real and plain.headers.get(TEAM_HEADER) == "yes", "the team's route is kept"
    assert mesh_route_name(real) not in view.virtual_services()
    await mesh.assert_no_conflicts(real)  # istiod's pilot_vservice_dup_domain: one VirtualService for the host


@pytest.mark.parametrize("moved_by", ["deploy", "reconciler"])
async def test_team_virtual_service_newer_than_the_bots_takes_over_both_route_sets(
        bot: RunningBot, mesh: Mesh, namespace: str, team_namespace: str, view: ClusterView, moved_by: str) -> None:
    """Fault: the bot kept writing its own, older VirtualService, which Istio used: the team's routes
    (here, a header it sets) were silently dropped. Now the next deploy for the host, or the reconciler,
    moves every preview route into the team's VirtualService and deletes the bot's."""
    first, second = (34, 35) if moved_by == "deploy" else (44, 45)
    real = mesh.real_service(namespace, "a").host
    await open_pr(bot, first)
    await mesh.wait_for(mesh.client, real, preview_of(bot.fake, first, namespace), key_of(bot.fake, first))
    assert mesh_route_name(real) in view.virtual_services()
    # Sorts after the bot's VirtualService by name too, so it is the newer one even within one second.
    mesh.apply(team_virtual_service(team_namespace, "zz-team-a", real, export_to=["*"]))
    # The fault, as istiod sees it: two mesh VirtualServices claim the host, the bot's (older) wins.
    await mesh.wait_dup_domains(real, expect=True)
    assert TEAM_HEADER not in (await mesh.request(mesh.client, real)).headers

    if moved_by == "deploy":
        await open_pr(bot, second)
        assert "ready" in sticky_title(bot.fake, second).split("\n")[0]
    else:
        report = await bot.bot.reconcile_once()
        assert [(a.kind, a.target) for a in report.actions] == [("fold-routes", real)], report.lines()

    def team_routes_used(answer: Answer) -> bool:
        return answer.workload == real and answer.headers.get(TEAM_HEADER) == "yes"
    await mesh.wait_until(mesh.client, real, team_routes_used)
    for number in (first, second) if moved_by == "deploy" else (first,):
        # The second preview's Service is new: its endpoints reach the client's Envoy a moment after the
        # routes may (503 meanwhile), so wait for it as for any new route.
        await mesh.wait_for(mesh.client, real, preview_of(bot.fake, number, namespace), key_of(bot.fake, number))
    assert mesh_route_name(real) not in view.virtual_services()
    await mesh.assert_no_conflicts(real)  # istiod's pilot_vservice_dup_domain: one VirtualService for the host


async def test_team_virtual_service_relying_on_the_mesh_default_is_refused_not_ready(
        bot: RunningBot, mesh: Mesh, namespace: str, team_namespace: str, view: ClusterView) -> None:
    """Fault: "ready" while Istio used the team's VirtualService and ignored the preview routes. Its
    visibility depends on a mesh setting the bot cannot see, so the bot refuses and names it."""
    real = mesh.real_service(namespace, "a").host
    mesh.apply(team_virtual_service(team_namespace, "team-a", real, export_to=None))
    await mesh.wait_until(mesh.client, real, lambda a: a.headers.get(TEAM_HEADER) == "yes")

    await open_pr(bot, 36)
    title = sticky_title(bot.fake, 36)
    assert "ready" not in title.split("\n")[0] and f"VirtualService {team_namespace}/team-a" in title, title
    assert view.deployments() == {}
    answer = await mesh.request(mesh.client, real, key_of(bot.fake, 36))
    assert answer.workload == real and answer.headers.get(TEAM_HEADER) == "yes"
    await mesh.assert_no_conflicts(real)  # istiod's pilot_vservice_dup_domain: one VirtualService for the host


async def test_team_virtual_service_of_two_hosts_is_refused_and_the_other_host_keeps_its_requests(
        bot: RunningBot, mesh: Mesh, namespace: str, team_namespace: str, view: ClusterView) -> None:
    """Fault: the bot adopted a team VirtualService listing hosts a and b for a's preview routes; Istio
    applies its routes to both hosts, so b's requests carrying the preview's key went to a's preview."""
    real_a = mesh.real_service(namespace, "a").host
    real_b = mesh.real_service(namespace, "b").host
    team = team_virtual_service(team_namespace, "team-ab", real_a, export_to=["*"])
    team["spec"]["hosts"] = [real_a, real_b]
    team["spec"]["http"] = [
        {"name": "team-b", "match": [{"authority": {"prefix": real_b}}],
         "headers": {"request": {"set": {TEAM_HEADER: "yes"}}}, "route": [{"destination": {"host": real_b}}]},
        *team["spec"]["http"],
    ]
    mesh.apply(team)
    await mesh.wait_until(mesh.client, real_b, lambda a: a.workload == real_b and a.headers.get(TEAM_HEADER) == "yes")

    await open_pr(bot, 37)
    title = sticky_title(bot.fake, 37)
    assert "ready" not in title.split("\n")[0], title
    assert f"VirtualService {team_namespace}/team-ab routes {real_a} together with {real_b}" in title, title
    assert view.deployments() == {}
    answer = await mesh.request(mesh.client, real_b, key_of(bot.fake, 37))
    assert answer.workload == real_b and answer.headers.get(TEAM_HEADER) == "yes", mesh.explain(
        mesh.client, real_b, answer)
    assert (await mesh.request(mesh.client, real_a, key_of(bot.fake, 37))).workload == real_a
    await mesh.assert_no_conflicts(real_a)


async def test_preview_routes_lost_when_the_team_reapplies_its_virtual_service_come_back_with_the_reconciler(
        bot: RunningBot, mesh: Mesh, namespace: str, team_namespace: str, view: ClusterView) -> None:
    """Fault: the team (or its GitOps tool) re-applied its VirtualService as it keeps it, without the preview
    routes the bot had added: requests with the key went to the real service while the PR said "ready"."""
    real = mesh.real_service(namespace, "a").host
    team = team_virtual_service(team_namespace, "aa-team-a", real, export_to=["*"])
    mesh.apply(team)
    await mesh.wait_until(mesh.client, real, lambda a: a.headers.get(TEAM_HEADER) == "yes")
    await open_pr(bot, 38)
    preview = preview_of(bot.fake, 38, namespace)
    await mesh.wait_for(mesh.client, real, preview, key_of(bot.fake, 38))

    mesh.apply(team)  # replaced as the team keeps it: no preview routes
    await mesh.wait_until(mesh.client, real, lambda a: a.workload == real, key_of(bot.fake, 38))
    report = await bot.bot.reconcile_once()
    assert [(a.kind, a.target) for a in report.actions] == [("restore-route", f"{REPO}#38")], report.lines()
    answer = await mesh.wait_for(mesh.client, real, preview, key_of(bot.fake, 38))
    assert TEAM_HEADER not in answer.headers
    plain = await mesh.request(mesh.client, real)
    assert plain.workload == real and plain.headers.get(TEAM_HEADER) == "yes", "the team's route is kept"
    assert (await bot.bot.reconcile_once()).actions == []
    await mesh.assert_no_conflicts(real)
