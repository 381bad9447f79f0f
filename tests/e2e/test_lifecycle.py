"""A preview's whole life over HTTP: signed webhook -> cluster objects -> PR comment and Deployment
statuses -> teardown. Real aiohttp app, fake GitHub checked against GitHub's OpenAPI description,
real kube-apiserver with Istio's CRDs and kwok-run pods."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from bot import comment
from tests.e2e.harness import CONFIG, REPO, ClusterView, RunningBot, key_of, running_bot
from tests.fakegithub import FakeGitHub, issue_comment_event, pull_request_event
from tests.plugins.cluster import Cluster

pytestmark = pytest.mark.cluster

MESH_HOST_TEMPLATE = "a.{ns}.svc.cluster.local"


@pytest.fixture
async def bot(shop: FakeGitHub, cluster: Cluster, namespace: str) -> AsyncIterator[RunningBot]:
    async with running_bot(shop, cluster, namespace) as running:
        yield running


def sticky_comments(fake: FakeGitHub, repo: str, number: int) -> list[dict[str, object]]:
    return [c for c in fake.comments(repo, number) if comment.MARKER in str(c["body"])]


def states(fake: FakeGitHub, repo: str, deployment_id: int) -> list[str]:
    return [s["state"] for s in fake.statuses(repo, deployment_id)]


async def open_pr(bot: RunningBot, number: int, repo: str = REPO, **kwargs: object) -> None:
    bot.fake.add_pull(repo, number, **kwargs)  # type: ignore[arg-type]
    assert await bot.send("pull_request", pull_request_event(bot.fake, repo, number, "opened")) == 202


async def test_open_deploys_and_reports(bot: RunningBot, view: ClusterView, namespace: str) -> None:
    await open_pr(bot, 1, head_sha="a" * 40)
    await bot.settle()
    key = key_of(bot.fake, REPO, 1)
    name = key.object_name("a")

    deployment = view.deployments()[name]
    assert deployment.spec.template.spec.containers[0].image == f"registry.example.com/acme/a:{'a' * 40}"
    assert deployment.status.available_replicas == 1
    assert view.services() == [name]
    gateway = view.virtual_services()["preview-gw-preview-1-api-a-example-com"]
    assert gateway["spec"]["hosts"] == ["preview-1-api-a.example.com"]
    assert gateway["spec"]["http"][0]["headers"]["request"]["set"] == {"x-preview": key.value}
    routes = view.mesh_routes(MESH_HOST_TEMPLATE.format(ns=namespace))
    assert [r["name"] for r in routes] == [key.value, "default"]
    assert routes[0]["match"] == [{"headers": {"x-preview": {"exact": key.value}}, "port": 8080}]

    stickies = sticky_comments(bot.fake, REPO, 1)
    assert len(stickies) == 1
    assert "https://preview-1-api-a.example.com" in str(stickies[0]["body"])
    assert "ready" in str(stickies[0]["body"])
    records = bot.fake.deployments(REPO)
    assert len(records) == 1, [(d["id"], d["sha"], d["state"], d["created_at"]) for d in records]
    [deployment_record] = records
    assert deployment_record["environment"] == "preview-1"
    assert deployment_record["transient_environment"] is True
    assert deployment_record["production_environment"] is False
    assert states(bot.fake, REPO, deployment_record["id"]) == ["in_progress", "success"]
    success = bot.fake.statuses(REPO, deployment_record["id"])[-1]
    assert success["environment_url"] == "https://preview-1-api-a.example.com"


async def test_push_redeploys_and_edits_the_same_comment(bot: RunningBot, view: ClusterView) -> None:
    await open_pr(bot, 2, head_sha="b" * 40)
    await bot.settle()
    first_comment = sticky_comments(bot.fake, REPO, 2)[0]["id"]

    bot.fake.push(REPO, 2, "c" * 40)
    assert await bot.send("pull_request", pull_request_event(bot.fake, REPO, 2, "synchronize")) == 202
    await bot.settle()

    name = key_of(bot.fake, REPO, 2).object_name("a")
    assert view.deployments()[name].spec.template.spec.containers[0].image.endswith("c" * 40)
    stickies = sticky_comments(bot.fake, REPO, 2)
    assert [c["id"] for c in stickies] == [first_comment]
    assert "cccccccccccc" in str(stickies[0]["body"])
    old, new = sorted(bot.fake.deployments(REPO), key=lambda d: d["id"])
    assert old["sha"] == "b" * 40 and new["sha"] == "c" * 40
    assert states(bot.fake, REPO, old["id"])[-1] == "inactive"
    assert states(bot.fake, REPO, new["id"]) == ["in_progress", "success"]


async def test_close_tears_everything_down(bot: RunningBot, view: ClusterView, namespace: str) -> None:
    await open_pr(bot, 3)
    await bot.settle()
    assert view.deployments()

    assert await bot.send("pull_request", pull_request_event(bot.fake, REPO, 3, "closed", merged=True)) == 202
    await bot.settle()
    assert view.deployments() == {}
    assert view.services() == []
    assert [n for n in view.virtual_services() if n.startswith("preview-gw")] == []
    # The mesh VirtualService the bot created for the host is gone with its last route.
    assert view.mesh_routes(MESH_HOST_TEMPLATE.format(ns=namespace)) == []
    # The GitHub deployment was marked inactive, then deleted (environments do not fill up).
    assert bot.fake.deployments(REPO) == []
    [record] = bot.fake.deployments(REPO, deleted=True)
    assert record["deleted"] and states(bot.fake, REPO, record["id"])[-1] == "inactive"
    assert "merged" in str(sticky_comments(bot.fake, REPO, 3)[0]["body"])


async def test_preview_stop_command(bot: RunningBot, view: ClusterView) -> None:
    await open_pr(bot, 4)
    await bot.settle()
    payload = issue_comment_event(bot.fake, REPO, 4, "/preview stop", user="alice")
    assert await bot.send("issue_comment", payload) == 202
    await bot.settle()
    assert view.deployments() == {}
    assert [r["content"] for r in bot.fake.reactions(REPO, comment_id=payload["comment"]["id"])] == ["+1"]
    assert "Stopped by @alice" in str(sticky_comments(bot.fake, REPO, 4)[0]["body"])


async def test_two_prs_at_once_keep_both_routes(bot: RunningBot, view: ClusterView, namespace: str) -> None:
    bot.fake.add_pull(REPO, 12)
    bot.fake.add_pull(REPO, 123)
    await asyncio.gather(
        bot.send("pull_request", pull_request_event(bot.fake, REPO, 12, "opened")),
        bot.send("pull_request", pull_request_event(bot.fake, REPO, 123, "opened")))
    await bot.settle()
    routes = view.mesh_routes(MESH_HOST_TEMPLATE.format(ns=namespace))
    keys = [key_of(bot.fake, REPO, 12).value, key_of(bot.fake, REPO, 123).value]
    assert [r["name"] for r in routes] == [*sorted(keys), "default"]
    assert "match" not in routes[-1]
    for route in routes[:-1]:
        assert route["match"][0]["headers"]["x-preview"] == {"exact": route["name"]}


async def test_same_event_twice_is_idempotent(bot: RunningBot, view: ClusterView, namespace: str) -> None:
    bot.fake.add_pull(REPO, 5)
    payload = pull_request_event(bot.fake, REPO, 5, "opened")
    await bot.send("pull_request", payload)
    await bot.settle()
    before = (sorted(view.deployments()), view.services(), sorted(view.virtual_services()),
              view.mesh_routes(MESH_HOST_TEMPLATE.format(ns=namespace)))
    await bot.send("pull_request", payload)  # a second delivery id: processed again
    await bot.settle()
    after = (sorted(view.deployments()), view.services(), sorted(view.virtual_services()),
             view.mesh_routes(MESH_HOST_TEMPLATE.format(ns=namespace)))
    assert after == before
    assert len(sticky_comments(bot.fake, REPO, 5)) == 1


async def test_redelivery_is_processed_once(bot: RunningBot) -> None:
    bot.fake.add_pull(REPO, 6)
    payload = pull_request_event(bot.fake, REPO, 6, "opened")
    assert await bot.send("pull_request", payload, delivery="d-6") == 202
    assert await bot.send("pull_request", payload, delivery="d-6") == 200
    await bot.settle()
    assert len(bot.fake.deployments(REPO)) == 1


async def test_bad_signature_changes_nothing(bot: RunningBot, view: ClusterView) -> None:
    await bot.startup_pass()  # its own GitHub calls (and a deploy of an open PR it finds) are not the event's
    bot.fake.add_pull(REPO, 8)
    calls_before = len(bot.fake.requests)
    status = await bot.send("pull_request", pull_request_event(bot.fake, REPO, 8, "opened"),
                            secret="not-the-secret-0000000")
    await bot.settle()
    assert status == 401
    assert len(bot.fake.requests) == calls_before
    assert view.deployments() == {}


async def test_bad_config_is_reported_and_nothing_deployed(fake_github: FakeGitHub, cluster: Cluster,
                                                           namespace: str, view: ClusterView) -> None:
    fake_github.add_repo("acme/broken", files={".github/preview.yml": "services:\n  - name: a\n    image: x\n"
                                                                      "    port: seventy\n"})
    async with running_bot(fake_github, cluster, namespace) as bot:
        await open_pr(bot, 9, repo="acme/broken")
        await bot.settle()
    body = str(sticky_comments(fake_github, "acme/broken", 9)[0]["body"])
    assert ".github/preview.yml: services[0].port" in body
    assert view.deployments() == {}
    assert fake_github.deployments("acme/broken") == []


async def test_config_over_1_mb_is_reported_with_its_size(fake_github: FakeGitHub, cluster: Cluster,
                                                           namespace: str, view: ClusterView) -> None:
    """GitHub answers a file over 1 MB without its content: the PR says so (it read as an empty file)."""
    padding = "# padding\n" * 120_000
    fake_github.add_repo("acme/huge", files={".github/preview.yml": CONFIG + padding})
    async with running_bot(fake_github, cluster, namespace) as bot:
        await open_pr(bot, 9, repo="acme/huge")
        await bot.settle()
    body = str(sticky_comments(fake_github, "acme/huge", 9)[0]["body"])
    assert f".github/preview.yml: is {len((CONFIG + padding).encode())} bytes; GitHub's contents API" in body
    assert view.deployments() == {}
    assert fake_github.deployments("acme/huge") == []


async def test_two_repositories_with_the_same_pr_number_do_not_collide(
        fake_github: FakeGitHub, cluster: Cluster, namespace: str, view: ClusterView) -> None:
    template = "preview-{number}-{repo}-{service}.{domain}"
    for repo in ("acme/shop", "other/shop-ui"):
        fake_github.add_repo(repo, files={".github/preview.yml": CONFIG})
    async with running_bot(fake_github, cluster, namespace, PREVIEW_HOST_TEMPLATE=template) as bot:
        for repo in ("acme/shop", "other/shop-ui"):
            await open_pr(bot, 7, repo=repo)
        await bot.settle()
        keys = sorted(key_of(fake_github, repo, 7).value for repo in ("acme/shop", "other/shop-ui"))
        assert keys[0] != keys[1]
        assert sorted(view.deployments()) == sorted(key_of(fake_github, r, 7).object_name("a")
                                                    for r in ("acme/shop", "other/shop-ui"))
        routes = view.mesh_routes(MESH_HOST_TEMPLATE.format(ns=namespace))
        assert [r["name"] for r in routes] == [*keys, "default"]
        # Closing one repository's PR #7 leaves the other's preview alone.
        assert await bot.send("pull_request", pull_request_event(fake_github, "acme/shop", 7, "closed")) == 202
        await bot.settle()
        assert sorted(view.deployments()) == [key_of(fake_github, "other/shop-ui", 7).object_name("a")]
        routes = view.mesh_routes(MESH_HOST_TEMPLATE.format(ns=namespace))
        assert [r["name"] for r in routes] == [key_of(fake_github, "other/shop-ui", 7).value, "default"]


async def test_same_host_from_two_repositories_is_refused(
        fake_github: FakeGitHub, cluster: Cluster, namespace: str, view: ClusterView) -> None:
    """The default host template has no repository in it: the second repository must not take the host."""
    for repo in ("acme/shop", "other/shop"):
        fake_github.add_repo(repo, files={".github/preview.yml": CONFIG})
    async with running_bot(fake_github, cluster, namespace) as bot:
        await open_pr(bot, 7, repo="acme/shop")
        await bot.settle()
        await open_pr(bot, 7, repo="other/shop")
        await bot.settle()
    gateway = view.virtual_services()["preview-gw-preview-7-api-a-example-com"]
    assert gateway["metadata"]["annotations"]["preview-bot.dev/repository"] == "acme/shop"
    body = str(sticky_comments(fake_github, "other/shop", 7)[0]["body"])
    assert "already used by a preview of acme/shop" in body
    [record] = fake_github.deployments("other/shop")
    assert states(fake_github, "other/shop", record["id"])[-1] == "failure"


async def test_same_host_from_two_repositories_at_once_has_one_owner(
        fake_github: FakeGitHub, cluster: Cluster, namespace: str, view: ClusterView) -> None:
    """Both repositories open PR #n at the same moment: the API server lets one create the host's gateway
    VirtualService; the other is refused, however the two deploys interleave."""
    repos = ("acme/shop", "other/shop")
    for repo in repos:
        fake_github.add_repo(repo, files={".github/preview.yml": CONFIG})
    numbers = (31, 32, 33)
    async with running_bot(fake_github, cluster, namespace) as bot:
        for number in numbers:
            for repo in repos:
                fake_github.add_pull(repo, number)
        await asyncio.gather(*(bot.send("pull_request", pull_request_event(fake_github, repo, number, "opened"))
                               for number in numbers for repo in repos))
        await bot.settle()
    for number in numbers:
        gateway = view.virtual_services()[f"preview-gw-preview-{number}-api-a-example-com"]
        owner = gateway["metadata"]["annotations"]["preview-bot.dev/repository"]
        [loser] = [r for r in repos if r != owner]
        header = gateway["spec"]["http"][0]["headers"]["request"]["set"]["x-preview"]
        assert header == key_of(fake_github, owner, number).value
        assert "Preview: ready" in str(sticky_comments(fake_github, owner, number)[0]["body"])
        assert f"already used by a preview of {owner}" in str(sticky_comments(fake_github, loser, number)[0]["body"])
        assert key_of(fake_github, loser, number).object_name("a") not in view.deployments()


async def test_only_changed_services_are_deployed(fake_github: FakeGitHub, cluster: Cluster, namespace: str,
                                                  view: ClusterView) -> None:
    config = ("services:\n"
              "  - {name: a, image: 'registry.example.com/a:{sha}', port: 8080, paths: ['services/a/**']}\n"
              "  - {name: b, image: 'registry.example.com/b:{sha}', port: 9090, paths: ['services/b/**']}\n")
    fake_github.add_repo("acme/mono", files={".github/preview.yml": config})
    async with running_bot(fake_github, cluster, namespace) as bot:
        await open_pr(bot, 10, repo="acme/mono", files={"services/a/main.go": "package main\n"})
        await bot.settle()
        key = key_of(fake_github, "acme/mono", 10)
        assert list(view.deployments()) == [key.object_name("a")]
        # A later push that also touches b adds b; the PR's whole diff counts, so a stays.
        bot.fake.push("acme/mono", 10, "d" * 40, files={"services/b/main.go": "package main\n"})
        assert await bot.send("pull_request", pull_request_event(bot.fake, "acme/mono", 10, "synchronize")) == 202
        await bot.settle()
        assert sorted(view.deployments()) == sorted([key.object_name("a"), key.object_name("b")])
        assert [r["name"] for r in view.mesh_routes(f"b.{namespace}.svc.cluster.local")] == [key.value, "default"]


async def test_a_base_branch_change_redeploys_what_the_new_diff_selects(
        fake_github: FakeGitHub, cluster: Cluster, namespace: str, view: ClusterView) -> None:
    """GitHub sends `pull_request` `edited` with `changes.base` when a PR is retargeted: its diff, so what
    `paths` select, changes with the same head. A title or body edit (also `edited`) is ignored at intake."""
    config = ("services:\n"
              "  - {name: a, image: 'registry.example.com/a:{sha}', port: 8080, paths: ['services/a/**']}\n"
              "  - {name: b, image: 'registry.example.com/b:{sha}', port: 9090, paths: ['services/b/**']}\n")
    fake_github.add_repo("acme/mono", files={".github/preview.yml": config, "services/b/main.go": "v2"},
                         ref_files={"release": {".github/preview.yml": config, "services/b/main.go": "v1"}},
                         collaborators={"alice": "write"})
    async with running_bot(fake_github, cluster, namespace) as bot:
        # Branched from `release`, into `release`: against it, the PR changes only a.
        await open_pr(bot, 12, repo="acme/mono", files={"services/a/main.go": "package main\n"}, base="release")
        await bot.settle()
        key = key_of(fake_github, "acme/mono", 12)
        assert list(view.deployments()) == [key.object_name("a")]
        requests = len(fake_github.requests)
        title = {"title": {"from": "Old title"}, "body": {"from": "old text"}}
        edited = pull_request_event(fake_github, "acme/mono", 12, "edited", changes=title)
        assert await bot.send("pull_request", edited) == 202
        await bot.settle()
        assert len(fake_github.requests) == requests, "a title edit is not work"
        # Retargeted to main: against it, the PR also changes services/b (release's older b), same head.
        changes = fake_github.change_base("acme/mono", 12, "main")
        edited = pull_request_event(fake_github, "acme/mono", 12, "edited", changes=changes)
        assert await bot.send("pull_request", edited) == 202
        await bot.settle()
        assert sorted(view.deployments()) == sorted([key.object_name("a"), key.object_name("b")])
        assert [r["name"] for r in view.mesh_routes(f"b.{namespace}.svc.cluster.local")] == [key.value, "default"]
        body = str(sticky_comments(fake_github, "acme/mono", 12)[0]["body"])
        assert "preview-12-api-b.example.com" in body and "ready" in body
        newest = max(fake_github.deployments("acme/mono"), key=lambda d: d["id"])
        assert states(fake_github, "acme/mono", newest["id"])[-1] == "success"
        # Stopped at this head: a retarget asks for no preview, so it stays stopped (a push would not).
        stop = issue_comment_event(fake_github, "acme/mono", 12, "/preview stop", user="alice")
        assert await bot.send("issue_comment", stop) == 202
        await bot.settle()
        assert view.deployments() == {}
        changes = fake_github.change_base("acme/mono", 12, "release")
        edited = pull_request_event(fake_github, "acme/mono", 12, "edited", changes=changes)
        assert await bot.send("pull_request", edited) == 202
        await bot.settle()
        assert view.deployments() == {}


async def test_a_preview_that_never_becomes_available_fails_with_the_reason(
        fake_github: FakeGitHub, cluster: Cluster, namespace: str, view: ClusterView) -> None:
    # Far more memory than the fake node has: the pod stays Pending.
    config = CONFIG + "    resources: {requests: {memory: 900Gi}, limits: {memory: 900Gi}}\n"
    fake_github.add_repo("acme/huge", files={".github/preview.yml": config})
    async with running_bot(fake_github, cluster, namespace, PREVIEW_READY_TIMEOUT="4",
                           PREVIEW_MAX_RESOURCES="cpu=2,memory=1Ti") as bot:
        await open_pr(bot, 11, repo="acme/huge")
        await bot.settle()
    [record] = fake_github.deployments("acme/huge")
    final = fake_github.statuses("acme/huge", record["id"])[-1]
    assert final["state"] == "failure"
    assert "not Available after 4 s" in final["description"]
    assert "Deploy failed" in str(sticky_comments(fake_github, "acme/huge", 11)[0]["body"])
    assert list(view.deployments()) == [key_of(fake_github, "acme/huge", 11).object_name("a")]  # kept for debugging


async def test_a_revoked_installation_token_is_replaced(bot: RunningBot, view: ClusterView) -> None:
    await open_pr(bot, 13)
    await bot.settle()
    bot.fake.expire_tokens()  # GitHub now refuses the token the bot has cached
    payload = issue_comment_event(bot.fake, REPO, 13, "/preview stop", user="alice")
    assert await bot.send("issue_comment", payload) == 202
    await bot.settle()
    assert view.deployments() == {}
    assert [r["content"] for r in bot.fake.reactions(REPO, comment_id=payload["comment"]["id"])] == ["+1"]
    assert any(call.status == 401 for call in bot.fake.calls)  # the stale token was really refused


@pytest.mark.parametrize(("env", "line"), [
    ({}, "Header: `x-preview: {key}` (forward it on your services' outgoing calls)"),
    ({"PREVIEW_HEADER": "X-PR-Key"}, "Header: `x-pr-key: {key}` (forward it on your services' outgoing calls)"),
    ({"PREVIEW_MATCH": "baggage"}, "Baggage: the W3C baggage member `preview={key}` (`baggage: preview={key}`) "
                                   "(forward it on your services' outgoing calls)"),
])
async def test_sticky_comment_says_what_the_mesh_matches(shop: FakeGitHub, cluster: Cluster, namespace: str,
                                                         env: dict[str, str], line: str) -> None:
    """PREVIEW_HEADER and PREVIEW_MATCH decide what services must forward; the comment names it (it said
    `X-PREVIEW` whatever they were)."""
    async with running_bot(shop, cluster, namespace, **env) as bot:
        await open_pr(bot, 3, head_sha="c" * 40)
        await bot.settle()
        (sticky,) = sticky_comments(bot.fake, REPO, 3)
        assert line.format(key=key_of(bot.fake, REPO, 3).value) in str(sticky["body"]).splitlines()
