"""Garbage collection: missed `closed` webhooks, dangling mesh routes, idle previews; `gc` and `list`."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

import pytest
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from bot import comment, mesh_routes, naming
from bot.reconcile import GcReport
from tests.e2e.harness import CONFIG, REPO, ClusterView, RunningBot, bot_env, ensure_gateway, key_of, running_bot
from tests.fakegithub import FakeGitHub, issue_comment_event, pull_request_event
from tests.plugins.cluster import Cluster

pytestmark = pytest.mark.cluster



def shop(fake: FakeGitHub) -> None:
    fake.add_repo(REPO, files={".github/preview.yml": CONFIG}, collaborators={"alice": "write"})


async def deploy(bot: RunningBot, number: int, *, repo: str = REPO, **kwargs: object) -> None:
    bot.fake.add_pull(repo, number, **kwargs)  # type: ignore[arg-type]
    await bot.send("pull_request", pull_request_event(bot.fake, repo, number, "opened"))
    await bot.settle()


def commit_to_default_branch(fake: FakeGitHub, sha: str, files: dict[str, str | None]) -> None:
    """A commit `sha` on REPO's default branch changing `files` (None deletes one); no event is sent."""
    repo = fake.repos[REPO]
    tree = dict(repo.trees[repo.branches[repo.default_branch]])
    for path, content in files.items():
        if content is None:
            tree.pop(path, None)
        else:
            tree[path] = content
    repo.branches[repo.default_branch], repo.trees[sha] = sha, tree


def close_silently(fake: FakeGitHub, number: int, repo: str = REPO) -> None:
    """The PR is closed on GitHub, but the webhook never arrives."""
    fake.repos[repo].pulls[number].state = "closed"


async def test_missed_close_is_cleaned_up(fake_github: FakeGitHub, cluster: Cluster, namespace: str,
                                          view: ClusterView) -> None:
    shop(fake_github)
    async with running_bot(fake_github, cluster, namespace) as bot:
        await deploy(bot, 1)
        await deploy(bot, 2)
        close_silently(fake_github, 1)
        report = await bot.bot.reconcile_once()
    assert [(a.kind, a.target) for a in report.actions] == [("teardown-closed", f"{REPO}#1")]
    assert list(view.deployments()) == [key_of(fake_github, REPO, 2).object_name("a")]
    routes = view.mesh_routes(f"a.{namespace}.svc.cluster.local")
    assert [r["name"] for r in routes] == [key_of(fake_github, REPO, 2).value, "default"]
    [closed] = [d for d in fake_github.deployments(REPO, deleted=True) if d["environment"] == "preview-1"]
    assert closed["deleted"]
    assert [s["state"] for s in fake_github.statuses(REPO, closed["id"])][-1] == "inactive"
    body = next(c["body"] for c in fake_github.comments(REPO, 1) if comment.MARKER in c["body"])
    assert "pull request is closed" in body


def refuse_deployments(view: ClusterView, name: str) -> None:
    """A ValidatingAdmissionPolicy that refuses every Deployment in the view's namespace, in force."""
    admission = k8s.AdmissionregistrationV1Api(view.api)
    admission.create_validating_admission_policy({
        "metadata": {"name": name},
        "spec": {"failurePolicy": "Fail",
                 "matchConstraints": {"resourceRules": [{"apiGroups": ["apps"], "apiVersions": ["v1"],
                                                         "operations": ["CREATE", "UPDATE"],
                                                         "resources": ["deployments"]}]},
                 "validations": [{"expression": "false", "message": "Deployments are refused in this namespace"}]}})
    admission.create_validating_admission_policy_binding({
        "metadata": {"name": name},
        "spec": {"policyName": name, "validationActions": ["Deny"],
                 "matchResources": {"namespaceSelector": {"matchLabels": {
                     "kubernetes.io/metadata.name": view.namespace}}}}})
    probe = {"metadata": {"name": "admission-probe"}, "spec": {
        "selector": {"matchLabels": {"app": "probe"}},
        "template": {"metadata": {"labels": {"app": "probe"}},
                     "spec": {"containers": [{"name": "c", "image": "registry.invalid/probe:1"}]}}}}
    for _ in range(200):  # the API server loads a new policy within a few seconds
        try:
            k8s.AppsV1Api(view.api).create_namespaced_deployment(view.namespace, probe, dry_run="All")
        except ApiException as exc:
            if exc.status in (400, 403, 422):
                return
            raise
        time.sleep(0.1)
    raise AssertionError("the admission policy never came into force")


