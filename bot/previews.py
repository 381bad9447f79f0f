"""Deploy and tear down one pull request's preview: desired state (pure) -> Kubernetes -> GitHub.

Level-triggered, like a controller: every deploy computes the whole desired state of the PR
(config from the default branch, the PR's changed files, its head SHA) and converges the cluster
to it, so repeating an event, or running after a missed one, gives the same result.

One PR's deploys and teardowns run one at a time on all replicas together (arbiter.py), and a deploy
reports success only while it is still the newest work for the PR: so a PR has at most one active
GitHub deployment, the head's. Every teardown retires the PR's GitHub deployments (inactive, then
deleted).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import cachetools

from bot import comment, links, manifests, mesh_routes, metrics, naming, slots
from bot.comment import Report, ServiceLine, State
from bot.errors import ConfigError, ObjectsElsewhere, PreviewError, RoutesNotRemoved
from bot.github.client import LIST_FILES_MAX
from bot.kube import KubeError, LivePreview
from bot.naming import PreviewKey
from bot.ports import Cluster, GitHubRepo, Locks
from bot.repo_config import CONFIG_PATH, RepoConfig, parse_for_cluster
from bot.reporting import Reporter, Rollout
from bot.settings import ClusterSettings
from bot.triggers import is_fork

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeployResult:
    """`in_line`: refused at the repository's cap, the PR waits in line for a slot (bot.slots)."""

    state: State
    detail: str | None = None
    in_line: bool = False


@dataclass(frozen=True)
class Teardown:
    """What a teardown did: `removed` objects deleted and shared VirtualServices changed; `routes_left`:
    one clause per shared VirtualService that keeps a route of the preview (RoutesNotRemoved)."""

    removed: int
    routes_left: tuple[str, ...] = ()

    def told(self, reason: str) -> str:
        """`reason` as the PR comment gives it, with the routes left, if any."""
        if not self.routes_left:
            return reason
        return (f"{reason} A mesh route of this preview could not be removed: {'; '.join(self.routes_left)}. "
                "It receives no requests (the preview's host is gone) and is removed once preview-bot may.")


