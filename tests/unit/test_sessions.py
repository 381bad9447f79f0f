"""bot.sessions: the session cookie and the cookie routes of the normal hosts (pure)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot import explain, manifests, sessions
from bot.errors import ConfigError
from bot.naming import PreviewKey
from bot.repo_config import parse_repo_config
from bot.settings import ClusterSettings, SessionHost, load_cluster_settings
from tests.unit.test_explain import GATEWAY, GW

SESSIONS = ClusterSettings(domain="example.com", namespace="shop", browser_sessions=True,
                           session_hosts=(SessionHost("api.example.com", "a.shop.svc.cluster.local", 8080),
                                          SessionHost("www.example.com", "web.shop.svc.cluster.local", 80)))
CONFIG = parse_repo_config("services:\n  - name: a\n    image: r.example.com/a:{sha}\n    port: 8080\n", "preview.yml")
KEY = PreviewKey("acme/shop", 12, 1296269)


def test_off_by_default() -> None:
    plan = manifests.plan_preview(ClusterSettings(domain="example.com"), CONFIG, KEY, "a" * 40)
    assert plan.session_routes == ()
    assert "response" not in plan.services[0].gateway_route["spec"]["http"][0]["headers"]


def test_preview_host_sets_the_cookie_and_normal_hosts_route_on_it() -> None:
    plan = manifests.plan_preview(SESSIONS, CONFIG, KEY, "a" * 40)
    headers = plan.services[0].gateway_route["spec"]["http"][0]["headers"]
    assert headers["response"] == {"add": {"set-cookie": f"x-preview={KEY.value}; Domain=example.com; Path=/; "
                                                         "Max-Age=28800; Secure; HttpOnly; SameSite=Lax"}}
    api, www = plan.session_routes
    assert sessions.session_hosts_of(plan.manifests()) == ["api.example.com", "www.example.com"]
    assert api["metadata"]["labels"]["preview-bot.dev/key"] == KEY.value
    assert api["metadata"]["labels"]["preview-bot.dev/role"] == "session-route"
    assert api["spec"]["gateways"] == ["istio-system/preview-gateway"]
    [rule] = api["spec"]["http"]
    assert rule["headers"] == {"request": {"set": {"x-preview": KEY.value}}}
    # The PR deploys `a`: the API host goes to its build; `web` is not in the PR: the normal service.
    assert rule["route"] == [{"destination": {"host": f"{KEY.value}-a.shop.svc.cluster.local",
                                              "port": {"number": 8080}}}]
    assert www["spec"]["http"][0]["route"] == [{"destination": {"host": "web.shop.svc.cluster.local",
                                                                "port": {"number": 80}}}]
    assert plan.session_routes[0] in plan.manifests()


def test_baggage_mode_session_routes_put_the_baggage_member_on() -> None:
    """With PREVIEW_MATCH=baggage the mesh matches `baggage`, so the cookie routes put the key there, as the
    preview host does (bot.mesh_routes.entry_headers): one line, the client's baggage kept first."""
    settings = ClusterSettings(domain="example.com", namespace="shop", browser_sessions=True, match_mode="baggage",
                               session_hosts=SESSIONS.session_hosts)
    api = manifests.plan_preview(settings, CONFIG, KEY, "a" * 40).session_routes[0]
    with_baggage, without = api["spec"]["http"]
    cookie = {"regex": sessions.cookie_regex("x-preview", KEY.value)}
    assert with_baggage["match"] == [{"headers": {"cookie": cookie, "baggage": {"regex": ".+"}}}]
    assert with_baggage["headers"] == {"request": {"set": {"baggage": f"%REQ(baggage)%,preview={KEY.value}"}}}
    assert without["match"] == [{"headers": {"cookie": cookie}}]
    assert without["headers"] == {"request": {"set": {"baggage": f"preview={KEY.value}"}}}
    routing = explain.Routing(GATEWAY, [api])
    for client in ({}, {"baggage": "tenant=acme,preview=preview-1-000000"}):
        request = explain.Request(host="api.example.com", headers={"cookie": f"x-preview={KEY.value}", **client})
        hop = explain.explain(routing, request).hops[0]
        assert hop.request_headers["baggage"].split(",")[-1] == f"preview={KEY.value}"
        assert ("tenant=acme" in hop.request_headers["baggage"]) == bool(client)


cookie_names = st.from_regex(r"[a-z][a-z0-9_-]{0,10}", fullmatch=True)