def allow_deployments(view: ClusterView, name: str) -> None:
    admission = k8s.AdmissionregistrationV1Api(view.api)
    admission.delete_validating_admission_policy_binding(name)
    admission.delete_validating_admission_policy(name)


async def test_gateway_routes_of_a_preview_whose_deployment_was_refused_go_after_a_missed_close(
        fake_github: FakeGitHub, cluster: Cluster, namespace: str, view: ClusterView) -> None:
    """The gateway route is claimed before the Deployment; when admission refuses the Deployment, the
    preview is only its gateway route. The inventory must still see it, or a missed close leaves it."""
    shop(fake_github)
    policy = f"refuse-deployments-{namespace}"
    refuse_deployments(view, policy)
    try:
        async with running_bot(fake_github, cluster, namespace) as bot:
            await deploy(bot, 6)
            assert view.deployments() == {}
            gateway_routes = [name for name, item in view.virtual_services().items()
                              if item["metadata"]["labels"].get(naming.ROLE_LABEL) == naming.ROLE_GATEWAY]
            assert len(gateway_routes) == 1, gateway_routes
            [live] = await bot.bot.kube.live_previews()
            assert (live.number, live.services) == (6, ())
            close_silently(fake_github, 6)
            report = await bot.bot.reconcile_once()
    finally:
        allow_deployments(view, policy)
    assert [(a.kind, a.target) for a in report.actions] == [("teardown-closed", f"{REPO}#6")]
    assert not [name for name, item in view.virtual_services().items()
                if item["metadata"]["labels"].get(naming.ROLE_LABEL) == naming.ROLE_GATEWAY]


async def test_routes_to_missing_services_are_removed(fake_github: FakeGitHub, cluster: Cluster, namespace: str,
                                                      view: ClusterView) -> None:
    shop(fake_github)
    host = f"a.{namespace}.svc.cluster.local"
    async with running_bot(fake_github, cluster, namespace) as bot:
        await deploy(bot, 3)
        ghost = mesh_routes.preview_route("preview-99-abcdef", destination=f"preview-99-abcdef-a.{namespace}"
                                          ".svc.cluster.local", port=8080, header_name="x-preview", mode="header")
        await bot.bot.kube.add_mesh_route(host, ghost)
        assert len(view.mesh_routes(host)) == 3
        report = await bot.bot.reconcile_once()
    assert [a.kind for a in report.actions] == ["remove-route"]
    assert [r["name"] for r in view.mesh_routes(host)] == [key_of(fake_github, REPO, 3).value, "default"]


async def test_idle_previews_expire_unless_kept(fake_github: FakeGitHub, cluster: Cluster, namespace: str,
                                                view: ClusterView) -> None:
    shop(fake_github)
    # A TTL of about one second stands for days.
    async with running_bot(fake_github, cluster, namespace, PREVIEW_IDLE_TTL_DAYS="0.00001") as bot:
        await deploy(bot, 4)
        await deploy(bot, 5, labels=["preview-keep"])
        await deploy(bot, 6)
        await bot.send("issue_comment", issue_comment_event(fake_github, REPO, 6, "/preview keep", user="alice"))
        await bot.settle()
        await asyncio.sleep(1.5)
        report = await bot.bot.reconcile_once()
    assert [(a.kind, a.target) for a in report.actions] == [("teardown-idle", f"{REPO}#4")]
    assert sorted(view.deployments()) == sorted(key_of(fake_github, REPO, n).object_name("a") for n in (5, 6))
    body = next(c["body"] for c in fake_github.comments(REPO, 4) if comment.MARKER in c["body"])
    assert "without a push" in body and "/preview keep" in body


