"""Deploy a pull request's head only once the checks its config waits for have succeeded.

Level-triggered like the rest of the bot: each call reads the PR's head, the config, the commit's check
runs and statuses and the environment's latest GitHub Deployment, decides (bot.checks, pure) and
converges: deploy, show "waiting for checks", or show why nothing was deployed. Nothing sleeps per PR: a
later check event, a push, a `/preview` or the process-wide pass over `WaitRegistry` calls again.
GitHub is written to only when what the PR shows changes, so a repeated event costs reads only.

A stop holds (`/preview stop`, a label removed, the idle TTL: the sticky comment records the head it
stopped at, bot.comment.stopped_at): with `unless_stopped`, for callers that are no new push nor a person
asking (a check event, a wait that ran out, the reconciler), a PR stopped at its head neither deploys
nor shows "waiting", and its wait is forgotten. README: only a push since the stop brings it back (or a
person: `/preview`, the label added again).

While waiting, the PR has a GitHub Deployment of the head SHA whose payload carries `waiting_for`; its
`created_at` is when the wait began (it survives restarts), and its latest status says what it waits for.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from bot import checks
from bot.checks import Verdict
from bot.errors import ConfigError
from bot.naming import PreviewKey
from bot.ports import GitHubRepo
from bot.previews import DeployResult, Previewer
from bot.repo_config import CONFIG_PATH, RepoConfig, parse_for_cluster
from bot.reporting import is_gate
from bot.timestamps import parse_time
from bot.triggers import is_fork

log = logging.getLogger(__name__)


class WaitRegistry:
    """(repository id, PR) -> when its wait times out (epoch seconds) and the repository's name as last
    seen: one process-wide pass reports checks that never appear. In memory: after a restart the first
    reconciliation pass resumes waiting PRs, which notes them again."""

    def __init__(self) -> None:
        self._deadlines: dict[tuple[int, int], tuple[float, str]] = {}

    def note(self, gh: GitHubRepo, number: int, deadline: float) -> None:
        self._deadlines[(gh.repo_id, number)] = (deadline, gh.repo)

    def done(self, gh: GitHubRepo, number: int) -> None:
        self._deadlines.pop((gh.repo_id, number), None)

    def due(self, now: float) -> list[tuple[int, str, int]]:
        """(repository id, repository name, PR) of every wait that ran out by `now`."""
        return sorted((repo_id, name, number) for (repo_id, number), (deadline, name)
                      in self._deadlines.items() if deadline <= now)

    def forget(self, repo_id: int, number: int) -> None:
        self._deadlines.pop((repo_id, number), None)

    def __contains__(self, key: object) -> bool:
        return key in self._deadlines


async def load_config_at(gh: GitHubRepo, branch: str, previewer: Previewer) -> RepoConfig | None:
    """The config on `branch` (the default branch, named by the event: saves a read); None when absent.
    Raises ConfigError."""
    text = await gh.file_text(CONFIG_PATH, branch)
    if text is None:
        return None
    return parse_for_cluster(text, previewer.settings.policy, previewer.settings.namespace, CONFIG_PATH)


async def deploy_when_ready(previewer: Previewer, waits: WaitRegistry, gh: GitHubRepo, number: int, *,
                            config: RepoConfig | None = None, head_sha: str | None = None,
                            supersedes: bool = True, unless_stopped: bool = False,
                            superseded: Callable[[], bool] = lambda: False,
                            now: datetime | None = None, recheck: bool = False) -> DeployResult | None:
    """Converge PR `number` towards a preview of its head; returns the deploy's result, or None when it
    waits, failed its checks, or the PR is closed. `head_sha`: the head as just read; None: read here when
    checks gate the deploy, else by the deploy under the PR's lock. `supersedes`, `unless_stopped`: as in
    Previewer.deploy (see the module docstring). `recheck`: what deploys may have changed though the head
    did not (its base branch changed, so which services `paths` select): a head rolled out already is
    decided again, its checks for the services it changes now included, and deployed again (`force`)."""
    if config is None:
        try:
            config = await previewer.load_config(gh)
        except ConfigError:
            config = None  # deploy() reads it again and reports the error on the PR
    if config is None or not config.checks_for():
        return await previewer.deploy(gh, number, head_sha, config=config, force=recheck, supersedes=supersedes,
                                      unless_stopped=unless_stopped, superseded=superseded)
    pull = None
    if head_sha is None:
        pull = await gh.pull(number)
        if pull.get("state") != "open":
            waits.done(gh, number)
            return None
        head_sha = str(pull["head"]["sha"])
        if is_fork(pull):
            # A fork is deployed only at a commit a maintainer approved with `/preview <sha>`, which deploys
            # at once whatever the checks say (a fork's own workflows name their check runs as they please):
            # the deploy, reading the head under the PR's lock, finishes an approved one or says it waits.
            return await previewer.deploy(gh, number, None, config=config, force=recheck, supersedes=supersedes,
                                          unless_stopped=unless_stopped, superseded=superseded)
    wanted = None
    if any(s.paths for s in config.services) and len({s.wait_for for s in config.services}) > 1:
        # Only the services this PR changes deploy, so only their checks matter (all of them when GitHub's
        # listing is cut short).
        changed = await gh.changed_files(number, pull)
        if changed.complete:
            wanted = [s.name for s in config.services if s.affected_by(changed.names)]
    required = config.checks_for(wanted)
    if not required:
        return await previewer.deploy(gh, number, head_sha, pull=pull, config=config, force=recheck,
                                      supersedes=supersedes, unless_stopped=unless_stopped, superseded=superseded)

    key = PreviewKey(gh.repo, number, gh.repo_id)
    deployments = await gh.deployments(key.environment)
    latest = deployments[0] if deployments else None
    if latest is not None and latest.get("sha") == head_sha and not is_gate(latest) and not recheck:
        # This commit was rolled out already (the checks passed, or a `/preview` overrode them).
        waits.done(gh, number)
        return await previewer.deploy(gh, number, head_sha, pull=pull, config=config, force=False,
                                      supersedes=supersedes, unless_stopped=unless_stopped, superseded=superseded)
    # The head's own wait, if any (with `recheck`, `latest` may be the head's live deployment: not a wait).
    gate = latest if latest is not None and latest.get("sha") == head_sha and is_gate(latest) else None

    now = now or datetime.now(UTC)
    since = (parse_time(str(gate.get("created_at") or "")) if gate is not None else None) or now
    runs = checks.from_check_runs(await gh.check_runs(head_sha))
    statuses = {} if all(name in runs for name in required) else \
        checks.from_statuses(await gh.commit_statuses(head_sha))
    timeout = timedelta(minutes=config.wait_timeout_minutes)
    decision = checks.decide(required, runs, statuses, waited=now - since, timeout=timeout)
    log.info("checks decided %s", decision.verdict.value,
             extra={"repo": gh.repo, "pr": number, "sha": head_sha, "summary": decision.summary()})
    if decision.verdict is Verdict.DEPLOY:
        waits.done(gh, number)
        # deploy() marks the waiting deployment inactive when it creates the real one.
        return await previewer.deploy(gh, number, head_sha, pull=pull, config=config, force=True,
                                      supersedes=supersedes, unless_stopped=unless_stopped, superseded=superseded)
    if unless_stopped and await previewer.stopped_at_head(gh, number, head_sha):
        waits.done(gh, number)  # stopped while it waited: nothing more to say until a push
        log.info("not waiting: stopped at this commit", extra={"repo": gh.repo, "pr": number, "sha": head_sha})
        return None
    if decision.verdict is Verdict.WAIT:
        waits.note(gh, number, (since + timeout).timestamp())
    else:
        waits.done(gh, number)
    await previewer.reporter.waiting(gh, key, head_sha, decision, gate=gate, latest=latest, required=required)
    return None
