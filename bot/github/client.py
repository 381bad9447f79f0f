"""The GitHub calls the bot makes for one repository, on one installation's token. Errors are
`bot.github.errors` kinds (raised by `bot.github.api.PacedGitHubAPI`, the `gh` every client is given)."""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cachetools
from gidgethub.abc import GitHubAPI

from bot import comment as sticky
from bot.github.errors import GitHubError, NotFound

log = logging.getLogger(__name__)

WRITE_PERMISSIONS = frozenset({"admin", "maintain", "write"})
DEPLOYMENT_DESCRIPTION_MAX = 140
# "Responses include a maximum of 3000 files" (GitHub REST docs, pulls: list pull request files): past
# that the listing is cut short, even when paginated to the end.
LIST_FILES_MAX = 3000


@dataclass(frozen=True)
class ChangedFiles:
    """The PR's changed paths (renames give both names); `complete` is False when GitHub listed fewer
    files than the PR changes, so some changed paths are missing from `names`."""

    names: tuple[str, ...]
    complete: bool

# (repository id, number) -> (comment id, last body). Process-wide: it saves a listing and skips no-op
# edits. Keyed by id: a renamed repository keeps its comments.
_STICKY: cachetools.LRUCache[tuple[int, int], tuple[int, str]] = cachetools.LRUCache(maxsize=4096)
# PRs a webhook payload showed with no comments at all: their first sticky needs no search.
_NO_COMMENTS: cachetools.LRUCache[tuple[int, int], bool] = cachetools.LRUCache(maxsize=4096)


