"""bot.explain: Istio's VirtualService semantics replayed on values (no cluster)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot import explain, manifests, mesh_routes
from bot.explain import Request, Routing
from bot.naming import PreviewKey
from bot.repo_config import parse_repo_config
from bot.settings import ClusterSettings

GW = "istio-system/preview-gateway"
GATEWAY = {"metadata": {"name": "preview-gateway", "namespace": "istio-system"},
           "spec": {"selector": {"istio": "ingressgateway"},
                    "servers": [{"port": {"number": 80, "name": "http", "protocol": "HTTP"},
                                 "hosts": ["*.example.com"]}]}}
HOST = "a.shop.svc.cluster.local"


def vs(name: str, hosts: list[str], http: list[dict[str, Any]], *, namespace: str = "istio-system",
       gateways: list[str] | None = None, export_to: list[str] | None = None,
       created: str = "2026-01-01T00:00:00Z") -> dict[str, Any]:
    spec: dict[str, Any] = {"hosts": hosts, "http": http}
    if gateways is not None:
        spec["gateways"] = gateways
    if export_to is not None:
        spec["exportTo"] = export_to
    return {"metadata": {"name": name, "namespace": namespace, "creationTimestamp": created}, "spec": spec}


def to(host: str, port: int | None = None) -> list[dict[str, Any]]:
    destination: dict[str, Any] = {"host": host}
    if port:
        destination["port"] = {"number": port}
    return [{"destination": destination}]


def rule(name: str | None, *match: dict[str, Any], dest: str = "x.shop.svc.cluster.local") -> dict[str, Any]:
    result: dict[str, Any] = {"route": to(dest)}
    if name:
        result["name"] = name
    if match:
        result["match"] = list(match)
    return result


def mesh(*rules: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    return vs("mesh-a", [HOST], list(rules), **kwargs)


def in_mesh(*services: dict[str, Any], headers: dict[str, str] | None = None, source: str = "shop",
            host: str = HOST, **kwargs: Any) -> explain.Explanation:
    return explain.explain(Routing(GATEWAY, list(services)),
                           Request(host=host, headers=headers or {}, source_namespace=source, **kwargs))


def verdict(result: explain.Explanation) -> tuple[str | None, str | None, list[str]]:
    """(matched rule name, reached host, reasons of the rules tried before it)."""
    hop = result.final
    matched = hop.matched
    return (matched.name if matched else None, result.reached(),
            [reason for check in hop.rules if not check.matched for reason in check.reasons])


# -- one match entry: StringMatch kinds and fields ---------------------------------------------------------

KEY = "preview-123-d21b2c"
CASES: list[tuple[str, dict[str, Any], dict[str, Any], bool, str]] = [
    # (id, match entry, request kwargs, matches?, expected reason when not)
    ("exact", {"headers": {"x-preview": {"exact": KEY}}}, {"headers": {"x-preview": KEY}}, True, ""),
    ("exact-other-key", {"headers": {"x-preview": {"exact": KEY}}}, {"headers": {"x-preview": "preview-12"}}, False,
     f"`x-preview:` `preview-12` is not `{KEY}`"),
    ("missing-header", {"headers": {"x-preview": {"exact": KEY}}}, {}, False, "no `x-preview` header"),
    ("header-name-case", {"headers": {"x-preview": {"exact": KEY}}}, {"headers": {"X-PREVIEW": KEY}}, True, ""),
    ("value-case-sensitive", {"headers": {"x-preview": {"exact": KEY}}}, {"headers": {"x-preview": KEY.upper()}},
     False, "is not"),
    ("prefix-catches-longer", {"headers": {"x-preview": {"prefix": "preview-12"}}},
     {"headers": {"x-preview": KEY}}, True, ""),
    ("prefix-miss", {"headers": {"x-preview": {"prefix": "preview-9"}}}, {"headers": {"x-preview": KEY}}, False,
     "does not start with `preview-9`"),
    ("regex-whole-value", {"headers": {"x-preview": {"regex": "preview-12"}}}, {"headers": {"x-preview": KEY}},
     False, "does not match regex"),
    ("regex", {"headers": {"x-preview": {"regex": "preview-1[0-9]+-.*"}}}, {"headers": {"x-preview": KEY}}, True, ""),
    ("invalid-regex", {"headers": {"x-preview": {"regex": "(("}}}, {"headers": {"x-preview": KEY}}, False,
     "invalid regex"),
    ("presence", {"headers": {"x-preview": {}}}, {"headers": {"x-preview": ""}}, True, ""),
    ("presence-regex-star", {"headers": {"x-preview": {"regex": "*"}}}, {"headers": {"x-preview": "x"}}, True, ""),
    ("presence-missing", {"headers": {"x-preview": {}}}, {}, False, "no `x-preview` header"),
    ("without-present", {"withoutHeaders": {"x-preview": {}}}, {"headers": {"x-preview": "a"}}, False,
     "has a `x-preview` header"),
    ("without-absent", {"withoutHeaders": {"x-preview": {}}}, {}, True, ""),
    ("without-exact-missing-is-empty", {"withoutHeaders": {"x-preview": {"exact": ""}}}, {}, False,
     "(withoutHeaders)"),
    ("without-exact-other", {"withoutHeaders": {"x-preview": {"exact": KEY}}}, {"headers": {"x-preview": "b"}}, True,
     ""),
    ("uri-exact", {"uri": {"exact": "/api"}}, {"path": "/api?x=1"}, True, ""),
    ("uri-exact-miss", {"uri": {"exact": "/api"}}, {"path": "/api/v2"}, False, "path `/api/v2` is not `/api`"),
    ("uri-prefix", {"uri": {"prefix": "/api/"}}, {"path": "/api/v2"}, True, ""),
    ("uri-regex", {"uri": {"regex": "/api/v[0-9]+"}}, {"path": "/api/v2"}, True, ""),
    ("uri-case", {"uri": {"prefix": "/API"}}, {"path": "/api"}, False, "does not start with"),
    ("uri-ignore-case", {"uri": {"prefix": "/API"}, "ignoreUriCase": True}, {"path": "/api"}, True, ""),
    ("method", {"method": {"exact": "POST"}}, {"method": "GET"}, False, "method `GET` is not `POST`"),
    ("authority", {"authority": {"prefix": "a.shop"}}, {}, True, ""),
    ("scheme", {"scheme": {"exact": "https"}}, {}, False, "scheme `http` is not `https`"),
    ("query", {"queryParams": {"v": {"exact": "2"}}}, {"path": "/x?v=2"}, True, ""),
    ("query-missing", {"queryParams": {"v": {"exact": "2"}}}, {"path": "/x"}, False, "no `v` query parameter"),
    ("port", {"port": 8080, "headers": {"x-preview": {}}}, {"port": 8080, "headers": {"x-preview": "1"}}, True, ""),
    ("port-other", {"port": 8080}, {"port": 9090}, False, "only for port 8080, the request is on port 9090"),
    ("port-unknown-assumed", {"port": 8080}, {}, True, ""),  # the one port the VirtualService routes by
    ("source-namespace", {"sourceNamespace": "web"}, {}, False, "only for callers in namespace `web`"),
    ("source-labels", {"sourceLabels": {"app": "web"}}, {"source_labels": {"app": "web"}}, True, ""),
    ("match-gateways-mesh", {"gateways": ["mesh"]}, {}, True, ""),
    ("match-gateways-other", {"gateways": ["preview-gateway"]}, {}, False, "only on gateways preview-gateway"),
    ("and-fields", {"uri": {"prefix": "/api"}, "headers": {"x-preview": {"exact": KEY}}},
     {"path": "/api", "headers": {"x-preview": "nope"}}, False, "is not"),
]


@pytest.mark.parametrize(("match", "request_kwargs", "matches", "reason"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_one_match_entry(match: dict[str, Any], request_kwargs: dict[str, Any], matches: bool, reason: str) -> None:
    result = in_mesh(mesh(rule("r", match, dest="hit.shop.svc.cluster.local")), **request_kwargs)
    name, reached, reasons = verdict(result)
    if matches:
        assert (name, reached) == ("r", "hit.shop.svc.cluster.local")
    else:
        assert name is None and reached is None and result.final.outcome == "not-found"
        assert any(reason in r for r in reasons), reasons


def test_unknown_port_is_not_guessed_when_rules_route_ports_differently() -> None:
    result = in_mesh(mesh(rule("r8080", {"port": 8080}, dest="hit.shop.svc.cluster.local"),
                          rule("r9090", {"port": 9090}, dest="other.shop.svc.cluster.local")))
    name, reached, reasons = verdict(result)
    assert name is None and reached is None
    assert any("request port unknown" in r for r in reasons), reasons
    assert any("routes ports 8080, 9090 differently (pass --port)" in n for n in result.final.notes)


def test_entries_are_ored_and_the_first_matching_rule_wins() -> None:
    routes = mesh(
        rule("r1", {"headers": {"x-preview": {"exact": "k1"}}}, dest="one.shop.svc.cluster.local"),
        rule("r2", {"headers": {"x-preview": {"exact": "k2"}}}, {"uri": {"prefix": "/two"}},
             dest="two.shop.svc.cluster.local"),
        rule("r3", {"uri": {"prefix": "/"}}, dest="three.shop.svc.cluster.local"),
    )
    assert verdict(in_mesh(routes, headers={"x-preview": "k2"}))[:2] == ("r2", "two.shop.svc.cluster.local")
    assert verdict(in_mesh(routes, path="/two/x"))[:2] == ("r2", "two.shop.svc.cluster.local")
    name, reached, reasons = verdict(in_mesh(routes, headers={"x-preview": "k3"}, path="/other"))
    assert (name, reached) == ("r3", "three.shop.svc.cluster.local")
    assert reasons == ["`x-preview:` `k3` is not `k1`", "`x-preview:` `k3` is not `k2`",
                       "path `/other` does not start with `/two`"]
    checks = in_mesh(routes, headers={"x-preview": "k3"}).final.rules
    assert [(c.position, c.name, c.matched) for c in checks] == [(0, "r1", False), (1, "r2", False), (2, "r3", True)]
    assert checks[1].label == "rule 2 `r2` (http[1] of istio-system/mesh-a)"


def test_a_catch_all_before_header_routes_is_flagged_and_hides_them() -> None:
    routes = mesh(rule("default", dest=HOST), rule(KEY, {"headers": {"x-preview": {"exact": KEY}}}))
    result = in_mesh(routes, headers={"x-preview": KEY})
    assert verdict(result)[:2] == ("default", HOST)
    [finding] = [f for f in result.findings if f.kind == "shadowed"]
    assert "rule 1 `default` catches every request" in finding.message and "header routes" in finding.message
    # `uri: prefix /` is a catch-all too; a port-only entry is one for that port.
    assert [f.kind for f in in_mesh(mesh(rule("all", {"uri": {"prefix": "/"}}), rule("b")), port=80).findings] == \
        ["shadowed"]
    assert not in_mesh(mesh(rule("k", {"headers": {"x": {}}}), rule("default"))).findings


def test_preview_keys_matched_by_prefix_are_flagged() -> None:
    result = in_mesh(mesh(rule("p", {"headers": {"x-preview": {"prefix": "preview-12"}}}), rule("default")))
    assert [f.kind for f in result.findings] == ["prefix-key"]


# -- hosts -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("request_host", "source", "served"), [
    (HOST, "other", True),
    ("a.shop", "other", True),
    ("a.shop.svc", "other", True),
    ("a.shop:8080", "other", True),
    ("A.Shop", "other", True),
    ("a", "shop", True),
    ("a", "other", False),  # `a` from namespace other is a.other
    ("b.shop", "other", False),
])
def test_host_forms_in_the_mesh(request_host: str, source: str, served: bool) -> None:
    result = in_mesh(mesh(rule("r", dest="hit.shop.svc.cluster.local")), host=request_host, source=source)
    assert (result.reached() == "hit.shop.svc.cluster.local") is served
    if not served:
        assert result.final.outcome == "default"


def test_short_vs_hosts_live_in_the_vs_namespace_and_wildcards_lose_to_exact_hosts() -> None:
    short = vs("short", ["a"], [rule("short", dest="s.shop.svc.cluster.local")], namespace="shop")
    assert in_mesh(short).reached() == "s.shop.svc.cluster.local"
    wildcard = vs("wild", ["*.shop.svc.cluster.local"], [rule("wild", dest="w.shop.svc.cluster.local")],
                  created="2020-01-01T00:00:00Z")
    assert in_mesh(wildcard).reached() == "w.shop.svc.cluster.local"
    exact = vs("exact", [HOST], [rule("exact", dest="e.shop.svc.cluster.local")])
    assert in_mesh(wildcard, exact).reached() == "e.shop.svc.cluster.local"
    assert in_mesh(wildcard, exact, host="b.shop").reached() == "w.shop.svc.cluster.local"


def test_two_mesh_virtual_services_for_one_host_the_oldest_wins() -> None:
    old = vs("team", [HOST], [rule("team", dest="team.shop.svc.cluster.local")], namespace="shop",
             created="2025-01-01T00:00:00Z")
    bot = mesh(rule(KEY, {"headers": {"x-preview": {"exact": KEY}}}, dest="p.shop.svc.cluster.local"),
               rule("default", dest=HOST), created="2026-01-01T00:00:00Z")
    result = in_mesh(bot, old, headers={"x-preview": KEY}, source="web")
    assert result.reached() == "team.shop.svc.cluster.local"
    [finding] = [f for f in result.findings if f.kind == "duplicate-host"]
    assert "shop/team wins (the oldest, created 2025-01-01T00:00:00Z)" in finding.message
    assert "istio-system/mesh-a are ignored" in finding.message
    # Same age: the name decides, as in Istio.
    same = [vs("b", [HOST], [rule("b", dest="b.x.svc.cluster.local")]),
            vs("a", [HOST], [rule("a", dest="a.x.svc.cluster.local")])]
    assert in_mesh(*same).reached() == "a.x.svc.cluster.local"


def test_export_to_hides_a_virtual_service_from_other_namespaces() -> None:
    private = mesh(rule(KEY, {"headers": {"x-preview": {"exact": KEY}}}, dest="p.shop.svc.cluster.local"),
                   rule("default", dest=HOST), export_to=["."])
    result = in_mesh(private, headers={"x-preview": KEY}, source="web")
    assert result.final.outcome == "default" and result.reached() == HOST
    [finding] = result.findings
    assert finding.kind == "hidden-by-export-to" and "not exported to namespace web" in finding.message
    # The mesh default decides when the VirtualService says nothing.
    open_vs = mesh(rule("r", dest="p.shop.svc.cluster.local"))
    hidden = explain.explain(Routing(GATEWAY, [open_vs], default_export_to=(".",)),
                             Request(host=HOST, source_namespace="web"))
    assert hidden.reached() == HOST and "the mesh default" in hidden.findings[0].message
    assert explain.explain(Routing(GATEWAY, [open_vs], default_export_to=(".",)),
                           Request(host=HOST, source_namespace="istio-system")).reached() == "p.shop.svc.cluster.local"
    # Exported by name, it comes before public ones for that namespace.
    named = vs("named", [HOST], [rule("named", dest="n.shop.svc.cluster.local")], export_to=["web"],
               created="2027-01-01T00:00:00Z")
    assert in_mesh(open_vs, named, source="web").reached() == "n.shop.svc.cluster.local"
    assert in_mesh(open_vs, named, source="shop").reached() == "p.shop.svc.cluster.local"


def test_gateways_binding() -> None:
    gateway_only = vs("gw", [HOST], [rule("gw", dest="g.shop.svc.cluster.local")], gateways=[GW])
    assert in_mesh(gateway_only).final.outcome == "default"
    assert [f.kind for f in in_mesh(gateway_only).findings] == ["not-bound"]
    both = vs("both", [HOST], [rule("both", dest="b.shop.svc.cluster.local")], gateways=[GW, "mesh"])
    assert in_mesh(both).reached() == "b.shop.svc.cluster.local"
    short_name = vs("short", ["x.example.com"], [rule("s", dest="s.shop.svc.cluster.local")],
                    gateways=["preview-gateway"])
    assert explain.explain(Routing(GATEWAY, [short_name]), Request(host="x.example.com")).reached() == \
        "s.shop.svc.cluster.local"
    elsewhere = vs("short", ["x.example.com"], [rule("s")], gateways=["preview-gateway"], namespace="shop")
    assert explain.explain(Routing(GATEWAY, [elsewhere]), Request(host="x.example.com")).final.outcome == "not-found"


# -- the gateway ----------------------------------------------------------------------------------------


def gateway_vs(name: str, host: str, http: list[dict[str, Any]], created: str = "2026-01-01T00:00:00Z"
               ) -> dict[str, Any]:
    return vs(name, [host], http, gateways=[GW], created=created)


def test_gateway_sets_the_header_and_a_hop_follows_with_it() -> None:
    gw_route = {"name": KEY, "headers": {"request": {"set": {"x-preview": KEY}}},
                "route": to("preview-123-d21b2c-web.shop.svc.cluster.local", 8080)}
    routing = Routing(GATEWAY, [
        gateway_vs("gw", "preview-123-api-web.example.com", [gw_route]),
        mesh(rule(KEY, {"headers": {"x-preview": {"exact": KEY}}}, dest="preview-123-d21b2c-a.shop.svc.cluster.local"),
             rule("default", dest=HOST)),
    ])
    result = explain.explain(routing, Request(host="preview-123-api-web.example.com",
                                              headers={"x-preview": "preview-12", "cookie": "a=b"}), then=[HOST])
    first, second = result.hops
    assert first.proxy == f"gateway {GW}" and first.request_headers["x-preview"] == KEY
    assert first.header_changes == (f"sets request header `x-preview: {KEY}`",)
    assert [str(d) for d in first.destinations] == ["preview-123-d21b2c-web.shop.svc.cluster.local:8080"]
    assert second.proxy == "sidecar in namespace shop"
    assert second.matched is not None and second.matched.name == KEY
    assert result.reached() == "preview-123-d21b2c-a.shop.svc.cluster.local"
    text = explain.render(result)
    assert "Hop 1: gateway istio-system/preview-gateway" in text and "Hop 2: sidecar in namespace shop" in text
    assert json_roundtrip(result)["reached"] == "preview-123-d21b2c-a.shop.svc.cluster.local"


@pytest.mark.parametrize(("client", "seen"), [
    ({}, "a=1,preview=k"),  # Envoy: a missing header is empty
    ({"baggage": "tenant=x"}, "tenant=x,preview=k"),
    ({"Baggage": "t=%41"}, "t=%41,preview=k"),  # header names in any case; the value is not re-read
])
def test_header_values_fill_in_request_headers_as_envoy_does(client: dict[str, str], seen: str) -> None:
    """Envoy's `%REQ(name)%` in a header value is the request's header (istiod passes it through); `%%` is
    `%`. Other variables are left as written."""
    route = {"name": KEY, "headers": {"request": {"set": {"baggage": "%REQ(baggage)%,preview=k",
                                                         "x-a": "%%%REQ(x-none)%%START_TIME%"}}},
             "route": to("preview-123-d21b2c-web.shop.svc.cluster.local", 8080)}
    if not client:
        route["headers"]["request"]["set"]["baggage"] = "a=1%REQ(baggage)%,preview=k"
    routing = Routing(GATEWAY, [gateway_vs("gw", "preview-123-api-web.example.com", [route])])
    hop = explain.explain(routing, Request(host="preview-123-api-web.example.com", headers=client)).hops[0]
    assert hop.request_headers["baggage"] == seen
    assert hop.request_headers["x-a"] == "%%START_TIME%"


def json_roundtrip(result: explain.Explanation) -> dict[str, Any]:
    import json
    data: dict[str, Any] = json.loads(json.dumps(result.to_dict()))
    return data


def test_gateway_hosts_and_merging() -> None:
    gateway = Routing(GATEWAY, [])
    assert explain.explain(gateway, Request(host="other.org")).final.notes[0].endswith("404")
    assert explain.explain(gateway, Request(host="x.example.com")).final.outcome == "not-found"
    assert explain.explain(gateway, Request(host="x.example.com", port=443)).final.outcome == "not-found"
    # Two VirtualServices bound to the gateway for one host are merged; the catch-all goes last.
    first = gateway_vs("first", "x.example.com", [rule("all", dest="all.shop.svc.cluster.local")],
                       created="2025-01-01T00:00:00Z")
    second = gateway_vs("second", "x.example.com",
                        [rule("k", {"headers": {"x-preview": {"exact": KEY}}}, dest="k.shop.svc.cluster.local")])
    routing = Routing(GATEWAY, [first, second])
    assert explain.explain(routing, Request(host="x.example.com", headers={"x-preview": KEY})).reached() == \
        "k.shop.svc.cluster.local"
    result = explain.explain(routing, Request(host="x.example.com"))
    assert result.reached() == "all.shop.svc.cluster.local"
    assert "merged for this host" in " ".join(result.final.notes)
    # A wildcard VirtualService host loses to an exact one.
    wild = gateway_vs("wild", "*.example.com", [rule("w", dest="w.shop.svc.cluster.local")])
    assert explain.explain(Routing(GATEWAY, [wild, first]), Request(host="x.example.com")).reached() == \
        "all.shop.svc.cluster.local"
    assert explain.explain(Routing(GATEWAY, [wild, first]), Request(host="y.example.com")).reached() == \
        "w.shop.svc.cluster.local"
    # Without the Gateway object every host is assumed served.
    assert explain.explain(Routing(None, [first]), Request(host="x.example.com")).reached() == \
        "all.shop.svc.cluster.local"


def test_gateway_response_headers_and_https_redirect() -> None:
    gateway = {**GATEWAY, "spec": {**GATEWAY["spec"], "servers": [
        {"port": {"number": 80}, "hosts": ["*.example.com"], "tls": {"httpsRedirect": True}}]}}
    route = {"headers": {"response": {"add": {"set-cookie": "x-preview=k; Domain=example.com"}}},
             "route": to("a.shop.svc.cluster.local")}
    result = explain.explain(Routing(gateway, [gateway_vs("g", "x.example.com", [route])]),
                             Request(host="x.example.com"))
    assert result.final.response_changes == ("adds response header `set-cookie: x-preview=k; Domain=example.com`",)
    assert "301 to https" in result.final.notes[0]


# -- the bot's own objects ------------------------------------------------------------------------------


SETTINGS = ClusterSettings(domain="example.com", namespace="shop")
CONFIG = parse_repo_config("services:\n  - name: a\n    image: r.example.com/a:{sha}\n    port: 8080\n", "preview.yml")


def bot_routing(numbers: list[int], mode: str = "header") -> Routing:
    settings = ClusterSettings(domain="example.com", namespace="shop", match_mode=mode)  # type: ignore[arg-type]
    documents: list[dict[str, Any]] = []
    spec = mesh_routes.new_spec(HOST)
    for number in numbers:
        plan = manifests.plan_preview(settings, CONFIG, PreviewKey("acme/shop", number, 1296269), "a" * 40)
        documents += [s.gateway_route for s in plan.services]
        for service in plan.services:
            spec = mesh_routes.with_route(spec, HOST, service.mesh_route)
    documents.append(manifests.mesh_virtual_service(settings, HOST, spec))
    return Routing(GATEWAY, documents)


@settings(max_examples=60, deadline=None)
@given(numbers=st.lists(st.integers(min_value=1, max_value=200), min_size=1, max_size=8, unique=True),
       sent=st.one_of(st.none(),
                      st.integers(min_value=1, max_value=200).map(lambda n: PreviewKey("acme/shop", n, 1296269).value),
                      st.text(alphabet="preview-0123456789abcdef", max_size=20)),
       mode=st.sampled_from(["header", "both"]))
def test_bot_routes_send_exactly_the_matching_key_to_its_preview(numbers: list[int], sent: str | None,
                                                                 mode: str) -> None:
    routing = bot_routing(numbers, mode)
    keys = {PreviewKey("acme/shop", n, 1296269).value: n for n in numbers}
    # On the Service's port: preview routes match their port (bot.mesh_routes).
    headers = {"x-preview": sent} if sent is not None else {}
    result = explain.explain(routing, Request(host="a.shop:8080", headers=headers, source_namespace="web"))
    expected = f"{sent}-a.shop.svc.cluster.local" if sent in keys else HOST
    assert result.reached() == expected
    hop = result.final
    assert sum(c.matched for c in hop.rules) == 1
    assert all(c.reasons for c in hop.rules if not c.matched)  # every rule passed over says why
    assert not result.findings
    # Through the gateway, the preview host reaches the preview whatever header the browser sends.
    for number in numbers[:2]:
        key = PreviewKey("acme/shop", number, 1296269)
        via = explain.explain(routing, Request(host=f"preview-{number}-api-a.example.com",
                                               headers={"x-preview": sent or ""}), then=["a.shop:8080"])
        assert [h.proxy for h in via.hops] == [f"gateway {GW}", "sidecar in namespace shop"]
        assert via.reached() == f"{key.value}-a.shop.svc.cluster.local"


def test_redaction_hides_other_repositories_keys() -> None:
    mine, other = PreviewKey("acme/shop", 1, 1296269), PreviewKey("acme/else", 1, 1296274)
    text = explain.redact_other_keys(f"{mine.value} {other.value}-a.shop", mine.repo_hash)
    assert text == f"{mine.value} preview-…-a.shop"
