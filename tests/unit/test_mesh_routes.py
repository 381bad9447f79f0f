"""bot.mesh_routes: the shared mesh VirtualService keeps its invariants whatever happens to it."""

from __future__ import annotations

import copy
import json
import random
import re
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from bot import mesh_routes
from bot.mesh_routes import default_route, is_preview_route, new_spec, preview_route, with_route, without_key
from bot.naming import PreviewKey

HOST = "a.default.svc.cluster.local"
HEADER = "x-preview"
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)

keys = st.builds(lambda n, h: f"preview-{n}-{h}", st.integers(min_value=1, max_value=130),
                 st.sampled_from(["abcdef", "000000", "123abc", "fedcba"]))
modes = st.sampled_from(["header", "baggage", "both"])


def route_for(key: str, version: int = 0, mode: str = "header") -> dict[str, Any]:
    return preview_route(key, destination=f"{key}-a-v{version}.previews.svc.cluster.local", port=8080,
                         header_name=HEADER, mode=mode)  # type: ignore[arg-type]


@st.composite
def user_routes(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Routes a human wrote: specific ones (some unnamed), then maybe catch-alls at the end."""
    specific = []
    for i in range(draw(st.integers(min_value=0, max_value=3))):
        route: dict[str, Any] = {
            "match": [{"headers": {"end-user": {"exact": f"user{i}"}}}] if draw(st.booleans())
            else [{"uri": {"prefix": f"/v{i}"}}],
            "route": [{"destination": {"host": f"user-{i}.default.svc.cluster.local"}}],
        }
        if draw(st.booleans()):
            route["name"] = f"user-route-{i}"
        specific.append(route)
    catch_all = [{"name": f"catch-all-{i}", "route": [{"destination": {"host": HOST, "subset": f"s{i}"}}]}
                 for i in range(draw(st.integers(min_value=0, max_value=2)))]
    return specific + catch_all


@st.composite
def starting_specs(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """A spec that may hold user routes and previews already; returns it with the preview model."""
    existing = {key: route_for(key) for key in draw(st.lists(keys, max_size=4, unique=True))}
    user = draw(user_routes())
    http = list(existing.values())
    # Existing previews arrive in any order but before the user's routes, like a spec the bot wrote.
    http = draw(st.permutations(http)) + user
    spec: dict[str, Any] = {"hosts": [HOST]}
    if draw(st.booleans()):
        spec["gateways"] = ["mesh"]
    if http or draw(st.booleans()):
        spec["http"] = http
    return spec, existing


operations = st.lists(
    st.one_of(
        st.tuples(st.just("add"), keys, st.integers(min_value=0, max_value=2), modes),
        st.tuples(st.just("remove"), keys, st.just(0), st.just("header")),
    ),
    max_size=25,
)


def non_preview(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in spec.get("http") or [] if not is_preview_route(r)]


def check_invariants(spec: dict[str, Any], model: dict[str, dict[str, Any]], user: list[dict[str, Any]]) -> None:
    http = spec["http"]
    # Default / catch-all route(s) last; at least one.
    assert http, "a spec always has a default route"
    assert not http[-1].get("match")
    first_catch_all = next(i for i, r in enumerate(http) if not r.get("match"))
    assert all(not r.get("match") for r in http[first_catch_all:])
    # Each preview key at most once, and exactly the model's keys with the model's routes.
    names = [r["name"] for r in http if is_preview_route(r)]
    assert len(names) == len(set(names))
    assert {r["name"]: r for r in http if is_preview_route(r)} == model
    # Preview routes come before every non-preview route.
    assert names == [r.get("name") for r in http[: len(names)]]
    # A preview route matches only its own port, in every ORed match entry, and sends to that port.
    for route in http:
        if is_preview_route(route):
            port = route["route"][0]["destination"]["port"]["number"]
            assert route["match"] and all(m.get("port") == port for m in route["match"]), route
    # Header matches on x-preview are exact on the route's own key.
    for route in http:
        for match in route.get("match") or []:
            condition = (match.get("headers") or {}).get(HEADER)
            if condition is not None:
                assert condition == {"exact": route["name"]}
    # Non-preview routes kept, in their relative order; a default is added only when there is no catch-all.
    expected = copy.deepcopy(user)
    if not any(not r.get("match") for r in user):
        expected.append(default_route(HOST))
    assert non_preview(spec) == expected
    assert spec["hosts"] == [HOST]


@settings(max_examples=100, deadline=None)
@given(starting_specs(), operations)
def test_any_sequence_of_adds_and_removes_keeps_the_invariants(start: Any, ops: list[Any]) -> None:
    spec, model = start
    model = copy.deepcopy(model)
    user = non_preview(spec)
    original = copy.deepcopy(spec)
    current = mesh_routes.without_routes(spec, HOST, lambda r: False)
    assert spec == original, "the input spec is never mutated"
    check_invariants(current, model, user)
    for op, key, version, mode in ops:
        previous, before = current, copy.deepcopy(current)
        if op == "add":
            route = route_for(key, version, mode)
            current = with_route(current, HOST, route)
            model[key] = route
        else:
            current = without_key(current, HOST, key)
            model.pop(key, None)
            # Removing a key never removes or changes another key's route.
            others_before = [r for r in before["http"] if is_preview_route(r) and r["name"] != key]
            others_after = [r for r in current["http"] if is_preview_route(r)]
            assert others_after == others_before
        assert previous == before, "operations never mutate their input"
        check_invariants(current, model, user)
    if "gateways" in spec:
        assert current["gateways"] == spec["gateways"]


@settings(max_examples=50, deadline=None)
@given(starting_specs(), st.lists(keys, min_size=1, max_size=8, unique=True), st.randoms(use_true_random=False))
def test_result_does_not_depend_on_the_order_keys_were_added(start: Any, added: list[str],
                                                              rnd: random.Random) -> None:
    spec, _ = start
    shuffled = list(added)
    rnd.shuffle(shuffled)
    one, two = spec, spec
    for key in added:
        one = with_route(one, HOST, route_for(key))
    for key in shuffled:
        two = with_route(two, HOST, route_for(key))
    assert one == two
    assert json.dumps(one, sort_keys=False) == json.dumps(two, sort_keys=False)


@settings(max_examples=50, deadline=None)
@given(starting_specs(), st.lists(keys, max_size=6))
def test_spec_round_trips_idempotently(start: Any, added: list[str]) -> None:
    spec, _ = start
    for key in added:
        spec = with_route(spec, HOST, route_for(key))
    spec = mesh_routes.without_routes(spec, HOST, lambda r: False)
    # Through the API server and back (YAML/JSON), and through every operation that changes nothing.
    reloaded = yaml.load(yaml.dump(json.loads(json.dumps(spec)), Dumper=DUMPER), Loader=LOADER)
    assert mesh_routes.without_routes(reloaded, HOST, lambda r: False) == spec
    assert without_key(spec, HOST, "preview-999999-ffffff") == spec
    for key in set(added):
        route = next(r for r in spec["http"] if r.get("name") == key)
        assert with_route(spec, HOST, route) == spec
    for key in set(added):
        once = without_key(spec, HOST, key)
        assert without_key(once, HOST, key) == once


def test_new_spec_has_only_the_default_route() -> None:
    default = {"name": "default", "route": [{"destination": {"host": HOST}}]}
    assert new_spec(HOST) == {"hosts": [HOST], "http": [default], "exportTo": ["*"]}


def test_add_replaces_the_same_key_and_keeps_the_other() -> None:
    spec = with_route(new_spec(HOST), HOST, route_for("preview-12-abcdef", 0))
    spec = with_route(spec, HOST, route_for("preview-123-abcdef", 0))
    spec = with_route(spec, HOST, route_for("preview-12-abcdef", 1))
    assert mesh_routes.preview_keys(spec) == ["preview-12-abcdef", "preview-123-abcdef"]
    assert mesh_routes.route_destinations(spec) == {
        "preview-12-abcdef": ["preview-12-abcdef-a-v1.previews.svc.cluster.local"],
        "preview-123-abcdef": ["preview-123-abcdef-a-v0.previews.svc.cluster.local"],
    }
    spec = without_key(spec, HOST, "preview-12-abcdef")
    assert mesh_routes.preview_keys(spec) == ["preview-123-abcdef"]


def test_user_catch_all_is_kept_instead_of_adding_a_default() -> None:
    user = {"hosts": [HOST], "http": [{"route": [{"destination": {"host": HOST, "subset": "v1"}}]}]}
    spec = with_route(user, HOST, route_for("preview-1-abcdef"))
    assert [r.get("name") for r in spec["http"]] == ["preview-1-abcdef", None]
    assert spec["http"][-1] == user["http"][0]


@pytest.mark.parametrize(
    ("header", "matches"),
    [
        ("preview=preview-12-abcdef", True),
        ("a=1, preview=preview-12-abcdef;prop=x, b=2", True),
        ("a=1,preview=preview-12-abcdef", True),
        ("preview=preview-123-abcdef", False),
        ("preview=preview-12-abcdefx", False),
        ("xpreview=preview-12-abcdef", False),
        ("other=preview-12-abcdef", False),
        ("", False),
    ],
)
def test_baggage_regex_matches_whole_entries_only(header: str, matches: bool) -> None:
    regex = mesh_routes.baggage_regex("preview-12-abcdef")
    assert bool(re.fullmatch(regex, header)) is matches


def test_baggage_regex_fits_istio_for_every_key_the_bot_issues() -> None:
    """Istio refuses a regex over 1024 characters (validateStringRegexp); the bot's keys (`preview-<n>-<6 hex>`,
    n up to 10 digits) stay well under it, and so does the longest DNS label (each `-` takes the most)."""
    assert len(mesh_routes.baggage_regex("preview-9999999999-abcdef")) < 600
    assert len(mesh_routes.baggage_regex("a" + "-" * 61 + "a")) <= mesh_routes.MAX_REGEX_CHARS
    with pytest.raises(ValueError, match="not a preview key"):
        mesh_routes.baggage_regex("a" * 64)


@pytest.mark.parametrize(("mode", "expected"), [
    ("header", [(None, {"set": {HEADER: "preview-1-abcdef"}})]),
    ("baggage", [({"baggage": {"regex": ".+"}}, {"set": {"baggage": "%REQ(baggage)%,preview=preview-1-abcdef"}}),
                 (None, {"set": {"baggage": "preview=preview-1-abcdef"}})]),
    ("both", [({"baggage": {"regex": ".+"}}, {"set": {HEADER: "preview-1-abcdef",
                                                      "baggage": "%REQ(baggage)%,preview=preview-1-abcdef"}}),
              (None, {"set": {HEADER: "preview-1-abcdef", "baggage": "preview=preview-1-abcdef"}})]),
])
def test_entry_headers_follow_the_match_mode(mode: str, expected: list[Any]) -> None:
    assert mesh_routes.entry_headers("preview-1-abcdef", header_name=HEADER, mode=mode) == expected  # type: ignore[arg-type]


def test_preview_match_modes() -> None:
    assert mesh_routes.preview_match("preview-1-abcdef", header_name=HEADER, mode="header") == [
        {"headers": {HEADER: {"exact": "preview-1-abcdef"}}}]
    both = mesh_routes.preview_match("preview-1-abcdef", header_name=HEADER, mode="both")
    assert len(both) == 2 and both[1]["headers"]["baggage"]["regex"] == mesh_routes.baggage_regex("preview-1-abcdef")


@pytest.mark.parametrize(
    ("name", "expected"),
    [("preview-1-abcdef", True), ("preview-1-ABCDEF", False), ("preview-x-abcdef", False),
     ("preview-1-abcdef0", False), ("default", False), (None, False)],
)
def test_is_preview_route(name: str | None, expected: bool) -> None:
    route = {} if name is None else {"name": name}
    assert is_preview_route(route) is expected


@pytest.mark.parametrize("mode", ["header", "baggage", "both"])
def test_preview_route_matches_only_its_port(mode: str) -> None:
    """Istio HTTPMatchRequest.port: without it a request with the key to the real service's other port
    would be sent to the preview's one port."""
    route = preview_route("preview-1-abcdef", destination="p.previews.svc.cluster.local", port=9090,
                          header_name=HEADER, mode=mode)  # type: ignore[arg-type]
    assert route["match"] and all(m["port"] == 9090 for m in route["match"])
    assert route["route"] == [{"destination": {"host": "p.previews.svc.cluster.local", "port": {"number": 9090}}}]
    # The default route names no port: each port of the real service keeps going to itself.
    assert default_route(HOST) == {"name": "default", "route": [{"destination": {"host": HOST}}]}
    for bad in (0, 65536, -1):
        with pytest.raises(ValueError, match="not a port"):
            preview_route("preview-1-abcdef", destination="p", port=bad, header_name=HEADER, mode="header")