async def run_cli(fake: FakeGitHub, cluster: Cluster, namespace: str, *args: str,
                  unset: tuple[str, ...] = ()) -> tuple[int, str, str]:
    env = {**os.environ, **bot_env(fake, namespace), "KUBECONFIG": str(cluster.kubeconfig)}
    for name in unset:
        env.pop(name, None)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.cli", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_gc_command_dry_run_then_for_real(fake_github: FakeGitHub, cluster: Cluster, namespace: str,
                                                view: ClusterView) -> None:
    shop(fake_github)
    async with running_bot(fake_github, cluster, namespace) as bot:
        await deploy(bot, 7)
    close_silently(fake_github, 7)
    code, out, _ = await run_cli(fake_github, cluster, namespace, "gc", "--dry-run")
    assert code == 0
    assert f"would teardown-closed: {REPO}#7" in out
    assert list(view.deployments()) == [key_of(fake_github, REPO, 7).object_name("a")]
    code, out, _ = await run_cli(fake_github, cluster, namespace, "gc")
    assert code == 0 and f"teardown-closed: {REPO}#7" in out
    assert view.deployments() == {}
    code, out, _ = await run_cli(fake_github, cluster, namespace, "gc")
    assert code == 0 and out.strip() == "nothing to do"


async def test_gc_list_and_explain_need_no_webhook_secret(fake_github: FakeGitHub, cluster: Cluster,
                                                          namespace: str) -> None:
    """They receive no webhooks: GITHUB_WEBHOOK_SECRET unset is no error for them."""
    shop(fake_github)
    ensure_gateway(cluster, f"{namespace}/preview-gateway")
    for args in (("gc", "--dry-run"), ("list",), ("explain", "--host", "preview-1-api-a.example.com")):
        code, _, err = await run_cli(fake_github, cluster, namespace, *args, unset=("GITHUB_WEBHOOK_SECRET",))
        assert "GITHUB_WEBHOOK_SECRET" not in err and code in (0, 1), (args, code, err)
        assert "Traceback" not in err, err


async def test_list_command(fake_github: FakeGitHub, cluster: Cluster, namespace: str) -> None:
    shop(fake_github)
    async with running_bot(fake_github, cluster, namespace) as bot:
        await deploy(bot, 8, head_sha="8" * 40)
    code, out, err = await run_cli(fake_github, cluster, namespace, "list", "--output", "json")
    assert code == 0, err
    [row] = json.loads(out)
    assert row["repo"] == REPO and row["pr"] == 8 and row["sha"] == "8" * 40 and row["services"] == ["a"]
    assert row["urls"] == ["https://preview-8-api-a.example.com"]
    assert row["namespace"] == namespace
    code, out, _ = await run_cli(fake_github, cluster, namespace, "list")
    assert code == 0
    assert out.splitlines()[0].split() == ["REPO", "PR", "SERVICES", "SHA", "AGE", "URLS"]
    assert REPO in out.splitlines()[1]



async def test_a_preview_goes_when_its_repository_removes_the_config(
        fake_github: FakeGitHub, cluster: Cluster, namespace: str, view: ClusterView) -> None:
    """No `.github/preview.yml` on the default branch any more: the repository stopped using previews, so a
    live preview goes at its next deploy (here the reconciler's resume of a push), not resumed every pass."""
    shop(fake_github)
    async with running_bot(fake_github, cluster, namespace) as bot:
        await deploy(bot, 7)
        assert list(view.deployments()) == [key_of(fake_github, REPO, 7).object_name("a")]
        commit_to_default_branch(fake_github, "f" * 40, {".github/preview.yml": None})
        fake_github.push(REPO, 7, "e" * 40)  # its webhook finds no config: only the reconciler looks again
        first = await bot.bot.reconcile_once()
        await bot.settle()
        second = await bot.bot.reconcile_once()
    assert [a.kind for a in first.actions] == ["resume"]
    assert view.deployments() == {} and view.services() == []
    assert second.actions == []
    body = next(c["body"] for c in fake_github.comments(REPO, 7) if comment.MARKER in c["body"])
    assert "Preview: stopped" in body and "no `.github/preview.yml` on its default branch any more" in body
    assert comment.stopped_at(body) == "e" * 40


