"""Linked previews across repositories, end to end: `/preview link`, both sticky comments, a redeploy of
the linked PR, `/preview unlink`, closing either PR, and the refusals."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bot import comment, explain, links
from bot.explaining import read_routing
from bot.naming import PreviewKey
from bot.reconcile import reconcile
from tests.e2e.harness import RunningBot, key_of, running_bot
from tests.fakegithub import FakeGitHub, issue_comment_event, pull_request_event
from tests.plugins.cluster import Cluster
from tests.plugins.mesh import Call, Mesh

pytestmark = pytest.mark.cluster

WEB, API = "acme/web", "acme/api"
WEB_CONFIG = "services:\n  - name: web\n    image: registry.example.com/acme/web:{sha}\n    port: 8080\n"
API_CONFIG = ("trigger: command\nservices:\n  - name: api\n    image: registry.example.com/acme/api:{sha}\n"
              "    port: 8080\n")


@pytest.fixture
def repos(fake_github: FakeGitHub) -> FakeGitHub:
    fake_github.add_repo(WEB, files={".github/preview.yml": WEB_CONFIG},
                         collaborators={"alice": "write", "bob": "write"})
    fake_github.add_repo(API, files={".github/preview.yml": API_CONFIG},
                         collaborators={"alice": "write", "bob": "read"})
    fake_github.add_repo("other/closed-app", files={}, installed=False, collaborators={"alice": "admin"})
    return fake_github


def replies(fake: FakeGitHub, repo: str, number: int) -> list[str]:
    return [str(c["body"]) for c in fake.comments(repo, number)
            if c["user"]["type"] == "Bot" and comment.MARKER not in str(c["body"])]


def sticky(fake: FakeGitHub, repo: str, number: int) -> str:
    [body] = [str(c["body"]) for c in fake.comments(repo, number) if comment.MARKER in str(c["body"])]
    return body


async def say(bot: RunningBot, repo: str, number: int, text: str, user: str = "alice") -> str:
    await bot.send("issue_comment", issue_comment_event(bot.fake, repo, number, text, user=user))
    await bot.settle()
    return replies(bot.fake, repo, number)[-1]


async def reached(bot: RunningBot, key: PreviewKey, namespace: str) -> str | None:
    routing, _ = await read_routing(bot.bot.kube)
    return explain.explain(routing, explain.Request(host=f"api.{namespace}", headers={"x-preview": key.value},
                                                    source_namespace=namespace)).reached()


async def test_link_lifecycle(repos: FakeGitHub, cluster: Cluster, namespace: str) -> None:
    web1, web3, api2 = key_of(repos, WEB, 1), key_of(repos, WEB, 3), key_of(repos, API, 2)
    api_real = f"api.{namespace}.svc.cluster.local"
    api_build = f"{api2.value}-api.{namespace}.svc.cluster.local"
    async with running_bot(repos, cluster, namespace) as bot:
        for repo, number in ((WEB, 1), (WEB, 3), (API, 2)):
            repos.add_pull(repo, number)
            await bot.send("pull_request", pull_request_event(repos, repo, number, "opened"))
        await bot.settle()
        assert await reached(bot, web1, namespace) == api_real  # api#2 is not deployed (trigger: command)

        # Refusals change nothing.
        assert "needs write access to acme/api too" in await say(bot, WEB, 1, f"/preview link {API}#2", user="bob")
        assert await say(bot, WEB, 1, "/preview link acme/api") == \
            "Usage: `/preview link owner/repo#N` (a pull request of a repository this App is installed on)."
        assert "cannot be linked to itself" in await say(bot, WEB, 1, f"/preview link {WEB}#1")
        assert "not installed on other/closed-app" in await say(bot, WEB, 1, "/preview link other/closed-app#1")
        assert "is not a pull request" in await say(bot, WEB, 1, f"/preview link {API}#99")
        assert "no live preview to join" in await say(bot, API, 2, f"/preview link {WEB}#1")
        assert await links.linked_to(bot.bot.kube, web1.value) == []

        # The link: api#2 is deployed and answers web#1's key; both sticky comments say so.
        reply = await say(bot, WEB, 1, f"/preview link {API}#2")
        assert reply.startswith(f"🔗 Linked {API}#2") and "https://preview-1-api-web.example.com" in reply
        assert await reached(bot, web1, namespace) == api_build
        assert await reached(bot, api2, namespace) == api_build
        assert await reached(bot, web3, namespace) == api_real
        assert f"🔗 Linked: {API}#2 joins this preview" in sticky(repos, WEB, 1)
        assert f"🔗 Linked to {WEB}#1" in sticky(repos, API, 2)
        assert "already linked to acme/web#1" in await say(bot, WEB, 3, f"/preview link {API}#2")
        assert "has pull requests linked to it" in await say(bot, WEB, 3, f"/preview link {WEB}#1")

        # A redeploy of the linked PR keeps the link.
        await say(bot, API, 2, "/preview")
        assert await reached(bot, web1, namespace) == api_build
        assert f"🔗 Linked to {WEB}#1" in sticky(repos, API, 2)

        # Unlink from the linked side.
        assert await say(bot, API, 2, "/preview unlink") == f"🔗 Unlinked {WEB}#1."
        assert await reached(bot, web1, namespace) == api_real
        assert await reached(bot, api2, namespace) == api_build  # its own preview stays
        assert "🔗" not in sticky(repos, WEB, 1) and "🔗" not in sticky(repos, API, 2)
        assert await say(bot, API, 2, "/preview unlink") == "This pull request has no links."

        # Closing the owner ends the link; the linked preview stays.
        await say(bot, WEB, 1, f"/preview link {API}#2")
        await bot.send("pull_request", pull_request_event(repos, WEB, 1, "closed"))
        await bot.settle()
        assert await reached(bot, web1, namespace) == api_real
        assert await reached(bot, api2, namespace) == api_build
        assert "🔗" not in sticky(repos, API, 2)
        assert await links.owner_of(bot.bot.kube, api2) is None

        # Closing the linked PR ends it too, and the owner's comment drops the line.
        await say(bot, WEB, 3, f"/preview link {API}#2")
        assert f"🔗 Linked: {API}#2" in sticky(repos, WEB, 3)
        await bot.send("pull_request", pull_request_event(repos, API, 2, "closed"))
        await bot.settle()
        assert "🔗" not in sticky(repos, WEB, 3)
        assert await reached(bot, web3, namespace) == api_real
        assert await links.linked_to(bot.bot.kube, web3.value) == []


async def test_link_deploys_a_fork_and_respects_the_other_repositorys_cap(repos: FakeGitHub, cluster: Cluster,
                                                                          namespace: str) -> None:
    api5 = key_of(repos, API, 5)
    async with running_bot(repos, cluster, namespace, PREVIEW_MAX_PER_REPO="1") as bot:
        repos.add_pull(WEB, 1)
        repos.add_pull(API, 5, fork=True, user="mallory")
        repos.add_pull(API, 6)
        await bot.send("pull_request", pull_request_event(repos, WEB, 1, "opened"))
        await bot.send("pull_request", pull_request_event(repos, API, 5, "opened"))
        await bot.settle()
        live: list[Any] = await bot.bot.kube.live_previews((bot.fake.repos[API].id, API))
        assert live == []  # a fork's code does not run before a writer approves it
        # The link, by a writer of both repositories, approves the fork's head when it names it in full.
        head = repos.repos[API].pulls[5].head_sha
        reply = await say(bot, WEB, 1, f"/preview link {API}#5")
        assert reply.startswith(f"Not linked: {API}#5: Nothing was deployed: the pull request comes from a fork")
        assert f"comment `/preview link {API}#5 {head}`" in reply
        assert await bot.bot.kube.live_previews((bot.fake.repos[API].id, API)) == []
        reply = await say(bot, WEB, 1, f"/preview link {API}#5 {head}")
        assert reply.startswith(f"🔗 Linked {API}#5")
        assert [p.key for p in await bot.bot.kube.live_previews((bot.fake.repos[API].id, API))] == [api5.value]
        # acme/api is at its cap of one live preview: a second linked deploy is refused with the reason.
        reply = await say(bot, WEB, 1, f"/preview link {API}#6")
        assert reply.startswith(f"Not linked: {API}#6 could not be deployed: Nothing was deployed: this repository "
                                "already has 1 live preview (the limit is 1)")


@pytest.mark.mesh
async def test_one_url_exercises_both_builds_on_the_data_plane(repos: FakeGitHub, cluster: Cluster, namespace: str,
                                                               mesh: Mesh) -> None:
    """Real istiod + Envoy: web#1's preview URL -> web#1's build, which calls the API -> api#2's build."""
    web1, api2 = key_of(repos, WEB, 1), key_of(repos, API, 2)
    real_api = mesh.real_service(namespace, "api").host
    sidecar_web = mesh.sidecar("web", namespace)
    mesh.on_preview(namespace, "web", Call(via=sidecar_web, host=real_api))
    web_build = f"{web1.object_name('web')}.{namespace}.svc.cluster.local"
    api_build = f"{api2.object_name('api')}.{namespace}.svc.cluster.local"
    async with running_bot(repos, cluster, namespace, **mesh.bot_env) as bot:
        for repo, number in ((WEB, 1), (API, 2)):
            repos.add_pull(repo, number)
            await bot.send("pull_request", pull_request_event(repos, repo, number, "opened"))
        await bot.settle()
        answer = await mesh.wait_for(mesh.gateway, "preview-1-api-web.example.com", web_build)
        assert answer.downstream is not None and answer.downstream.workload == real_api

        assert (await say(bot, WEB, 1, f"/preview link {API}#2")).startswith("🔗 Linked")
        answer = await mesh.wait_until(mesh.gateway, "preview-1-api-web.example.com",
                                       lambda a: a.downstream is not None and a.downstream.workload == api_build)
        assert answer.workload == web_build and answer.downstream is not None
        assert answer.downstream.headers["x-preview"] == web1.value

        await say(bot, API, 2, "/preview unlink")
        await mesh.wait_until(mesh.gateway, "preview-1-api-web.example.com",
                              lambda a: a.downstream is not None and a.downstream.workload == real_api)


