"""A team's own mesh VirtualService for the host, in another namespace, through the whole bot.

Issue 8, item 4: when Istio would ignore the preview routes the PR comment says so and names the
VirtualService (namespace/name), nothing is deployed and the deploy is never "ready"; once the team's
VirtualService is exported everywhere, `/preview` adds the routes to it and keeps the team's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from kubernetes import client

from bot import comment, mesh_routes
from bot.naming import mesh_route_name
from tests.e2e.harness import REPO, ClusterView, RunningBot, key_of, running_bot
from tests.fakegithub import FakeGitHub, issue_comment_event, pull_request_event
from tests.plugins.cluster import Cluster

pytestmark = pytest.mark.cluster


@pytest.fixture
async def bot(shop: FakeGitHub, cluster: Cluster, namespace: str) -> AsyncIterator[RunningBot]:
    async with running_bot(shop, cluster, namespace) as running:
        yield running


def sticky(fake: FakeGitHub, number: int) -> str:
    [body] = [str(c["body"]) for c in fake.comments(REPO, number) if comment.MARKER in str(c["body"])]
    return body


async def test_refused_naming_the_team_virtual_service_then_deployed_into_it(
        bot: RunningBot, view: ClusterView, cluster: Cluster, namespace: str, team_namespace: str) -> None:
    host = f"a.{namespace}.svc.cluster.local"
    team_routes = [{"name": "main", "timeout": "3s", "route": [{"destination": {"host": host}}]}]
    custom = client.CustomObjectsApi(view.api)
    custom.create_namespaced_custom_object("networking.istio.io", "v1", team_namespace, "virtualservices", {
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "team-a"},
        "spec": {"hosts": [host], "http": team_routes}})  # exportTo unset: the mesh default decides

    bot.fake.add_pull(REPO, 5, head_sha="d" * 40)
    assert await bot.send("pull_request", pull_request_event(bot.fake, REPO, 5, "opened")) == 202
    await bot.settle()
    body = sticky(bot.fake, 5)
    assert "failed" in body and f"VirtualService {team_namespace}/team-a" in body and "exportTo" in body, body
    assert "ready" not in body.split("\n")[1]
    assert view.deployments() == {} and view.services() == [], "a refused deploy changes nothing"
    assert mesh_route_name(host) not in view.virtual_services()
    [record] = bot.fake.deployments(REPO)
    assert [s["state"] for s in bot.fake.statuses(REPO, record["id"])] == ["in_progress", "failure"]

    team: dict[str, Any] = custom.get_namespaced_custom_object("networking.istio.io", "v1", team_namespace,
                                                               "virtualservices", "team-a")
    team["spec"]["exportTo"] = ["*"]
    custom.replace_namespaced_custom_object("networking.istio.io", "v1", team_namespace, "virtualservices",
                                            "team-a", team)
    assert await bot.send("issue_comment", issue_comment_event(bot.fake, REPO, 5, "/preview", user="alice")) == 202
    await bot.settle()
    assert "ready" in sticky(bot.fake, 5).split("\n")[1]
    key = key_of(bot.fake, REPO, 5)
    adopted = custom.get_namespaced_custom_object("networking.istio.io", "v1", team_namespace,
                                                  "virtualservices", "team-a")
    assert mesh_routes.preview_keys(adopted["spec"]) == [key.value]
    assert adopted["spec"]["http"][1:] == team_routes
    assert mesh_route_name(host) not in view.virtual_services()

    assert await bot.send("pull_request", pull_request_event(bot.fake, REPO, 5, "closed")) == 202
    await bot.settle()
    given_back = custom.get_namespaced_custom_object("networking.istio.io", "v1", team_namespace,
                                                     "virtualservices", "team-a")
    assert given_back["spec"] == {"hosts": [host], "exportTo": ["*"], "http": team_routes}