async def test_a_service_or_the_config_removed_on_the_default_branch_goes_at_the_next_pass(
        fake_github: FakeGitHub, cluster: Cluster, namespace: str, view: ClusterView) -> None:
    """No push needed: a pass reads each repository's config once, finds a preview running a service the
    config no longer has (or no config at all), and redeploys the head, which removes it; the rest stays."""
    two = CONFIG + "  - name: b\n    image: registry.example.com/acme/b:{sha}\n    port: 9090\n"
    fake_github.add_repo(REPO, files={".github/preview.yml": two}, collaborators={"alice": "write"})
    async with running_bot(fake_github, cluster, namespace) as bot:
        await deploy(bot, 7)
        key = key_of(fake_github, REPO, 7)
        assert sorted(view.deployments()) == [key.object_name("a"), key.object_name("b")]
        assert (await bot.bot.reconcile_once()).actions == []  # the config still has both
        commit_to_default_branch(fake_github, "f" * 40, {".github/preview.yml": CONFIG})  # b removed
        first = await bot.bot.reconcile_once()
        await bot.settle()
        assert [(a.kind, a.reason) for a in first.actions] == [
            ("resume", "runs b, which its repository's config no longer has")]
        assert list(view.deployments()) == [key.object_name("a")] and view.services() == [key.object_name("a")]
        assert view.mesh_routes(f"b.{namespace}.svc.cluster.local") == []
        assert [r["name"] for r in view.mesh_routes(f"a.{namespace}.svc.cluster.local")] == [key.value, "default"]
        body = next(c["body"] for c in fake_github.comments(REPO, 7) if comment.MARKER in c["body"])
        assert "Preview: ready" in body and "preview-7-api-b" not in body
        assert (await bot.bot.reconcile_once()).actions == []
        commit_to_default_branch(fake_github, "e" * 40, {".github/preview.yml": None})  # previews no more
        assert [a.reason for a in (await bot.bot.reconcile_once()).actions] == [
            "its repository has no .github/preview.yml on its default branch any more"]
        await bot.settle()
    assert view.deployments() == {} and view.services() == []
    body = next(c["body"] for c in fake_github.comments(REPO, 7) if comment.MARKER in c["body"])
    assert "Preview: stopped" in body and "no `.github/preview.yml` on its default branch any more" in body


async def test_a_service_whose_host_changes_leaves_no_route_at_the_old_host(
        fake_github: FakeGitHub, cluster: Cluster, namespace: str, view: ClusterView) -> None:
    """The config moves service `a` to another in-mesh host: the next deploy routes the key at the new
    host and takes its route out of the old host's VirtualService (it was left there, sending the key's
    requests for the old host to the preview until the PR closed)."""
    old_host, new_host = f"a.{namespace}.svc.cluster.local", f"a2.{namespace}.svc.cluster.local"
    shop(fake_github)
    async with running_bot(fake_github, cluster, namespace) as bot:
        await deploy(bot, 8)
        key = key_of(fake_github, REPO, 8)
        assert [r["name"] for r in view.mesh_routes(old_host)] == [key.value, "default"]
        commit_to_default_branch(fake_github, "c" * 40, {".github/preview.yml": CONFIG + f"    host: {new_host}\n"})
        fake_github.push(REPO, 8, "e" * 40)
        await bot.send("pull_request", pull_request_event(fake_github, REPO, 8, "synchronize"))
        await bot.settle()
    assert [r["name"] for r in view.mesh_routes(new_host)] == [key.value, "default"]
    assert view.mesh_routes(old_host) == []  # the bot's VirtualService for it went with its last route


# -- one installation the App cannot use stops no one else's clean-up --------------------------------------

WEB = "beta/web"  # another account: another installation of the App


async def three_previews_two_closed(bot: RunningBot) -> None:
    """#1 and #2 of REPO (installation alpha) and #3 of WEB (beta) deployed; #1 and #3 then closed, unseen."""
    await bot.startup_pass()
    await deploy(bot, 1)
    await deploy(bot, 2)
    await deploy(bot, 3, repo=WEB)
    close_silently(bot.fake, 1)
    close_silently(bot.fake, 3, WEB)


def two_installations(fake: FakeGitHub) -> int:
    """beta/web and acme/shop, each on its own installation (beta's first: listed first); returns beta's."""
    fake.add_repo(WEB, files={".github/preview.yml": CONFIG}, collaborators={"alice": "write"})
    shop(fake)
    installation = fake.repos[WEB].installation_id
    assert installation is not None and installation != fake.repos[REPO].installation_id
    return installation


def token_requests(fake: FakeGitHub, installation: int) -> int:
    return sum(1 for r in fake.requests if r.method == "POST"
               and r.path == f"/app/installations/{installation}/access_tokens")


