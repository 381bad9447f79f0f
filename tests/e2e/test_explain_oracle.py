"""The oracle for `explain`: on the real data plane (istiod + Envoy), for a table of requests, the workload
explain says a request reaches is the workload Envoy actually reached (None: Envoy answered itself, 404).

The objects are the bot's own (two PRs' previews) plus a team's VirtualServices that exercise Istio's
rules: a `uri` prefix and a catch-all before a header route, `exportTo: ["."]`, a second mesh
VirtualService for one host, the mesh's `defaultVirtualServiceExportTo`, and a call the reached workload
makes next (`then`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from bot import explain
from bot.explaining import read_routing
from tests.e2e.harness import REPO, RunningBot, key_of, running_bot
from tests.fakegithub import FakeGitHub, pull_request_event
from tests.plugins.mesh import Call, Mesh, Proxy

pytestmark = [pytest.mark.cluster, pytest.mark.mesh]

CONFIG = """\
services:
  - name: a
    image: registry.example.com/acme/a:{sha}
    port: 8080
"""
PORT = 8080


@dataclass
class Case:
    via: str  # "gateway", "client" (namespace mesh-client) or "caller" (the test's namespace)
    host: str
    headers: dict[str, str] = field(default_factory=dict)
    path: str = "/"
    then: str | None = None  # the reached workload calls this host next (its answer's `downstream`)


def vs(name: str, namespace: str, host: str, http: list[dict[str, object]], **spec: object) -> dict[str, object]:
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": name, "namespace": namespace}, "spec": {"hosts": [host], "http": http, **spec}}


def to(host: str) -> list[dict[str, object]]:
    return [{"destination": {"host": host, "port": {"number": PORT}}}]


async def check(mesh: Mesh, bot: RunningBot, proxies: dict[str, Proxy], cases: list[Case], namespace: str,
                default_export_to: tuple[str, ...] = ("*",)) -> list[tuple[str, str | None]]:
    """Explain each case from the live objects, send it through Envoy, compare. Returns (case, reached)."""
    routing, _ = await read_routing(bot.bot.kube, default_export_to)
    results = []
    for case in cases:
        source = {"gateway": None, "client": "mesh-client", "caller": namespace}[case.via]
        request = explain.Request(host=case.host, headers=case.headers, path=case.path, port=PORT,
                                  source_namespace=source)
        result = explain.explain(routing, request, then=[case.then] if case.then else [])
        answer = await mesh.request(proxies[case.via], case.host, case.headers, path=case.path)
        observed = answer.workload
        if case.then:
            assert answer.downstream is not None, (case, answer)
            observed = answer.downstream.workload
            first = result.hops[0]
            assert answer.workload == (first.destinations[0].host if first.destinations else first.host), case
        assert result.reached() == observed, (case, explain.render(result), answer, mesh.explain(
            proxies[case.via], case.host, answer))
        results.append((f"{case.via} {case.host} {case.headers} {case.path}", observed))
    return results


async def test_explain_agrees_with_envoy(fake_github: FakeGitHub, cluster: object, namespace: str,
                                         mesh: Mesh) -> None:
    fake_github.add_repo(REPO, files={".github/preview.yml": CONFIG}, collaborators={"alice": "write"})
    caller = mesh.sidecar("caller", namespace)
    real_a = mesh.real_service(namespace, "a").host
    real_b = mesh.real_service(namespace, "b").host
    real_c = mesh.real_service(namespace, "c").host
    # PR builds of `a` call b through their own sidecar, forwarding the preview header.
    sidecar_a = mesh.sidecar("a", namespace)
    mesh.on_preview(namespace, "a", Call(via=sidecar_a, host=real_b))
    k12, k123 = key_of(fake_github, REPO, 12).value, key_of(fake_github, REPO, 123).value
    p12, p123 = f"{k12}-a.{namespace}.svc.cluster.local", f"{k123}-a.{namespace}.svc.cluster.local"
    proxies = {"gateway": mesh.gateway, "client": mesh.client, "caller": caller}

    async with running_bot(fake_github, cluster, namespace, **mesh.bot_env) as bot:  # type: ignore[arg-type]
        for number in (12, 123):
            fake_github.add_pull(REPO, number)
            await bot.send("pull_request", pull_request_event(fake_github, REPO, number, "opened"))
        await bot.settle()
        # The team's routes for b: a uri prefix, a header route, a catch-all, and a header route it hides
        # (none leads back to a preview of a, which calls b).
        mesh.apply(vs("team-b", namespace, real_b, [
            {"name": "v2", "match": [{"uri": {"prefix": "/v2"}}], "route": to(real_a)},
            {"name": "pr12", "match": [{"headers": {"x-preview": {"exact": k12}}}], "route": to(real_c)},
            {"name": "all", "route": to(real_b)},
            {"name": "hidden", "match": [{"headers": {"x-preview": {"exact": k123}}}], "route": to(real_a)},
        ]))
        # c's routes are private to the test's namespace.
        mesh.apply(vs("team-c", namespace, real_c, [
            {"name": "team", "match": [{"headers": {"x-team": {"exact": "1"}}}], "route": to(real_a)},
            {"name": "all", "route": to(real_c)}], exportTo=["."]))
        # Converged when the last objects are live in every proxy used.
        await mesh.wait_for(mesh.client, real_b, real_a, path="/v2/x")
        await mesh.wait_for(caller, real_c, real_a, {"x-team": "1"})
        await mesh.wait_for(mesh.client, real_a, p123, {"x-preview": k123})
        await mesh.wait_for(mesh.gateway, "preview-123-api-a.example.com", p123)

        cases = [
            Case("gateway", "preview-12-api-a.example.com"),
            Case("gateway", "preview-123-api-a.example.com", {"x-preview": k12}),
            Case("gateway", "preview-999-api-a.example.com"),
            Case("gateway", "preview-12-api-a.example.com", then=real_b),
            Case("gateway", "preview-123-api-a.example.com", then=real_b),
            Case("client", real_a),
            Case("client", real_a, {"x-preview": k12}),
            Case("client", real_a, {"X-Preview": k123}),
            Case("client", real_a, {"x-preview": "preview-12"}),
            Case("client", real_a, {"x-preview": k123 + "0"}),
            Case("client", f"a.{namespace}", {"x-preview": k12}),
            Case("client", f"{real_a}:{PORT}", {"x-preview": k12}),
            Case("caller", "a", {"x-preview": k123}),
            Case("client", real_b),
            Case("client", real_b, path="/v2/orders"),
            Case("client", real_b, {"x-preview": k12}, path="/v1"),
            Case("client", real_b, {"x-preview": k123}),  # the catch-all hides its route
            Case("client", real_c, {"x-team": "1"}),  # team-c is not exported to mesh-client
            Case("caller", real_c, {"x-team": "1"}),
            Case("caller", real_c),
        ]
        results = await check(mesh, bot, proxies, cases, namespace)
        # The table covers every kind of answer.
        reached = {r for _, r in results}
        assert {None, real_a, real_b, real_c, p12, p123} <= reached, results

        # A second mesh VirtualService for a, private to mesh-client: listed first there, so it wins and the
        # bot's routes are ignored for that caller only.
        mesh.apply(vs("team-a", "mesh-client", real_a, [{"name": "all", "route": to(real_c)}], exportTo=["."]))
        await mesh.wait_for(mesh.client, real_a, real_c, {"x-preview": k12})
        routing, _ = await read_routing(bot.bot.kube)
        shadowed = explain.explain(routing, explain.Request(host=real_a, headers={"x-preview": k12}, port=PORT,
                                                            source_namespace="mesh-client"))
        assert [f.kind for f in shadowed.findings] == ["duplicate-host"]
        await check(mesh, bot, proxies, [Case("client", real_a, {"x-preview": k12}),
                                         Case("caller", real_a, {"x-preview": k12})], namespace)

        # Under defaultVirtualServiceExportTo ["."], VirtualServices without exportTo (team-b) are private to
        # their namespace; the bot's say exportTo ["*"] and keep working everywhere. istiod applies a changed
        # default to VirtualServices written after the change (its merged view compares the objects, not their
        # computed exportTo), so team-b is rewritten and PR 7 deployed.
        mesh.delete(vs("team-a", "mesh-client", real_a, []))
        mesh.set_mesh_config(defaultVirtualServiceExportTo=["."])
        rewritten = vs("team-b", namespace, real_b, [
            {"name": "v2", "match": [{"uri": {"prefix": "/v2"}}], "route": to(real_a)},
            {"name": "all", "route": to(real_b)}])
        mesh.apply(rewritten)
        fake_github.add_pull(REPO, 7)
        await bot.send("pull_request", pull_request_event(fake_github, REPO, 7, "opened"))
        await bot.settle()
        k7 = key_of(fake_github, REPO, 7).value
        p7 = f"{k7}-a.{namespace}.svc.cluster.local"
        await mesh.wait_for(caller, real_a, p7, {"x-preview": k7})
        await mesh.wait_for(mesh.client, real_b, real_b, path="/v2/x")
        await mesh.wait_for(mesh.client, real_a, p7, {"x-preview": k7})
        await mesh.wait_for(mesh.gateway, "preview-7-api-a.example.com", p7)
        await check(mesh, bot, proxies, [
            Case("client", real_b, path="/v2/x"),
            Case("caller", real_b, path="/v2/x"),
            Case("client", real_a, {"x-preview": k7}),
            Case("caller", real_a, {"x-preview": k7}),
            Case("gateway", "preview-7-api-a.example.com"),
        ], namespace, default_export_to=(".",))


TWO = CONFIG + """\
  - name: b
    image: registry.example.com/acme/b:{sha}
    port: 8080
