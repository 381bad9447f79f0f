"""Browser sessions on the real API server: the bot's objects, what explain reads from them, teardown.
(The proof with real requests through istiod and Envoy is tests/e2e/test_sessions_mesh.py.)"""

from __future__ import annotations

import pytest

from bot import explain
from bot.explaining import read_routing
from tests.e2e.harness import REPO, ClusterView, key_of, running_bot
from tests.fakegithub import FakeGitHub, pull_request_event
from tests.plugins.cluster import Cluster

pytestmark = pytest.mark.cluster


async def test_session_routes_are_created_and_removed_with_the_preview(shop: FakeGitHub, cluster: Cluster,
                                                                      namespace: str, view: ClusterView) -> None:
    key = key_of(shop, REPO, 50)
    env = {"PREVIEW_BROWSER_SESSIONS": "true",
           "PREVIEW_SESSION_HOSTS": f"api.example.com=a.{namespace}.svc.cluster.local:8080",
           "PREVIEW_GATEWAY": f"{namespace}/preview-gateway"}
    async with running_bot(shop, cluster, namespace, **env) as bot:
        shop.add_pull(REPO, 50)
        await bot.send("pull_request", pull_request_event(shop, REPO, 50, "opened"))
        await bot.settle()
        services = view.virtual_services()
        session = services[f"{key.value}-session-api-example-com"]
        assert session["spec"]["hosts"] == ["api.example.com"]
        gateway_route = services["preview-gw-preview-50-api-a-example-com"]["spec"]["http"][0]
        assert gateway_route["headers"]["response"]["add"]["set-cookie"].startswith(f"x-preview={key.value};")

        routing, notes = await read_routing(bot.bot.kube)
        assert notes == []  # the harness creates the Gateway the bot needs
        with_cookie = explain.explain(routing, explain.Request(
            host="api.example.com", headers={"cookie": f"session=1; x-preview={key.value}"}))
        assert with_cookie.reached() == f"{key.value}-a.{namespace}.svc.cluster.local"
        assert with_cookie.final.request_headers["x-preview"] == key.value
        without = explain.explain(routing, explain.Request(host="api.example.com"))
        assert without.final.outcome == "not-found"  # no team route for the host in this test

        await bot.send("pull_request", pull_request_event(shop, REPO, 50, "closed"))
        await bot.settle()
    assert not [name for name in view.virtual_services() if name.startswith(key.value)]
