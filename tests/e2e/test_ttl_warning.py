"""The warning before the idle TTL: posted once per idle period, remembered in the cluster across restarts
and replicas, reset by a push, never for kept previews. The reconciler runs with a chosen clock."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

import pytest

from bot import comment
from bot.reconcile import GcReport, reconcile
from bot.ttl_warning import WARNED_ANNOTATION
from tests.e2e.harness import REPO, ClusterView, RunningBot, running_bot
from tests.fakegithub import FakeGitHub, issue_comment_event, pull_request_event
from tests.plugins.cluster import Cluster

pytestmark = pytest.mark.cluster

TTL = timedelta(days=7)
BEFORE = timedelta(hours=24)


async def pass_at(bot: RunningBot, now: datetime) -> GcReport:
    b = bot.bot
    return await reconcile(b.kube, b.previewer, b.client_for, idle_ttl=TTL, now=now,
                           warn_before=timedelta(hours=b.settings.ttl_warning_hours))


async def pushed_at(bot: RunningBot, number: int) -> datetime:
    [preview] = [p for p in await bot.bot.kube.live_previews((bot.fake.repos[REPO].id, REPO)) if p.number == number]
    assert preview.pushed_at
    return datetime.fromisoformat(preview.pushed_at.replace("Z", "+00:00"))


def warnings(fake: FakeGitHub, number: int) -> list[str]:
    return [str(c["body"]) for c in fake.comments(REPO, number)
            if c["user"]["type"] == "Bot" and comment.MARKER not in str(c["body"]) and "⏰" in str(c["body"])]


async def test_warned_once_per_idle_period(shop: FakeGitHub, cluster: Cluster, namespace: str,
                                           view: ClusterView) -> None:
    env = {"PREVIEW_TTL_WARNING": "24"}
    async with running_bot(shop, cluster, namespace, **env) as bot:
        shop.add_pull(REPO, 40, head_sha="1" * 40)
        shop.add_pull(REPO, 41)
        for number in (40, 41):
            await bot.send("pull_request", pull_request_event(shop, REPO, number, "opened"))
        await bot.settle()
        await bot.send("issue_comment", issue_comment_event(shop, REPO, 41, "/preview keep", user="alice"))
        await bot.settle()
        start = await pushed_at(bot, 40)

        assert (await pass_at(bot, start + timedelta(days=5))).actions == []
        report = await pass_at(bot, start + timedelta(days=6, hours=1))
        assert [(a.kind, a.target) for a in report.actions] == [("warn-idle", f"{REPO}#40")]
        [warning] = warnings(shop, 40)
        assert "removed in about 23 hours" in warning and "`/preview keep`" in warning
        assert (await pass_at(bot, start + timedelta(days=6, hours=2))).actions == []
    assert warnings(shop, 41) == []  # kept
    annotations = [d.metadata.annotations.get(WARNED_ANNOTATION) for d in view.deployments().values()]
    assert sorted(map(str, annotations)) == sorted(["None", f"{start:%Y-%m-%dT%H:%M:%SZ}@{'1' * 12}"])

    # A restart and a second replica: the claim is in the cluster, so nobody warns again.
    async with running_bot(shop, cluster, namespace, **env) as one, running_bot(shop, cluster, namespace, **env) as two:
        reports = await asyncio.gather(pass_at(one, start + timedelta(days=6, hours=3)),
                                       pass_at(two, start + timedelta(days=6, hours=3)))
        assert [r.actions for r in reports] == [[], []]
        assert len(warnings(shop, 40)) == 1

        # A push starts a new idle period: one more warning when it nears its end, from one replica only.
        shop.push(REPO, 40, "2" * 40)
        await one.send("pull_request", pull_request_event(shop, REPO, 40, "synchronize"))
        await one.settle()
        again = await pushed_at(one, 40)
        assert again > start
        assert (await pass_at(one, again + timedelta(days=5))).actions == []
        reports = await asyncio.gather(pass_at(one, again + timedelta(days=6, hours=1)),
                                       pass_at(two, again + timedelta(days=6, hours=1)))
        assert sorted(a.kind for r in reports for a in r.actions) == ["warn-idle"]
        assert len(warnings(shop, 40)) == 2

        # Past the TTL the preview goes, as before.
        report = await pass_at(one, again + TTL + timedelta(hours=1))
        assert [(a.kind, a.target) for a in report.actions] == [("teardown-idle", f"{REPO}#40")]


async def test_no_warning_when_disabled(shop: FakeGitHub, cluster: Cluster, namespace: str) -> None:
    async with running_bot(shop, cluster, namespace, PREVIEW_TTL_WARNING="0") as bot:
        shop.add_pull(REPO, 42)
        await bot.send("pull_request", pull_request_event(shop, REPO, 42, "opened"))
        await bot.settle()
        start = await pushed_at(bot, 42)
        assert (await pass_at(bot, start + timedelta(days=6, hours=23))).actions == []
    assert warnings(shop, 42) == []