def kinds(report: GcReport) -> list[tuple[str, str]]:
    """The pass's actions on previews. Not `remove-route`: mesh routes are read cluster-wide, and an earlier
    test's route whose namespace is still being deleted becomes dangling at any pass of a later test."""
    return sorted((a.kind, a.target) for a in report.actions if a.kind != "remove-route")


async def test_a_suspended_installation_keeps_its_previews_and_the_others_are_cleaned_up(
        fake_github: FakeGitHub, cluster: Cluster, namespace: str, view: ClusterView) -> None:
    """GitHub lists a suspended installation and refuses it a token. Its previews are held as they are (a
    suspension is undone; not an uninstall, after which they would be removed), without a token request,
    and the previews of every other installation are cleaned up as always. Unsuspended, they are too."""
    beta = two_installations(fake_github)
    async with running_bot(fake_github, cluster, namespace) as bot:
        await three_previews_two_closed(bot)
        fake_github.suspend_installation(beta)
        asked = token_requests(fake_github, beta)
        report = await bot.bot.reconcile_once()
        assert kinds(report) == [("hold", f"{WEB}#3"), ("teardown-closed", f"{REPO}#1")]
        assert report.errors == []
        [held] = [a for a in report.actions if a.kind == "hold"]
        assert f"installation on beta (id {beta}) is suspended" in held.reason
        assert token_requests(fake_github, beta) == asked
        assert sorted(view.deployments()) == sorted([key_of(fake_github, REPO, 2).object_name("a"),
                                                     key_of(fake_github, WEB, 3).object_name("a")])
        assert [d for d in fake_github.deployments(WEB) if d["environment"] == "preview-3"]  # not retired
    # A restart meanwhile: the new process knows the installation's repositories by its account only.
    async with running_bot(fake_github, cluster, namespace, reconcile_every=0.5) as bot:
        await bot.startup_pass()
        report = await bot.bot.reconcile_once(dry_run=True)
        assert kinds(report) == [("hold", f"{WEB}#3")] and report.errors == []
        fake_github.add_pull(WEB, 4)  # opened while suspended: GitHub sends the App no event
        await asyncio.sleep(1.5)  # passes while suspended change nothing
        assert len(view.deployments()) == 2
        fake_github.unsuspend_installation(beta)
        # The passes catch up: #3 is closed, #4 is discovered (discovery runs again for the installation).
        wanted = sorted([key_of(fake_github, REPO, 2).object_name("a"), key_of(fake_github, WEB, 4).object_name("a")])
        deadline = asyncio.get_running_loop().time() + 90
        while sorted(view.deployments()) != wanted:
            assert asyncio.get_running_loop().time() < deadline, sorted(view.deployments())
            await asyncio.sleep(0.2)


async def test_an_installation_github_refuses_affects_only_its_own_previews(
        fake_github: FakeGitHub, cluster: Cluster, namespace: str, view: ClusterView) -> None:
    """A 404 on one installation's token, or a 403 on its repository list: that installation's previews are
    left as they are, with one error line each; the others' clean-up goes on; the next pass reads it again."""
    beta = two_installations(fake_github)
    async with running_bot(fake_github, cluster, namespace) as bot:
        await three_previews_two_closed(bot)
        bot.bot.auth.forget(beta)  # its token is asked for again
        fake_github.inject("POST", f"^/app/installations/{beta}/access_tokens$", status=404, times=100)
        report = await bot.bot.reconcile_once()
        assert kinds(report) == [("teardown-closed", f"{REPO}#1")]
        assert report.errors == [f"{WEB}#3: the App's installation on beta (id {beta}) could not be read (GitHub "
                                 "answered 404 Not Found): its previews are left as they are until it can"]
        fake_github.clear_faults()
        bot.bot.auth.forget(beta)
        # beta's installation is listed first: the first repository list is its.
        fake_github.inject("GET", "^/installation/repositories$", status=403, times=1)
        report = await bot.bot.reconcile_once()
        assert kinds(report) == []
        assert report.errors == [f"{WEB}#3: the App's installation on beta (id {beta}) could not be read (GitHub "
                                 "answered 403 Forbidden): its previews are left as they are until it can"]
        assert sorted(view.deployments()) == sorted([key_of(fake_github, REPO, 2).object_name("a"),
                                                     key_of(fake_github, WEB, 3).object_name("a")])
        report = await bot.bot.reconcile_once()
    assert kinds(report) == [("teardown-closed", f"{WEB}#3")] and report.errors == []
    assert list(view.deployments()) == [key_of(fake_github, REPO, 2).object_name("a")]


