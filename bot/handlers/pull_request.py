"""pull_request events: deploy on open/push/ready/label/base change, tear down on close or unlabel.

Each is a person's doing (a push, a label added, ...), so it deploys even a PR whose preview was stopped at
its head; only check events, wait timeouts and the reconciler respect such a stop (bot.gate), and a base
branch change (`edited` with `changes.base`), which asks for no preview. A config error is reported on the
events that would have deployed. A fork's push or reopen is no writer's doing: the comment asking for approval
of its head replaces one that asks already, or says stopped, at most once in FORK_NOTICE_PERIOD (a stranger
cannot spend the App's content budget)."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from gidgethub import routing, sansio
from gidgethub.abc import GitHubAPI

from bot import comment, gate
from bot.coalesce import AFTER_STOP_KEY, PULL_ACTIONS, pairs_of
from bot.comment import Report, State, fork_waiting
from bot.context import FORK_NOTICE_PERIOD, Context, repo_client
from bot.errors import ConfigError
from bot.github.client import RepoClient
from bot.repo_config import CONFIG_PATH, RepoConfig, declared_trigger
from bot.triggers import BASE_CHANGED, UPDATES, Decision, Pair, PullRequestFacts, decide_merged, facts_from_pull

router = routing.Router()
log = logging.getLogger(__name__)
Handler = Callable[..., Awaitable[Any]]


def facts(event: sansio.Event) -> PullRequestFacts:
    return facts_from_pull(event.data["pull_request"], event.data["action"],
                           (event.data.get("label") or {}).get("name"))


async def label_asked(client: RepoClient, event: sansio.Event, pairs: list[Pair]) -> bool:
    """With the config invalid: a `labeled` event among `pairs` asked for a preview, judged by the `trigger`
    and `label` the file still declares (repo_config.declared_trigger; one more read of it). When even
    those cannot be read, any `labeled` event counts: it may be the opt-in, and the error must be seen."""
    if not any(pair.action == "labeled" for pair in pairs):
        return False
    text = await client.file_text(CONFIG_PATH)
    declared = declared_trigger(text) if text is not None else None
    if declared is None:
        return True
    trigger, label = declared
    decision = decide_merged(RepoConfig(services=(), trigger=trigger, label=label), facts(event), pairs).decision
    return decision in (Decision.DEPLOY, Decision.AWAIT_APPROVAL)


def _register(fn: Handler) -> Handler:
    for action in sorted(PULL_ACTIONS):
        router.add(fn, "pull_request", action=action)
    return fn


@_register
async def on_pull_request(event: sansio.Event, gh: GitHubAPI, ctx: Context) -> None:
    """One or several merged `pull_request` events of one PR (bot.coalesce): converge its preview."""
    pr = event.data["pull_request"]
    number = int(pr["number"])
    client = repo_client(event, gh)
    pairs = pairs_of(event.data)
    if pr.get("comments") == 0:
        ctx.reporter.assume_no_comments(client, number)
    actions = {pair.action for pair in pairs}
    if pr.get("state") == "closed":
        # A closed PR never keeps a preview, whatever the repository's config says (or fails to say).
        if "closed" in actions:
            reason = "The pull request was merged: preview removed." if pr.get("merged") else \
                "The pull request was closed: preview removed."
            ctx.waits.done(client, number)
            await ctx.previewer.stop(client, number, reason)
        return
    try:
        config = await ctx.previewer.load_config(client)
    except ConfigError as exc:
        if actions & UPDATES or BASE_CHANGED in actions or await label_asked(client, event, pairs):
            await ctx.reporter.show(client, number, Report(
                State.CONFIG_ERROR, sha=pr["head"]["sha"], detail=f"Nothing was deployed: `{exc}`", keeps_live=True))
        return
    if config is None:
        return  # this repository does not use previews
    if not any(service.paths for service in config.services):
        pairs = [pair for pair in pairs if pair.action != BASE_CHANGED]  # a new base changes nothing deployed
    decision, action, holds_stop = decide_merged(config, facts(event), pairs)
    if decision is Decision.DEPLOY:
        # The head as of now, not as of the event, read under the PR's lock: another replica may be
        # handling a newer push, and both must converge on the same commit. Deploys now, or once the
        # checks the config waits for have succeeded (bot.gate). After a base change the head may run
        # already, but `paths` may select other services now: it is decided and deployed again.
        # A base change asks for no preview: one stopped at this head stays stopped, unless an earlier
        # event of this (merged) job deployed first (bot.triggers.decide_merged).
        await gate.deploy_when_ready(ctx.previewer, ctx.waits, client, number, config=config,
                                     recheck=any(pair.action == BASE_CHANGED for pair in pairs),
                                     unless_stopped=holds_stop or bool(event.data.get(AFTER_STOP_KEY)),
                                     superseded=lambda: ctx.superseded(client.repo_id, number))
    elif decision is Decision.TEARDOWN:
        reason = f"The `{config.label}` label was removed: preview removed." if action == "unlabeled" else \
            "The pull request was closed: preview removed."
        ctx.waits.done(client, number)  # a wait for checks ends with the stop (bot.gate)
        await ctx.previewer.stop(client, number, reason, head_sha=str(pr["head"]["sha"]))
    elif decision is Decision.AWAIT_APPROVAL:
        head = str(pr["head"]["sha"])
        noticed = (client.repo_id, number)
        shown = await ctx.reporter.sticky.body(client, number) if noticed in ctx.fork_notices else None
        if any(comment.shows(shown, state) for state in (State.WAITING_APPROVAL, State.STOPPED)):
            # A fork's author can push, or close and reopen, as often as they like: each rewrite spends the
            # App's content budget, shared by every repository. The comment says nothing runs that commit
            # already; a writer's `/preview <sha>` of an older head is told the current one.
            log.info("fork's push: the waiting-for-approval comment is left as it is for now",
                     extra={"repo": client.repo, "pr": number, "sha": head})
            return
        await ctx.reporter.show(client, number, Report(State.WAITING_APPROVAL, sha=head, detail=fork_waiting(head),
                                                     keeps_live=True))
        ctx.fork_notices[noticed] = time.time() + FORK_NOTICE_PERIOD.total_seconds()
