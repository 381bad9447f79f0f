"""At the shared mesh VirtualService's size limit the user gets a clear refusal, once: no retry loop."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bot import comment, mesh_routes
from tests.e2e.harness import REPO, ClusterView, RunningBot, running_bot
from tests.fakegithub import FakeGitHub, pull_request_event
from tests.plugins.cluster import Cluster

pytestmark = pytest.mark.cluster


@pytest.fixture
async def bot(shop: FakeGitHub, cluster: Cluster, namespace: str) -> AsyncIterator[RunningBot]:
    async with running_bot(shop, cluster, namespace) as running:
        yield running


async def test_a_preview_over_the_mesh_size_limit_is_refused_with_a_clear_comment(
        bot: RunningBot, view: ClusterView, namespace: str, monkeypatch: pytest.MonkeyPatch) -> None:
    host = f"a.{namespace}.svc.cluster.local"
    for n in (1, 2):
        bot.fake.add_pull(REPO, n)
        assert await bot.send("pull_request", pull_request_event(bot.fake, REPO, n, "opened")) == 202
    await bot.settle()
    spec = {"hosts": [host], "http": view.mesh_routes(host)}
    monkeypatch.setattr(mesh_routes, "MAX_SPEC_BYTES", mesh_routes.spec_bytes(spec) + 10)

    bot.fake.add_pull(REPO, 3)
    assert await bot.send("pull_request", pull_request_event(bot.fake, REPO, 3, "opened")) == 202
    await bot.settle()
    [sticky] = [c for c in bot.fake.comments(REPO, 3) if comment.MARKER in str(c["body"])]
    body = str(sticky["body"])
    assert f"shared mesh VirtualService of {host} would hold 3 preview routes" in body
    assert "/preview stop" in body
    [deployment] = [d for d in bot.fake.deployments(REPO) if d["environment"] == "preview-3"]
    assert [s["state"] for s in bot.fake.statuses(REPO, deployment["id"])][-1] == "failure"
    assert len(view.mesh_routes(host)) == 3, "the other previews' routes are untouched"

    # The same event again (a redelivery) is settled: no second attempt, no new comment.
    assert await bot.send("pull_request", pull_request_event(bot.fake, REPO, 3, "synchronize")) == 202
    await bot.settle()
    assert len([d for d in bot.fake.deployments(REPO) if d["environment"] == "preview-3"]) == 1
    assert len(bot.fake.comments(REPO, 3)) == 1
