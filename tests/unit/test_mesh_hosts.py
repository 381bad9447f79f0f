"""bot.mesh_hosts: which mesh VirtualService Istio uses for a host, and where the bot's routes must go."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot import mesh_hosts
from bot.mesh_hosts import Claim, Ref, Visibility, choose, claimants, fqdn, kubernetes_aliases

HOST = "a.shop.svc.cluster.local"
OWN = Ref("istio-system", "preview-mesh-a-shop")
MANAGED = ("app.kubernetes.io/managed-by", "preview-bot")
ROLE = ("preview-bot.dev/role", "mesh-routes")


def vs(namespace: str, name: str, hosts: list[str], *, created: str = "2026-01-01T00:00:00Z",
       export_to: list[str] | None = None, gateways: list[str] | None = None, ours: bool = False) -> dict[str, Any]:
    spec: dict[str, Any] = {"hosts": hosts, "http": [{"route": [{"destination": {"host": HOST}}]}]}
    if export_to is not None:
        spec["exportTo"] = export_to
    if gateways is not None:
        spec["gateways"] = gateways
    labels = {MANAGED[0]: MANAGED[1], ROLE[0]: ROLE[1]} if ours else {"team": "a"}
    return {"metadata": {"namespace": namespace, "name": name, "creationTimestamp": created, "labels": labels},
            "spec": spec}


def own(created: str = "2026-01-01T00:00:00Z", export_to: list[str] | None = None) -> dict[str, Any]:
    return vs(OWN.namespace, OWN.name, [HOST], created=created, export_to=export_to or ["*"], ours=True)


def decide(*items: dict[str, Any]) -> mesh_hosts.Decision:
    return choose(claimants(items, HOST, managed_by=MANAGED, role=ROLE, own_namespace=OWN.namespace), HOST, OWN)


@pytest.mark.parametrize(
    ("host", "namespace", "expected"),
    [
        ("a", "shop", "a.shop.svc.cluster.local"),              # Istio expands names without a dot only
        ("A", "shop", "a.shop.svc.cluster.local"),
        ("a", "istio-system", "a.istio-system.svc.cluster.local"),  # relative to the VS's namespace
        ("a.shop", "web", "a.shop"),
        ("a.shop.svc", "web", "a.shop.svc"),
        ("a.shop.svc.cluster.local", "web", "a.shop.svc.cluster.local"),
        ("*", "web", "*"),
        ("*.shop.svc.cluster.local", "web", "*.shop.svc.cluster.local"),
        ("10.0.0.1", "web", "10.0.0.1"),
        ("::1", "web", "::1"),
    ],
)
def test_fqdn_follows_istio(host: str, namespace: str, expected: str) -> None:
    assert fqdn(host, namespace) == expected


def test_kubernetes_aliases() -> None:
    assert kubernetes_aliases(HOST) == {"a.shop", "a.shop.svc"}
    assert kubernetes_aliases("api.example.com") == frozenset()
    assert kubernetes_aliases("a.b.shop.svc.cluster.local") == frozenset()


@pytest.mark.parametrize(
    ("export_to", "expected"),
    [(None, Visibility.MESH_DEFAULT), ([], Visibility.MESH_DEFAULT), (["*"], Visibility.EVERYWHERE),
     ([".", "*"], Visibility.EVERYWHERE), (["."], Visibility.RESTRICTED), (["web", "shop"], Visibility.RESTRICTED),
     (["~"], Visibility.NOWHERE), (["~", "*"], Visibility.EVERYWHERE)],
)
def test_visibility(export_to: list[str] | None, expected: Visibility) -> None:
    spec = {} if export_to is None else {"exportTo": export_to}
    assert mesh_hosts.visibility(spec) is expected


def test_nothing_but_the_bot_creates_its_own() -> None:
    assert decide() == mesh_hosts.Decision(target=OWN, create=True)
    assert decide(own()) == mesh_hosts.Decision(target=OWN)
    # Unrelated VirtualServices, gateway-only ones and invisible ones never count.
    unrelated = [vs("shop", "b", ["b"]), vs("web", "a", ["a"]),                    # a.web, not a.shop
                 vs("shop", "gw", [HOST], gateways=["istio-system/preview-gateway"]),
                 vs("shop", "hidden", [HOST], export_to=["~"])]
    assert decide(*unrelated) == mesh_hosts.Decision(target=OWN, create=True)


@pytest.mark.parametrize("written", [HOST, "a"])
@pytest.mark.parametrize("team_older", [True, False])
def test_team_virtual_service_exported_everywhere_takes_the_routes_in_both_orders(written: str,
                                                                                   team_older: bool) -> None:
    """Older: Istio uses the team's, so the bot's routes go there. Newer: Istio uses the bot's and drops the
    team's routes, so the bot's routes move to the team's too and the bot's VirtualService goes."""
    team_time, own_time = ("2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z") if team_older else \
        ("2026-02-01T00:00:00Z", "2026-01-01T00:00:00Z")
    team = vs("shop", "team-a", [written], created=team_time, export_to=["*"])
    assert decide(team, own(own_time)) == mesh_hosts.Decision(target=Ref("shop", "team-a"), fold=(OWN,))
    assert decide(team) == mesh_hosts.Decision(target=Ref("shop", "team-a"))


def test_the_oldest_team_virtual_service_is_the_one_istio_uses() -> None:
    older = vs("web", "z-older", [HOST], created="2026-01-01T00:00:00Z", export_to=["*"])
    newer = vs("shop", "a-newer", [HOST], created="2026-03-01T00:00:00Z", export_to=["*"])
    decision = decide(newer, older)
    assert decision.target == Ref("web", "z-older") and decision.shadowed == (Ref("shop", "a-newer"),)
    # Same second: name, then namespace (configCompareByCreationTime).
    same = [vs("web", "b", [HOST], export_to=["*"]), vs("shop", "b", [HOST], export_to=["*"]),
            vs("zz", "a", [HOST], export_to=["*"])]
    assert decide(*same).target == Ref("zz", "a")
    assert decide(*same[:2]).target == Ref("shop", "b")


@pytest.mark.parametrize(("export_to", "shown"), [(None, "unset"), (["."], '["."]'), (["web"], '["web"]')])
def test_team_virtual_service_not_exported_everywhere_is_refused_by_name(export_to: list[str] | None,
                                                                        shown: str) -> None:
    decision = decide(vs("shop", "team-a", ["a"], export_to=export_to), own())
    assert decision.target is None and decision.refusal is not None
    assert "VirtualService shop/team-a" in decision.refusal
    assert f"exportTo is {shown}" in decision.refusal
    assert 'exportTo: ["*"]' in decision.refusal


@pytest.mark.parametrize("written", ["a.shop", "a.shop.svc", "A.Shop"])
def test_dotted_short_forms_are_refused_by_name(written: str) -> None:
    decision = decide(vs("web", "team-a", [written], export_to=["*"]))
    assert decision.refusal is not None and "VirtualService web/team-a" in decision.refusal
    assert f"`{written}`" in decision.refusal and f"`{HOST}`" in decision.refusal


def test_wildcard_is_refused_unless_an_exact_team_virtual_service_shadows_it() -> None:
    wildcard = vs("shop", "all", ["*.shop.svc.cluster.local"], export_to=["*"])
    decision = decide(wildcard, own())
    assert decision.refusal is not None and "VirtualService shop/all" in decision.refusal
    exact = vs("shop", "team-a", [HOST], export_to=["*"], created="2027-01-01T00:00:00Z")
    assert decide(wildcard, exact, own()).target == Ref("shop", "team-a")


def test_only_the_strongest_host_entry_counts() -> None:
    both = vs("shop", "team-a", ["a.shop", "a"], export_to=["*"])
    assert decide(both).target == Ref("shop", "team-a")
    found = claimants([both], HOST, managed_by=MANAGED, role=ROLE, own_namespace=OWN.namespace)
    assert [(c.claim, c.written) for c in found] == [(Claim.EXACT, "a")]


def test_mesh_among_gateways_counts() -> None:
    team = vs("shop", "team-a", [HOST], export_to=["*"], gateways=["istio-system/gw", "mesh"])
    assert decide(team).target == Ref("shop", "team-a")


def test_the_bots_other_virtual_services_fold_into_its_own() -> None:
    stray = vs(OWN.namespace, "preview-mesh-a-shop-old", [HOST], created="2025-01-01T00:00:00Z", ours=True)
    expected = mesh_hosts.Decision(target=OWN, create=True, fold=(Ref(OWN.namespace, "preview-mesh-a-shop-old"),))
    assert decide(stray) == expected
    assert decide(stray, own()) == mesh_hosts.Decision(target=OWN, fold=expected.fold)


def test_another_installations_virtual_service_is_not_taken_over() -> None:
    """The bot's labels outside its routing namespace: another installation's, treated like a team's."""
    other = vs("other-routing", "preview-mesh-a-shop", [HOST], ours=True, export_to=["*"])
    assert decide(other) == mesh_hosts.Decision(target=Ref("other-routing", "preview-mesh-a-shop"))
    assert decide(vs("other-routing", "preview-mesh-a-shop", [HOST], ours=True)).refusal is not None