async def test_a_failing_discovery_holds_up_no_clean_up_and_runs_again(
        fake_github: FakeGitHub, cluster: Cluster, namespace: str, view: ClusterView) -> None:
    """The start-up discovery of PRs missed while down fails (GitHub refuses the config read): the pass
    still reconciles (the PR closed meanwhile loses its preview), and a later pass discovers again."""
    shop(fake_github)
    async with running_bot(fake_github, cluster, namespace) as bot:
        await bot.startup_pass()
        await deploy(bot, 1)
    close_silently(fake_github, 1)
    fake_github.add_pull(REPO, 2)  # opened while no bot ran: its event is lost
    fake_github.inject("GET", r"/contents/\.github/preview\.yml$", status=403, times=10_000)
    async with running_bot(fake_github, cluster, namespace, reconcile_every=0.5) as bot:
        await bot.startup_pass()
        assert view.deployments() == {}
        fake_github.clear_faults()
        deadline = asyncio.get_running_loop().time() + 60
        while list(view.deployments()) != [key_of(fake_github, REPO, 2).object_name("a")]:
            assert asyncio.get_running_loop().time() < deadline, "#2 was never discovered"
            await asyncio.sleep(0.2)


async def test_gc_runs_the_redeploys_it_prints(fake_github: FakeGitHub, cluster: Cluster, namespace: str,
                                               view: ClusterView) -> None:
    """`gc` found a missed push: it redeploys before exiting and prints the outcome, not only `resume:`."""
    shop(fake_github)
    async with running_bot(fake_github, cluster, namespace) as bot:
        await deploy(bot, 9, head_sha="9" * 40)
    fake_github.push(REPO, 9, "a9" * 20)  # no event: the push was missed
    code, out, err = await run_cli(fake_github, cluster, namespace, "gc")
    assert code == 0, err
    assert out.splitlines() == [f"resume: {REPO}#9 (missed a push)", f"resumed: {REPO}#9 (ready)"]
    [deployment] = view.deployments().values()
    assert deployment.metadata.annotations[naming.SHA_ANNOTATION] == "a9" * 20


async def test_gc_after_errors_does_not_say_nothing_to_do(fake_github: FakeGitHub, cluster: Cluster,
                                                          namespace: str, view: ClusterView) -> None:
    shop(fake_github)
    async with running_bot(fake_github, cluster, namespace) as bot:
        await deploy(bot, 10)
    deployment = view.deployments()[key_of(fake_github, REPO, 10).object_name("a")]
    # Damaged labels: the pass leaves the preview alone and says so, an error.
    k8s.AppsV1Api(view.api).patch_namespaced_deployment(deployment.metadata.name, namespace, {
        "metadata": {"annotations": {naming.REPO_ANNOTATION: "not a repository"}}})
    code, out, err = await run_cli(fake_github, cluster, namespace, "gc")
    assert code == 1 and "labels or annotations are damaged" in err
    assert out.strip() == "nothing done; 1 error(s), on stderr"


def gateway_routes(cluster: Cluster, namespace: str) -> list[str]:
    """The names of the bot's gateway VirtualServices in `namespace`."""
    with cluster.api_client() as api:
        items = k8s.CustomObjectsApi(api).list_namespaced_custom_object(
            "networking.istio.io", "v1", namespace, "virtualservices",
            label_selector=f"{naming.ROLE_LABEL}={naming.ROLE_GATEWAY}")["items"]
    return sorted(item["metadata"]["name"] for item in items)


