"""What a pull request shows: its one sticky bot comment and its GitHub Deployments, through a preview's life.

Every state a PR can show goes through `Reporter`: begin (deploying), progress (waiting for an image),
ready, failed, superseded, stopped, waiting (for checks, or refused by them) and the plain comment states
(configuration error, not deployed, waiting for approval). Callers decide; this module says it. The text
is bot.comment's (pure); the REST calls are bot.github.client's.

The sticky comment's caches are instance state (`StickyComments`, one per process, owned by the Reporter
the server creates once): they save a listing of the PR's comments and skip no-op edits.

A Deployment's lifecycle, as the GitHub REST docs ("Deployments", "Deployment statuses") define it: created
for a SHA and an environment (`preview-<n>`, transient), then `in_progress`, then `success` or `failure`;
`inactive` once a newer deployment of the environment replaces it. Transient environments get no
`auto_inactive`, so the bot deactivates the older ones itself.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import cachetools

from bot import comment
from bot.checks import Decision, Verdict
from bot.comment import Report, ServiceLine, State
from bot.errors import PreviewError
from bot.github.errors import GitHubError
from bot.naming import PreviewKey
from bot.ports import GitHubRepo
from bot.settings import MatchMode

log = logging.getLogger(__name__)

GATE_KEY = "waiting_for"  # in a Deployment's payload: this deployment is a wait, not a rollout
WAITING_STATE = "queued"
# (repository, repository id, PR) -> the sticky comment's link lines (bot.links.report_lines).
LinkLines = Callable[[str, int, int], Awaitable[Sequence[str]]]


def is_gate(deployment: dict[str, Any]) -> bool:
    """The deployment records a wait for checks (bot.gate), not a rollout."""
    payload = deployment.get("payload")
    return isinstance(payload, dict) and GATE_KEY in payload


class StickyComments:
    """Find, create, edit and de-duplicate the PR's one bot comment (marked by comment.MARKER).

    Caches, keyed by (repository id, PR) so that a renamed repository keeps its comments: the comment's id
    and last body (saves a listing, skips no-op edits), and the PRs a webhook payload showed with no
    comments at all (their first sticky needs no search)."""

    def __init__(self, maxsize: int = 4096, *, app_id: int | None = None) -> None:
        self.app_id = app_id  # whose comments are the bot's (bot.comment.by_app)
        self._known: cachetools.LRUCache[tuple[int, int], tuple[int, str]] = cachetools.LRUCache(maxsize=maxsize)
        self._no_comments: cachetools.LRUCache[tuple[int, int], bool] = cachetools.LRUCache(maxsize=maxsize)

    def assume_no_comments(self, gh: GitHubRepo, number: int) -> None:
        """The PR had no comment when GitHub sent the event (`pull_request.comments == 0`): the first
        sticky comment is created without listing comments first (a race with another replica is
        still caught: every creation checks for an older sticky)."""
        if (gh.repo_id, number) not in self._known:
            self._no_comments[(gh.repo_id, number)] = True

    def known_absent(self, gh: GitHubRepo, number: int) -> bool:
        """The PR has no comment of the bot, known without a request (its webhook payload said it had no
        comment, and none was created since)."""
        return (gh.repo_id, number) in self._no_comments

    async def _ids_and_bodies(self, gh: GitHubRepo, number: int) -> AsyncIterator[tuple[int, str]]:
        async for item in gh.comments(number):
            if comment.is_sticky(item.get("body")) and comment.by_app(item, self.app_id):
                yield int(item["id"]), str(item["body"])

    async def _find(self, gh: GitHubRepo, number: int) -> tuple[int, str] | None:
        async for found in self._ids_and_bodies(gh, number):
            return found
        return None

    async def _cached(self, gh: GitHubRepo, number: int) -> tuple[int, str] | None:
        cache_key = (gh.repo_id, number)
        if cache_key in self._known:
            return self._known[cache_key]
        if self._no_comments.pop(cache_key, False):
            return None
        return await self._find(gh, number)

    async def body(self, gh: GitHubRepo, number: int, *, fresh: bool = False) -> str | None:
        """The current text of the PR's bot comment, or None when it has none. `fresh`: read from GitHub
        (one listing), not from this process's cache: another replica may have rewritten it."""
        cache_key = (gh.repo_id, number)
        if fresh:
            found = await self._find(gh, number)
            if found is not None:
                self._no_comments.pop(cache_key, None)
                self._known[cache_key] = found
            return found[1] if found is not None else None
        if cache_key in self._no_comments:
            return None
        known = self._known.get(cache_key) or await self._find(gh, number)
        return known[1] if known is not None else None

    async def exists(self, gh: GitHubRepo, number: int) -> bool:
        if (gh.repo_id, number) in self._no_comments:
            return False
        return (gh.repo_id, number) in self._known or await self._find(gh, number) is not None

    async def upsert(self, gh: GitHubRepo, number: int, body: str) -> tuple[int, bool]:
        """Edit the PR's one bot comment in place, or create it; an unchanged body costs nothing.
        Returns (comment id, whether this call created the PR's first bot comment)."""
        cache_key = (gh.repo_id, number)
        replaced = False
        known = await self._cached(gh, number)
        if known is not None:
            comment_id, current = known
            if current == body:
                self._known[cache_key] = known
                return comment_id, False
            if await gh.edit_comment(comment_id, body):
                self._known[cache_key] = (comment_id, body)
                return comment_id, False
            self._known.pop(cache_key, None)  # deleted by a person: make a new one
            replaced = True
        comment_id = await gh.create_comment(number, body)
        created = not replaced
        # Two replicas may both have found no comment and both created one: keep the oldest.
        ids = [cid async for cid, _ in self._ids_and_bodies(gh, number)]
        if ids and ids[0] != comment_id:
            await gh.delete_comment(comment_id)
            created = False
            comment_id = ids[0]
            await gh.edit_comment(comment_id, body)
        self._known[cache_key] = (comment_id, body)
        return comment_id, created