async def test_the_owners_idle_ttl_ends_the_link(repos: FakeGitHub, cluster: Cluster, namespace: str) -> None:
    web1, api2 = key_of(repos, WEB, 1), key_of(repos, API, 2)
    async with running_bot(repos, cluster, namespace) as bot:
        repos.add_pull(WEB, 1)
        repos.add_pull(API, 2)
        await bot.send("pull_request", pull_request_event(repos, WEB, 1, "opened"))
        await bot.settle()
        assert (await say(bot, WEB, 1, f"/preview link {API}#2")).startswith("🔗 Linked")
        await bot.send("issue_comment", issue_comment_event(repos, API, 2, "/preview keep", user="alice"))
        await bot.settle()
        b = bot.bot
        report = await reconcile(b.kube, b.previewer, b.client_for, idle_ttl=timedelta(days=7),
                                 now=datetime.now(UTC) + timedelta(days=8))
        assert [(a.kind, a.target) for a in report.actions] == [("teardown-idle", f"{WEB}#1")]
        assert [p.key for p in await b.kube.live_previews()] == [api2.value]
        assert await links.owner_of(b.kube, api2) is None
        assert await reached(bot, web1, namespace) == f"api.{namespace}.svc.cluster.local"
        assert "🔗" not in sticky(repos, API, 2)


