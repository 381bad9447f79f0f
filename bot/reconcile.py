"""Level-triggered clean-up: what is live in the cluster vs. what should be.

GitHub never redelivers a failed webhook by itself, so this pass is what guarantees that previews of
closed PRs go away, that mesh routes never point at missing Services, and that idle previews are
removed after the TTL unless someone asked to keep them.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from bot import mesh_routes, metrics, naming, ttl_warning
from bot.errors import PreviewError
from bot.github.client import RepoClient
from bot.github.errors import GitHubError
from bot.kube import Kube, LivePreview
from bot.naming import PreviewKey, valid_repo
from bot.previews import Previewer
from bot.timestamps import parse_time
from bot.triggers import is_fork

log = logging.getLogger(__name__)

KEEP_LABEL = "preview-keep"
# (repository id, full name) -> a client for it, or None when the App is no longer installed there. The
# id is None for a legacy preview (made before ids): the name finds it then.
ClientFor = Callable[[int | None, str], Awaitable[RepoClient | None]]
# (repository id, current full name, number): queue a redeploy.
Resume = Callable[[int, str, int], None]


@dataclass
class Action:
    kind: str  # "teardown-closed", "teardown-idle", "remove-route", "resume", "adopt", "warn-idle", "fold-routes"
    target: str
    reason: str


@dataclass
class GcReport:
    actions: list[Action] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [f"{a.kind}\t{a.target}\t{a.reason}" for a in self.actions] + [f"error\t{e}" for e in self.errors]


def is_idle(preview: LivePreview, now: datetime, ttl: timedelta) -> bool:
    """Idle: no push (deploy) for longer than the TTL."""
    last = parse_time(preview.pushed_at) or parse_time(preview.created)
    return last is not None and now - last > ttl


def dangling_routes(mesh_services: list[dict[str, Any]], services: set[str]) -> list[tuple[str, str]]:
    """(preview key, destination) of preview routes whose destination Service does not exist."""
    found = []
    for item in mesh_services:
        for key, destinations in mesh_routes.route_destinations(item.get("spec") or {}).items():
            found += [(key, d) for d in destinations if d not in services]
    return found


async def reconcile(kube: Kube, previewer: Previewer, client_for: ClientFor, *, idle_ttl: timedelta,
                    dry_run: bool = False, now: datetime | None = None,
                    resume: Resume | None = None, check_stuck: bool = False,
                    stuck_after: timedelta = timedelta(minutes=10), identity: str = "",
                    warn_before: timedelta = timedelta(0)) -> GcReport:
    """One pass. `resume` queues a redeploy of previews behind their PR's head (a missed push), and with
    `check_stuck` of those whose last GitHub deployment never finished (a crash mid-deploy). Previews within
    `warn_before` of the idle TTL get one warning comment per idle period (bot.ttl_warning)."""
    now = now or datetime.now(UTC)
    report = GcReport()
    previews = await kube.live_previews()
    metrics.LIVE_PREVIEWS.set(len(previews))
    pulls_by_repo: dict[int | str, tuple[RepoClient | None, Mapping[int, dict[str, Any]] | None]] = {}
    for preview in previews:
        target = f"{preview.repo}#{preview.number}"
        if not valid_repo(preview.repo) or preview.number < 1 or not _key_intact(preview):
            report.errors.append(f"{preview.key}: labels or annotations are damaged; left alone")
            continue
        try:
            # By id: a renamed or transferred repository is the same repository.
            repo_key: int | str = preview.repo_id if preview.repo_id is not None else preview.repo.lower()
            if repo_key not in pulls_by_repo:
                found = await client_for(preview.repo_id, preview.repo)
                pulls_by_repo[repo_key] = (found, None if found is None else
                                           {int(p["number"]): p for p in await found.open_pulls()})
            client, open_pulls = pulls_by_repo[repo_key]
            if client is not None:
                target = f"{client.repo}#{preview.number}"
            pull = None if open_pulls is None else open_pulls.get(preview.number)
            if pull is None:
                reason = "pull request is closed" if open_pulls is not None else "App not installed on the repository"
                report.actions.append(Action("teardown-closed", target, reason))
                if not dry_run:
                    await _stop(previewer, client, preview, f"Preview removed: the {reason}.")
                continue
            assert client is not None  # an open pull was listed through it
            if preview.repo_id is None:
                # Made before ids: label its objects with the repository id, so a later rename finds it.
                report.actions.append(Action("adopt", target, f"labelled with repository id {client.repo_id}"))
                if not dry_run:
                    await kube.adopt(preview.key, client.repo_id)
            if resume is not None and await _needs_resume(pull, preview, client,
                                                          stuck_after if check_stuck else None, now, identity):
                report.actions.append(Action("resume", target, "deploy did not finish or missed a push"))
                resume(client.repo_id, client.repo, preview.number)
                continue
            labels = {str(label["name"]) for label in pull.get("labels") or []}
            if preview.keep or KEEP_LABEL in labels:
                continue
            if not is_idle(preview, now, idle_ttl):
                if await ttl_warning.maybe_warn(kube, client_for, preview, now=now, ttl=idle_ttl, before=warn_before,
                                                dry_run=dry_run):
                    report.actions.append(Action("warn-idle", target, "the idle TTL is near: warned on the PR"))
                continue
            days = idle_ttl.total_seconds() / 86400
            report.actions.append(Action("teardown-idle", target, f"no push for more than {days:g} days"))
            if not dry_run:
                await _stop(previewer, client, preview,
                            f"Preview removed after {days:g} days without a push. Comment `/preview` to deploy "
                            f"again, or `/preview keep` (or the `{KEEP_LABEL}` label) to keep it.")
        except (GitHubError, OSError) as exc:
            report.errors.append(f"{target}: {type(exc).__name__}: {exc}")
    # Routes whose Service is gone (deleted by hand, or a crash between steps).
    services = await kube.service_names()
    for key, destination in dangling_routes(await kube.mesh_services(), services):
        report.actions.append(Action("remove-route", key, f"destination {destination} does not exist"))
    if not dry_run and any(a.kind == "remove-route" for a in report.actions):
        await kube.remove_routes_where(lambda route: any(
            d not in services for d in mesh_routes.route_destinations({"http": [route]}).get(str(route["name"]), [])))
    # The bot's mesh VirtualServices that Istio ignores, or that hide a team's: a team's VirtualService for
    # the host appeared after the previews' routes were written. Fold them into it, or say why not.
    for host, ref, decision in await kube.misplaced_mesh_routes():
        if decision.refusal:
            report.errors.append(f"{host}: preview routes in VirtualService {ref} are not used: {decision.refusal}")
            continue
        report.actions.append(Action("fold-routes", host, f"VirtualService {decision.target} serves the host; "
                                                          f"moving the preview routes from {ref}"))
        if not dry_run:
            try:
                await kube.fold_mesh_routes(host)
            except PreviewError as exc:
                report.errors.append(f"{host}: {exc}")
    for action in report.actions:
        log.info("reconcile: %s %s (%s)", action.kind, action.target, action.reason, extra={"dry_run": dry_run})
    return report


def _key_intact(preview: LivePreview) -> bool:
    try:
        naming.existing_key(preview.repo, preview.number, preview.repo_id, preview.key)
    except ValueError:
        return False
    return True


async def _needs_resume(pull: Mapping[str, Any], preview: LivePreview, client: RepoClient,
                        stuck_after: timedelta | None, now: datetime, identity: str) -> bool:
    """Behind the PR's head (a missed push), or its last deploy is unfinished and nobody is running it:
    it was started by this replica before a restart, or it is older than any live deploy can be
    (another replica's deploy in progress is younger)."""
    head = pull.get("head") or {}
    if head.get("sha") != preview.sha:
        return not is_fork(pull)  # a fork's new commits wait for approval
    if stuck_after is None:
        return False
    deployments = await client.deployments(PreviewKey(client.repo, preview.number, client.repo_id).environment)
    if not deployments:
        return False
    status = await client.latest_status(int(deployments[0]["id"]))
    if status is not None and status.get("state") not in ("queued", "pending", "in_progress"):
        return False
    if (deployments[0].get("payload") or {}).get("replica") == identity:
        return True
    since = parse_time(str((status or deployments[0]).get("created_at") or ""))
    return since is not None and now - since > stuck_after


async def _stop(previewer: Previewer, client: RepoClient | None, preview: LivePreview, reason: str) -> None:
    """The same teardown as a close or `/preview stop` (cluster, GitHub deployments, comment); `client`
    None: the App left the repository, only the cluster side is done."""
    key = naming.existing_key(preview.repo, preview.number, preview.repo_id, preview.key)
    await previewer.stop(client, preview.number, reason, key=key)