@dataclass(frozen=True)
class Rollout:
    """One deploy's GitHub Deployment and what its comment shows while it runs."""

    key: PreviewKey
    sha: str
    deployment_id: int
    services: Sequence[ServiceLine]
    note: str | None  # shown under every state of this rollout (e.g. "every service counts as changed")
    first_comment: bool  # the rollout created the PR's first bot comment: no older Deployment to deactivate


class Reporter:
    """Says on GitHub what a PR's preview is doing: the sticky comment and the Deployment statuses.

    `link_lines` gives the comment's links section (bot.links); `identity` goes in each Deployment's
    payload (`replica`: who runs it, read after a restart); with `delete_environments` a stopped
    preview's emptied environment is deleted too (PREVIEW_DELETE_ENVIRONMENTS); `app_id`: the App whose
    comments are the bot's (GITHUB_APP_ID; bot.comment.by_app)."""

    def __init__(self, *, link_lines: LinkLines | None = None, identity: str = "preview-bot",
                 delete_environments: bool = False, sticky: StickyComments | None = None,
                 header_name: str = "x-preview", match_mode: MatchMode = "header",
                 app_id: int | None = None) -> None:
        self.link_lines = link_lines
        self.header_name = header_name  # PREVIEW_HEADER and PREVIEW_MATCH: what the comment tells to forward
        self.match_mode: MatchMode = match_mode
        self.identity = identity
        self.delete_environments = delete_environments
        self.sticky = sticky or StickyComments(app_id=app_id)

    # -- the comment --------------------------------------------------------------------------

    async def show(self, gh: GitHubRepo, number: int, report: Report) -> bool:
        """Put `report` on the PR's sticky comment (with its current link lines); True when that created
        the PR's first bot comment."""
        report = replace(report, header_name=self.header_name, match_mode=self.match_mode)
        if self.link_lines is not None:
            report = replace(report, links=tuple(await self.link_lines(gh.repo, gh.repo_id, number)))
        if report.keeps_live:  # the body is known (cached) or is read by upsert anyway
            report = replace(report, still_live=comment.live_section(await self.sticky.body(gh, number)))
        _, created = await self.sticky.upsert(gh, number, comment.render(report))
        return created

    async def refresh_links(self, gh: GitHubRepo, number: int) -> None:
        """Rewrite the links section of the PR's sticky comment (no-op without a comment)."""
        body = await self.sticky.body(gh, number)
        if body is None or self.link_lines is None:
            return
        updated = comment.with_links(body, await self.link_lines(gh.repo, gh.repo_id, number))
        if updated != body:
            await self.sticky.upsert(gh, number, updated)

    def assume_no_comments(self, gh: GitHubRepo, number: int) -> None:
        self.sticky.assume_no_comments(gh, number)

    # -- a rollout ----------------------------------------------------------------------------

    async def begin(self, gh: GitHubRepo, key: PreviewKey, sha: str, services: Sequence[ServiceLine], *,
                    note: str | None = None) -> Rollout:
        """Deploying: the URL reaches the PR first; the Deployment's records follow. So every Deployment of
        a PR is created after its comment: a deploy that creates the PR's first comment has none to
        deactivate (unless a person deleted the bot's comment and no replica remembers it: then an old
        Deployment may stay shown as active, nothing else)."""
        first = await self.show(gh, key.number, Report(State.DEPLOYING, sha=sha, services=services,
                                                       header_value=key.value, detail=note))
        deployment_id = await gh.create_deployment(
            ref=sha, environment=key.environment, description=f"Preview of #{key.number}",
            payload={"key": key.value, "services": [s.name for s in services], "replica": self.identity})
        await gh.deployment_status(deployment_id, "in_progress", description="deploying")
        return Rollout(key, sha, deployment_id, tuple(services), note, first)

    async def progress(self, gh: GitHubRepo, rollout: Rollout, *, status: str, detail: str) -> None:
        """Still deploying, with news (`status` on the Deployment, `detail` in the comment)."""
        await gh.deployment_status(rollout.deployment_id, "in_progress", description=status)
        await self.show(gh, rollout.key.number, Report(State.DEPLOYING, sha=rollout.sha, services=rollout.services,
                                                       header_value=rollout.key.value, detail=detail))

    async def ready(self, gh: GitHubRepo, rollout: Rollout, services: Sequence[ServiceLine], url: str) -> None:
        await gh.deployment_status(rollout.deployment_id, "success", description="preview is ready",
                                   environment_url=url)
        # After our own success: whatever came before is history (transient environments get no
        # auto_inactive). Newer deployments are left to the deploy that made them. The PR's first comment
        # was just created: it has no earlier deployment.
        if not rollout.first_comment:
            await self.deactivate(gh, rollout.key.environment, older_than=rollout.deployment_id)
        await self.show(gh, rollout.key.number, Report(State.READY, sha=rollout.sha, services=services,
                                                       header_value=rollout.key.value, detail=rollout.note))

    async def failed(self, gh: GitHubRepo, rollout: Rollout, services: Sequence[ServiceLine], reason: str) -> None:
        await gh.deployment_status(rollout.deployment_id, "failure", description=reason)
        # The cluster no longer runs the older ones.
        await self.deactivate(gh, rollout.key.environment, older_than=rollout.deployment_id)
        await self.show(gh, rollout.key.number, Report(State.FAILED, sha=rollout.sha, services=services,
                                                       header_value=rollout.key.value,
                                                       detail=f"Deploy failed: {reason}"))

    async def superseded(self, gh: GitHubRepo, rollout: Rollout) -> None:
        """A newer event for this PR (here or on another replica) will deploy and report; this deployment
        is history. Older ones first, so that an inactive deployment means all before it are too."""
        await self.deactivate(gh, rollout.key.environment, older_than=rollout.deployment_id)
        await gh.deployment_status(rollout.deployment_id, "inactive", description="superseded by a newer event")

    # -- no preview ---------------------------------------------------------------------------

    async def stopped(self, gh: GitHubRepo, key: PreviewKey, reason: str, *, removed: int,
                      head_sha: str | None = None) -> None:
        """After a teardown: retire the PR's Deployments, and say so on a PR that had a preview or a
        comment (`removed`: cluster objects removed; `head_sha`: the PR's head at the stop, recorded in
        the comment, see comment.stopped_at). Raises PreviewError when GitHub refuses."""
        try:
            retired = await self.retire(gh, key)
        except GitHubError as exc:
            raise PreviewError(f"could not mark deployments inactive: {exc}") from exc
        if removed or retired or await self.sticky.exists(gh, key.number):
            await self.show(gh, key.number, Report(State.STOPPED, sha=head_sha, detail=reason))

    async def retire(self, gh: GitHubRepo, key: PreviewKey) -> int:
        """The GitHub side of every teardown: the PR's deployments are marked inactive, then deleted (they
        would pile up in the repository forever otherwise); with `delete_environments` the emptied
        environment `preview-<n>` goes too. Returns how many deployments there were."""
        count = await self.retire_environment(gh, key.environment)
        if self.delete_environments:
            await gh.delete_environment(key.environment)
        return count

    async def waiting(self, gh: GitHubRepo, key: PreviewKey, sha: str, decision: Decision, *,
                      gate: dict[str, Any] | None, latest: dict[str, Any] | None, required: Sequence[str]) -> None:
        """Put a checks decision (wait, or refused) on the Deployment and the sticky comment, unless they
        already say it. `gate`: the head's waiting deployment, if any; `latest`: the environment's newest."""
        number = key.number
        state = WAITING_STATE if decision.verdict is Verdict.WAIT else "failure"
        summary = decision.summary()
        if gate is not None:
            status = await gh.latest_status(int(gate["id"]))
            if status is not None and status.get("state") == state and status.get("description") == summary:
                return  # the PR shows this already: reads only
            deployment_id = int(gate["id"])
        else:
            deployment_id = await gh.create_deployment(
                ref=sha, environment=key.environment, description=f"Preview of #{number}: waiting for checks",
                payload={"key": key.value, GATE_KEY: list(required), "replica": self.identity})
            if latest is not None and is_gate(latest):
                # The wait of an older commit is over: a push resets the wait, the old commit never deploys.
                await gh.deployment_status(int(latest["id"]), "inactive",
                                           description="superseded by a newer commit")
        url = decision.failed.url if decision.failed is not None else None
        await gh.deployment_status(deployment_id, state, description=summary, log_url=url)
        if decision.verdict is Verdict.WAIT:
            detail = (f"The preview is {summary}. It deploys when they succeed; a maintainer can deploy now "
                      "with `/preview`.")
            await self.show(gh, number, Report(State.WAITING_CHECKS, sha=sha, detail=detail, keeps_live=True))
        else:
            link = f" ([details]({url}))" if url else ""
            detail = (f"Preview {summary}{link}. Re-run it or push a fix; a maintainer can deploy anyway "
                      "with `/preview`.")
            await self.show(gh, number, Report(State.NOT_DEPLOYED, sha=sha, detail=detail, keeps_live=True))

    # -- the environment's deployments -----------------------------------------------------------

    @staticmethod
    async def deactivate(gh: GitHubRepo, environment: str, *, keep: Sequence[int] = (),
                         older_than: int | None = None) -> int:
        """Mark the environment's active deployments inactive (auto_inactive skips transient ones).

        `keep` are left alone; with `older_than`, only deployments with a smaller id (created earlier) are
        touched: a newer one belongs to a later deploy, which settles its own."""
        count = 0
        for deployment in await gh.deployments(environment):
            deployment_id = int(deployment["id"])
            if deployment_id in keep or (older_than is not None and deployment_id >= older_than):
                continue
            if await gh.latest_state(deployment_id) == "inactive":
                break  # newest first, and each deploy deactivates its predecessors: the rest are done
            await gh.deployment_status(deployment_id, "inactive", description="preview removed")
            count += 1
        return count

    @staticmethod
    async def retire_environment(gh: GitHubRepo, environment: str) -> int:
        """Teardown: mark every deployment of the environment inactive, then delete it; returns how many.

        GitHub deletes only inactive deployments when the repository has more than one ("Delete a
        deployment", GitHub REST docs: deployments), hence the order. Needs Deployments: write."""
        count = 0
        for deployment in await gh.deployments(environment):
            deployment_id = int(deployment["id"])
            if await gh.latest_state(deployment_id) != "inactive":
                await gh.deployment_status(deployment_id, "inactive", description="preview removed")
            await gh.delete_deployment(deployment_id)  # already gone (another replica): done too
            count += 1
        return count