class Previewer:
    """Deploys and tears down previews; `reporter` says on GitHub what the PR shows (bot.reporting), one
    per process; `arbiter` serialises a PR's work across replicas and holds the repository's slots."""

    def __init__(self, settings: ClusterSettings, kube: Cluster, *, ready_timeout: float, arbiter: Locks,
                 reporter: Reporter, image_pull_grace: float = 600.0) -> None:
        self.settings = settings
        self.kube = kube
        self.ready_timeout = ready_timeout
        self.image_pull_grace = image_pull_grace
        self.arbiter = arbiter
        self.reporter = reporter
        # (repository id, preview key) -> (SHA, "success" | "failure") of the deploy this process last saw end.
        self._finished: cachetools.LRUCache[tuple[int | None, str], tuple[str, str]] = \
            cachetools.LRUCache(maxsize=8192)
        # (repository id, preview key) -> the SHA whose `redeploy` failed in this process: not tried again at
        # that SHA (a failure that is not the rollout's, e.g. a refused mesh host, would repeat every pass).
        self._redeploy_failed: cachetools.LRUCache[tuple[int | None, str], str] = cachetools.LRUCache(maxsize=8192)
        # Rewrites the link lines of any PR's sticky comment (bot.links); set by the server.
        self.link_refresh: Callable[[str, int], Awaitable[None]] | None = None
        # Offers a freed slot to the PRs waiting in the repository's line (bot.reconcile.Reconciler.slot_freed);
        # set by the server. Called only when someone waits: a teardown costs nothing more otherwise.
        self.on_slot_freed: Callable[[PreviewKey], None] | None = None

    async def release_slot(self, key: PreviewKey) -> None:
        """Free the preview's slot and its place in line; who waits is offered the slot."""
        line = await self.arbiter.release_slot(key)
        if line.waiting and self.on_slot_freed is not None:
            self.on_slot_freed(key)

    @property
    def longest_wait(self) -> float:
        """Seconds a deploy may wait for its rollout: the ready timeout, or the image pull grace for a
        preview waiting for its image when that is longer (bot.kube.rollout.Rollouts.wait_available)."""
        return max(self.ready_timeout, self.image_pull_grace)

    @property
    def lock_timeout(self) -> float:
        """How long an event waits for another replica's work on the same PR (a deploy, which stops
        early when it sees the wait, or a teardown)."""
        return self.longest_wait + 60

    async def load_config(self, gh: GitHubRepo) -> RepoConfig | None:
        """The config on the default branch (never the PR's own); None when the repo has none."""
        text = await gh.file_text(CONFIG_PATH)  # no ref: the default branch
        if text is None:
            return None
        return parse_for_cluster(text, self.settings.policy, self.settings.namespace, CONFIG_PATH)

    async def key_for(self, gh: GitHubRepo, number: int) -> tuple[PreviewKey, list[LivePreview]]:
        """The PR's preview key (an existing preview's is kept, see naming.resolve_key) and the
        repository's live previews."""
        previews = await self.kube.live_previews((gh.repo_id, gh.repo))
        return naming.resolve_key(gh.repo, gh.repo_id, number, (p.key for p in previews)), previews

    async def settled(self, gh: GitHubRepo, key: PreviewKey, head_sha: str,
                      previews: list[LivePreview]) -> bool:
        """`head_sha` was deployed to the end: it runs (success), or it failed and a retry needs a push or
        `/preview` (also a refusal before anything was written: retrying it on every event or reconcile
        pass would only repeat the failure). A deploy cut short (in_progress, a crash) is not settled."""
        live = any(p.key == key.value and p.sha == head_sha for p in previews)
        finished = self._finished.get((gh.repo_id, key.value))
        if finished is not None and finished[0] == head_sha:
            return live or finished[1] == "failure"  # this process saw that deploy end: no GitHub read
        if self.reporter.sticky.known_absent(gh, key.number):
            return False  # every finished deploy reported on the PR, which has no comment of the bot
        deployments = await gh.deployments(key.environment)
        if not deployments or deployments[0].get("sha") != head_sha:
            return False
        state = await gh.latest_state(int(deployments[0]["id"]))
        return state in ("failure", "error") or (state == "success" and live)

    async def stopped_at_head(self, gh: GitHubRepo, number: int, head_sha: str) -> bool:
        """The PR's sticky comment says its preview was stopped at `head_sha` (comment.stopped_at): no
        push since. One listing of the PR's comments: the stop may have been another replica's."""
        return comment.stopped_at(await self.reporter.sticky.body(gh, number, fresh=True)) == head_sha.lower()

    async def deploy(self, gh: GitHubRepo, number: int, head_sha: str | None = None, *,
                     pull: Mapping[str, Any] | None = None, config: RepoConfig | None = None,
                     force: bool = True, supersedes: bool = True, unless_stopped: bool = False,
                     superseded: Callable[[], bool] = lambda: False,
                     wait_as: str | None = slots.EVENT) -> DeployResult:
        """Converge the PR's preview to `head_sha`; reports to the PR comment and a GitHub Deployment.

        Runs under the PR's lock (arbiter.py): one deploy or teardown of a PR at a time on any replica.
        `head_sha` None: the PR's head, read under the lock, so that replicas handling one PR's events one
        after the other all converge on the newest commit; `pull` is the PR as GitHub answered it, if
        already read. Without `force`, a SHA already deployed to the end is left alone (a repeated event,
        or a resumed one that a webhook already handled). `supersedes` False: an event that must not cut
        another replica's deploy short (a reconciler follow-up). `unless_stopped`: the caller is no new
        push nor a person asking (a check event, a wait that ran out, the reconciler), so a preview
        stopped at this head stays stopped (read under the lock: a stop that ran just before counts).
        `wait_as`: refused at the repository's cap, the PR waits in line for a slot as asked by its own
        event (slots.EVENT) or a writer's `/preview` (slots.COMMAND); None: it does not wait (a link).

        A commit named by `head_sha` is one a person asked for (a writer's `/preview <sha>`, a link) or
        one the caller's rules allow. A head read here is deployed from a fork only when its preview runs
        that commit already (a maintainer approved it: this finishes or repeats that deploy); any other
        commit of a fork waits for a writer's `/preview <sha>` (State.WAITING_APPROVAL), whoever asks (a
        resume of a deploy cut short, a wait for checks that ran out): its author may push at any time."""
        key, _ = await self.key_for(gh, number)
        async with self.arbiter.pr_lock(key, supersedes=supersedes, timeout=self.lock_timeout) as lock:
            read_head = head_sha is None
            if head_sha is None:
                pull = await gh.pull(number)
                if pull.get("state") != "open":
                    return DeployResult(State.STOPPED, "the pull request is closed")
                head_sha = str(pull["head"]["sha"])
            if unless_stopped and await self.stopped_at_head(gh, number, head_sha):
                log.info("not deployed: stopped at this commit", extra={"repo": gh.repo, "pr": number,
                                                                        "sha": head_sha})
                return DeployResult(State.STOPPED, "stopped at this commit")
            if read_head and is_fork(pull or {}) and not await self.runs(gh, key, head_sha):
                return await self.await_approval(gh, number, head_sha)

            def stale() -> bool:
                return superseded() or lock.superseded or not lock.held

            return await self._deploy(gh, key, head_sha, pull=pull, config=config, force=force, stale=stale,
                                      refresh=lock.refresh, wait_as=wait_as)

    async def runs(self, gh: GitHubRepo, key: PreviewKey, sha: str) -> bool:
        """The preview `key` runs commit `sha` (its objects record it), whatever its rollout's state."""
        return any(p.key == key.value and p.sha == sha for p in await self.kube.live_previews((gh.repo_id, gh.repo)))

    async def await_approval(self, gh: GitHubRepo, number: int, head_sha: str) -> DeployResult:
        """Nothing deployed: the fork's head `head_sha` waits for a writer's `/preview <sha>`; the PR says so
        (its live preview of an approved commit, if any, keeps serving)."""
        log.info("not deployed: a fork's commit no maintainer approved", extra={"repo": gh.repo, "pr": number,
                                                                                  "sha": head_sha})
        detail = comment.fork_waiting(head_sha)
        await self.reporter.show(gh, number, Report(State.WAITING_APPROVAL, sha=head_sha, detail=detail,
                                                    keeps_live=True))
        return DeployResult(State.WAITING_APPROVAL, detail)

    async def _deploy(self, gh: GitHubRepo, key: PreviewKey, head_sha: str, *, pull: Mapping[str, Any] | None,
                      config: RepoConfig | None, force: bool, stale: Callable[[], bool],
                      refresh: Callable[[], Awaitable[None]], wait_as: str | None = None) -> DeployResult:
        number = key.number
        # Listed under the lock: what another replica did before we got it counts.
        repo_previews = await self.kube.live_previews((gh.repo_id, gh.repo))
        if not force and await self.settled(gh, key, head_sha, repo_previews):
            return DeployResult(State.READY, "already deployed")
        try:
            config = config or await self.load_config(gh)
        except ConfigError as exc:
            await self.reporter.show(gh, number, Report(State.CONFIG_ERROR, sha=head_sha,
                                                        detail=f"Nothing was deployed: `{exc}`", keeps_live=True))
            metrics.PREVIEW_OUTCOMES.labels(action="deploy", outcome="config-error").inc()
            return DeployResult(State.CONFIG_ERROR, str(exc))
        if config is None:
            if any(p.key == key.value for p in repo_previews):
                # The repository stopped using previews (the file was removed from the default branch):
                # its live ones go, as with a close; a config that is only broken keeps them (above).
                detail = f"Preview removed: this repository has no `{CONFIG_PATH}` on its default branch any more."
                done = await self.teardown(key)
                await self.reporter.stopped(gh, key, done.told(detail), removed=done.removed, head_sha=head_sha)
                return DeployResult(State.STOPPED, detail)
            detail = f"Nothing was deployed: this repository has no `{CONFIG_PATH}` on its default branch."
            await self.reporter.show(gh, number, Report(State.CONFIG_ERROR, sha=head_sha, detail=detail))
            return DeployResult(State.CONFIG_ERROR, detail)

        deployed = {s for p in repo_previews if p.key == key.value for s in p.services}
        # Where they are: an earlier PREVIEW_NAMESPACE when the setting changed while the preview was live.
        where = next((p.namespace for p in repo_previews if p.key == key.value and p.namespace),
                     self.settings.namespace)

        wanted = [s.name for s in config.services]
        note = None
        if any(s.paths for s in config.services):
            changed = await gh.changed_files(number, pull)
            if changed.complete:
                wanted = [s.name for s in config.services if s.affected_by(changed.names)]
            else:
                note = (f"This pull request changes more files than GitHub lists ({LIST_FILES_MAX}), so every "
                        "service counts as changed.")
        plan = manifests.plan_preview(self.settings, config, key, head_sha, only=wanted,
                                      pushed_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
        if not plan.services:
            await self.teardown_services(key, deployed, keep=(), namespace=where)
            if deployed:
                await self.reporter.retire(gh, key)
            await self.release_slot(key)  # and out of the line: it asks for nothing
            detail = "No service of this repository's preview config is changed by this pull request."
            await self.reporter.show(gh, number, Report(State.NOT_DEPLOYED, sha=head_sha, detail=detail))
            return DeployResult(State.NOT_DEPLOYED, detail)

        cap = self.settings.policy.max_previews_per_repo
        others = {p.key for p in repo_previews if p.key != key.value}
        waiter = None if wait_as is None else slots.Waiter(
            key.value, number, head_sha, wait_as, datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
        claim = await self.arbiter.claim_or_wait(key, others, cap, waiter=waiter)
        if not claim.granted:
            detail = slots.refusal(claim.used, cap, claim.place, line=claim.line_full, ahead=claim.ahead)
            state = State.NOT_DEPLOYED if claim.place is None else State.WAITING_SLOT
            await self.reporter.show(gh, number, Report(state, sha=head_sha, detail=detail))
            metrics.PREVIEW_OUTCOMES.labels(action="deploy", outcome="over-limit").inc()
            return DeployResult(state, detail, in_line=claim.place is not None)

        lines = [ServiceLine(s.service.name, s.url, s.image, False) for s in plan.services]
        rollout = await self.reporter.begin(gh, key, head_sha, lines, note=note)
        try:
            # A linked PR keeps matching its owner's key (its record unreadable: ObjectsElsewhere, reported).
            plan = await links.extend_plan(self.kube, plan)
            # Before anything is written: never "ready" with mesh routes that Istio would ignore.
            await self.kube.check_mesh_hosts(s.mesh_host for s in plan.services)
            await self.kube.apply_preview(plan)
            for service in plan.services:
                await self.kube.add_mesh_route(service.mesh_host, service.mesh_route)
            # A service whose `host` changed in the config: its route at the old host must not stay.
            await self.kube.remove_routes_elsewhere(key.value, {s.destination: s.mesh_host for s in plan.services})
            await self.teardown_services(key, deployed, keep=[s.service.name for s in plan.services],
                                         namespace=where)
            images = {s.name: s.image for s in plan.services}

            async def image_wait(name: str, _reason: str) -> None:
                # Not a failure yet: CI may still be pushing it. Said once; the wait goes on.
                await self.reporter.progress(
                    gh, rollout, status="waiting for the image",
                    detail=f"Waiting for the image `{images.get(name, name)}` to be pushed (ErrImagePull).")

            failures = await self.kube.wait_available([s.name for s in plan.services], self.ready_timeout,
                                                      stop=stale, pull_grace=self.image_pull_grace,
                                                      on_image_wait=image_wait)
        except (PreviewError, KubeError) as exc:
            return await self._failed(gh, rollout, lines, str(exc))
        # What the cluster runs now: a deploy that was cut short, or whose objects another writer
        # replaced meanwhile, is no longer the PR's head and never reports success.
        recorded = set((await self.kube.recorded_shas(key)).values())
        await refresh()  # a replica that started waiting just now comes with a newer event
        if stale() or recorded != {head_sha}:
            await self.reporter.superseded(gh, rollout)
            return DeployResult(State.DEPLOYING, "superseded")
        failed = {name: reason for name, reason in failures.items() if reason}
        ready_lines = [ServiceLine(line.name, line.url, line.image, plan.services[i].name not in failed)
                       for i, line in enumerate(lines)]
        if failed:
            reason = "; ".join(f"{name}: {why}" for name, why in sorted(failed.items()))
            try:
                # Only a rollout failure is marked: it is the one that can cure itself (an image pushed
                # late, a crash loop that ends); the reconciler then redeploys and the PR says ready.
                await self.kube.mark_rollout_failed(plan, failed)
            except KubeError as exc:  # the report matters more; the mark only allows a later correction
                log.warning("could not mark the failed rollout: %s", exc, extra={"repo": gh.repo, "pr": number})
            return await self._failed(gh, rollout, ready_lines, reason)
        await self.reporter.ready(gh, rollout, ready_lines, plan.services[0].url)
        metrics.PREVIEW_OUTCOMES.labels(action="deploy", outcome="success").inc()
        self._finished[(gh.repo_id, key.value)] = (head_sha, "success")
        return DeployResult(State.READY)

    async def redeploy(self, gh: GitHubRepo, number: int, *, still: Callable[[LivePreview], bool],
                       superseded: Callable[[], bool] = lambda: False) -> DeployResult | None:
        """Deploy the PR's head again, though it runs already, while its live preview is at the head and
        `still(preview)` holds, both checked under the PR's lock: what the reconciler queues for a preview
        reported failed that became Available since (so that the PR says ready), or one running a service
        its config no longer has (so that it goes). None when that no longer holds (a push or another
        deploy came first). Never cuts another replica's deploy short."""
        key, _ = await self.key_for(gh, number)
        async with self.arbiter.pr_lock(key, supersedes=False, timeout=self.lock_timeout) as lock:
            found = [p for p in await self.kube.live_previews((gh.repo_id, gh.repo)) if p.key == key.value]
            if not found or not still(found[0]) or self.redeploy_failed_at(key) == found[0].sha:
                return None
            pull = await gh.pull(number)
            if pull.get("state") != "open" or str(pull["head"]["sha"]) != found[0].sha:
                return None  # a push: its own event (or the reconciler's missed-push resume) deploys it

            def stale() -> bool:
                return superseded() or lock.superseded or not lock.held

            result = await self._deploy(gh, key, found[0].sha, pull=pull, config=None, force=True, stale=stale,
                                        refresh=lock.refresh, wait_as=None)
            if result.state is State.FAILED:
                self._redeploy_failed[(key.repo_id, key.value)] = found[0].sha
            return result

    def redeploy_failed_at(self, key: PreviewKey) -> str | None:
        """The SHA at which `redeploy` of the preview failed in this process, if any: a push or `/preview`
        deploys again; the reconciler does not ask again at that SHA."""
        return self._redeploy_failed.get((key.repo_id, key.value))

    async def _failed(self, gh: GitHubRepo, rollout: Rollout, lines: list[ServiceLine], reason: str) -> DeployResult:
        key = rollout.key
        log.warning("preview deploy failed: %s", reason, extra={"repo": gh.repo, "pr": key.number})
        try:
            # Nothing of it was created (a refused host): no slot used. Looked for wherever the preview
            # is (an earlier PREVIEW_NAMESPACE too): a live preview's slot is never freed.
            created = bool(await self.kube.recorded_shas(key))
        except ObjectsElsewhere:
            created = True  # it lives where the bot may not look: it keeps its slot
        if not created:
            await self.release_slot(key)
        await self.reporter.failed(gh, rollout, lines, reason)
        metrics.PREVIEW_OUTCOMES.labels(action="deploy", outcome="failure").inc()
        self._finished[(gh.repo_id, key.value)] = (rollout.sha, "failure")
        return DeployResult(State.FAILED, reason)

    async def teardown_services(self, key: PreviewKey, deployed: set[str], keep: list[str] | tuple[()], *,
                                namespace: str = "") -> None:
        """Remove the preview's `deployed` services that are no longer wanted (config or diff changed): their
        mesh routes, then their objects. `namespace`: where they are ("": PREVIEW_NAMESPACE), as the live
        preview says (bot.kube.LivePreview.namespace): a route to the Service in an earlier
        PREVIEW_NAMESPACE names that namespace, and must go with the Service."""
        stale = sorted(deployed - {naming.dns_label(s) for s in keep})
        if not stale:
            return
        gone = {naming.service_fqdn(key.object_name(s), where)
                for s in stale for where in {namespace or self.settings.namespace, self.settings.namespace}}
        def drop(route: dict[str, Any]) -> bool:
            return route.get("name") == key.value and bool(
                gone & set(mesh_routes.route_destinations({"http": [route]}).get(key.value, [])))

        await self._remove_routes(key, self.kube.remove_routes_where(drop))
        await self.kube.delete_preview(key, services=stale)

    async def teardown(self, key: PreviewKey) -> Teardown:
        """Remove every object and route of the preview and free its slot; nothing deployed -> nothing
        done. The caller holds the PR's lock."""
        self._finished.pop((key.repo_id, key.value), None)
        await links.release(self.kube, key, self.link_refresh)
        removed, left = await self._remove_routes(key, self.kube.remove_routes_of_key(key.value))
        removed += await self.kube.delete_preview(key)
        await self.release_slot(key)  # after the objects: a slot is never free while they live
        metrics.PREVIEW_OUTCOMES.labels(action="teardown", outcome="removed" if removed else "nothing").inc()
        return Teardown(removed, left)

    @staticmethod
    async def _remove_routes(key: PreviewKey, removal: Awaitable[int]) -> tuple[int, tuple[str, ...]]:
        """Routes go first, so that no route points at a Service being deleted. A shared VirtualService
        the API server refuses to change (RBAC taken away, an admission webhook) must not keep the
        preview's own objects alive for ever: they go anyway, and the route left there, pointing at a
        removed Service, is a dangling route that every reconciliation pass reports, and removes once
        it may."""
        try:
            return await removal, ()
        except RoutesNotRemoved as exc:
            log.warning("preview %s: route left behind, its objects are removed anyway: %s", key.value, exc,
                        extra={"repo": key.repo, "pr": key.number})
            return exc.changed, tuple(exc.failures)

    async def stop(self, gh: GitHubRepo | None, number: int, reason: str, *, key: PreviewKey | None = None,
                   head_sha: str | None = None) -> int:
        """Tear down and tell GitHub; a PR that never had a preview gets no comment. `key`: the live
        preview's, when the caller found it (the reconciler); else resolved from `gh`. `gh` None: the App
        is gone from the repository, only the cluster side is done (then `key` is required). `head_sha`:
        the PR's head at the stop; the comment records it, so that discovery after a restart does not
        bring back a preview stopped on purpose (a later push still redeploys)."""
        if key is None:
            if gh is None:
                raise ValueError("stop() needs a client or the preview's key")
            key, _ = await self.key_for(gh, number)
        async with self.arbiter.pr_lock(key, supersedes=True, timeout=self.lock_timeout):
            done = await self.teardown(key)
            if gh is not None:
                await self.reporter.stopped(gh, key, done.told(reason), removed=done.removed, head_sha=head_sha)
        return done.removed