# -- properties ---------------------------------------------------------------------------------------------

namespaces = st.sampled_from(["shop", "web", "istio-system"])
written_hosts = st.sampled_from([HOST, "a", "a.shop", "a.shop.svc", "*.shop.svc.cluster.local", "b", "x.example.com"])
exports = st.sampled_from([None, ["*"], ["."], ["~"], ["web"]])
times = st.sampled_from(["2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z", "2026-01-03T00:00:00Z"])


@st.composite
def meshes(draw: st.DrawFn) -> list[dict[str, Any]]:
    items = []
    for i in range(draw(st.integers(min_value=0, max_value=5))):
        items.append(vs(draw(namespaces), f"team-{i}", draw(st.lists(written_hosts, min_size=1, max_size=2)),
                        created=draw(times), export_to=draw(exports),
                        gateways=draw(st.sampled_from([None, ["mesh"], ["istio-system/gw"]]))))
    if draw(st.booleans()):
        items.append(own(draw(times)))
    return items


def istio_winner(items: list[dict[str, Any]]) -> Ref | None:
    """Independent model: among the mesh VirtualServices exported everywhere that name the host exactly
    (after Istio's short-name expansion), the oldest (time, name, namespace)."""
    best = None
    for item in items:
        spec, meta = item["spec"], item["metadata"]
        if spec.get("gateways") and "mesh" not in spec["gateways"]:
            continue
        if "*" not in (spec.get("exportTo") or []):
            continue
        names = {h if "." in h else f"{h}.{meta['namespace']}.svc.cluster.local" for h in spec["hosts"]}
        if HOST not in names:
            continue
        key = (meta["creationTimestamp"], meta["name"], meta["namespace"])
        if best is None or key < best[0]:
            best = (key, Ref(meta["namespace"], meta["name"]))
    return None if best is None else best[1]


