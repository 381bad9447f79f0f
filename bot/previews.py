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
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import cachetools

from bot import comment, links, manifests, mesh_routes, metrics, naming
from bot.arbiter import Arbiter
from bot.comment import Report, ServiceLine, State
from bot.errors import ConfigError, PreviewError
from bot.github.client import LIST_FILES_MAX, RepoClient
from bot.github.errors import GitHubError
from bot.kube import Kube, KubeError, LivePreview
from bot.naming import PreviewKey
from bot.repo_config import CONFIG_PATH, RepoConfig, check_policy, parse_repo_config
from bot.settings import ClusterSettings

log = logging.getLogger(__name__)
# (repository id, preview key) -> (SHA, "success" | "failure") of the deploy this process last saw end.
_FINISHED: cachetools.LRUCache[tuple[int | None, str], tuple[str, str]] = cachetools.LRUCache(maxsize=8192)


@dataclass(frozen=True)
class DeployResult:
    state: State
    detail: str | None = None


class Previewer:
    def __init__(self, settings: ClusterSettings, kube: Kube, *, ready_timeout: float, arbiter: Arbiter,
                 identity: str = "preview-bot", image_pull_grace: float = 600.0,
                 delete_environments: bool = False) -> None:
        self.identity = identity
        self.settings = settings
        self.kube = kube
        self.ready_timeout = ready_timeout
        self.image_pull_grace = image_pull_grace
        self.arbiter = arbiter
        self.delete_environments = delete_environments
        # Rewrites the link lines of any PR's sticky comment (bot.links); set by the server.
        self.link_refresh: Callable[[str, int], Awaitable[None]] | None = None

    @property
    def lock_timeout(self) -> float:
        """How long an event waits for another replica's work on the same PR (a deploy, which stops
        early when it sees the wait, or a teardown)."""
        return self.ready_timeout + 60

    async def load_config(self, gh: RepoClient) -> RepoConfig | None:
        """The config on the default branch (never the PR's own); None when the repo has none."""
        text = await gh.file_text(CONFIG_PATH)  # no ref: the default branch
        if text is None:
            return None
        config = parse_repo_config(text, CONFIG_PATH)
        check_policy(config, self.settings.policy, CONFIG_PATH)
        return config

    async def report(self, gh: RepoClient, number: int, report: Report) -> None:
        report = replace(report, links=await links.report_lines(self.kube, gh.repo, gh.repo_id, number))
        await gh.upsert_sticky(number, comment.render(report))

    async def key_for(self, gh: RepoClient, number: int) -> tuple[PreviewKey, list[LivePreview]]:
        """The PR's preview key (an existing preview's is kept, see naming.resolve_key) and the
        repository's live previews."""
        previews = await self.kube.live_previews((gh.repo_id, gh.repo))
        return naming.resolve_key(gh.repo, gh.repo_id, number, (p.key for p in previews)), previews

    async def settled(self, gh: RepoClient, key: PreviewKey, head_sha: str,
                      previews: list[LivePreview]) -> bool:
        """`head_sha` was deployed to the end: it runs (success), or it failed and a retry needs a push or
        `/preview` (also a refusal before anything was written: retrying it on every event or reconcile
        pass would only repeat the failure). A deploy cut short (in_progress, a crash) is not settled."""
        live = any(p.key == key.value and p.sha == head_sha for p in previews)
        finished = _FINISHED.get((gh.repo_id, key.value))
        if finished is not None and finished[0] == head_sha:
            return live or finished[1] == "failure"  # this process saw that deploy end: no GitHub read
        if gh.known_without_sticky(number=key.number):
            return False  # every finished deploy reported on the PR, which has no comment of the bot
        deployments = await gh.deployments(key.environment)
        if not deployments or deployments[0].get("sha") != head_sha:
            return False
        state = await gh.latest_state(int(deployments[0]["id"]))
        return state in ("failure", "error") or (state == "success" and live)

    async def deploy(self, gh: RepoClient, number: int, head_sha: str | None = None, *,
                     pull: Mapping[str, Any] | None = None, config: RepoConfig | None = None,
                     force: bool = True, supersedes: bool = True,
                     superseded: Callable[[], bool] = lambda: False) -> DeployResult:
        """Converge the PR's preview to `head_sha`; reports to the PR comment and a GitHub Deployment.

        Runs under the PR's lock (arbiter.py): one deploy or teardown of a PR at a time on any replica.
        `head_sha` None: the PR's head, read under the lock, so that replicas handling one PR's events one
        after the other all converge on the newest commit; `pull` is the PR as GitHub answered it, if
        already read. Without `force`, a SHA already deployed to the end is left alone (a repeated event,
        or a resumed one that a webhook already handled). `supersedes` False: an event that must not cut
        another replica's deploy short (a reconciler follow-up)."""
        key, _ = await self.key_for(gh, number)
        async with self.arbiter.pr_lock(key, supersedes=supersedes, timeout=self.lock_timeout) as lock:
            if head_sha is None:
                pull = await gh.pull(number)
                if pull.get("state") != "open":
                    return DeployResult(State.STOPPED, "the pull request is closed")
                head_sha = str(pull["head"]["sha"])

            def stale() -> bool:
                return superseded() or lock.superseded or not lock.held

            return await self._deploy(gh, key, head_sha, pull=pull, config=config, force=force, stale=stale,
                                      refresh=lock.refresh)

    async def _deploy(self, gh: RepoClient, key: PreviewKey, head_sha: str, *, pull: Mapping[str, Any] | None,
                      config: RepoConfig | None, force: bool, stale: Callable[[], bool],
                      refresh: Callable[[], Awaitable[None]]) -> DeployResult:
        number = key.number
        # Listed under the lock: what another replica did before we got it counts.
        repo_previews = await self.kube.live_previews((gh.repo_id, gh.repo))
        if not force and await self.settled(gh, key, head_sha, repo_previews):
            return DeployResult(State.READY, "already deployed")
        try:
            config = config or await self.load_config(gh)
        except ConfigError as exc:
            await self.report(gh, number, Report(State.CONFIG_ERROR, sha=head_sha,
                                                 detail=f"Nothing was deployed: `{exc}`"))
            metrics.PREVIEW_OUTCOMES.labels(action="deploy", outcome="config-error").inc()
            return DeployResult(State.CONFIG_ERROR, str(exc))
        if config is None:
            detail = f"Nothing was deployed: this repository has no `{CONFIG_PATH}` on its default branch."
            await self.report(gh, number, Report(State.CONFIG_ERROR, sha=head_sha, detail=detail))
            return DeployResult(State.CONFIG_ERROR, detail)

        deployed = {s for p in repo_previews if p.key == key.value for s in p.services}

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
        plan = await links.extend_plan(self.kube, plan)  # a linked PR keeps matching its owner's key
        if not plan.services:
            await self.teardown_services(key, deployed, keep=())
            if deployed:
                await self.retire(gh, key)
            await self.arbiter.release_slot(key)
            detail = "No service of this repository's preview config is changed by this pull request."
            await self.report(gh, number, Report(State.NOT_DEPLOYED, sha=head_sha, detail=detail))
            return DeployResult(State.NOT_DEPLOYED, detail)

        cap = self.settings.policy.max_previews_per_repo
        others = {p.key for p in repo_previews if p.key != key.value}
        granted, used = await self.arbiter.claim_slot(key, others, cap)
        if not granted:
            detail = (f"Nothing was deployed: this repository already has {used} live previews "
                      f"(the limit is {cap}). Stop one with `/preview stop`.")
            await self.report(gh, number, Report(State.NOT_DEPLOYED, sha=head_sha, detail=detail))
            metrics.PREVIEW_OUTCOMES.labels(action="deploy", outcome="over-limit").inc()
            return DeployResult(State.NOT_DEPLOYED, detail)

        lines = [ServiceLine(s.service.name, s.url, s.image, False) for s in plan.services]
        # The URL reaches the PR first; the Deployment's records follow. So every Deployment of a PR is
        # created after its comment: a deploy that creates the PR's first comment has none to deactivate
        # (unless a person deleted the bot's comment and no replica remembers it: then an old
        # Deployment may stay shown as active, nothing else).
        await self.report(gh, number, Report(State.DEPLOYING, sha=head_sha, services=lines, header_value=key.value,
                                             detail=note))
        first_comment = gh.created_sticky
        deployment_id = await gh.create_deployment(
            ref=head_sha, environment=key.environment, description=f"Preview of #{number}",
            payload={"key": key.value, "services": [s.service.name for s in plan.services],
                     "replica": self.identity})
        await gh.deployment_status(deployment_id, "in_progress", description="deploying")
        try:
            # Before anything is written: never "ready" with mesh routes that Istio would ignore.
            await self.kube.check_mesh_hosts(s.mesh_host for s in plan.services)
            await self.kube.apply_preview(plan)
            for service in plan.services:
                await self.kube.add_mesh_route(service.mesh_host, service.mesh_route)
            await self.teardown_services(key, deployed, keep=[s.service.name for s in plan.services])
            images = {s.name: s.image for s in plan.services}

            async def image_wait(name: str, _reason: str) -> None:
                # Not a failure yet: CI may still be pushing it. Said once; the wait goes on.
                detail = f"Waiting for the image `{images.get(name, name)}` to be pushed (ErrImagePull)."
                await gh.deployment_status(deployment_id, "in_progress", description="waiting for the image")
                await self.report(gh, number, Report(State.DEPLOYING, sha=head_sha, services=lines,
                                                     header_value=key.value, detail=detail))

            failures = await self.kube.wait_available([s.name for s in plan.services], self.ready_timeout,
                                                      stop=stale, pull_grace=self.image_pull_grace,
                                                      on_image_wait=image_wait)
        except (PreviewError, KubeError) as exc:
            return await self._failed(gh, number, deployment_id, head_sha, lines, key, str(exc))
        # What the cluster runs now: a deploy that was cut short, or whose objects another writer
        # replaced meanwhile, is no longer the PR's head and never reports success.
        recorded = set((await self.kube.recorded_shas(key)).values())
        await refresh()  # a replica that started waiting just now comes with a newer event
        if stale() or recorded != {head_sha}:
            return await self._superseded(gh, key, deployment_id)
        failed = {name: reason for name, reason in failures.items() if reason}
        ready_lines = [ServiceLine(line.name, line.url, line.image, plan.services[i].name not in failed)
                       for i, line in enumerate(lines)]
        if failed:
            reason = "; ".join(f"{name}: {why}" for name, why in sorted(failed.items()))
            return await self._failed(gh, number, deployment_id, head_sha, ready_lines, key, reason)
        await gh.deployment_status(deployment_id, "success", description="preview is ready",
                                   environment_url=plan.services[0].url)
        # After our own success: whatever came before is history (transient environments get no
        # auto_inactive). Newer deployments are left to the deploy that made them. The PR's first comment
        # was just created: it has no earlier deployment.
        if not first_comment:
            await gh.deactivate(key.environment, older_than=deployment_id)
        await self.report(gh, number, Report(State.READY, sha=head_sha, services=ready_lines,
                                             header_value=key.value, detail=note))
        metrics.PREVIEW_OUTCOMES.labels(action="deploy", outcome="success").inc()
        _FINISHED[(gh.repo_id, key.value)] = (head_sha, "success")
        return DeployResult(State.READY)

    async def _superseded(self, gh: RepoClient, key: PreviewKey, deployment_id: int) -> DeployResult:
        """A newer event for this PR (here or on another replica) will deploy and report; this deployment
        is history. Older ones first, so that an inactive deployment means all before it are too."""
        await gh.deactivate(key.environment, older_than=deployment_id)
        await gh.deployment_status(deployment_id, "inactive", description="superseded by a newer event")
        return DeployResult(State.DEPLOYING, "superseded")

    async def _failed(self, gh: RepoClient, number: int, deployment_id: int, sha: str,
                      lines: list[ServiceLine], key: PreviewKey, reason: str) -> DeployResult:
        log.warning("preview deploy failed: %s", reason, extra={"repo": gh.repo, "pr": number})
        if not await self.kube.recorded_shas(key):
            await self.arbiter.release_slot(key)  # nothing of it was created (a refused host): no slot used
        await gh.deployment_status(deployment_id, "failure", description=reason)
        await gh.deactivate(key.environment, older_than=deployment_id)  # the cluster no longer runs them
        await self.report(gh, number, Report(State.FAILED, sha=sha, services=lines, header_value=key.value,
                                             detail=f"Deploy failed: {reason}"))
        metrics.PREVIEW_OUTCOMES.labels(action="deploy", outcome="failure").inc()
        _FINISHED[(gh.repo_id, key.value)] = (sha, "failure")
        return DeployResult(State.FAILED, reason)

    async def teardown_services(self, key: PreviewKey, deployed: set[str], keep: list[str] | tuple[()]) -> None:
        """Remove the preview's `deployed` services that are no longer wanted (config or diff changed)."""
        stale = sorted(deployed - {naming.dns_label(s) for s in keep})
        if not stale:
            return
        gone = {naming.service_fqdn(key.object_name(s), self.settings.namespace) for s in stale}
        await self.kube.remove_routes_where(lambda route: route.get("name") == key.value and bool(
            gone & set(mesh_routes.route_destinations({"http": [route]}).get(key.value, []))))
        await self.kube.delete_preview(key, services=stale)

    async def teardown(self, key: PreviewKey) -> int:
        """Remove every object and route of the preview and free its slot; nothing deployed -> nothing
        done. The caller holds the PR's lock."""
        _FINISHED.pop((key.repo_id, key.value), None)
        await links.release(self.kube, key, self.link_refresh)
        removed = await self.kube.remove_routes_of_key(key.value)
        removed += await self.kube.delete_preview(key)
        await self.arbiter.release_slot(key)  # after the objects: a slot is never free while they live
        metrics.PREVIEW_OUTCOMES.labels(action="teardown", outcome="removed" if removed else "nothing").inc()
        return removed

    async def retire(self, gh: RepoClient, key: PreviewKey) -> int:
        """The GitHub side of every teardown: the PR's deployments are marked inactive, then deleted (they
        would pile up in the repository forever otherwise); with PREVIEW_DELETE_ENVIRONMENTS the emptied
        environment `preview-<n>` goes too. Returns how many deployments there were."""
        count = await gh.retire(key.environment)
        if self.delete_environments:
            await gh.delete_environment(key.environment)
        return count

    async def stop(self, gh: RepoClient | None, number: int, reason: str, *, key: PreviewKey | None = None) -> int:
        """Tear down and tell GitHub; a PR that never had a preview gets no comment. `key`: the live
        preview's, when the caller found it (the reconciler); else resolved from `gh`. `gh` None: the App
        is gone from the repository, only the cluster side is done (then `key` is required)."""
        if key is None:
            if gh is None:
                raise ValueError("stop() needs a client or the preview's key")
            key, _ = await self.key_for(gh, number)
        async with self.arbiter.pr_lock(key, supersedes=True, timeout=self.lock_timeout):
            removed = await self.teardown(key)
            if gh is None:
                return removed
            try:
                retired = await self.retire(gh, key)
            except GitHubError as exc:
                raise PreviewError(f"could not mark deployments inactive: {exc}") from exc
            if removed or retired or await gh.has_sticky(number):
                await self.report(gh, number, Report(State.STOPPED, detail=reason))
        return removed
