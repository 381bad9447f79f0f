"""Deploy and tear down one pull request's preview: desired state (pure) -> Kubernetes -> GitHub.

Level-triggered, like a controller: every deploy computes the whole desired state of the PR
(config from the default branch, the PR's changed files, its head SHA) and converges the cluster
to it, so repeating an event, or running after a missed one, gives the same result.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import cachetools
import gidgethub

from bot import comment, manifests, mesh_routes, metrics, naming
from bot.comment import Report, ServiceLine, State
from bot.errors import ConfigError, PermanentError, PreviewError
from bot.github.client import RepoClient
from bot.kube import Kube, KubeError, LivePreview
from bot.naming import PreviewKey
from bot.repo_config import CONFIG_PATH, RepoConfig, check_policy, parse_repo_config
from bot.settings import ClusterSettings

log = logging.getLogger(__name__)
# (repo, preview key) -> the SHA this process last deployed to the end (success or failure).
_FINISHED: cachetools.LRUCache[tuple[str, str], str] = cachetools.LRUCache(maxsize=8192)


@dataclass(frozen=True)
class DeployResult:
    state: State
    detail: str | None = None


class Previewer:
    def __init__(self, settings: ClusterSettings, kube: Kube, *, ready_timeout: float,
                 identity: str = "preview-bot") -> None:
        self.identity = identity
        self.settings = settings
        self.kube = kube
        self.ready_timeout = ready_timeout

    async def load_config(self, gh: RepoClient) -> RepoConfig | None:
        """The config on the default branch (never the PR's own); None when the repo has none."""
        text = await gh.file_text(CONFIG_PATH)  # no ref: the default branch
        if text is None:
            return None
        config = parse_repo_config(text, CONFIG_PATH)
        check_policy(config, self.settings.policy, CONFIG_PATH)
        return config

    async def report(self, gh: RepoClient, number: int, report: Report) -> None:
        await gh.upsert_sticky(number, comment.render(report))

    async def settled(self, gh: RepoClient, key: PreviewKey, head_sha: str,
                      previews: list[LivePreview] | None = None) -> bool:
        """`head_sha` was deployed to the end: it runs (success), or it failed and a retry needs a push or
        `/preview`. A deploy cut short (in_progress, a crash), or one that failed before anything reached
        the cluster, is not settled."""
        # The cluster first: a deploy that got anywhere left objects at this SHA, so a new preview costs
        # no GitHub read here.
        if previews is None:
            previews = await self.kube.live_previews(gh.repo)
        if not any(p.key == key.value and p.sha == head_sha for p in previews):
            return False
        if _FINISHED.get((gh.repo, key.value)) == head_sha:
            return True  # this process saw that deploy to its end: no need to ask GitHub
        deployments = await gh.deployments(key.environment)
        if not deployments or deployments[0].get("sha") != head_sha:
            return False
        state = await gh.latest_state(int(deployments[0]["id"]))
        return state in ("failure", "error", "success")

    async def deploy(self, gh: RepoClient, number: int, head_sha: str, *,
                     config: RepoConfig | None = None, force: bool = True,
                     superseded: Callable[[], bool] = lambda: False) -> DeployResult:
        """Converge the PR's preview to `head_sha`; reports to the PR comment and a GitHub Deployment.

        Without `force`, a SHA already deployed to the end is left alone (a repeated event, or a resumed
        one that a webhook already handled)."""
        key = PreviewKey(gh.repo, number)
        repo_previews = await self.kube.live_previews(gh.repo)
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
        live = [p for p in repo_previews if p.key != key.value]
        if len(live) >= self.settings.policy.max_previews_per_repo:
            detail = (f"Nothing was deployed: this repository already has {len(live)} live previews "
                      f"(the limit is {self.settings.policy.max_previews_per_repo}). Stop one with `/preview stop`.")
            await self.report(gh, number, Report(State.NOT_DEPLOYED, sha=head_sha, detail=detail))
            return DeployResult(State.NOT_DEPLOYED, detail)

        wanted = [s.name for s in config.services]
        if any(s.paths for s in config.services):
            changed = await gh.changed_files(number)
            wanted = [s.name for s in config.services if s.affected_by(changed)]
        plan = manifests.plan_preview(self.settings, config, key, head_sha, only=wanted,
                                      pushed_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
        if not plan.services:
            await self.teardown_services(key, deployed, keep=())
            detail = "No service of this repository's preview config is changed by this pull request."
            await self.report(gh, number, Report(State.NOT_DEPLOYED, sha=head_sha, detail=detail))
            return DeployResult(State.NOT_DEPLOYED, detail)

        lines = [ServiceLine(s.service.name, s.url, s.image, False) for s in plan.services]
        # The URL reaches the PR first; the Deployment's records follow. So every Deployment of a PR is
        # created after its comment: a deploy that creates the PR's first comment has none to deactivate
        # (unless a person deleted the bot's comment and no replica remembers it: then an old
        # Deployment may stay shown as active, nothing else).
        await self.report(gh, number, Report(State.DEPLOYING, sha=head_sha, services=lines, header_value=key.value))
        first_comment = gh.created_sticky
        deployment_id = await gh.create_deployment(
            ref=head_sha, environment=key.environment, description=f"Preview of #{number}",
            payload={"key": key.value, "services": [s.service.name for s in plan.services],
                     "replica": self.identity})
        if not first_comment:
            await gh.deactivate(key.environment, keep=[deployment_id])
        await gh.deployment_status(deployment_id, "in_progress", description="deploying")
        try:
            await self.kube.apply_preview(plan)
            for service in plan.services:
                await self.kube.add_mesh_route(service.mesh_host, service.mesh_route)
            await self.teardown_services(key, deployed, keep=[s.service.name for s in plan.services])
            failures = await self.kube.wait_available([s.name for s in plan.services], self.ready_timeout,
                                                      stop=superseded)
        except (PreviewError, KubeError) as exc:
            return await self._failed(gh, number, deployment_id, head_sha, lines, key, str(exc))
        if superseded():
            # A newer event for this PR is queued; it will report. This deployment is history.
            await gh.deployment_status(deployment_id, "inactive", description="superseded by a newer event")
            return DeployResult(State.DEPLOYING, "superseded")
        failed = {name: reason for name, reason in failures.items() if reason}
        ready_lines = [ServiceLine(line.name, line.url, line.image, plan.services[i].name not in failed)
                       for i, line in enumerate(lines)]
        if failed:
            reason = "; ".join(f"{name}: {why}" for name, why in sorted(failed.items()))
            return await self._failed(gh, number, deployment_id, head_sha, ready_lines, key, reason)
        await gh.deployment_status(deployment_id, "success", description="preview is ready",
                                   environment_url=plan.services[0].url)
        await self.report(gh, number, Report(State.READY, sha=head_sha, services=ready_lines,
                                             header_value=key.value))
        metrics.PREVIEW_OUTCOMES.labels(action="deploy", outcome="success").inc()
        _FINISHED[(gh.repo, key.value)] = head_sha
        return DeployResult(State.READY)

    async def _failed(self, gh: RepoClient, number: int, deployment_id: int, sha: str,
                      lines: list[ServiceLine], key: PreviewKey, reason: str) -> DeployResult:
        log.warning("preview deploy failed: %s", reason, extra={"repo": gh.repo, "pr": number})
        await gh.deployment_status(deployment_id, "failure", description=reason)
        await self.report(gh, number, Report(State.FAILED, sha=sha, services=lines, header_value=key.value,
                                             detail=f"Deploy failed: {reason}"))
        metrics.PREVIEW_OUTCOMES.labels(action="deploy", outcome="failure").inc()
        _FINISHED[(gh.repo, key.value)] = sha
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
        """Remove every object and route of the preview; nothing deployed -> nothing done."""
        _FINISHED.pop((key.repo, key.value), None)
        removed = await self.kube.remove_routes_of_key(key.value)
        removed += await self.kube.delete_preview(key)
        metrics.PREVIEW_OUTCOMES.labels(action="teardown", outcome="removed" if removed else "nothing").inc()
        return removed

    async def stop(self, gh: RepoClient, number: int, reason: str) -> int:
        """Tear down and tell GitHub; a PR that never had a preview gets no comment."""
        key = PreviewKey(gh.repo, number)
        removed = await self.teardown(key)
        try:
            deactivated = await gh.deactivate(key.environment)
        except gidgethub.HTTPException as exc:
            raise PermanentError(f"could not mark deployments inactive: {exc}") from exc
        if removed or deactivated or await gh.has_sticky(number):
            await self.report(gh, number, Report(State.STOPPED, detail=reason))
        return removed
