"""The GitHub calls the bot makes for one repository, on one installation's token. Errors are
`bot.github.errors` kinds (raised by `bot.github.api.PacedGitHubAPI`, the `gh` every client is given)."""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from gidgethub.abc import GitHubAPI

from bot.errors import ConfigError
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


class RepoClient:
    """`repo` is the current full name (URLs are by name); `repo_id` is GitHub's `repository.id`, the
    identity every cache and cluster object is keyed by."""

    def __init__(self, gh: GitHubAPI, repo: str, repo_id: int) -> None:
        self.gh = gh
        self.repo = repo
        self.repo_id = repo_id
        self._base = f"/repos/{repo}"

    async def default_branch(self) -> str:
        data = await self.gh.getitem(self._base)
        return str(data["default_branch"])

    async def file_text(self, path: str, ref: str | None = None) -> str | None:
        """The file's text at `ref`; without `ref`, GitHub reads the repository's default branch ("Get
        repository content": `ref` defaults to the default branch), which saves asking for its name.
        None when there is no such file; raises ConfigError naming `path` when it is not UTF-8 text or
        larger than the 1 MB GitHub returns (the repository has a config the bot cannot read: say so on the
        PR, never act as if it had none)."""
        try:
            data = await self.gh.getitem(f"{self._base}/contents/{path}{{?ref}}", {"ref": ref} if ref else {})
        except NotFound:
            return None
        if not isinstance(data, dict) or data.get("type") != "file":
            return None
        if data.get("encoding") == "none":
            # GitHub leaves `content` empty for a file over 1 MB ("Get repository content", size limits).
            raise ConfigError(path, "", f"is {data.get('size', 'over 1,000,000')} bytes; GitHub's contents API "
                                        "returns files up to 1 MB, and a preview config needs far less")
        try:
            raw = base64.b64decode(data.get("content", ""))
        except binascii.Error:
            raise ConfigError(path, "", "cannot be read: GitHub's answer is not base64 content") from None
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(path, "", f"is not UTF-8 text (byte {exc.start})") from None

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

    async def comments(self, number: int, *, since: str | None = None) -> AsyncIterator[dict[str, Any]]:
        """The PR's comments, oldest first (GitHub REST docs, "List issue comments"); with `since` (ISO 8601),
        only those created or edited at or after it."""
        url_vars: dict[str, Any] = {"per_page": 100, **({"since": since} if since else {})}
        async for item in self.gh.getiter(f"{self._base}/issues/{number}/comments{{?since,per_page}}", url_vars):
            yield item

    async def create_comment(self, number: int, body: str) -> int:
        created = await self.gh.post(f"{self._base}/issues/{number}/comments", data={"body": body})
        return int(created["id"])

    async def edit_comment(self, comment_id: int, body: str) -> bool:
        """False when the comment is gone (404: deleted by a person)."""
        try:
            await self.gh.patch(f"{self._base}/issues/comments/{comment_id}", data={"body": body})
        except NotFound:
            return False
        return True

    async def delete_comment(self, comment_id: int) -> None:
        await self.gh.delete(f"{self._base}/issues/comments/{comment_id}")

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

    async def delete_deployment(self, deployment_id: int) -> bool:
        """Delete an (inactive) deployment; False when it was gone already (404)."""
        try:
            await self.gh.delete(f"{self._base}/deployments/{deployment_id}")
        except NotFound:  # deleted meanwhile by another replica: done too
            return False
        return True

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