class RepoClient:
    """`repo` is the current full name (URLs are by name); `repo_id` is GitHub's `repository.id`, the
    identity every cache and cluster object is keyed by."""

    def __init__(self, gh: GitHubAPI, repo: str, repo_id: int) -> None:
        self.gh = gh
        self.repo = repo
        self.repo_id = repo_id
        self._base = f"/repos/{repo}"
        self.created_sticky = False  # the last upsert_sticky created the PR's first bot comment

    async def default_branch(self) -> str:
        data = await self.gh.getitem(self._base)
        return str(data["default_branch"])

    async def file_text(self, path: str, ref: str | None = None) -> str | None:
        """The file's text at `ref`; without `ref`, GitHub reads the repository's default branch ("Get
        repository content": `ref` defaults to the default branch), which saves asking for its name."""
        try:
            data = await self.gh.getitem(f"{self._base}/contents/{path}{{?ref}}", {"ref": ref} if ref else {})
        except NotFound:
            return None
        if not isinstance(data, dict) or data.get("type") != "file":
            return None
        try:
            return base64.b64decode(data.get("content", "")).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None

    async def pull(self, number: int) -> dict[str, Any]:
        data: dict[str, Any] = await self.gh.getitem(f"{self._base}/pulls/{number}")
        return data

    async def open_pulls(self) -> list[dict[str, Any]]:
        return [p async for p in self.gh.getiter(f"{self._base}/pulls?state=open&per_page=100")]

    async def changed_files(self, number: int, pull: Mapping[str, Any] | None = None) -> ChangedFiles:
        """The PR's changed files. `pull` (the PR as GitHub answered it, any recent read) gives
        `changed_files`, the true count: above LIST_FILES_MAX the listing is not even fetched, below it a
        shorter listing is incomplete. Without `pull`, a listing that reaches the cap counts as cut short."""
        expected = int(pull["changed_files"]) if pull and pull.get("changed_files") is not None else None
        if expected is not None and expected > LIST_FILES_MAX:
            return ChangedFiles((), complete=False)
        names: list[str] = []
        listed = 0
        async for item in self.gh.getiter(f"{self._base}/pulls/{number}/files?per_page=100"):
            listed += 1
            names.append(str(item["filename"]))
            if item.get("previous_filename"):
                names.append(str(item["previous_filename"]))
        complete = listed >= expected if expected is not None else listed < LIST_FILES_MAX
        return ChangedFiles(tuple(names), complete)

    async def permission(self, user: str) -> str:
        """The user's permission on the repository: admin, maintain, write, triage, read or none."""
        try:
            data = await self.gh.getitem(f"{self._base}/collaborators/{{user}}/permission", {"user": user})
        except GitHubError as exc:
            if exc.status in (403, 404):  # a 403 of a rate limit too (RateLimited)
                return "none"
            raise
        role = str(data.get("role_name") or "")
        return role if role in WRITE_PERMISSIONS else str(data.get("permission") or "none")

    async def can_write(self, user: str) -> bool:
        return await self.permission(user) in WRITE_PERMISSIONS

    async def react(self, comment_id: int, content: str) -> None:
        await self.gh.post(f"{self._base}/issues/comments/{comment_id}/reactions", data={"content": content})

    async def reply(self, number: int, body: str) -> None:
        await self.gh.post(f"{self._base}/issues/{number}/comments", data={"body": body})

    async def _find_sticky(self, number: int) -> tuple[int, str] | None:
        async for item in self.gh.getiter(f"{self._base}/issues/{number}/comments?per_page=100"):
            if sticky.is_sticky(item.get("body")) and (item.get("user") or {}).get("type") == "Bot":
                return int(item["id"]), str(item["body"])
        return None

    def assume_no_comments(self, number: int) -> None:
        """The PR had no comment when GitHub sent the event (`pull_request.comments == 0`): the first
        sticky comment is created without listing comments first (a race with another replica is
        still caught: every creation checks for an older sticky)."""
        if (self.repo_id, number) not in _STICKY:
            _NO_COMMENTS[(self.repo_id, number)] = True

    def known_without_sticky(self, number: int) -> bool:
        """The PR has no comment of the bot, known without a request (its webhook payload said it had no
        comment, and none was created since)."""
        return (self.repo_id, number) in _NO_COMMENTS

    async def _known_sticky(self, number: int) -> tuple[int, str] | None:
        cache_key = (self.repo_id, number)
        if cache_key in _STICKY:
            return _STICKY[cache_key]
        if _NO_COMMENTS.pop(cache_key, False):
            return None
        return await self._find_sticky(number)

    async def sticky_body(self, number: int) -> str | None:
        """The current text of the PR's bot comment, or None when it has none."""
        cache_key = (self.repo_id, number)
        if cache_key in _NO_COMMENTS:
            return None
        known = _STICKY.get(cache_key) or await self._find_sticky(number)
        return known[1] if known is not None else None

    async def has_sticky(self, number: int) -> bool:
        if (self.repo_id, number) in _NO_COMMENTS:
            return False
        return (self.repo_id, number) in _STICKY or await self._find_sticky(number) is not None

    async def upsert_sticky(self, number: int, body: str) -> int:
        """Edit the PR's one bot comment in place, or create it; an unchanged body costs nothing."""
        cache_key = (self.repo_id, number)
        self.created_sticky = replaced = False
        known = await self._known_sticky(number)
        if known is not None:
            comment_id, current = known
            if current == body:
                _STICKY[cache_key] = known
                return comment_id
            try:
                await self.gh.patch(f"{self._base}/issues/comments/{comment_id}", data={"body": body})
                _STICKY[cache_key] = (comment_id, body)
                return comment_id
            except NotFound:
                _STICKY.pop(cache_key, None)  # deleted by a person: make a new one
                replaced = True
        created = await self.gh.post(f"{self._base}/issues/{number}/comments", data={"body": body})
        comment_id = int(created["id"])
        self.created_sticky = not replaced
        # Two replicas may both have found no comment and both created one: keep the oldest.
        ids = [cid async for cid in self._sticky_ids(number)]
        if ids and ids[0] != comment_id:
            await self.gh.delete(f"{self._base}/issues/comments/{comment_id}")
            self.created_sticky = False
            comment_id = ids[0]
            await self.gh.patch(f"{self._base}/issues/comments/{comment_id}", data={"body": body})
        _STICKY[cache_key] = (comment_id, body)
        return comment_id

    async def _sticky_ids(self, number: int) -> AsyncIterator[int]:
        async for item in self.gh.getiter(f"{self._base}/issues/{number}/comments?per_page=100"):
            if sticky.is_sticky(item.get("body")) and (item.get("user") or {}).get("type") == "Bot":
                yield int(item["id"])

    # -- checks and commit statuses -------------------------------------------------------------

    async def check_runs(self, sha: str) -> list[dict[str, Any]]:
        """The commit's latest check run of each name, from every App (GitHub Actions jobs included)."""
        return [run async for run in self.gh.getiter(
            f"{self._base}/commits/{{sha}}/check-runs{{?filter,per_page}}",
            {"sha": sha, "filter": "latest", "per_page": 100}, iterable_key="check_runs")]

    async def commit_statuses(self, sha: str) -> list[dict[str, Any]]:
        """The latest status of each context on the commit (the combined status's `statuses`)."""
        data = await self.gh.getitem(f"{self._base}/commits/{{sha}}/status{{?per_page}}",
                                     {"sha": sha, "per_page": 100})
        return list(data.get("statuses") or [])

    # -- deployments --------------------------------------------------------------------------

    async def create_deployment(self, *, ref: str, environment: str, description: str,
                                payload: dict[str, Any]) -> int:
        data = await self.gh.post(f"{self._base}/deployments", data={
            "ref": ref,
            "environment": environment,
            "description": description[:DEPLOYMENT_DESCRIPTION_MAX],
            "transient_environment": True,
            "production_environment": False,
            "required_contexts": [],
            "auto_merge": False,
            "payload": payload,
        })
        return int(data["id"])

    async def deployment_status(self, deployment_id: int, state: str, *, description: str = "",
                                environment_url: str | None = None, log_url: str | None = None) -> None:
        body: dict[str, Any] = {"state": state, "description": description[:DEPLOYMENT_DESCRIPTION_MAX]}
        if environment_url:
            body["environment_url"] = environment_url
        if log_url:
            body["log_url"] = log_url
        await self.gh.post(f"{self._base}/deployments/{deployment_id}/statuses", data=body)

    async def deployments(self, environment: str) -> list[dict[str, Any]]:
        return [d async for d in self.gh.getiter(f"{self._base}/deployments{{?environment,per_page}}",
                                                 {"environment": environment, "per_page": 100})]

    async def latest_status(self, deployment_id: int) -> dict[str, Any] | None:
        async for status in self.gh.getiter(f"{self._base}/deployments/{deployment_id}/statuses?per_page=1"):
            return dict(status)
        return None

    async def latest_state(self, deployment_id: int) -> str | None:
        status = await self.latest_status(deployment_id)
        return None if status is None else str(status["state"])

    async def deactivate(self, environment: str, *, keep: Sequence[int] = (), older_than: int | None = None) -> int:
        """Mark the environment's active deployments inactive (auto_inactive skips transient ones).

        `keep` are left alone; with `older_than`, only deployments with a smaller id (created earlier) are
        touched: a newer one belongs to a later deploy, which settles its own."""
        count = 0
        for deployment in await self.deployments(environment):
            deployment_id = int(deployment["id"])
            if deployment_id in keep or (older_than is not None and deployment_id >= older_than):
                continue
            if await self.latest_state(deployment_id) == "inactive":
                break  # newest first, and each deploy deactivates its predecessors: the rest are done
            await self.deployment_status(deployment_id, "inactive", description="preview removed")
            count += 1
        return count

    async def retire(self, environment: str) -> int:
        """Teardown: mark every deployment of the environment inactive, then delete it; returns how many.

        GitHub deletes only inactive deployments when the repository has more than one ("Delete a
        deployment", GitHub REST docs: deployments), hence the order. Needs Deployments: write."""
        count = 0
        for deployment in await self.deployments(environment):
            deployment_id = int(deployment["id"])
            if await self.latest_state(deployment_id) != "inactive":
                await self.deployment_status(deployment_id, "inactive", description="preview removed")
            with contextlib.suppress(NotFound):  # deleted meanwhile by another replica: done too
                await self.gh.delete(f"{self._base}/deployments/{deployment_id}")
            count += 1
        return count

    async def delete_environment(self, environment: str) -> bool:
        """Delete the (now empty) environment; True if it went. Needs Administration: write ("Delete an
        environment", GitHub REST docs: deployments/environments), which app.yml does not grant by
        default: a refusal is logged once per call and leaves the environment, nothing else fails."""
        try:
            await self.gh.delete(f"{self._base}/environments/{{environment}}", {"environment": environment})
        except NotFound:
            return False
        except GitHubError as exc:
            if exc.status == 403:  # Forbidden, or a rate limit (RateLimited)
                log.warning("could not delete GitHub environment %s: the App lacks Administration: write "
                            "(see PREVIEW_DELETE_ENVIRONMENTS in the README)", environment,
                            extra={"repo": self.repo})
                return False
            raise
        return True
