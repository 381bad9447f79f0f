"""`/preview link owner/repo#N` and `/preview unlink` (the rules are in bot.links)."""

from __future__ import annotations

from bot import links
from bot.commands import Action, Command
from bot.comment import State
from bot.context import Context
from bot.errors import ObjectsElsewhere
from bot.github.client import RepoClient

USAGE = "Usage: `/preview link owner/repo#N` (a pull request of a repository this App is installed on)."


async def link_command(ctx: Context, client: RepoClient, number: int, user: str,
                       command: Command) -> tuple[str, bool]:
    """Run the command; returns the reply and whether it changed something (the reaction says so)."""
    refresh = ctx.previewer.link_refresh
    if command.action is Action.UNLINK:
        key, _ = await ctx.previewer.key_for(client, number)
        try:
            ended = await links.unlink(ctx.kube, refresh, key)
        except ObjectsElsewhere as exc:  # a linked preview in an earlier PREVIEW_NAMESPACE, unreadable now
            return f"Not unlinked: the link records cannot all be read: a preview involved: {exc}.", False
        if not ended:
            return "This pull request has no links.", False
        return "🔗 Unlinked " + ", ".join(ended) + ".", True
    target = links.parse_target(command.argument or "")
    if target is None:
        return USAGE, False

    async def client_for(repo: str) -> RepoClient | None:
        if repo.lower() == client.repo.lower():
            return client
        return await links.client_for_repo(ctx.auth, repo)

    async def deploy(other: RepoClient, other_number: int, sha: str) -> str | None:
        # Not put in line at the cap: a link is made now or not at all (the reply says why).
        result = await ctx.previewer.deploy(other, other_number, sha, wait_as=None)
        return None if result.state is State.READY else (result.detail or result.state.value)

    try:
        return await links.link(ctx.kube, ctx.reporter, client_for, deploy, client, number, user, target,
                                sha=command.sha), True
    except links.LinkRefused as exc:
        return f"Not linked: {exc}", False
    except ObjectsElsewhere as exc:
        return f"Not linked: the link records cannot all be read: a preview involved: {exc}.", False
