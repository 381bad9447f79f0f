"""Repository identity is GitHub's numeric `repository.id`, on the real control plane: a renamed or
transferred repository keeps its live preview (push redeploys it, close tears it down, the reconciler
leaves it alone), and previews made by the version keyed by names keep working after the upgrade."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from bot import comment, naming
from bot.kube import Kube
from bot.settings import ClusterSettings
from tests.e2e.harness import REPO, ClusterView, RunningBot, key_of, running_bot
from tests.fakegithub import FakeGitHub, pull_request_event
from tests.fakegithub.state import fake_sha
from tests.plugins.cluster import Cluster

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
LEGACY = ROOT / "tests" / "unit" / "data" / "legacy-render-v1.yaml"  # `make render` of the name-keyed version
LEGACY_SHA = "4f9c2b1e8d7a6c5b4a3f2e1d0c9b8a7f6e5d4c3b"
LEGACY_KEY = "preview-123-d21b2c"


async def push(bot: RunningBot, repo: str, number: int, sha: str, files: dict[str, str | None] | None = None) -> None:
    bot.fake.push(repo, number, sha, files=files)
    assert await bot.send("pull_request", pull_request_event(bot.fake, repo, number, "synchronize")) == 202
    await bot.settle()


async def close(bot: RunningBot, repo: str, number: int) -> None:
    assert await bot.send("pull_request", pull_request_event(bot.fake, repo, number, "closed")) == 202
    await bot.settle()


def gateway_hosts(view: ClusterView) -> list[str]:
    return sorted(h for vs in view.virtual_services().values() if vs["spec"].get("gateways")
                  for h in vs["spec"]["hosts"])


def last_state(fake: FakeGitHub, repo: str) -> str:
    """The state of the repository's newest GitHub deployment (a teardown deletes them: those count too)."""
    return str(max(fake.deployments(repo, deleted=True), key=lambda d: d["id"])["state"])


def nothing_left(view: ClusterView) -> None:
    assert view.deployments() == {}
    assert view.services() == []
    assert view.virtual_services() == {}


async def test_rename_and_transfer_keep_the_preview(shop: FakeGitHub, cluster: Cluster, namespace: str,
                                                    view: ClusterView) -> None:
    """The default template: before, the push after a rename failed with "host ... is already used by a
    preview of acme/shop" and close removed nothing."""
    async with running_bot(shop, cluster, namespace) as bot:
        shop.add_pull(REPO, 8)
        assert await bot.send("pull_request", pull_request_event(shop, REPO, 8, "opened")) == 202
        await bot.settle()
        key = key_of(shop, REPO, 8)
        assert list(view.deployments()) == [key.object_name("a")]

        shop.rename_repo(REPO, "acme/storefront")
        # No event yet: the reconciler finds the PR by the repository id, not by the old name.
        report = await bot.bot.reconcile_once()
        assert [a.kind for a in report.actions] == [] and report.errors == []
        await push(bot, "acme/storefront", 8, fake_sha("storefront-8"))
        assert key_of(shop, "acme/storefront", 8) == key
        [deployment] = view.deployments().values()
        assert deployment.metadata.name == key.object_name("a")
        assert deployment.metadata.annotations[naming.REPO_ANNOTATION] == "acme/storefront"
        assert deployment.metadata.annotations[naming.SHA_ANNOTATION] == fake_sha("storefront-8")
        assert deployment.metadata.labels[naming.REPO_ID_LABEL] == str(shop.repos["acme/storefront"].id)
        assert last_state(shop, "acme/storefront") == "success"
        assert len([c for c in shop.comments("acme/storefront", 8) if comment.MARKER in c["body"]]) == 1

        shop.rename_repo("acme/storefront", "bigco/storefront")  # a transfer: another installation too
        await close(bot, "bigco/storefront", 8)
        nothing_left(view)
        assert last_state(shop, "bigco/storefront") == "inactive"


async def test_rename_moves_the_host_when_the_template_names_the_repository(
        shop: FakeGitHub, cluster: Cluster, namespace: str, view: ClusterView) -> None:
    async with running_bot(shop, cluster, namespace, PREVIEW_HOST_TEMPLATE="{service}-{repo}-{number}.{domain}") as bot:
        shop.add_pull(REPO, 9)
        assert await bot.send("pull_request", pull_request_event(shop, REPO, 9, "opened")) == 202
        await bot.settle()
        assert gateway_hosts(view) == ["a-shop-9.example.com"]
        shop.rename_repo(REPO, "acme/storefront")
        await push(bot, "acme/storefront", 9, fake_sha("storefront-9"))
        # One preview, its route on the new host only (the old host's route is gone, not orphaned).
        assert gateway_hosts(view) == ["a-storefront-9.example.com"]
        assert list(view.deployments()) == [key_of(shop, "acme/storefront", 9).object_name("a")]
        body = next(c["body"] for c in shop.comments("acme/storefront", 9) if comment.MARKER in c["body"])
        assert "https://a-storefront-9.example.com" in body
        await close(bot, "acme/storefront", 9)
        nothing_left(view)


async def test_a_repository_the_app_left_loses_its_preview(shop: FakeGitHub, cluster: Cluster, namespace: str,
                                                           view: ClusterView) -> None:
    """The reconciler looks repositories up by id among the App's installations: one that is gone from them
    (uninstalled, or transferred to an account without the App) has its preview removed."""
    async with running_bot(shop, cluster, namespace) as bot:
        shop.add_pull(REPO, 4)
        assert await bot.send("pull_request", pull_request_event(shop, REPO, 4, "opened")) == 202
        await bot.settle()
        assert len(view.deployments()) == 1
        shop.uninstall_repo(REPO)
        report = await bot.bot.reconcile_once()
        assert [(a.kind, a.reason) for a in report.actions] == [
            ("teardown-closed", "App not installed on the repository")]
        nothing_left(view)