@pytest.mark.parametrize("setting", ["PREVIEW_NAMESPACE", "PREVIEW_ROUTING_NAMESPACE"])
async def test_previews_made_before_a_namespace_changed_keep_their_routes_and_are_removed_or_moved_whole(
        fake_github: FakeGitHub, cluster: Cluster, namespace: str, team_namespace: str, view: ClusterView,
        setting: str) -> None:
    """PREVIEW_NAMESPACE (or PREVIEW_ROUTING_NAMESPACE) changes while previews are live: their mesh routes
    send to Services that exist in the old namespace (not "missing"), a missed close removes the
    preview's Deployment, Service and gateway VirtualService where they are, and a push moves one whole."""
    shop(fake_github)
    async with running_bot(fake_github, cluster, namespace) as bot:
        await deploy(bot, 11)
        await deploy(bot, 12)
    host = f"a.{namespace}.svc.cluster.local"
    kept, closed = key_of(fake_github, REPO, 12), key_of(fake_github, REPO, 11)
    assert [r["name"] for r in view.mesh_routes(host)] == [closed.value, kept.value, "default"]
    [route] = [name for name in gateway_routes(cluster, namespace)
               if view.virtual_services()[name]["metadata"]["labels"][naming.KEY_LABEL] == kept.value]
    close_silently(fake_github, 11)
    async with running_bot(fake_github, cluster, namespace, **{setting: team_namespace}) as bot:
        report = await bot.bot.reconcile_once()
        assert [(a.kind, a.target) for a in report.actions] == [("teardown-closed", f"{REPO}#11")], report.lines()
        assert report.errors == []
        assert list(view.deployments()) == [kept.object_name("a")]
        assert view.services() == [kept.object_name("a")]
        assert [r["name"] for r in view.mesh_routes(host)] == [kept.value, "default"]
        assert gateway_routes(cluster, namespace) == [route]
        await bot.send("issue_comment", issue_comment_event(fake_github, REPO, 12, "/preview keep", user="alice"))
        await bot.settle()
        assert view.deployments()[kept.object_name("a")].metadata.annotations[naming.KEEP_ANNOTATION] == "true"
        # A push redeploys the kept preview in the new namespace and removes it from the old one.
        fake_github.push(REPO, 12, "c" * 40)
        await bot.send("pull_request", pull_request_event(fake_github, REPO, 12, "synchronize"))
        await bot.settle()
    new = ClusterView(cluster, team_namespace)
    try:
        if setting == "PREVIEW_NAMESPACE":
            assert view.deployments() == {} and view.services() == []
            assert list(new.deployments()) == [kept.object_name("a")]
            assert kept.value not in [r["name"] for r in view.mesh_routes(host)]
            routed = view.virtual_services()[route]["spec"]["http"][0]["route"][0]["destination"]["host"]
            assert routed == f"{kept.object_name('a')}.{team_namespace}.svc.cluster.local"
        else:
            assert list(view.deployments()) == [kept.object_name("a")]
            assert gateway_routes(cluster, namespace) == [] and gateway_routes(cluster, team_namespace) == [route]
    finally:
        new.close()


async def test_a_service_dropped_from_a_preview_in_an_earlier_namespace_goes_with_its_mesh_route(
        fake_github: FakeGitHub, cluster: Cluster, namespace: str, team_namespace: str, view: ClusterView) -> None:
    """PREVIEW_NAMESPACE changed while a preview of services a and b lived in the old namespace; the config
    then drops b and a push redeploys: a moves, b's objects go from the old namespace, and b's mesh route
    (to b's Service in the old namespace) goes with them, not left behind to a deleted Service."""
    two = CONFIG + "  - name: b\n    image: registry.example.com/acme/b:{sha}\n    port: 8080\n"
    fake_github.add_repo(REPO, files={".github/preview.yml": two}, collaborators={"alice": "write"})
    key = key_of(fake_github, REPO, 13)
    b_host = f"b.{namespace}.svc.cluster.local"
    async with running_bot(fake_github, cluster, namespace) as bot:
        await deploy(bot, 13)
    assert sorted(view.deployments()) == [key.object_name("a"), key.object_name("b")]
    assert [r["name"] for r in view.mesh_routes(b_host)][:1] == [key.value]
    commit_to_default_branch(fake_github, "d" * 40, {".github/preview.yml": CONFIG})
    async with running_bot(fake_github, cluster, namespace, PREVIEW_NAMESPACE=team_namespace) as bot:
        await bot.startup_pass()
        fake_github.push(REPO, 13, "e" * 40)
        await bot.send("pull_request", pull_request_event(fake_github, REPO, 13, "synchronize"))
        await bot.settle()
        assert "ready" in fake_github.comments(REPO, 13)[-1]["body"]
    new = ClusterView(cluster, team_namespace)
    try:
        assert view.deployments() == {} and view.services() == []
        assert list(new.deployments()) == [key.object_name("a")]
        assert key.value not in [r["name"] for r in view.mesh_routes(b_host)]
    finally:
        new.close()
