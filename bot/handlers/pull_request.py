"""pull_request events: deploy on open/push/ready/label/base change, tear down on close or unlabel."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from gidgethub import routing, sansio
from gidgethub.abc import GitHubAPI

from bot import gate
from bot.coalesce import PULL_ACTIONS, pairs_of
from bot.comment import Report, State
from bot.context import Context, repo_client
from bot.errors import ConfigError
from bot.triggers import BASE_CHANGED, UPDATES, Decision, PullRequestFacts, decide_merged, facts_from_pull

router = routing.Router()
Handler = Callable[..., Awaitable[Any]]


def fork_waiting(sha: str) -> str:
    """What a fork's PR shows until a maintainer deploys a commit of it (bot.commands.approve)."""
    return ("This pull request comes from a fork, so its code is not deployed automatically. A maintainer "
            f"(write access) who has reviewed the head commit deploys it with `/preview {sha}` (the command names "
            "the commit in full); each later push needs a new one.")


def facts(event: sansio.Event) -> PullRequestFacts:
    return facts_from_pull(event.data["pull_request"], event.data["action"],
                           (event.data.get("label") or {}).get("name"))


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
    actions = {action for action, _label in pairs}
    if pr.get("state") == "closed":
        # A closed PR never keeps a preview, whatever the repository's config says (or fails to say).
        if "closed" in actions:
            reason = "The pull request was merged: preview removed." if pr.get("merged") else \
                "The pull request was closed: preview removed."
            await ctx.previewer.stop(client, number, reason)
        return
    try:
        config = await ctx.previewer.load_config(client)
    except ConfigError as exc:
        if actions & UPDATES:
            await ctx.reporter.show(client, number, Report(
                State.CONFIG_ERROR, sha=pr["head"]["sha"], detail=f"Nothing was deployed: `{exc}`"))
        return
    if config is None:
        return  # this repository does not use previews
    if not any(service.paths for service in config.services):
        pairs = [pair for pair in pairs if pair[0] != BASE_CHANGED]  # a new base changes nothing deployed
    decision, action = decide_merged(config, facts(event), pairs)
    if decision is Decision.DEPLOY:
        # The head as of now, not as of the event, read under the PR's lock: another replica may be
        # handling a newer push, and both must converge on the same commit. Deploys now, or once the
        # checks the config waits for have succeeded (bot.gate). After a base change the head may run
        # already, but `paths` may select other services now: it is decided and deployed again.
        await gate.deploy_when_ready(ctx.previewer, ctx.waits, client, number, config=config,
                                     recheck=any(pair[0] == BASE_CHANGED for pair in pairs),
                                     superseded=lambda: ctx.superseded(client.repo_id, number))
    elif decision is Decision.TEARDOWN:
        reason = f"The `{config.label}` label was removed: preview removed." if action == "unlabeled" else \
            "The pull request was closed: preview removed."
        await ctx.previewer.stop(client, number, reason, head_sha=str(pr["head"]["sha"]))
    elif decision is Decision.AWAIT_APPROVAL:
        await ctx.reporter.show(client, number, Report(State.WAITING_APPROVAL, sha=pr["head"]["sha"],
                                                     detail=fork_waiting(str(pr["head"]["sha"]))))
