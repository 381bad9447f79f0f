"""`/preview` comments on pull requests: deploy, stop, keep, explain, link, unlink, help (their syntax is
bot.commands, pure; this module runs them).

Who may do what. A writer (write, maintain or admin, GitHub's collaborator permission) gets a reaction
and, where the command says something, a reply, every time. A person without write access changes
nothing and gets no reaction; the pull request gets at most one answer to such people per ANSWER_PERIOD,
whoever asks (help, or "needs write access", with the help). That answer is its own record: a bot comment
carrying commands.ANSWER_MARKER, found by listing the PR's comments of the period, so a restart or
another replica does not answer again (two replicas answering at the same moment may each write one).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from gidgethub import routing, sansio
from gidgethub.abc import GitHubAPI

from bot import slots
from bot.coalesce import AFTER_STOP_KEY
from bot.commands import Action, approve, help_reply, is_answer, parse_command, stranger_reply
from bot.context import ANSWER_PERIOD, Context, repo_client
from bot.explaining import explain_pull_request
from bot.github.client import RepoClient
from bot.handlers.linking import link_command
from bot.timestamps import parse_time

router = routing.Router()


async def answer_once(ctx: Context, client: RepoClient, number: int, body: str) -> None:
    """Reply `body` unless the PR already had an answer for people without write access in the period."""
    key = (client.repo_id, number)
    if key in ctx.answered:
        return
    now = time.time()
    since = datetime.fromtimestamp(now - ANSWER_PERIOD.total_seconds(), UTC)
    async for item in client.comments(number, since=since.strftime("%Y-%m-%dT%H:%M:%SZ")):
        created = parse_time(item.get("created_at"))
        if is_answer(item, ctx.settings.app_id) and created is not None and created >= since:
            ctx.answered[key] = created.timestamp() + ANSWER_PERIOD.total_seconds()
            return
    await client.reply(number, body)
    ctx.answered[key] = now + ANSWER_PERIOD.total_seconds()


@router.register("issue_comment", action="created")
async def on_comment(event: sansio.Event, gh: GitHubAPI, ctx: Context) -> None:
    issue = event.data["issue"]
    comment = event.data["comment"]
    if "pull_request" not in issue or (comment.get("user") or {}).get("type") == "Bot":
        return
    command = parse_command(comment.get("body") or "")
    if command is None:
        return
    client = repo_client(event, gh)
    number = int(issue["number"])
    user = str(comment["user"]["login"])
    comment_id = int(comment["id"])
    if not await client.can_write(user):
        await answer_once(ctx, client, number, stranger_reply(command, user))
        return
    if command.action is Action.HELP:
        await client.react(comment_id, "confused" if command.unknown else "eyes")
        await client.reply(number, help_reply(command))
        return
    if command.action is Action.DEPLOY:
        pr = await client.pull(number)
        if pr.get("state") != "open":
            await client.react(comment_id, "confused")
            await client.reply(number, "This pull request is closed; there is nothing to preview.")
            return
        # The commit this command approves, as the PR is now (a fork's must be named in full).
        approval = approve(pr, command.sha)
        if approval.sha is None:
            await client.react(comment_id, "confused")
            await client.reply(number, approval.refusal("/preview"))
            return
        sha = approval.sha
        after_stop = bool(event.data.get(AFTER_STOP_KEY))  # the rest of it, after a stop cut it short
        if not after_stop:
            await client.react(comment_id, "+1")
        await ctx.previewer.deploy(client, number, sha, pull=pr, wait_as=slots.COMMAND, unless_stopped=after_stop,
                                   superseded=lambda: ctx.superseded(client.repo_id, number)
                                   or ctx.newer_head_queued(client.repo_id, number, sha))
        return
    if command.action is Action.KEEP:
        key, _ = await ctx.previewer.key_for(client, number)
        if not await ctx.kube.set_keep(key, True):  # nothing live: there is nothing to mark
            await client.react(comment_id, "confused")
            await client.reply(number, "This pull request has no live preview to keep; comment `/preview` to "
                                       "deploy one, then `/preview keep`.")
            return
        await client.react(comment_id, "+1")
        return
    if command.action in (Action.LINK, Action.UNLINK):
        reply, done = await link_command(ctx, client, number, user, command)
        await client.react(comment_id, "+1" if done else "confused")  # after: it says whether it was done
        await client.reply(number, reply)
        return
    await client.react(comment_id, "+1")
    if command.action is Action.STOP:
        pr = await client.pull(number)  # its head is recorded: a restart must not bring the preview back
        ctx.waits.done(client, number)  # a wait for checks ends with the stop (bot.gate)
        await ctx.previewer.stop(client, number, f"Stopped by @{user} with `/preview stop`.",
                                 head_sha=str(pr["head"]["sha"]))
    elif command.action is Action.EXPLAIN:
        key, _ = await ctx.previewer.key_for(client, number)
        await client.reply(number, await explain_pull_request(ctx.kube, key))