@settings(max_examples=100, deadline=None)
@given(starting_specs(), starting_specs())
def test_with_routes_of_carries_missing_previews_and_keeps_its_own(one: Any, two: Any) -> None:
    (target, target_model), (other, other_model) = one, two
    user = non_preview(target)
    merged = mesh_routes.with_routes_of(target, HOST, other)
    check_invariants(merged, {**other_model, **target_model}, user)
    assert mesh_routes.with_routes_of(merged, HOST, other) == merged


def test_exported_everywhere_sets_export_to_only() -> None:
    spec = with_route(new_spec(HOST), HOST, route_for("preview-1-abcdef"))
    assert mesh_routes.exported_everywhere({**spec, "exportTo": ["."]}) == spec


def _route(n: int, mode: str = "header") -> dict[str, object]:
    key = PreviewKey("acme/shop", n, 1296269).value
    return mesh_routes.preview_route(key, destination=f"{key}-a.ns.svc.cluster.local", port=8080,
                                     header_name="x-preview", mode=mode)  # type: ignore[arg-type]


def test_a_new_route_over_the_size_limit_is_refused_but_an_existing_one_is_replaced(
        monkeypatch: pytest.MonkeyPatch) -> None:
    host = "a.ns.svc.cluster.local"
    spec = mesh_routes.new_spec(host)
    for n in range(1, 4):
        spec = mesh_routes.with_route_checked(spec, host, _route(n))
    monkeypatch.setattr(mesh_routes, "MAX_SPEC_BYTES", mesh_routes.spec_bytes(spec) + 10)
    with pytest.raises(mesh_routes.TooManyRoutes) as refused:
        mesh_routes.with_route_checked(spec, host, _route(4))
    assert f"mesh VirtualService of {host} would hold 4 preview routes" in str(refused.value)
    assert "/preview stop" in str(refused.value)
    # Redeploying a preview that already has its route is never refused.
    moved = {**_route(2), "route": [{"destination": {"host": "elsewhere-much-longer.ns.svc.cluster.local"}}]}
    assert mesh_routes.preview_keys(mesh_routes.with_route_checked(spec, host, moved)) == \
        mesh_routes.preview_keys(spec)


@pytest.mark.parametrize(("mode", "share"), [("header", 0.25), ("both", 0.75)])
def test_a_thousand_routes_fit_under_the_limit(mode: str, share: float) -> None:
    """The sizes README gives (1,000 routes: 207 KiB; 619 KiB baggage; 686 KiB both)."""
    host = "a.ns.svc.cluster.local"
    spec = mesh_routes.new_spec(host)
    for n in range(1, 1001):
        spec = mesh_routes.with_route(spec, host, _route(n, mode))
    assert mesh_routes.spec_bytes(spec) < mesh_routes.MAX_SPEC_BYTES * share
