"""`/preview` comments on pull requests: deploy, stop, keep, explain, link, unlink, help (their syntax is
bot.commands, pure; this module runs them)."""

from __future__ import annotations

import re

from gidgethub import routing, sansio
from gidgethub.abc import GitHubAPI

from bot.commands import HELP_TEXT, Action, parse_command
from bot.context import Context, repo_client
from bot.explaining import explain_pull_request
from bot.handlers.linking import link_command

router = routing.Router()

# `explain` shows the routing objects of the cluster: writers only, like the commands that change them.
NEEDS_WRITE = frozenset({Action.DEPLOY, Action.STOP, Action.KEEP, Action.EXPLAIN, Action.LINK, Action.UNLINK})


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
    if command.action is Action.HELP:
        await client.react(int(comment["id"]), "confused" if command.unknown else "eyes")
        # Echo the word only when it is plain: a backtick or @mention must not escape into Markdown.
        word = command.unknown if command.unknown and re.fullmatch(r"[\w-]{1,40}", command.unknown) else "that"
        prefix = f"Unknown command `/preview {word}`.\n\n" if command.unknown else ""
        await client.reply(number, prefix + HELP_TEXT)
        return
    if command.action in NEEDS_WRITE and not await client.can_write(user):
        await client.react(int(comment["id"]), "-1")
        if (client.repo_id, number, user) not in ctx.refused:
            ctx.refused[(client.repo_id, number, user)] = True
            await client.reply(number, f"@{user} `/preview {command.action.value}` needs write access "
                                       "to this repository; nothing was changed.")
        return
    await client.react(int(comment["id"]), "+1")
    if command.action is Action.DEPLOY:
        pr = await client.pull(number)
        if pr.get("state") != "open":
            await client.reply(number, "This pull request is closed; there is nothing to preview.")
            return
        # The head at this moment is what the maintainer approved (matters for forks).
        await ctx.previewer.deploy(client, number, pr["head"]["sha"], pull=pr,
                                   superseded=lambda: ctx.superseded(client.repo_id, number))
    elif command.action is Action.STOP:
        pr = await client.pull(number)  # its head is recorded: a restart must not bring the preview back
        await ctx.previewer.stop(client, number, f"Stopped by @{user} with `/preview stop`.",
                                 head_sha=str(pr["head"]["sha"]))
    elif command.action is Action.KEEP:
        key, _ = await ctx.previewer.key_for(client, number)
        await ctx.kube.set_keep(key, True)
    elif command.action is Action.EXPLAIN:
        key, _ = await ctx.previewer.key_for(client, number)
        await client.reply(number, await explain_pull_request(ctx.kube, key))
    elif command.action in (Action.LINK, Action.UNLINK):
        await client.reply(number, await link_command(ctx, client, number, user, command))