def legacy_documents(namespace: str) -> list[dict[str, Any]]:
    """The name-keyed version's objects for acme/shop PR #123 (`make render` then), moved into `namespace`."""
    text = LEGACY.read_text()
    # Object names derive from the hosts: renamed with them, as that version would have named them here.
    for old, new in ((naming.mesh_route_name("a.default.svc.cluster.local"),
                      naming.mesh_route_name(f"a.{namespace}.svc.cluster.local")),
                     (naming.mesh_route_name("b.shop.svc.cluster.local"),
                      naming.mesh_route_name(f"b.{namespace}.svc.cluster.local"))):
        assert old in text, old
        text = text.replace(old, new)
    for old, new in (("namespace: istio-system", f"namespace: {namespace}"),
                     ("namespace: default", f"namespace: {namespace}"),
                     (".default.svc.cluster.local", f".{namespace}.svc.cluster.local"),
                     ("b.shop.svc.cluster.local", f"b.{namespace}.svc.cluster.local"),
                     ("istio-system/preview-gateway", f"{namespace}/preview-gateway")):
        text = text.replace(old, new)
    return [d for d in yaml.safe_load_all(text) if d]


async def make_legacy_preview(cluster: Cluster, namespace: str, fake: FakeGitHub) -> None:
    """What the name-keyed version left in the cluster for a live PR, applied as it applied it
    (server-side apply, field manager preview-bot), and the repository it came from."""
    config = (ROOT / "examples" / ".github" / "preview.yml").read_text().replace(
        "b.shop.svc.cluster.local", f"b.{namespace}.svc.cluster.local")
    fake.add_repo(REPO, files={".github/preview.yml": config}, collaborators={"alice": "write"})
    fake.add_pull(REPO, 123, head_sha=LEGACY_SHA, files={"services/a/main.go": "package main\n"})
    kube = Kube.from_environment(ClusterSettings(domain="example.com", namespace=namespace,
                                                 routing_namespace=namespace), str(cluster.kubeconfig))
    try:
        for document in legacy_documents(namespace):
            await kube.apply(document)
    finally:
        kube.close()


def legacy_state(view: ClusterView, namespace: str) -> tuple[list[str], dict[str, str], list[str]]:
    deployments = view.deployments()
    ids = {d.metadata.labels.get(naming.REPO_ID_LABEL, "none") for d in deployments.values()}
    routes = [r["name"] for r in view.mesh_routes(f"a.{namespace}.svc.cluster.local")]
    return sorted(deployments), {"ids": ",".join(sorted(ids))}, routes


async def test_a_legacy_preview_is_kept_by_a_push_after_the_upgrade(fake_github: FakeGitHub, cluster: Cluster,
                                                                    namespace: str, view: ClusterView) -> None:
    await make_legacy_preview(cluster, namespace, fake_github)
    names = [f"{LEGACY_KEY}-a", f"{LEGACY_KEY}-b"]
    assert legacy_state(view, namespace) == (names, {"ids": "none"}, [LEGACY_KEY, "default"])
    repo_id = str(fake_github.repos[REPO].id)
    async with running_bot(fake_github, cluster, namespace) as bot:
        await push(bot, REPO, 123, fake_sha("after-upgrade"), {"services/a/main.go": "package main // 2\n"})
        # Same objects, same key (header value), now labelled with the repository id; no duplicate preview.
        assert legacy_state(view, namespace) == (names, {"ids": repo_id}, [LEGACY_KEY, "default"])
        deployment = view.deployments()[f"{LEGACY_KEY}-a"]
        assert naming.REPO_LABEL not in deployment.metadata.labels
        assert deployment.metadata.annotations[naming.SHA_ANNOTATION] == fake_sha("after-upgrade")
        assert last_state(fake_github, REPO) == "success"
        shop_key = key_of(fake_github, REPO, 123)
        assert shop_key.value != LEGACY_KEY  # a new PR would get the id's key; this one keeps its own
        # Renamed afterwards: still the same preview.
        fake_github.rename_repo(REPO, "acme/storefront")
        await close(bot, "acme/storefront", 123)
        nothing_left(view)


async def test_a_legacy_preview_is_adopted_by_the_reconciler_then_survives_a_rename(
        fake_github: FakeGitHub, cluster: Cluster, namespace: str, view: ClusterView) -> None:
    await make_legacy_preview(cluster, namespace, fake_github)
    repo_id = str(fake_github.repos[REPO].id)
    async with running_bot(fake_github, cluster, namespace) as bot:
        report = await bot.bot.reconcile_once()
        assert [(a.kind, a.target) for a in report.actions] == [("adopt", f"{REPO}#123")]
        assert legacy_state(view, namespace)[1] == {"ids": repo_id}
        assert [(a.kind) for a in (await bot.bot.reconcile_once()).actions] == []  # done once
        fake_github.rename_repo(REPO, "acme/storefront")
        assert (await bot.bot.reconcile_once()).actions == []  # found by id: not "closed", not "not installed"
        await push(bot, "acme/storefront", 123, fake_sha("renamed"), {"services/a/main.go": "package main // 3\n"})
        assert legacy_state(view, namespace) == ([f"{LEGACY_KEY}-a", f"{LEGACY_KEY}-b"], {"ids": repo_id},
                                                 [LEGACY_KEY, "default"])
        await close(bot, "acme/storefront", 123)
        nothing_left(view)
