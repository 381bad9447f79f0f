"""Level-triggered clean-up: what is live in the cluster vs. what should be.

GitHub never redelivers a failed webhook by itself, so this pass is what guarantees that previews of
closed PRs go away, that mesh routes never point at missing Services, and that idle previews are
removed after the TTL unless someone asked to keep them.

`reconcile` is one pass (pure decisions over the cluster and GitHub reads); `Reconciler` owns the loop
around it (every `reconcile_interval`, while leading), the start-up discovery of PRs whose events were
lost, the resumption (a queued redeploy) of previews found behind or half-done, reported failed but
Available since, or running a service their repository's config dropped, and the line of pull requests
waiting for a preview slot (bot.slots): a freed slot goes to the oldest waiter, deployed at its current
head as its own event would deploy it. `Repositories` is
the App's installations and their repositories, by id; an installation the App cannot use (suspended,
or its token refused) holds its own previews as they are and stops no one else's clean-up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp

from bot import gate, manifests, mesh_routes, metrics, naming, slots, ttl_warning
from bot.comment import Report, State
from bot.errors import ConfigError, PreviewError, RoutesNotRemoved
from bot.gate import WaitRegistry
from bot.github.auth import AppAuth
from bot.github.client import RepoClient
from bot.github.errors import GitHubError
from bot.kube import Kube, KubeError, LivePreview
from bot.leader import LeaderElector
from bot.naming import PreviewKey, valid_repo
from bot.ports import Cluster, GitHubRepo
from bot.previews import DeployResult, Previewer
from bot.queue import QueueClosed, QueueFull, WorkQueue
from bot.repo_config import CONFIG_PATH, RepoConfig
from bot.settings import Settings
from bot.timestamps import parse_time
from bot.triggers import Decision, decide, facts_from_pull, is_fork, label_key

log = logging.getLogger(__name__)

KEEP_LABEL = "preview-keep"
REPOSITORIES_TTL = 60.0  # seconds a list of the App's repositories is reused (each reconcile pass re-reads it)
REPOSITORIES_MIN_AGE = 10.0  # a repository missing from the list re-reads it, at most this often
# (repository id, full name) -> a client for it, or None when the App is no longer installed there. The
# id is None for a legacy preview (made before ids): the name finds it then.
ClientFor = Callable[[int | None, str], Awaitable[GitHubRepo | None]]
# (repository id, current full name, number, why): queue a redeploy; why is MISSED_PUSH, UNFINISHED,
# RECOVERED or DROPPED.
Resume = Callable[[int, str, int, str], None]


@dataclass
class Action:
    # "teardown-closed", "teardown-idle", "remove-route", "resume", "adopt", "warn-idle", "fold-routes", and
    # "hold": left as it is, its installation is suspended.
    kind: str
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


async def reconcile(kube: Cluster, previewer: Previewer, client_for: ClientFor, *, idle_ttl: timedelta,
                    dry_run: bool = False, now: datetime | None = None,
                    resume: Resume | None = None, check_stuck: bool = False,
                    stuck_after: timedelta = timedelta(minutes=10), identity: str = "",
                    recent: timedelta | None = None, warn_before: timedelta = timedelta(0)) -> GcReport:
    """One pass. `resume` queues a redeploy of previews behind their PR's head (a missed push), and of
    those whose last GitHub deployment has been unfinished for longer than `stuck_after` (a process cut
    off mid-deploy: a crash, or a SIGTERM whose drain timed out). Which previews are looked at for that
    (two GitHub reads each): with `check_stuck` (a process's first pass) every one, and a deploy this
    replica (`identity`) started before a restart is resumed at once; else only those deployed within
    `recent` of `now` (their `pushed-at` annotation), so the cost of a pass follows the deploy rate, not
    the number of live previews. Previews within `warn_before` of the idle TTL get one warning comment
    per idle period (bot.ttl_warning)."""
    now = now or datetime.now(UTC)
    report = GcReport()
    previews = await kube.live_previews()
    metrics.LIVE_PREVIEWS.set(len(previews))
    pulls_by_repo: dict[int | str, tuple[GitHubRepo | None, Mapping[int, dict[str, Any]] | None]] = {}
    # Read once a pass, only for a repository that needs it (a ConfigError: its config is broken).
    configs: dict[int, RepoConfig | ConfigError | None] = {}
    routed = _routed_destinations(await kube.mesh_services())
    for preview in previews:
        target = f"{preview.repo}#{preview.number}"
        if not valid_repo(preview.repo) or preview.number < 1 or not _key_intact(preview):
            report.errors.append(f"{preview.key}: labels or annotations are damaged; left alone")
            continue
        if preview.unreadable:  # made before PREVIEW_NAMESPACE changed, where the bot may not read now
            report.errors.append(f"{target}: {preview.unreadable}")
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
            look = check_stuck or (recent is not None and _deployed_within(preview, now, recent))
            why = None if resume is None else await _needs_resume(
                pull, preview, client, stuck_after if look else None, now, identity if check_stuck else None)
            if why == MISSED_PUSH and not await _push_deploys(previewer, client, pull, configs):
                why = None  # its own event would not have deployed it either (draft, trigger, label)
            # A redeploy of this very commit that failed (bot.previews.Previewer.redeploy) is not asked again.
            may_redeploy = (pull.get("head") or {}).get("sha") == preview.sha and \
                previewer.redeploy_failed_at(naming.existing_key(preview.repo, preview.number, preview.repo_id,
                                                                 preview.key)) != preview.sha
            if why is None and may_redeploy and preview.rollout_failed and preview.available:
                # Reported failed, Available since (an image CI pushed after the wait, a crash loop that
                # ended): known from the listing above, no request. The redeploy reports it ready.
                why = RECOVERED
            dropped = None if why is not None or not may_redeploy or resume is None else \
                await _config_dropped(previewer, client, preview, configs)
            if dropped is not None:
                why = DROPPED
            if resume is not None and why is not None:
                report.actions.append(Action("resume", target, dropped or _RESUME_REASONS[why]))
                resume(client.repo_id, client.repo, preview.number, why)
                continue
            labels = {label_key(str(label["name"])) for label in pull.get("labels") or []}
            kept = preview.keep or KEEP_LABEL in labels
            if kept or not is_idle(preview, now, idle_ttl):
                await _restore_routes(kube, previewer, client, preview, routed, configs, report, target,
                                      dry_run=dry_run)
            if kept:
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
        except InstallationUnavailable as exc:
            # Not a removal, not a fault of the pass: the preview waits, as it is, for its installation.
            if exc.suspended:
                report.actions.append(Action("hold", target, str(exc)))
            else:
                report.errors.append(f"{target}: {exc}")
        except (GitHubError, OSError) as exc:
            report.errors.append(f"{target}: {type(exc).__name__}: {exc}")
        except Exception as exc:  # a fault with one preview must not stop the pass for every other one
            log.exception("reconcile failed for one preview", extra={"preview": target})
            report.errors.append(f"{target}: unexpected {type(exc).__name__} (logged)")
    await _clean_mesh(kube, report, dry_run=dry_run)
    for action in report.actions:
        log.info("reconcile: %s %s (%s)", action.kind, action.target, action.reason, extra={"dry_run": dry_run})
    return report


async def _clean_mesh(kube: Cluster, report: GcReport, *, dry_run: bool) -> None:
    """The mesh side of a pass: routes to missing Services, and the bot's VirtualServices in the wrong place."""
    # Routes whose Service is gone (deleted by hand, a crash between steps, or a teardown whose route removal
    # the API server refused: bot.previews removes the preview's objects anyway).
    # Each destination is looked for in the namespace it names (a preview made before PREVIEW_NAMESPACE
    # changed lives in the old one); one that cannot be looked at is reported, never called missing.
    mesh = await kube.mesh_services()
    services, unknown = await kube.existing_destinations(
        d for ds in _routed_destinations(mesh).values() for d in ds)
    for key, destination in dangling_routes(mesh, services):
        if destination in unknown:
            report.errors.append(f"{key}: route to {destination} left alone: cannot tell whether the Service "
                                 f"exists ({unknown[destination]})")
        else:
            report.actions.append(Action("remove-route", key, f"destination {destination} does not exist"))
    if not dry_run and any(a.kind == "remove-route" for a in report.actions):
        def dangling(route: dict[str, Any]) -> bool:
            destinations = mesh_routes.route_destinations({"http": [route]}).get(str(route["name"]), [])
            return any(d not in services and d not in unknown for d in destinations)

        try:
            await kube.remove_routes_where(dangling)
        except RoutesNotRemoved as exc:  # the others are gone; these are reported every pass until they go
            report.errors += exc.failures
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
            except (PreviewError, KubeError) as exc:  # e.g. 403 on a VirtualService: one line, the pass goes on
                report.errors.append(f"{host}: {exc}")


def _key_intact(preview: LivePreview) -> bool:
    try:
        naming.existing_key(preview.repo, preview.number, preview.repo_id, preview.key)
    except ValueError:
        return False
    return True


MISSED_PUSH, UNFINISHED, RECOVERED, DROPPED = "missed-push", "unfinished", "recovered", "config-dropped"
_RESUME_REASONS = {MISSED_PUSH: "missed a push", UNFINISHED: "deploy did not finish",
                   RECOVERED: "reported failed, Available now"}


def _routed_destinations(mesh_services: list[dict[str, Any]]) -> dict[str, set[str]]:
    """Preview key -> every destination its mesh routes send to, in any VirtualService."""
    routed: dict[str, set[str]] = {}
    for item in mesh_services:
        for key, destinations in mesh_routes.route_destinations(item.get("spec") or {}).items():
            routed.setdefault(key, set()).update(destinations)
    return routed


async def _restore_routes(kube: Cluster, previewer: Previewer, client: GitHubRepo, preview: LivePreview,
                          routed: Mapping[str, set[str]], configs: Configs, report: GcReport,
                          target: str, *, dry_run: bool) -> None:
    """Put back the mesh routes a live preview lost (a team's VirtualService re-applied by its owner or a
    GitOps tool without them): the deploy is done and "ready", so nothing else would. The routes are the
    ones a deploy writes (bot.manifests.plan_preview, from the repository's config); a preview of a
    repository without a config is left to its next deploy, which removes it."""
    key = naming.existing_key(preview.repo, preview.number, preview.repo_id, preview.key)
    namespace = preview.namespace or kube.settings.namespace  # an earlier PREVIEW_NAMESPACE's preview: its own
    missing = {s for s in preview.services
               if naming.service_fqdn(key.object_name(s), namespace) not in routed.get(preview.key, set())}
    if not missing:
        return
    config = await _config(previewer, client, configs)
    if config is None:
        return
    names = [s.name for s in config.services if naming.dns_label(s.name) in missing]
    settings = kube.settings if namespace == kube.settings.namespace else replace(kube.settings, namespace=namespace)
    plan = manifests.plan_preview(settings, config, key, preview.sha, only=names)
    for service in plan.services:
        report.actions.append(Action("restore-route", target, f"{service.mesh_host} lost the route to "
                                                              f"{service.destination}"))
        if not dry_run:
            try:
                await kube.add_mesh_route(service.mesh_host, service.mesh_route)
            except (PreviewError, KubeError) as exc:
                report.errors.append(f"{target}: route for {service.mesh_host} not restored: {exc}")


Configs = dict[int, RepoConfig | ConfigError | None]  # repository id -> its config this pass


async def _config(previewer: Previewer, client: GitHubRepo, configs: Configs) -> RepoConfig | None:
    """The repository's config, read at most once a pass; None when it has none or it is broken."""
    if client.repo_id not in configs:
        try:
            configs[client.repo_id] = await previewer.load_config(client)
        except ConfigError as exc:
            configs[client.repo_id] = exc
    found = configs[client.repo_id]
    return None if isinstance(found, ConfigError) else found


async def _config_dropped(previewer: Previewer, client: GitHubRepo, preview: LivePreview,
                          configs: Configs) -> str | None:
    """Why the live preview's next deploy would remove some of it: it runs a service its repository's config
    (default branch) no longer has, or the config file is gone; None when neither. Without this the removed
    service kept running and routed until the PR's next push. Costs one config read per repository a pass
    (shared with the other uses here), none per preview. A broken config keeps the preview, as a deploy does;
    a change of a remaining service (image, env, `paths`) still waits for the next deploy."""
    config = await _config(previewer, client, configs)
    if isinstance(configs[client.repo_id], ConfigError):
        return None
    if config is None:
        return f"its repository has no {CONFIG_PATH} on its default branch any more"
    gone = sorted(set(preview.services) - {naming.dns_label(s.name) for s in config.services})
    return f"runs {', '.join(gone)}, which its repository's config no longer has" if gone else None


async def _push_deploys(previewer: Previewer, client: GitHubRepo, pull: Mapping[str, Any],
                        configs: Configs) -> bool:
    """Whether the push's own `synchronize` event would have deployed the PR: not for a draft, nor under
    `trigger: command`, nor under `trigger: label` without the label (bot.triggers). With no config, or
    a broken one, the deploy decides (it removes or reports)."""
    config = await _config(previewer, client, configs)
    return config is None or decide(config, facts_from_pull(pull, "synchronize")) is Decision.DEPLOY


def _deployed_within(preview: LivePreview, now: datetime, window: timedelta) -> bool:
    """The preview's objects were last written (deployed) within `window` of `now`."""
    last = parse_time(preview.pushed_at) or parse_time(preview.created)
    return last is not None and now - last <= window


async def _needs_resume(pull: Mapping[str, Any], preview: LivePreview, client: GitHubRepo,
                        stuck_after: timedelta | None, now: datetime, identity: str | None) -> str | None:
    """MISSED_PUSH: behind the PR's head; UNFINISHED: its last deploy is unfinished and nobody is running
    it (started by this replica, `identity`, before a restart: None on later passes, whose own deploys
    may be running; or older than any live deploy can be: another replica's deploy in progress is
    younger); None: neither."""
    head = pull.get("head") or {}
    if head.get("sha") != preview.sha:
        return None if is_fork(pull) else MISSED_PUSH  # a fork's new commits wait for approval
    if stuck_after is None:
        return None
    deployments = await client.deployments(PreviewKey(client.repo, preview.number, client.repo_id).environment)
    if not deployments:
        return None
    status = await client.latest_status(int(deployments[0]["id"]))
    if status is not None and status.get("state") not in ("queued", "pending", "in_progress"):
        return None
    if identity is not None and (deployments[0].get("payload") or {}).get("replica") == identity:
        return UNFINISHED
    since = parse_time(str((status or deployments[0]).get("created_at") or ""))
    return UNFINISHED if since is not None and now - since > stuck_after else None


async def _stop(previewer: Previewer, client: GitHubRepo | None, preview: LivePreview, reason: str) -> None:
    """The same teardown as a close or `/preview stop` (cluster, GitHub deployments, comment); `client`
    None: the App left the repository, only the cluster side is done."""
    key = naming.existing_key(preview.repo, preview.number, preview.repo_id, preview.key)
    # The deployed commit: had a push been missed, the head differs and discovery deploys it after a restart.
    await previewer.stop(client, preview.number, reason, key=key, head_sha=preview.sha or None)


class InstallationUnavailable(GitHubError):
    """The App cannot act on the installation that holds the repository, for now: the installation is
    suspended (GitHub lists it with `suspended_at`; a suspended App may not use the API there), or GitHub
    refused its token or its repository list. The repository is still installed: this is not the None
    of a repository the App left, whose previews are removed."""

    def __init__(self, status: int, message: str, *, suspended: bool) -> None:
        self.suspended = suspended
        super().__init__(status, message)


@dataclass(frozen=True)
class _Unavailable:
    """An installation the last listing could not use: suspended (since `suspended_at`), or `error`."""

    installation: int
    account: str
    suspended_at: str | None = None
    error: GitHubError | None = None

    def holds(self, repo_id: int | None, repo: str, known: Mapping[int, int]) -> bool:
        """`repo` is, as far as can be known, in this installation: the last listing that could read the
        installation had it (`known`: repository id -> installation id), or its owner is the account."""
        if repo_id is not None and known.get(repo_id) == self.installation:
            return True
        return bool(self.account) and repo.partition("/")[0].lower() == self.account.lower()

    def exception(self) -> InstallationUnavailable:
        where = f"the App's installation on {self.account or '?'} (id {self.installation})"
        if self.error is None:
            return InstallationUnavailable(403, f"{where} is suspended (since {self.suspended_at}): its previews "
                                                "are left as they are until it is unsuspended", suspended=True)
        return InstallationUnavailable(self.error.status, f"{where} could not be read (GitHub answered "
                                                          f"{self.error.status} {self.error}): its previews are "
                                                          "left as they are until it can", suspended=False)


class Repositories:
    """Every repository the App is installed on, by id, and clients for them.

    One installation never stands in the way of the others: a suspended one is skipped (no token is
    asked for: GitHub would answer 403), and one whose token or repository list GitHub refuses is
    left out of that listing alone. The previews of their repositories are neither looked at nor
    removed: `client_for` raises InstallationUnavailable for them, never None (None means the App
    left the repository, and its previews go)."""

    def __init__(self, auth: AppAuth) -> None:
        self.auth = auth
        # repository id -> (installation id, current full name), from the installations' repository lists.
        self._repositories: dict[int, tuple[int, str]] = {}
        self._repositories_at = -float("inf")
        # The installations the last listing could not use, and the installation of every repository the
        # last readable listing of its installation had (kept while that installation cannot be read).
        self._unavailable: dict[int, _Unavailable] = {}
        self._known: dict[int, int] = {}
        self._recovered = False  # an installation the App could not use is usable again

    async def listing(self, *, max_age: float = REPOSITORIES_TTL) -> dict[int, tuple[int, str]]:
        """Every repository the App is installed on and may act on: id -> (installation id, current full
        name).

        Read from `GET /app/installations` and each installation's `GET /installation/repositories`,
        refreshed when older than `max_age` seconds. Keyed by id: the full name changes with a rename or
        a transfer, the id does not (GitHub REST docs, "Repositories": `id`). Suspended installations,
        and those whose token or repository list GitHub refuses, are left out (see the class); only a
        failure of `GET /app/installations` itself fails the listing."""
        if time.monotonic() - self._repositories_at > max_age:
            found: dict[int, tuple[int, str]] = {}
            unavailable: dict[int, _Unavailable] = {}
            async for installation in self.auth.api().getiter("/app/installations", jwt=self.auth.app_jwt()):
                number = int(installation["id"])
                account = str((installation.get("account") or {}).get("login") or "")
                if installation.get("suspended_at"):
                    unavailable[number] = _Unavailable(number, account, str(installation["suspended_at"]))
                    continue
                try:
                    gh = await self.auth.installation_api(number)
                    found |= {int(repo["id"]): (number, str(repo["full_name"])) async for repo in
                              gh.getiter("/installation/repositories", iterable_key="repositories")}
                except GitHubError as exc:  # 403/404 on the token or the list: this installation only
                    self.auth.forget(number)  # a refused token is not used again
                    unavailable[number] = _Unavailable(number, account, error=exc)
                    log.warning("%s", unavailable[number].exception())
            self._known = {rid: inst for rid, (inst, _) in found.items()} | {
                rid: inst for rid, inst in self._known.items() if inst in unavailable and rid not in found}
            self._recovered |= bool(set(self._unavailable) & {inst for inst, _ in found.values()})
            self._repositories, self._unavailable = found, unavailable
            self._repositories_at = time.monotonic()
        return self._repositories

    def take_recovered(self) -> bool:
        """An installation the App could not use (suspended, refused) has become usable since the last call:
        its events of the meantime were never delivered (GitHub sends a suspended App none)."""
        recovered, self._recovered = self._recovered, False
        return recovered

    async def client_for(self, repo_id: int | None, repo: str) -> RepoClient | None:
        """A client on the repository's installation, by id (a legacy preview without one: by its name);
        None when the App is not installed there. A miss re-reads the list unless it is fresh. Raises
        InstallationUnavailable for a repository of an installation the App cannot act on now."""
        for max_age in (REPOSITORIES_TTL, REPOSITORIES_MIN_AGE):
            repositories = await self.listing(max_age=max_age)
            if repo_id is not None:
                found = (repo_id, *repositories[repo_id]) if repo_id in repositories else None
            else:
                found = next(((rid, inst, name) for rid, (inst, name) in repositories.items()
                              if name.lower() == repo.lower()), None)
            if found is not None:
                rid, installation, name = found
                return RepoClient(await self.auth.installation_api(installation), name, rid)
            held = next((u for u in self._unavailable.values() if u.holds(repo_id, repo, self._known)), None)
            if held is not None:
                raise held.exception()
        return None


class Reconciler:
    """The reconciliation loop of one `serve` process, its start-up discovery and the resumption of
    previews. `superseded(repo_id, number)`: a newer event of the PR waits in the queue."""

    def __init__(self, settings: Settings, kube: Kube, previewer: Previewer, repositories: Repositories,
                 queue: WorkQueue, waits: WaitRegistry, *, superseded: Callable[[int, int], bool],
                 elector: LeaderElector | None = None) -> None:
        self.settings = settings
        self.kube = kube
        self.previewer = previewer
        self.repositories = repositories
        self.queue = queue
        self.waits = waits
        self.superseded = superseded
        self.elector = elector
        self._first_pass = True  # after a restart, look for deploys a crash left half-done
        self._discovery_due = True  # after a restart, look for PRs whose events were lost; until it succeeds

    @property
    def first_pass_done(self) -> bool:
        """The start-up pass has run: discovery of missed events (tried: a failure is retried on the next
        passes), then reconciliation."""
        return not self._first_pass

    async def reconcile_once(self, *, dry_run: bool = False, resume: Resume | None = None) -> GcReport:
        """One pass; the previews to resume go to `resume` (default: queued here, self.resume, and then
        the lines of PRs waiting for a preview slot are looked at: admit_lines).

        Every pass, not only the first, looks for deploys unfinished for longer than the longest wait of a
        deploy + 60 s (Previewer.longest_wait: the ready timeout, or the image pull grace when longer)
        among the previews deployed in the last such time + 2 reconcile intervals: a process
        cut off mid-deploy (SIGTERM whose drain timed out) leaves such a deploy, and the next process's
        first pass may come before it is old enough to be told from a live one. Each deploy is so
        looked at on about three passes, two GitHub reads each (bench `scale`: a pass with 1,000 live
        previews still reads GitHub only for the recently deployed ones)."""
        # Current names for every repository id: a rename since the last pass must not look like a 404.
        try:
            await self.repositories.listing(max_age=0)
        except (GitHubError, aiohttp.ClientError, OSError) as exc:
            # GitHub is down: each preview's look-up fails on its own and is reported; routes to missing
            # Services are still cleaned up.
            log.warning("could not list the App's repositories: %s", type(exc).__name__)
        stuck_after = timedelta(seconds=self.previewer.longest_wait + 60)
        report = await reconcile(self.kube, self.previewer, self.repositories.client_for,
                                 idle_ttl=timedelta(days=self.settings.idle_ttl_days), dry_run=dry_run,
                                 resume=None if dry_run else (resume or self.resume),
                                 check_stuck=self._first_pass, stuck_after=stuck_after,
                                 recent=stuck_after + 2 * timedelta(seconds=self.settings.reconcile_interval),
                                 identity=self.settings.identity,
                                 warn_before=timedelta(hours=self.settings.ttl_warning_hours))
        if not dry_run and resume is None:  # serve's own pass: what it finds is queued here
            try:
                await self.admit_lines()
            except (KubeError, OSError) as exc:  # the next pass looks again
                report.errors.append(f"could not read the lines waiting for a preview slot: {exc}")
        self._first_pass = False
        return report

    async def discover_missed(self) -> list[tuple[str, int]]:
        """After a restart: open PRs that should have a preview and have none (an event lost mid-flight).

        GitHub does not redeliver, so this walks every installation's repositories once at start."""
        previews = await self.kube.live_previews()
        live = {(p.repo_id, p.number) for p in previews} | {(p.repo.lower(), p.number) for p in previews
                                                            if p.repo_id is None}
        missed: list[tuple[str, int]] = []
        for repo_id, (installation, name) in sorted((await self.repositories.listing(max_age=0)).items()):
            client = RepoClient(await self.repositories.auth.installation_api(installation), name, repo_id)
            try:
                config = await self.previewer.load_config(client)
            except ConfigError:
                continue  # reported on the PR when its next event comes
            except (GitHubError, aiohttp.ClientError, OSError):
                raise  # GitHub unreachable: the pass fails and the next one discovers again
            except Exception:  # one repository's fault must not stop discovery for the others
                log.exception("discovery failed for one repository", extra={"repo": name})
                continue
            if config is None:
                continue
            for pull in await client.open_pulls():
                number = int(pull["number"])
                wanted = decide(config, facts_from_pull(pull, "synchronize")) is Decision.DEPLOY
                if not wanted or {(client.repo_id, number), (client.repo.lower(), number)} & live:
                    continue
                # No preview: an event lost while down, or a stop (command, idle TTL) at this very head,
                # which the PR's comment records. A push since the stop redeploys, as it would have live.
                if await self.previewer.stopped_at_head(client, number, str(pull["head"]["sha"])):
                    continue
                missed.append((client.repo, number))
                self.resume(client.repo_id, client.repo, number, MISSED_PUSH)
        return missed

    def resume(self, repo_id: int, repo: str, number: int, why: str) -> None:
        """Queue a redeploy of a preview found half-done (`why` UNFINISHED: a crash mid-deploy, or a wait
        for checks that ran out), behind its PR's head (MISSED_PUSH), reported failed and Available since
        (RECOVERED), or running a service its config no longer has (DROPPED)."""
        async def job() -> None:
            await self.redeploy(repo_id, repo, number, why)
        try:
            self.queue.submit((str(repo_id), number), job, supersedes=False, slot="resume")
        except QueueClosed:
            pass
        except QueueFull:
            log.warning("work queue full: resume left to the next reconciliation pass",
                        extra={"repo": repo, "pr": number})

    async def redeploy(self, repo_id: int, repo: str, number: int, why: str) -> DeployResult | None:
        """The redeploy `resume` queues, run now: the deploy's result, or None when the App left the
        repository, the PR is closed, the deploy waits for (or failed) its checks, or (RECOVERED,
        DROPPED) what asked for it no longer holds."""
        client = await self.repositories.client_for(repo_id, repo)
        if client is None:
            return None
        if why in (RECOVERED, DROPPED):  # the head runs already (its checks passed): deployed again
            still: Callable[[LivePreview], bool] = (lambda p: p.rollout_failed and p.available) \
                if why == RECOVERED else (lambda p: True)  # the deploy reads the config again
            return await self.previewer.redeploy(client, number, still=still,
                                                 superseded=lambda: self.superseded(repo_id, number))
        # A webhook may have got there first (this job waited behind it in the PR's queue, or
        # for its lock): the deploy, at the head it reads, is then a no-op. With `wait_for`, it
        # deploys only once the checks succeeded. A stop at the head since this was queued holds.
        return await gate.deploy_when_ready(self.previewer, self.waits, client, number, supersedes=False,
                                            unless_stopped=True, superseded=lambda: self.superseded(repo_id, number))

    # -- the line of pull requests waiting for a slot ------------------------------------------------------

    def slot_freed(self, key: PreviewKey) -> None:
        """A slot of `key`'s repository freed while PRs wait in its line (Previewer.on_slot_freed): queue a
        look at the line. Level-triggered: the look reads the line and the free slots again."""
        if key.repo_id is not None:
            self._queue_admit(key.repo_id, key.repo)

    def _queue_admit(self, repo_id: int, repo: str) -> None:
        async def job() -> None:
            await self.admit(repo_id, repo)
        try:  # one pending look per repository: looks asked for meanwhile merge into it
            self.queue.submit(("line", repo_id), job, supersedes=False, slot="line")
        except QueueClosed:
            pass
        except QueueFull:
            log.warning("work queue full: the line left to the next reconciliation pass", extra={"repo": repo})

    async def admit(self, repo_id: int, repo: str) -> list[int]:
        """Offer the repository's free slots to its line, oldest first: one queued deploy per free slot
        (admit_one); returns the PRs so offered. Reads the cluster only (the index of lines, the line and
        the live previews): no GitHub request unless a slot is free for someone. An empty line leaves the
        index (bot.arbiter: the index is read first, so a PR joining meanwhile keeps its entry)."""
        cap = self.settings.cluster.policy.max_previews_per_repo
        index, _ = await self.previewer.arbiter.lines()
        probe = PreviewKey(repo, 1, repo_id)  # the repository's slots (bot.arbiter.slots_name)
        live = {p.key for p in await self.kube.live_previews((repo_id, repo))}
        line, free = await self.previewer.arbiter.line_of(probe, live, cap)
        if not line.waiting:
            await self.previewer.arbiter.unindex(repo_id, index)
            return []
        offered = [w for w in line.waiting if w.key not in live][:free]
        for waiter in offered:
            async def job(waiter: slots.Waiter = waiter) -> None:
                await self.admit_one(repo_id, line.repo or repo, waiter)
            try:
                self.queue.submit((str(repo_id), waiter.number), job, supersedes=False, slot="admit")
            except QueueClosed:
                break
            except QueueFull:
                log.warning("work queue full: the line left to the next reconciliation pass", extra={"repo": repo})
                break
        return [w.number for w in offered]

    async def admit_one(self, repo_id: int, repo: str, waiter: slots.Waiter) -> DeployResult | None:
        """Deploy a waiter offered a free slot, as the PR is now on GitHub (slots.next_step): at its head as
        its own event would (checks awaited, a stop at the head respected), or the commit a writer's
        `/preview` asked for; or take it out of the line, saying why on the PR. A waiter that does not take
        the slot (it waits for or failed its checks, its config is broken, it was stopped) leaves the line,
        and the slot is offered to the next one."""
        client = await self.repositories.client_for(repo_id, repo)
        key = naming.existing_key(repo, waiter.number, repo_id, waiter.key)
        if client is None:  # the App left the repository
            await self.previewer.arbiter.leave_line(key)
            return None
        pull = await client.pull(waiter.number)
        config: RepoConfig | None = None
        configured = True
        try:
            config = await self.previewer.load_config(client)
            configured = config is not None
        except ConfigError:
            pass  # the deploy reports it on the PR, and the PR leaves the line
        facts = facts_from_pull(pull, "synchronize")
        step, reason = slots.next_step(
            waiter, is_open=pull.get("state") == "open", head=str((pull.get("head") or {}).get("sha") or ""),
            # A broken config: the deploy reports it on the PR (and the PR leaves the line).
            event_deploys=config is None or decide(config, facts) is Decision.DEPLOY, configured=configured,
            draft=facts.draft, fork=facts.fork, trigger=config.trigger if config else "auto",
            label=config.label if config else "")
        result: DeployResult | None = None
        if step == slots.LEAVE:
            await self.previewer.arbiter.leave_line(key)
            log.info("left the line for a preview slot: %s", reason, extra={"repo": client.repo, "pr": waiter.number})
            if pull.get("state") == "open":
                await self.previewer.reporter.show(client, waiter.number, Report(
                    State.NOT_DEPLOYED, sha=str(pull["head"]["sha"]),
                    detail=f"No longer waiting for a preview slot: {reason}."))
        else:
            superseded = lambda: self.superseded(repo_id, waiter.number)  # noqa: E731
            if step == slots.DEPLOY_ASKED:
                result = await self.previewer.deploy(client, waiter.number, waiter.sha, pull=pull, supersedes=False,
                                                     unless_stopped=True, superseded=superseded,
                                                     wait_as=slots.COMMAND)
            else:
                result = await gate.deploy_when_ready(self.previewer, self.waits, client, waiter.number,
                                                      config=config, supersedes=False, unless_stopped=True,
                                                      superseded=superseded)
            if result is not None and result.in_line:
                return result  # no slot for it after all (taken first): it keeps its place
            await self.previewer.arbiter.leave_line(key)  # deployed (gone already), or did not take the slot
        self._queue_admit(repo_id, client.repo)  # the slot it did not take goes to the next one
        return result

    async def admit_lines(self) -> int:
        """The pass's look at every line (a freed slot's event may have been missed: a crash between the
        teardown and the deploy of the waiter, a claim left by a crash running out): one GET of the index of
        lines (bot.arbiter), none of GitHub, when nobody waits; returns how many lines were looked at."""
        _, repositories = await self.previewer.arbiter.lines()
        for repo_id, repo in repositories:
            self._queue_admit(repo_id, repo)
        return len(repositories)

    def leading(self) -> bool:
        return self.elector is None or self.elector.leading

    async def run_forever(self) -> None:
        """Reconcile every `reconcile_interval` while leading; leadership is renewed by its own task, so a
        long pass never lets the lease lapse unnoticed, and a pass stops as soon as leadership is lost."""
        elector = asyncio.create_task(self.elector.run(), name="leader-election") if self.elector else None
        next_pass = 0.0
        try:
            while True:
                if self.leading() and self.queue.accepting and time.monotonic() >= next_pass:
                    await self._pass_while_leading()
                    next_pass = time.monotonic() + self.settings.reconcile_interval
                await asyncio.sleep(min(1.0, max(next_pass - time.monotonic(), 0.05)))
        finally:
            if elector is not None:
                elector.cancel()
                with suppress(asyncio.CancelledError):
                    await elector

    async def _pass_while_leading(self) -> None:
        task = asyncio.create_task(self._pass(), name="reconcile-pass")
        while not task.done():
            await asyncio.wait({task}, timeout=0.5)
            if not task.done() and not self.leading():
                log.warning("leadership lost during a reconciliation pass; stopping it")
                task.cancel()
        with suppress(asyncio.CancelledError):
            await task

    async def _pass(self) -> None:
        """Discovery (until it has succeeded once), then reconciliation, whatever discovery did: the
        clean-up of every installation never waits for a look at every repository to succeed. An
        installation usable again after a suspension (or a refusal) is discovered again: GitHub sent no
        events for it meanwhile."""
        if self.repositories.take_recovered():
            self._discovery_due = True
        if self._discovery_due:
            try:
                missed = await self.discover_missed()
            except asyncio.CancelledError:
                raise
            except (GitHubError, aiohttp.ClientError, OSError) as exc:
                log.warning("discovery of pull requests missed while down failed, tried again next pass: %s: %s",
                            type(exc).__name__, exc)
            except Exception:
                log.exception("discovery of pull requests missed while down failed; tried again next pass")
            else:
                self._discovery_due = False
                self.repositories.take_recovered()  # what its listing found usable again is discovered
                log.info("discovery done", extra={"resumed": len(missed)})
        try:
            report = await self.reconcile_once()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("reconciliation pass failed")
            return
        for error in report.errors:  # `gc` prints them; here the log is where they are seen
            log.warning("reconcile: %s", error)