@settings(max_examples=300, deadline=None)
@given(meshes())
def test_decision_agrees_with_istio_and_never_leaves_routes_ignored(items: list[dict[str, Any]]) -> None:
    decision = decide(*items)
    if decision.refusal is not None:
        assert decision.target is None and not decision.fold
        assert any(f"VirtualService {i['metadata']['namespace']}/{i['metadata']['name']}" in decision.refusal
                   for i in items), "a refusal names the VirtualService in the way"
        return
    assert decision.target is not None
    team = [i for i in items if i["metadata"]["labels"].get("team")]
    # After the bot's write (fold: its other VirtualServices deleted; create: its own added), the
    # VirtualService Istio uses for every sidecar is the target.
    after = [i for i in items if Ref(i["metadata"]["namespace"], i["metadata"]["name"]) not in decision.fold]
    if decision.create:
        after.append(own("2099-01-01T00:00:00Z"))
    assert istio_winner(after) == decision.target
    # Nothing else that covers the host for sidecars is left competing with it (exact, alias, restricted,
    # mesh-default or wildcard), other than team VirtualServices Istio already shadows.
    left = claimants(after, HOST, managed_by=MANAGED, role=ROLE, own_namespace=OWN.namespace)
    assert {c.ref for c in left} - {decision.target} <= set(decision.shadowed)
    if decision.target == OWN:
        assert not any(c.ref != OWN for c in left)
        assert not [i for i in team if Ref(i["metadata"]["namespace"], i["metadata"]["name"]) == decision.target]


@pytest.mark.parametrize("hosts", [
    [HOST, "b.shop.svc.cluster.local"],
    ["a", "b"],  # short names, expanded in the VirtualService's namespace
    [HOST, "api.example.com"],
])
def test_a_team_virtual_service_of_several_hosts_is_refused_naming_them(hosts: list[str]) -> None:
    # Istio applies a VirtualService's http routes to every host it lists: a preview route of `a` would
    # take b's requests that carry the preview's header, and the added default would send b's to a.
    decision = decide(vs("shop", "shop-routes", hosts, export_to=["*"]))
    assert decision.target is None and decision.refusal
    assert "VirtualService shop/shop-routes routes a.shop.svc.cluster.local together with" in decision.refusal
    other = next(fqdn(h, "shop") for h in hosts if fqdn(h, "shop") != HOST)
    assert other in decision.refusal and "a VirtualService of its own" in decision.refusal


def test_one_host_written_twice_is_still_one_host() -> None:
    decision = decide(vs("shop", "shop-a", ["a", HOST], export_to=["*"]))
    assert decision.refusal is None and decision.target == Ref("shop", "shop-a")