@given(before=st.lists(st.tuples(cookie_names, st.from_regex(r"[A-Za-z0-9=-]{0,12}", fullmatch=True)), max_size=3),
       after=st.lists(st.tuples(cookie_names, st.from_regex(r"[A-Za-z0-9=-]{0,12}", fullmatch=True)), max_size=3),
       value=st.sampled_from([KEY.value, PreviewKey("acme/shop", 123, 1296269).value,
                              PreviewKey("acme/shop", 1, 1296269).value, KEY.value + "x", "", "other"]))
def test_cookie_regex_matches_exactly_the_key(before: list[tuple[str, str]], after: list[tuple[str, str]],
                                              value: str) -> None:
    pairs = [(n, v) for n, v in before + after if n != "x-preview"]
    cut = len([p for p in before if p[0] != "x-preview"])
    cookie = "; ".join(f"{n}={v}" for n, v in [*pairs[:cut], ("x-preview", value), *pairs[cut:]])
    assert bool(re.fullmatch(sessions.cookie_regex("x-preview", KEY.value), cookie)) == (value == KEY.value)


def team_route(host: str, destination: str) -> dict[str, Any]:
    return {"metadata": {"name": f"team-{host}", "namespace": "shop", "creationTimestamp": "2020-01-01T00:00:00Z"},
            "spec": {"hosts": [host], "gateways": [GW],
                     "http": [{"name": "all", "route": [{"destination": {"host": destination}}]}]}}


@pytest.mark.parametrize(("cookie", "reached"), [
    (None, "a.shop.svc.cluster.local"),
    (f"theme=dark; x-preview={KEY.value}", f"{KEY.value}-a.shop.svc.cluster.local"),
    (f"x-preview={PreviewKey('acme/shop', 123, 1296269).value}", "a.shop.svc.cluster.local"),
    ("x-preview=preview-1", "a.shop.svc.cluster.local"),
])
def test_explain_agrees_the_team_route_still_serves_everybody_else(cookie: str | None, reached: str) -> None:
    plan = manifests.plan_preview(SESSIONS, CONFIG, KEY, "a" * 40)
    routing = explain.Routing(GATEWAY, [team_route("api.example.com", "a.shop.svc.cluster.local"),
                                        *plan.manifests()])
    result = explain.explain(routing, explain.Request(host="api.example.com",
                                                      headers={"cookie": cookie} if cookie else {}))
    assert result.reached() == reached
    if reached != "a.shop.svc.cluster.local":
        assert result.final.request_headers["x-preview"] == KEY.value


@pytest.mark.parametrize(("value", "reason"), [
    ("api.example.com", "expected public.host=mesh.host:port"),
    ("api.example.com=a.shop.svc.cluster.local", "expected public.host=mesh.host:port"),
    ("api.example.com=a.shop.svc.cluster.local:0", "expected public.host=mesh.host:port"),
    ("api.other.org=a.shop.svc.cluster.local:80", "is not inside PREVIEW_DOMAIN"),
    ("API_X.example.com=a:80", "not valid host names"),
    ("api.example.com=a:80,api.example.com=b:80", "listed twice"),
])
def test_session_hosts_setting_errors(value: str, reason: str) -> None:
    env = {"PREVIEW_DOMAIN": "example.com", "PREVIEW_BROWSER_SESSIONS": "true", "PREVIEW_SESSION_HOSTS": value}
    with pytest.raises(ConfigError, match=f"PREVIEW_SESSION_HOSTS: .*{re.escape(reason)}"):
        load_cluster_settings(env)


def test_session_settings() -> None:
    env = {"PREVIEW_DOMAIN": "example.com"}
    assert load_cluster_settings(env).browser_sessions is False
    with pytest.raises(ConfigError, match="PREVIEW_SESSION_HOSTS: is required"):
        load_cluster_settings({**env, "PREVIEW_BROWSER_SESSIONS": "true"})
    on = load_cluster_settings({**env, "PREVIEW_BROWSER_SESSIONS": "yes",
                                "PREVIEW_SESSION_HOSTS": " API.example.com = a.shop.svc.cluster.local:8080 ,"})
    assert on.session_hosts == (SessionHost("api.example.com", "a.shop.svc.cluster.local", 8080),)
    # Hosts listed while sessions are off change nothing.
    assert load_cluster_settings({**env, "PREVIEW_SESSION_HOSTS": "api.example.com=a:80"}).session_hosts == ()
