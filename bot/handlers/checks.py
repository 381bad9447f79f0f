"""check_run and status events: a check the config waits for changed on some commit.

Level-triggered: the event only says *which* commit and check; the decision reads the commit's check runs
and statuses again (bot.gate). An event for a check nobody waits for costs one read (the config, on the
default branch the payload names); one for a commit that is no open PR's head costs two (and the open
PRs). Neither writes to GitHub.

GitHub's "Webhook events and payloads" (https://docs.github.com/en/webhooks/webhook-events-and-payloads):
`check_run` needs "at least read-level access for the Checks repository permission"; only the
`rerequested` and `requested_action` types need write, and the bot uses neither (`created` and `completed`
come for every App's runs, GitHub Actions jobs included). `status` needs read on "Commit statuses".
`check_suite` says nothing a check run does not; `workflow_run` would need the "Actions" permission.
"""

from __future__ import annotations

import logging

from gidgethub import routing, sansio
from gidgethub.abc import GitHubAPI

from bot import checks, gate
from bot.context import Context, repo_client
from bot.errors import ConfigError
from bot.queue import QueueClosed, QueueFull
from bot.triggers import Decision, decide, facts_from_pull

router = routing.Router()
log = logging.getLogger(__name__)


@router.register("check_run", action="created")
@router.register("check_run", action="completed")
@router.register("status")
async def on_check(event: sansio.Event, gh: GitHubAPI, ctx: Context) -> None:
    facts = checks.event_facts(event.event, event.data)
    if facts is None:
        return
    client = repo_client(event, gh)
    branch = str(event.data["repository"].get("default_branch") or "") or await client.default_branch()
    try:
        config = await gate.load_config_at(client, branch, ctx.previewer)
    except ConfigError:
        return  # reported on the PR by its next pull_request event
    if config is None or not config.waits_for(facts.name):
        return
    for pull in await client.open_pulls():
        if (pull.get("head") or {}).get("sha") != facts.sha:
            continue
        if decide(config, facts_from_pull(pull, "synchronize")) is not Decision.DEPLOY:
            continue  # drafts, forks awaiting approval, `trigger: command`, a missing label
        number = int(pull["number"])

        async def job(number: int = number) -> None:
            # In the PR's own queue, after its earlier events; the head is read again there, so a push
            # that came in the meantime is what counts (the old commit is never deployed). A check is no
            # push: a PR stopped at this commit stays stopped.
            await gate.deploy_when_ready(ctx.previewer, ctx.waits, client, number, config=config,
                                         unless_stopped=True,
                                         superseded=lambda: ctx.superseded(client.repo_id, number))

        try:
            # Its own job, never merged: a running deploy of the PR is never cut short for it.
            ctx.queue.submit((str(client.repo_id), number), job)
        except QueueClosed:
            log.warning("shutting down; the check event is left to the next pass", extra={"pr": number})
        except QueueFull:
            log.warning("work queue full: the check event is left to the next pass", extra={"pr": number})
