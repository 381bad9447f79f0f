"""What handlers need, built once per process, and the dispatch of one event to the routers."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import timedelta

import cachetools
from gidgethub import routing, sansio
from gidgethub.abc import GitHubAPI

from bot import logs, metrics
from bot.gate import WaitRegistry
from bot.github.auth import AppAuth
from bot.github.client import RepoClient
from bot.github.errors import Unauthorized
from bot.kube import Kube
from bot.previews import Previewer
from bot.queue import WorkQueue
from bot.reporting import Reporter
from bot.settings import Settings
from bot.triggers import event_subject

log = logging.getLogger(__name__)

# People without write access get at most one answer per pull request in this period.
ANSWER_PERIOD = timedelta(hours=24)
# A fork's pull request that waits for approval has its comment rewritten for a new head at most once in this
# period (bot.handlers.pull_request): its author may push as often as they like.
FORK_NOTICE_PERIOD = timedelta(minutes=5)


def answered_cache() -> cachetools.TLRUCache[tuple[int, int], float]:
    """(repository id, pr) -> until when (epoch seconds) the PR's answer to people without write access,
    written or found by this process, covers it: a stranger cannot make the bot spam
    (bot.handlers.preview_commands). Also the PRs whose fork notice was written lately (Context.fork_notices)."""
    return cachetools.TLRUCache(maxsize=10_000, ttu=lambda _key, until, _now: until, timer=time.time)


@dataclass
class Context:
    settings: Settings
    kube: Kube
    auth: AppAuth
    previewer: Previewer
    queue: WorkQueue
    router: routing.Router
    reporter: Reporter  # what the PR shows (bot.reporting), shared with the previewer
    # PRs whose answer to people without write access covers them (answered_cache).
    answered: cachetools.TLRUCache[tuple[int, int], float] = field(default_factory=answered_cache)
    # Fork PRs whose waiting-for-approval comment was written in the last FORK_NOTICE_PERIOD (answered_cache).
    fork_notices: cachetools.TLRUCache[tuple[int, int], float] = field(default_factory=answered_cache)
    # PRs waiting for checks, with their deadlines (bot.gate).
    waits: WaitRegistry = field(default_factory=WaitRegistry)

    def superseded(self, repo_id: int, number: int) -> bool:
        """The PR's next queued job does the running one's work too (keyed like webhook.work_key): the
        running one may stop waiting (bot.queue.WorkQueue.supersedes_running)."""
        return self.queue.supersedes_running((str(repo_id), number))

    def newer_head_queued(self, repo_id: int, number: int, sha: str) -> bool:
        """A `pull_request` job of the PR waits in the queue with a head other than `sha` (a push was
        delivered since the running deploy of `sha` began: it must not report success for it)."""
        for job in self.queue.pending_jobs((str(repo_id), number)):
            envelope_ = getattr(job, "envelope", None)
            if getattr(job, "event", None) == "pull_request" and isinstance(envelope_, dict):
                head = ((envelope_.get("pull_request") or {}).get("head") or {}).get("sha")
                if isinstance(head, str) and head != sha:
                    return True
        return False

    async def dispatch(self, event: sansio.Event) -> None:
        """Run the routers for one event on a fresh installation client (in the background)."""
        data = event.data
        subject = event_subject(data)
        logs.EVENT_FIELDS.set({"delivery": event.delivery_id, "event": event.event, "action": data.get("action"),
                               "repo": subject.repo, "pr": subject.number})
        started = time.monotonic()
        installation = int(data["installation"]["id"])
        try:
            try:
                await self.router.dispatch(event, await self.auth.installation_api(installation), self)
            except Unauthorized:
                # The cached token was revoked or rotated: mint a new one and run the (idempotent)
                # handlers again, once.
                self.auth.forget(installation)
                log.warning("installation token refused; retrying with a new one")
                await self.router.dispatch(event, await self.auth.installation_api(installation), self)
            log.info("event processed")
        finally:  # a failure is logged once, by the queue that runs this (bot.queue), with these event fields
            metrics.PROCESSING.labels(event=event.event).observe(time.monotonic() - started)


def repo_client(event: sansio.Event, gh: GitHubAPI) -> RepoClient:
    repository = event.data["repository"]
    return RepoClient(gh, repository["full_name"], int(repository["id"]))