async def test_links_made_before_preview_namespace_changed_are_found_where_their_routes_send(
        repos: FakeGitHub, cluster: Cluster, namespace: str, team_namespace: str) -> None:
    """PREVIEW_NAMESPACE changes (serve restarted with another one) while linked previews live in the old
    namespace: their link records are read where their gateway routes send, so a link is neither stolen
    nor lost, a redeploy of the linked PR moves it with its link (and its rollout wait ends ready), and
    `/preview unlink` ends a link whose preview is still in the old namespace."""
    web1, api2, api4 = key_of(repos, WEB, 1), key_of(repos, API, 2), key_of(repos, API, 4)
    async with running_bot(repos, cluster, namespace) as bot:
        for repo, number in ((WEB, 1), (WEB, 3), (API, 2), (API, 4)):
            repos.add_pull(repo, number)
            await bot.send("pull_request", pull_request_event(repos, repo, number, "opened"))
        await bot.settle()
        assert (await say(bot, WEB, 1, f"/preview link {API}#2")).startswith("🔗 Linked")
        assert (await say(bot, WEB, 3, f"/preview link {API}#4")).startswith("🔗 Linked")
    moved = f"{api2.object_name('api')}.{team_namespace}.svc.cluster.local"
    async with running_bot(repos, cluster, namespace, PREVIEW_NAMESPACE=team_namespace) as bot:
        await bot.startup_pass()
        kube = bot.bot.kube
        assert await links.linked_to(kube, web1.value) == [(API, 2, api2.value)]
        assert await links.owner_of(kube, api2) == (f"{WEB}#1", web1.value)
        assert "already linked to acme/web#1" in await say(bot, WEB, 3, f"/preview link {API}#2")
        assert await links.owner_of(kube, api2) == (f"{WEB}#1", web1.value)

        # A redeploy of the linked PR moves it to the new namespace, link and all, and reports it ready.
        await bot.send("issue_comment", issue_comment_event(repos, API, 2, "/preview", user="alice"))
        await bot.settle()
        assert await reached(bot, web1, team_namespace) == moved
        assert await links.owner_of(kube, api2) == (f"{WEB}#1", web1.value)
        assert f"🔗 Linked to {WEB}#1" in sticky(repos, API, 2)
        record = max((d for d in repos.deployments(API) if d["environment"] == api2.environment), key=lambda d: d["id"])
        assert repos.statuses(API, record["id"])[-1]["state"] == "success"
        assert [p.namespace for p in await kube.live_previews((repos.repos[API].id, API)) if p.key == api2.value] \
            == [team_namespace]

        # An unlink whose linked preview is still in the old namespace.
        assert await say(bot, WEB, 3, "/preview unlink") == f"🔗 Unlinked {API}#4."
        assert await links.owner_of(kube, api4) is None
        assert "🔗" not in sticky(repos, WEB, 3) and "🔗" not in sticky(repos, API, 4)
