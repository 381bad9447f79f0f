"""The orchestration's decisions (Previewer.deploy/stop, reconcile, Reporter) over in-memory ports.

Fast and in addition to the end-to-end tests on the real kube-apiserver and the schema-checked fake
GitHub (tests/e2e), which remain the proof that the adapters behave: here only the choices are checked
(deploy or not, what the PR shows, which Deployments end inactive, what a reconciliation pass removes).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from bot import comment, gate, slots
from bot.comment import Report, State
from bot.errors import RoutesNotRemoved
from bot.gate import WaitRegistry
from bot.naming import PreviewKey
from bot.previews import Previewer
from bot.reconcile import reconcile
from bot.reporting import Reporter
from bot.settings import ClusterSettings, Policy
from tests.unit.fakes import FakeCluster, FakeLocks, FakeRepo

CONFIG = """\
services:
  - name: a
    image: registry.example.com/acme/a:{sha}
    port: 8080
    paths: ["services/a/**"]
"""
SHA1, SHA2 = "1" * 40, "2" * 40


def setup(*, cap: int = 10) -> tuple[FakeRepo, FakeCluster, FakeLocks, Previewer]:
    settings = ClusterSettings(domain="example.com", namespace="previews", routing_namespace="istio-system",
                               gateway="istio-system/preview-gateway",
                               policy=Policy(max_previews_per_repo=cap))
    gh, kube, locks = FakeRepo(config=CONFIG), FakeCluster(settings), FakeLocks()
    previewer = Previewer(settings, kube, ready_timeout=5, arbiter=locks, reporter=Reporter(identity="test"))
    return gh, kube, locks, previewer


def key(gh: FakeRepo, number: int) -> PreviewKey:
    return PreviewKey(gh.repo, number, gh.repo_id)


def client_for(gh: FakeRepo | None) -> Callable[[int | None, str], Awaitable[FakeRepo | None]]:
    async def find(_repo_id: int | None, _repo: str) -> FakeRepo | None:
        return gh
    return find


async def test_a_new_preview_shows_deploying_then_ready_with_one_deployment() -> None:
    gh, kube, _locks, previewer = setup()
    gh.add_pull(1, SHA1, files=["services/a/main.go"])
    result = await previewer.deploy(gh, 1, SHA1)
    assert result.state is State.READY
    assert kube.previews[key(gh, 1).value].sha == SHA1
    assert gh.states("preview-1") == ["success"]
    # The PR's first comment: no earlier deployment to deactivate, so no read or write for it.
    assert gh.writes == ["create_comment", "create_deployment", "deployment_status", "deployment_status",
                         "edit_comment"]
    assert "Preview: ready" in (gh.sticky(1) or "")


async def test_cap_reached_deploys_nothing_and_says_why() -> None:
    gh, kube, locks, previewer = setup(cap=1)
    kube.add_preview(key(gh, 2), SHA1)
    gh.add_pull(1, SHA1, files=["services/a/main.go"])
    result = await previewer.deploy(gh, 1, SHA1)
    assert result.state is State.WAITING_SLOT and result.in_line
    assert kube.applied == [] and gh.deployment_list == []
    assert "the limit is 1" in (gh.sticky(1) or "") and "1st in line" in (gh.sticky(1) or "")
    assert locks.line[str(gh.repo_id)].keys() == [key(gh, 1).value]


async def test_a_deploy_that_may_not_wait_is_refused_without_a_place_in_line() -> None:
    gh, kube, locks, previewer = setup(cap=1)
    kube.add_preview(key(gh, 2), SHA1)
    gh.add_pull(1, SHA1, files=["services/a/main.go"])
    result = await previewer.deploy(gh, 1, SHA1, wait_as=None)  # a link's deploy
    assert result.state is State.NOT_DEPLOYED and not result.in_line
    assert "Comment `/preview` to deploy this one once a slot is free" in (gh.sticky(1) or "")
    assert (await locks.lines())[1] == []


async def test_a_teardown_offers_the_slot_only_when_someone_waits() -> None:
    gh, _kube, _locks, previewer = setup(cap=1)
    freed: list[str] = []
    previewer.on_slot_freed = lambda k: freed.append(k.value)
    for number in (1, 2):
        gh.add_pull(number, SHA1, files=["services/a/main.go"])
    assert (await previewer.deploy(gh, 1, SHA1)).state is State.READY
    assert (await previewer.stop(gh, 1, "closed")) > 0
    assert freed == []  # nobody waited: no look at the line
    assert (await previewer.deploy(gh, 1, SHA1)).state is State.READY
    assert (await previewer.deploy(gh, 2, SHA1)).in_line
    await previewer.stop(gh, 1, "closed")
    assert freed == [key(gh, 1).value]


async def test_closed_stopped_or_changing_nothing_leaves_the_line() -> None:
    gh, kube, locks, previewer = setup(cap=1)
    kube.add_preview(key(gh, 9), SHA1)
    for number in (1, 2, 3):
        gh.add_pull(number, SHA1, files=["services/a/main.go"])
        assert (await previewer.deploy(gh, number, SHA1)).in_line
    line = locks.line[str(gh.repo_id)]
    assert [line.place(key(gh, n).value) for n in (1, 2, 3)] == [1, 2, 3]
    await previewer.stop(gh, 2, "Stopped by @alice with `/preview stop`.")
    gh.add_pull(3, SHA2, files=["README.md"])  # a push that no longer changes service a
    assert (await previewer.deploy(gh, 3, SHA2)).state is State.NOT_DEPLOYED
    assert locks.line[str(gh.repo_id)].keys() == [key(gh, 1).value]
    # A push of the first keeps its place, with the new head.
    gh.add_pull(1, SHA2, files=["services/a/main.go"])
    assert (await previewer.deploy(gh, 1, SHA2)).in_line
    [waiter] = locks.line[str(gh.repo_id)].waiting
    assert (waiter.key, waiter.sha) == (key(gh, 1).value, SHA2)


async def test_nothing_changed_any_more_tears_the_preview_down() -> None:
    gh, kube, locks, previewer = setup()
    gh.add_pull(1, SHA1, files=["services/a/main.go"])
    await previewer.deploy(gh, 1, SHA1)
    gh.add_pull(1, SHA2, files=["README.md"])  # the push reverted the service's change
    result = await previewer.deploy(gh, 1, SHA2)
    assert result.state is State.NOT_DEPLOYED
    assert kube.previews[key(gh, 1).value].services == ()
    assert gh.deployment_list == []  # retired: inactive, then deleted
    assert locks.claims[str(gh.repo_id)] == {}  # its slot is free
    assert "No service" in (gh.sticky(1) or "")


async def test_a_settled_sha_is_left_alone_without_force() -> None:
    gh, _kube, _locks, previewer = setup()
    gh.add_pull(1, SHA1, files=["services/a/main.go"])
    await previewer.deploy(gh, 1, SHA1)
    writes = len(gh.writes)
    result = await previewer.deploy(gh, 1, SHA1, force=False)
    assert (result.state, result.detail) == (State.READY, "already deployed")
    assert len(gh.writes) == writes


async def test_an_unfinished_deploy_of_the_head_is_not_settled() -> None:
    """A restart found objects at the head but its Deployment still in progress: deploy again."""
    gh, kube, _locks, previewer = setup()
    gh.add_pull(1, SHA1, files=["services/a/main.go"])
    kube.add_preview(key(gh, 1), SHA1)
    await gh.create_comment(1, comment.render(Report(State.DEPLOYING, sha=SHA1)))  # it got that far
    stuck = await gh.create_deployment(ref=SHA1, environment="preview-1", description="", payload={})
    await gh.deployment_status(stuck, "in_progress")
    result = await previewer.deploy(gh, 1, SHA1, force=False)
    assert result.state is State.READY
    assert gh.states("preview-1") == ["inactive", "success"]


async def test_a_superseded_deploy_goes_inactive_and_never_reports_ready() -> None:
    gh, kube, locks, previewer = setup()
    gh.add_pull(1, SHA1, files=["services/a/main.go"])

    def newer_event_arrives() -> None:
        locks.lock.superseded = True

    kube.on_wait = newer_event_arrives
    result = await previewer.deploy(gh, 1, SHA1)
    assert (result.state, result.detail) == (State.DEPLOYING, "superseded")
    assert gh.states("preview-1") == ["inactive"]
    assert "Preview: ready" not in (gh.sticky(1) or "")


async def test_a_failed_service_fails_the_deploy_and_deactivates_the_older_one() -> None:
    gh, kube, _locks, previewer = setup()
    gh.add_pull(1, SHA1, files=["services/a/main.go"])
    await previewer.deploy(gh, 1, SHA1)
    kube.failures = {"a": "CrashLoopBackOff"}
    gh.add_pull(1, SHA2, files=["services/a/main.go"])
    result = await previewer.deploy(gh, 1, SHA2)
    assert result.state is State.FAILED and "CrashLoopBackOff" in (result.detail or "")
    assert gh.states("preview-1") == ["inactive", "failure"]
    assert "Deploy failed" in (gh.sticky(1) or "")


async def test_a_refused_mesh_host_fails_before_anything_is_written_and_frees_the_slot() -> None:
    gh, kube, locks, previewer = setup()
    kube.refused_hosts = {"a.previews.svc.cluster.local"}
    gh.add_pull(1, SHA1, files=["services/a/main.go"])
    result = await previewer.deploy(gh, 1, SHA1)
    assert result.state is State.FAILED
    assert kube.applied == [] and locks.claims[str(gh.repo_id)] == {}
    assert gh.states("preview-1") == ["failure"]
    writes = len(gh.writes)  # a repeated event does not retry the refusal: it needs a push or `/preview`
    assert (await previewer.deploy(gh, 1, SHA1, force=False)).detail == "already deployed"
    assert len(gh.writes) == writes


async def test_a_config_error_is_shown_and_nothing_is_deployed() -> None:
    gh, kube, _locks, previewer = setup()
    gh.config = "services: 3\n"
    gh.add_pull(1, SHA1)
    result = await previewer.deploy(gh, 1, SHA1)
    assert result.state is State.CONFIG_ERROR
    assert kube.applied == [] and gh.deployment_list == []
    assert ".github/preview.yml" in (gh.sticky(1) or "")


async def test_stop_removes_and_says_so_only_where_there_was_something() -> None:
    gh, kube, _locks, previewer = setup()
    gh.add_pull(1, SHA1, files=["services/a/main.go"])
    await previewer.deploy(gh, 1, SHA1)
    assert await previewer.stop(gh, 1, "Stopped by @alice.") == 2  # its mesh route, its one service
    assert key(gh, 1).value not in kube.previews and gh.deployment_list == []
    assert not any(kube.routes.values())
    assert "Stopped by @alice." in (gh.sticky(1) or "")
    gh.add_pull(2, SHA1)
    assert await previewer.stop(gh, 2, "closed") == 0
    assert gh.sticky(2) is None  # never had a preview nor a comment: nothing said


LEFT = ("VirtualService shop/a keeps the preview route {key}: preview-bot may not update it (403 Forbidden): bind "
        "the ClusterRole preview-bot-team-routes to preview-bot's ServiceAccount in namespace shop (deploy/README.md)")


async def test_a_route_the_cluster_refuses_to_remove_does_not_keep_the_preview_alive(
        caplog: pytest.LogCaptureFixture) -> None:
    """RBAC on a team's VirtualService was taken away: the preview's own objects, its slot and its GitHub
    deployments go all the same, and the route left behind is named in a warning and in the PR comment."""
    gh, kube, locks, previewer = setup()
    gh.add_pull(1, SHA1, files=["services/a/main.go"])
    await previewer.deploy(gh, 1, SHA1)
    value = key(gh, 1).value

    async def refused(_key: str) -> int:
        raise RoutesNotRemoved([LEFT.format(key=value)], 0)
    kube.remove_routes_of_key = refused  # type: ignore[method-assign,assignment]
    gh.pulls[1]["state"] = "closed"
    assert await previewer.stop(gh, 1, "The pull request was closed: preview removed.") == 1
    assert kube.previews == {} and locks.claims[str(gh.repo_id)] == {}
    assert gh.deployment_list == [] and "preview removed" in (gh.sticky(1) or "")
    assert (f"A mesh route of this preview could not be removed: {LEFT.format(key=value)}. It receives no "
            "requests") in (gh.sticky(1) or "")
    [warning] = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warning == f"preview {value}: route left behind, its objects are removed anyway: {LEFT.format(key=value)}"


async def test_a_dangling_route_the_cluster_refuses_to_remove_is_an_error_of_the_pass_not_its_end() -> None:
    gh, kube, _locks, previewer = setup()
    ghost = {"name": "preview-9-abcdef", "match": [{"headers": {"x-preview": {"exact": "preview-9-abcdef"}}}],
             "route": [{"destination": {"host": "preview-9-abcdef-a.previews.svc.cluster.local"}}]}
    vs = {"metadata": {"namespace": "shop", "name": "a"}, "spec": {"hosts": ["a"], "http": [ghost]}}

    async def mesh_services() -> list[dict[str, object]]:
        return [vs]

    async def refused(_drop: object, *, host: str | None = None) -> int:
        raise RoutesNotRemoved([LEFT.format(key="preview-9-abcdef")], 0)
    kube.mesh_services = mesh_services  # type: ignore[method-assign]
    kube.remove_routes_where = refused  # type: ignore[method-assign,assignment]
    report = await reconcile(kube, previewer, client_for(gh), idle_ttl=timedelta(days=7))
    assert [a.kind for a in report.actions] == ["remove-route"]
    assert report.errors == [LEFT.format(key="preview-9-abcdef")]


async def test_reconcile_removes_a_closed_prs_preview_and_resumes_a_missed_push() -> None:
    gh, kube, _locks, previewer = setup()
    kube.add_preview(key(gh, 1), SHA1)  # PR 1 was closed while the bot was down
    kube.add_preview(key(gh, 2), SHA1)  # PR 2 got a push the bot missed
    kube.add_preview(key(gh, 3), SHA1)  # PR 3 is a fork's: its new commits wait for approval
    gh.add_pull(1, SHA1, state="closed")
    gh.add_pull(2, SHA2)
    gh.add_pull(3, SHA2, fork=True)
    resumed: list[tuple[int, str, int]] = []
    report = await reconcile(kube, previewer, client_for(gh), idle_ttl=timedelta(days=7),
                             resume=lambda *args: resumed.append(args))
    assert [(a.kind, a.target) for a in report.actions] == [("teardown-closed", "acme/shop#1"),
                                                            ("resume", "acme/shop#2")]
    assert set(kube.previews) == {key(gh, 2).value, key(gh, 3).value}
    assert resumed == [(gh.repo_id, gh.repo, 2, "missed-push")]
    assert "pull request is closed" in (gh.sticky(1) or "")


async def test_a_preview_reported_failed_that_became_available_is_redeployed_and_reported_ready() -> None:
    """A rollout failure (an image CI pushed after the wait) is marked on the preview; once its
    Deployments are Available, a pass (from its listing alone, no GitHub read) queues a redeploy of the
    head, which reports ready. Still unavailable, or behind the head: left to the usual rules."""
    gh, kube, _locks, previewer = setup()
    gh.add_pull(1, SHA1, files=["services/a/main.go"])
    kube.failures = {"a": "not Available after 5 s; still waiting for the image"}
    assert (await previewer.deploy(gh, 1, SHA1)).state is State.FAILED
    preview = kube.previews[key(gh, 1).value]
    assert preview.rollout_failed and not preview.available
    calls: list[tuple[object, ...]] = []
    reads = len(gh.reads)
    report = await reconcile(kube, previewer, client_for(gh), idle_ttl=timedelta(days=7),
                             resume=lambda *args: calls.append(args))
    assert (calls, report.actions) == ([], [])  # not Available yet: nothing to correct
    kube.failures = {}
    kube.previews[key(gh, 1).value] = replace(preview, available=True)  # the image was pushed
    report = await reconcile(kube, previewer, client_for(gh), idle_ttl=timedelta(days=7),
                             resume=lambda *args: calls.append(args))
    assert calls == [(gh.repo_id, gh.repo, 1, "recovered")]
    assert [(a.kind, a.reason) for a in report.actions] == [("resume", "reported failed, Available now")]
    # A pass reads the open PRs and the config (is a service removed?) once per repository: nothing per
    # preview for the mark (the second pass needed no config: the recovery decided).
    assert gh.reads[reads:] == ["open_pulls", "file_text", "open_pulls"]
    result = await previewer.redeploy(gh, 1, still=lambda p: p.rollout_failed and p.available)
    assert result is not None and result.state is State.READY
    assert gh.states("preview-1") == ["inactive", "success"]
    assert "Preview: ready" in (gh.sticky(1) or "")


async def test_a_recovered_preview_behind_its_head_is_not_redeployed_at_its_old_commit() -> None:
    gh, kube, _locks, previewer = setup()
    kube.previews[key(gh, 1).value] = replace(kube.add_preview(key(gh, 1), SHA1), rollout_failed=True,
                                              available=True)
    gh.add_pull(1, SHA2, files=["services/a/main.go"])  # pushed since
    assert await previewer.redeploy(gh, 1, still=lambda p: p.rollout_failed and p.available) is None
    assert kube.applied == [] and gh.writes == []


async def test_a_service_removed_from_the_config_is_removed_by_the_next_pass() -> None:
    """A service dropped from `.github/preview.yml` on the default branch: the pass (one config read per
    repository) queues a redeploy of the head, which removes the service and keeps the others. A broken
    config, or one that still has every service, changes nothing."""
    gh, kube, _locks, previewer = setup()
    gh.config = CONFIG.replace('paths: ["services/a/**"]', "") + \
        "  - name: b\n    image: registry.example.com/acme/b:{sha}\n    port: 9090\n"
    gh.add_pull(1, SHA1, files=["services/a/main.go"])
    gh.add_pull(2, SHA1, files=["services/a/main.go"])
    for number in (1, 2):
        assert (await previewer.deploy(gh, number, SHA1)).state is State.READY
    assert kube.previews[key(gh, 1).value].services == ("a", "b")
    calls: list[tuple[object, ...]] = []

    async def reconcile_pass() -> list[str]:
        reads = len(gh.reads)
        report = await reconcile(kube, previewer, client_for(gh), idle_ttl=timedelta(days=7),
                                 resume=lambda *args: calls.append(args))
        assert gh.reads[reads:].count("file_text") == 1  # per repository, not per preview
        return [a.reason for a in report.actions]

    assert await reconcile_pass() == []
    with_both = gh.config
    gh.config = "services: [oops\n"  # broken: the live previews stay, as a deploy keeps them
    assert await reconcile_pass() == []
    gh.config = with_both.split("  - name: b")[0]  # b removed
    assert await reconcile_pass() == ["runs b, which its repository's config no longer has"] * 2
    assert calls == [(gh.repo_id, gh.repo, 1, "config-dropped"), (gh.repo_id, gh.repo, 2, "config-dropped")]
    result = await previewer.redeploy(gh, 1, still=lambda p: True)
    assert result is not None and result.state is State.READY
    assert kube.previews[key(gh, 1).value].services == ("a",)


async def test_a_redeploy_the_reconciler_asked_for_that_fails_is_not_asked_again_at_that_commit() -> None:
    """A failure that is not the rollout's (here a mesh host refused since) would repeat at every pass,
    each time with a new GitHub deployment: the pass asks again only after a push."""
    gh, kube, _locks, previewer = setup()
    gh.config = CONFIG.replace('paths: ["services/a/**"]', "") + \
        "  - name: b\n    image: registry.example.com/acme/b:{sha}\n    port: 9090\n"
    gh.add_pull(1, SHA1, files=["services/a/main.go"])
    assert (await previewer.deploy(gh, 1, SHA1)).state is State.READY
    gh.config = gh.config.split("  - name: b")[0]  # b removed
    kube.refused_hosts = {"a.previews.svc.cluster.local"}
    calls: list[tuple[object, ...]] = []
    await reconcile(kube, previewer, client_for(gh), idle_ttl=timedelta(days=7), resume=lambda *a: calls.append(a))
    assert len(calls) == 1
    failed = await previewer.redeploy(gh, 1, still=lambda p: True)
    assert failed is not None and failed.state is State.FAILED
    writes = len(gh.writes)
    report = await reconcile(kube, previewer, client_for(gh), idle_ttl=timedelta(days=7),
                             resume=lambda *a: calls.append(a))
    assert (len(calls), report.actions) == (1, [])
    assert await previewer.redeploy(gh, 1, still=lambda p: True) is None and len(gh.writes) == writes
    gh.add_pull(1, SHA2, files=["services/a/main.go"])  # a push: its own event deploys it, as always
    assert (await previewer.deploy(gh, 1, SHA2)).state is State.FAILED  # still refused, but tried


@pytest.mark.parametrize(("config_suffix", "draft", "labels", "resumed"), [
    ("", False, (), True),
    ("", True, (), False),  # a draft: its push would not have deployed it
    ("trigger: command\n", False, (), False),  # only `/preview` deploys
    ("trigger: label\n", False, (), False),  # without the label
    ("trigger: label\n", False, ("preview",), True),
])
async def test_a_missed_push_is_resumed_only_when_its_event_would_have_deployed(
        config_suffix: str, draft: bool, labels: tuple[str, ...], resumed: bool) -> None:
    gh, kube, _locks, previewer = setup()
    gh.config = CONFIG + config_suffix
    kube.add_preview(key(gh, 2), SHA1)
    gh.add_pull(2, SHA2, labels=labels)["draft"] = draft
    calls: list[tuple[object, ...]] = []
    report = await reconcile(kube, previewer, client_for(gh), idle_ttl=timedelta(days=7),
                             resume=lambda *args: calls.append(args))
    assert bool(calls) is resumed
    assert [a.kind for a in report.actions] == (["resume"] if resumed else [])


async def test_a_fault_with_one_preview_does_not_stop_the_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    gh, kube, _locks, previewer = setup()
    kube.add_preview(key(gh, 1), SHA1)  # open: its idle check meets a fault (a bug, say)
    kube.add_preview(key(gh, 2), SHA1)  # closed while the bot was down
    gh.add_pull(1, SHA1)
    gh.add_pull(2, SHA1, state="closed")

    async def broken(*_args: object, **_kw: object) -> bool:
        raise RuntimeError("a bug")
    monkeypatch.setattr("bot.reconcile.ttl_warning.maybe_warn", broken)
    report = await reconcile(kube, previewer, client_for(gh), idle_ttl=timedelta(days=7))
    assert report.errors == ["acme/shop#1: unexpected RuntimeError (logged)"]
    assert [(a.kind, a.target) for a in report.actions] == [("teardown-closed", "acme/shop#2")]
    assert set(kube.previews) == {key(gh, 1).value}


async def test_reconcile_without_the_app_removes_only_the_cluster_side() -> None:
    gh, kube, _locks, previewer = setup()
    kube.add_preview(key(gh, 1), SHA1)
    report = await reconcile(kube, previewer, client_for(None), idle_ttl=timedelta(days=7))
    assert [(a.kind, a.reason) for a in report.actions] == [("teardown-closed", "App not installed on the repository")]
    assert kube.previews == {} and gh.writes == []


@pytest.mark.parametrize(("keep", "labels", "removed"), [(False, (), True), (True, (), False),
                                                         (False, ("preview-keep",), False),
                                                         (False, ("Preview-Keep",), False)])
async def test_reconcile_removes_an_idle_preview_unless_kept(keep: bool, labels: tuple[str, ...],
                                                              removed: bool) -> None:
    gh, kube, _locks, previewer = setup()
    kube.add_preview(key(gh, 1), SHA1, pushed_at=datetime.now(UTC) - timedelta(days=8), keep=keep)
    gh.add_pull(1, SHA1, labels=labels)
    report = await reconcile(kube, previewer, client_for(gh), idle_ttl=timedelta(days=7))
    assert [a.kind for a in report.actions] == (["teardown-idle"] if removed else [])
    assert (key(gh, 1).value not in kube.previews) is removed


async def test_the_sticky_comment_is_found_once_then_cached_and_unchanged_text_costs_nothing() -> None:
    gh = FakeRepo()
    reporter = Reporter()
    reporter.assume_no_comments(gh, 5)  # the event said the PR has no comment: no listing first
    assert await reporter.show(gh, 5, Report(State.DEPLOYING, sha=SHA1)) is True
    assert gh.reads == ["comments"]  # only the check for another replica's concurrent comment
    assert await reporter.show(gh, 5, Report(State.DEPLOYING, sha=SHA1)) is False
    assert gh.writes == ["create_comment"] and gh.reads == ["comments"]
    fresh = Reporter()  # another process: finds the comment by its marker, edits it in place
    await fresh.show(gh, 5, Report(State.READY, sha=SHA1))
    assert gh.writes == ["create_comment", "edit_comment"]
    assert [c["body"] for c in gh.comment_list] == [comment.render(Report(State.READY, sha=SHA1))]


async def test_a_gated_pr_shows_waiting_once_and_a_repeated_event_costs_reads_only() -> None:
    gh, kube, _locks, previewer = setup()
    gh.config = CONFIG + "wait_for: [build]\n"
    gh.add_pull(1, SHA1, files=["services/a/main.go"])
    waits = WaitRegistry()
    assert await gate.deploy_when_ready(previewer, waits, gh, 1) is None
    assert kube.applied == [] and (gh.repo_id, 1) in waits
    assert gh.states("preview-1") == ["queued"]
    assert "Preview: waiting for checks" in (gh.sticky(1) or "")
    writes = list(gh.writes)
    assert await gate.deploy_when_ready(previewer, waits, gh, 1) is None
    assert gh.writes == writes


async def test_a_base_change_decides_a_gated_head_again_and_leaves_its_live_deployment_alone() -> None:
    """`recheck` (the PR's base branch changed: other services may be changed now, with other checks): a
    head rolled out already is not taken as settled; its checks are read again. Here they have not run:
    the PR waits on a new waiting deployment, and the live one keeps its success."""
    gh, _kube, _locks, previewer = setup()
    gh.config = CONFIG + "wait_for: [build]\n"
    gh.add_pull(1, SHA1, files=["services/a/main.go"])
    assert (await previewer.deploy(gh, 1, SHA1)).state is State.READY  # a writer's `/preview`
    waits = WaitRegistry()
    reads = len(gh.reads)
    settled = await gate.deploy_when_ready(previewer, waits, gh, 1)
    assert settled is not None and settled.detail == "already deployed"
    assert "check_runs" not in gh.reads[reads:]
    assert await gate.deploy_when_ready(previewer, waits, gh, 1, recheck=True) is None
    assert "check_runs" in gh.reads[reads:]
    assert gh.states("preview-1") == ["success", "queued"]
    assert "Preview: waiting for checks" in (gh.sticky(1) or "")


async def test_a_preview_that_lost_its_mesh_route_gets_it_back_from_the_reconciler() -> None:
    """A team's VirtualService re-applied without the preview routes (by its owner or a GitOps tool): the
    deploy was done and said "ready", so only the reconciler can put them back."""
    gh, kube, _locks, previewer = setup()
    kube.add_preview(key(gh, 2), SHA1)
    gh.add_pull(2, SHA1)
    [(host, [route])] = list(kube.routes.items())
    kube.routes[host] = []

    dry = await reconcile(kube, previewer, client_for(gh), idle_ttl=timedelta(days=7), dry_run=True)
    assert [(a.kind, a.target) for a in dry.actions] == [("restore-route", "acme/shop#2")]
    assert kube.routes[host] == []
    report = await reconcile(kube, previewer, client_for(gh), idle_ttl=timedelta(days=7))
    assert [(a.kind, a.target) for a in report.actions] == [("restore-route", "acme/shop#2")], report.lines()
    assert kube.routes[host] == [route]  # what a deploy writes
    again = await reconcile(kube, previewer, client_for(gh), idle_ttl=timedelta(days=7))
    assert again.actions == [] and again.errors == []


async def test_lost_routes_of_an_idle_preview_or_of_a_repository_without_config_are_not_restored() -> None:
    gh, kube, _locks, previewer = setup()
    kube.add_preview(key(gh, 2), SHA1, pushed_at=datetime.now(UTC) - timedelta(days=8))
    gh.add_pull(2, SHA1)
    kube.routes = {}
    report = await reconcile(kube, previewer, client_for(gh), idle_ttl=timedelta(days=7))
    assert [a.kind for a in report.actions] == ["teardown-idle"]

    gh, kube, _locks, previewer = setup()
    gh.config = None
    kube.add_preview(key(gh, 3), SHA1)
    gh.add_pull(3, SHA1)
    kube.routes = {}
    report = await reconcile(kube, previewer, client_for(gh), idle_ttl=timedelta(days=7))
    assert report.actions == [] and kube.routes == {}  # its next deploy removes it (no config)


async def test_a_fold_the_api_server_refuses_is_an_error_line_and_the_pass_ends_normally() -> None:
    from bot.kube import KubeError
    from bot.mesh_hosts import Decision, Ref

    gh, kube, _locks, previewer = setup()
    host = "a.previews.svc.cluster.local"

    async def misplaced() -> list[tuple[str, Ref, Decision]]:
        return [(host, Ref("istio-system", "preview-mesh-a"), Decision(target=Ref("shop", "team-a")))]

    async def fold(_host: str) -> bool:
        raise KubeError(403, "Forbidden", "virtualservices.networking.istio.io \"team-a\" is forbidden")

    kube.misplaced_mesh_routes = misplaced  # type: ignore[method-assign]
    kube.fold_mesh_routes = fold  # type: ignore[method-assign]
    report = await reconcile(kube, previewer, client_for(gh), idle_ttl=timedelta(days=7))
    assert [a.kind for a in report.actions] == ["fold-routes"]
    assert report.errors == [f"{host}: Kubernetes API answered 403 Forbidden: virtualservices.networking.istio.io "
                             '"team-a" is forbidden']


class _Installed:
    """The App's repositories (bot.reconcile.Repositories) as the Reconciler uses them: one repository."""

    def __init__(self, gh: FakeRepo) -> None:
        self.gh = gh

    async def listing(self, *, max_age: float = 0) -> dict[int, tuple[int, str]]:
        return {self.gh.repo_id: (1, self.gh.repo)}

    async def client_for(self, _repo_id: int | None, _repo: str) -> FakeRepo:
        return self.gh


def _cut_off_deploy(gh: FakeRepo, kube: FakeCluster, number: int, *, replica: str, age: timedelta) -> None:
    """A deploy of the head `age` ago by `replica`, whose process ended before it finished: its objects
    exist, its GitHub Deployment is still in progress."""
    at = datetime.now(UTC) - age
    kube.add_preview(key(gh, number), SHA1, pushed_at=at)
    gh.add_pull(number, SHA1)
    stamp = at.strftime("%Y-%m-%dT%H:%M:%SZ")
    deployment_id = 1000 + number
    gh.deployment_list.append({"id": deployment_id, "sha": SHA1, "environment": f"preview-{number}",
                               "payload": {"replica": replica}, "created_at": stamp})
    gh.statuses[deployment_id] = [{"state": "in_progress", "description": "", "created_at": stamp}]


async def test_every_pass_resumes_a_deploy_a_shutdown_cut_off_once_it_is_old_enough() -> None:
    """A SIGTERM whose drain timed out cut a deploy off; the new process's first pass came before the deploy
    was older than the longest wait + 60 s (a live one on another replica could not be ruled out). A later
    pass resumes it; one of this process's own deploys, younger than that, is left to run."""
    from bot.queue import WorkQueue
    from bot.reconcile import Reconciler
    from bot.settings import load_settings
    from tests.unit.test_settings import base_env

    gh, kube, _locks, previewer = setup()
    settings = load_settings(base_env(PREVIEW_RECONCILE_INTERVAL="300", POD_NAME="pod-new"))
    reconciler = Reconciler(settings, kube, previewer, _Installed(gh), WorkQueue(1),  # type: ignore[arg-type]
                            WaitRegistry(), superseded=lambda *_: False)
    resumed: list[tuple[object, ...]] = []
    await reconciler.reconcile_once(resume=lambda *args: resumed.append(args))  # the first pass: nothing yet
    assert resumed == []
    # Older than any live deploy can be (the longest wait + 60 s); the other one is younger.
    _cut_off_deploy(gh, kube, 1, replica="pod-old", age=timedelta(seconds=previewer.longest_wait + 120))
    _cut_off_deploy(gh, kube, 2, replica="pod-new", age=timedelta(minutes=1))  # running in this process
    report = await reconciler.reconcile_once(resume=lambda *args: resumed.append(args))
    assert resumed == [(gh.repo_id, gh.repo, 1, "unfinished")]
    assert [(a.kind, a.target, a.reason) for a in report.actions] == [
        ("resume", "acme/shop#1", "deploy did not finish")]


async def test_the_line_is_bounded_and_the_one_beyond_is_told_what_to_do() -> None:
    gh, kube, locks, previewer = setup(cap=1)
    kube.add_preview(key(gh, 100), SHA1)
    for number in range(1, slots.MAX_WAITING + 2):
        gh.add_pull(number, SHA1, files=["services/a/main.go"])
        result = await previewer.deploy(gh, number, SHA1)
        assert result.in_line is (number <= slots.MAX_WAITING)
    assert len(locks.line[str(gh.repo_id)].waiting) == slots.MAX_WAITING
    body = gh.sticky(slots.MAX_WAITING + 1) or ""
    assert "Preview: not deployed" in body and f"{slots.MAX_WAITING} pull requests already wait in line" in body
    assert "comment `/preview` to deploy it once a slot is free" in body
    assert f"{slots.ordinal(slots.MAX_WAITING)} in line" in (gh.sticky(slots.MAX_WAITING) or "")
