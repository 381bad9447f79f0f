"""pull_request events: deploy on open/push/ready/label, tear down on close or unlabel."""

from __future__ import annotations

from gidgethub import routing, sansio
from gidgethub.abc import GitHubAPI

from bot import gate
from bot.comment import Report, State
from bot.context import Context, repo_client
from bot.errors import ConfigError
from bot.triggers import Decision, PullRequestFacts, decide, facts_from_pull

router = routing.Router()

FORK_WAITING = ("This pull request comes from a fork, so its code is not deployed automatically. "
                "A maintainer (write access) can deploy the current head commit with `/preview`; "
                "later pushes need a new `/preview`.")


def facts(event: sansio.Event) -> PullRequestFacts:
    return facts_from_pull(event.data["pull_request"], event.data["action"],
                           (event.data.get("label") or {}).get("name"))


@router.register("pull_request", action="closed")
async def on_closed(event: sansio.Event, gh: GitHubAPI, ctx: Context) -> None:
    pr = event.data["pull_request"]
    reason = "The pull request was merged: preview removed." if pr.get("merged") else \
        "The pull request was closed: preview removed."
    await ctx.previewer.stop(repo_client(event, gh), int(pr["number"]), reason)


@router.register("pull_request", action="opened")
@router.register("pull_request", action="reopened")
@router.register("pull_request", action="synchronize")
@router.register("pull_request", action="ready_for_review")
@router.register("pull_request", action="labeled")
@router.register("pull_request", action="unlabeled")
async def on_update(event: sansio.Event, gh: GitHubAPI, ctx: Context) -> None:
    pr = event.data["pull_request"]
    number = int(pr["number"])
    client = repo_client(event, gh)
    try:
        config = await ctx.previewer.load_config(client)
    except ConfigError as exc:
        if facts(event).action in ("opened", "reopened", "synchronize", "ready_for_review"):
            await ctx.previewer.report(client, number, Report(
                State.CONFIG_ERROR, sha=pr["head"]["sha"], detail=f"Nothing was deployed: `{exc}`"))
        return
    if config is None:
        return  # this repository does not use previews
    decision = decide(config, facts(event))
    if decision is Decision.DEPLOY:
        # The head as of now, not as of the event, read under the PR's lock: another replica may be
        # handling a newer push, and both must converge on the same commit. Deploys now, or once the
        # checks the config waits for have succeeded (bot.gate).
        await gate.deploy_when_ready(ctx.previewer, ctx.waits, client, number, config=config,
                                     superseded=lambda: ctx.superseded(client.repo_id, number))
    elif decision is Decision.TEARDOWN:
        await ctx.previewer.stop(client, number, f"The `{config.label}` label was removed: preview removed.")
    elif decision is Decision.AWAIT_APPROVAL:
        await ctx.previewer.report(client, number, Report(State.WAITING_APPROVAL, sha=pr["head"]["sha"],
                                                          detail=FORK_WAITING))