"""


async def test_explain_agrees_with_envoy_on_baggage(fake_github: FakeGitHub, cluster: object, namespace: str,
                                                    mesh: Mesh) -> None:
    """PREVIEW_MATCH=baggage: the gateway's two routes (the client's baggage kept through `%REQ(baggage)%`, or
    the member alone) and the mesh's regex, as explain models them and as Envoy routes."""
    fake_github.add_repo(REPO, files={".github/preview.yml": TWO}, collaborators={"alice": "write"})
    real_b = mesh.real_service(namespace, "b").host
    sidecar_a = mesh.sidecar("a", namespace)
    mesh.on_preview(namespace, "a", Call(via=sidecar_a, host=real_b, mode="baggage"))
    k12, k123 = key_of(fake_github, REPO, 12).value, key_of(fake_github, REPO, 123).value
    b12, b123 = (f"{k}-b.{namespace}.svc.cluster.local" for k in (k12, k123))
    proxies = {"gateway": mesh.gateway, "client": mesh.client}
    env = {**mesh.bot_env, "PREVIEW_MATCH": "baggage"}
    async with running_bot(fake_github, cluster, namespace, **env) as bot:  # type: ignore[arg-type]
        for number in (12, 123):
            fake_github.add_pull(REPO, number)
            await bot.send("pull_request", pull_request_event(fake_github, REPO, number, "opened"))
        await bot.settle()
        await mesh.wait_for(mesh.client, real_b, b123, {"baggage": f"preview={k123}"})
        await mesh.wait_for(mesh.gateway, "preview-12-api-a.example.com", f"{k12}-a.{namespace}.svc.cluster.local")
        cases = [
            Case("gateway", "preview-12-api-a.example.com", then=real_b),
            Case("gateway", "preview-12-api-a.example.com", {"baggage": f"tenant=x,preview={k123}"}, then=real_b),
            Case("gateway", "preview-123-api-a.example.com", {"baggage": "tenant=x"}, then=real_b),
            Case("client", real_b, {"baggage": f"preview={k12},preview={k123}"}),
            Case("client", real_b, {"baggage": f"preview = {k12.replace('-', '%2D')};p=1, x=1"}),
            Case("client", real_b, {"baggage": f"preview={k12},preview=No_Key"}),
        ]
        results = await check(mesh, bot, proxies, cases, namespace)
        assert [r for _, r in results] == [b12, b12, b123, b123, b12, real_b]
