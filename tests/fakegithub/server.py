"""A stateful fake of GitHub's REST API for one GitHub App, validated against GitHub's OpenAPI description.

Responses are built from GitHub's own examples in that description (so they carry every field GitHub
sends), filled in from the fake's state, and checked against the response schemas while tests run.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from http import HTTPStatus
from typing import Any, NamedTuple
from urllib.parse import urlencode

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from multidict import CIMultiDict

from .spec import Operation, RequestInvalid, Spec, load_spec
from .state import (
    CheckRun,
    CheckSuite,
    Comment,
    CommitStatus,
    Deployment,
    DeploymentStatus,
    Installation,
    OtherApp,
    Pull,
    Reaction,
    Repo,
    Token,
    User,
    fake_sha,
    next_id,
)

HTML = "https://github.com"
DOCS = "https://docs.github.com/rest"
LEVEL = {"none": 0, "read": 1, "write": 2, "admin": 3}
ROLE_TO_PERMISSION = {"admin": "admin", "maintain": "write", "write": "write", "triage": "read", "read": "read"}
DEFAULT_PERMISSIONS = {
    "metadata": "read", "contents": "read", "pull_requests": "write", "issues": "write", "deployments": "write",
    "checks": "read", "statuses": "read",
}
# What GitHub answers (403) to a token request for a suspended installation (octokit.rb raises
# InstallationSuspended on it); requests with a token minted before the suspension are refused the same way.
SUSPENDED_MESSAGE = "This installation has been suspended"
SECONDARY_LIMIT_MESSAGE = (
    "You have exceeded a secondary rate limit. Please wait a few minutes before you try again. If you "
    "reach out to GitHub Support for help, please include the request ID {request_id}."
)
JWT_OPS = {"apps/get-authenticated", "apps/create-installation-access-token", "apps/get-repo-installation",
           "apps/list-installations"}
# Installation-token operations that name no repository.
INSTALLATION_OPS = {"apps/list-repos-accessible-to-installation"}
# What an installation needs per operation (any one alternative suffices): GitHub's "permissions required
# for GitHub Apps" tables. Also lets a test check that app.yml asks for every permission the bot uses.
REQUIRED_PERMISSIONS: dict[str, tuple[tuple[str, str], ...]] = {
    "apps/list-repos-accessible-to-installation": (("metadata", "read"),),
    "repos/get": (("metadata", "read"),),
    "repos/get-collaborator-permission-level": (("metadata", "read"),),
    "repos/get-content": (("contents", "read"),),
    "pulls/get": (("pull_requests", "read"),),
    "pulls/list": (("pull_requests", "read"),),
    "pulls/list-files": (("pull_requests", "read"),),
    **{op: (("issues", "read"), ("pull_requests", "read"))
       for op in ("issues/get", "issues/list-comments", "issues/get-comment")},
    **{op: (("issues", "write"), ("pull_requests", "write"))
       for op in ("issues/create-comment", "issues/update-comment", "issues/delete-comment",
                  "reactions/create-for-issue-comment", "reactions/create-for-issue")},
    **{op: (("deployments", "read"),)
       for op in ("repos/list-deployments", "repos/get-deployment", "repos/list-deployment-statuses")},
    **{op: (("deployments", "write"),)
       for op in ("repos/create-deployment", "repos/create-deployment-status", "repos/delete-deployment")},
    # "Checks" and "Commit statuses" repository permissions (GitHub REST: checks/runs, checks/suites,
    # commits/statuses, "Fine-grained access tokens" of each endpoint).
    **{op: (("checks", "read"),)
       for op in ("checks/get", "checks/list-for-ref", "checks/get-suite", "checks/list-suites-for-ref")},
    **{op: (("checks", "write"),) for op in ("checks/create", "checks/update")},
    **{op: (("statuses", "read"),)
       for op in ("repos/get-combined-status-for-ref", "repos/list-commit-statuses-for-ref")},
    "repos/create-commit-status": (("statuses", "write"),),
    "repos/delete-an-environment": (("administration", "write"),),
}
LIST_FILES_MAX = 3000  # pulls/list-files stops there, however far it is paginated
# GitHub's own examples our answers are built from (kept in the cached index).
EXAMPLES = frozenset({
    "integration", "installation", "installation-token", "full-repository", "pull-request",
    "pull-request-simple-items", "issue", "issue-comment", "reaction", "deployment", "deployment-status",
    "check-run", "check-suite", "combined-commit-status", "status",
})
# Higher first: a suite's conclusion is the highest-priority conclusion of its runs (GitHub REST guide
# "Using the REST API to interact with checks", "About check suites").
SUITE_CONCLUSION_ORDER = ("action_required", "startup_failure", "cancelled", "timed_out", "failure", "stale",
                          "neutral", "skipped", "success")
Handler = Callable[["FakeGitHub", "Ctx"], Awaitable["Reply"]]
HANDLERS: dict[str, Handler] = {}


def op(operation_id: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        HANDLERS[operation_id] = fn
        return fn
    return register


@cache
def _app_key() -> tuple[rsa.RSAPrivateKey, str]:
    """One RSA-2048 key per process: generating one per test would cost ~0.1-1 s each."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(  # PKCS#1, the format of the .pem GitHub lets you download
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()
    return key, pem


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _replace_strings(node: Any, pairs: list[tuple[str, str]]) -> Any:
    if isinstance(node, str):
        for old, new in pairs:
            node = node.replace(old, new)
        return node
    if isinstance(node, dict):
        return {k: _replace_strings(v, pairs) for k, v in node.items()}
    if isinstance(node, list):
        return [_replace_strings(v, pairs) for v in node]
    return node


class GitHubError(Exception):
    """An error answer: GitHub's `{"message", "documentation_url", "status"}` body."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.headers, self.extra = status, message, headers or {}, extra


@dataclass
class Reply:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Ctx:
    """One request, after routing, authentication and validation."""
    request: web.Request
    op: Operation
    params: dict[str, str]
    query: dict[str, Any]
    body: Any
    repo: Repo | None
    installation: Installation | None
    actor: User | None  # the app's bot user for installation tokens
    token: Token | None = None


@dataclass
class Fault:
    method: str
    path: re.Pattern[str]
    status: int | None
    times: int
    headers: dict[str, str]
    body: Any
    delay: float


class Call(NamedTuple):
    """One answered request: (method, path_template, operation_id, status); None for unroutable paths."""

    method: str
    path_template: str | None
    operation_id: str | None
    status: int


@dataclass(frozen=True)
class SeenRequest:
    method: str
    path: str
    query: str
    headers: dict[str, str]  # Authorization redacted to its scheme and kind
    body: Any
    auth: str  # "none", "jwt", "installation:<id>", "invalid"


class FakeGitHub:
    """GitHub's REST API on 127.0.0.1 for one App.

    Set up state with the sync helpers (add_repo, add_pull, push, add_comment...), point the bot's
    GITHUB_API_URL at `url`, then inspect `calls`, `requests`, comments(), deployments(), statuses()."""

    def __init__(self, *, check_responses: bool = True, token_lifetime: float = 3600.0) -> None:
        self.spec: Spec = load_spec(frozenset(HANDLERS), EXAMPLES)
        key, self.private_key_pem = _app_key()
        self._public_key = key.public_key()
        self.app_id = next_id("app")
        self.app_slug = f"preview-bot-test-{self.app_id}"
        self.bot = User(f"{self.app_slug}[bot]", type="Bot")
        self.token_lifetime = token_lifetime  # seconds; lower it to watch the bot refresh tokens
        self.check_responses = check_responses
        self.url = ""
        self.users: dict[str, User] = {}
        self.installations: dict[int, Installation] = {}
        self.repos: dict[str, Repo] = {}
        self.tokens: dict[str, Token] = {}
        self.calls: list[Call] = []
        self.requests: list[SeenRequest] = []
        self.unimplemented: list[tuple[str, str]] = []  # real GitHub routes the fake lacks
        self.response_errors: list[str] = []  # where the fake strayed from GitHub's schemas
        self.max_concurrency = 0
        self._in_flight = 0
        self._faults: list[Fault] = []
        self._content_times: list[float] = []  # monotonic times of content-creating requests
        self._content_limit: int | None = None
        self._accepted_content: deque[float] = deque()
        self._used: dict[str, int] = {}
        self._other_apps: dict[str, OtherApp] = {}
        self._runner: web.AppRunner | None = None

    # -- lifecycle -----------------------------------------------------------------------------------
    async def start(self) -> None:
        app = web.Application(client_max_size=30 * 1024**2)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        if self._runner:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeGitHub:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- state set-up (sync) -------------------------------------------------------------------------
    def user(self, login: str, type: str = "User") -> User:
        """The account `login`, created on first use. Unknown logins do not exist (404s)."""
        if login not in self.users:
            self.users[login] = User(login, type=type)
        return self.users[login]

    def add_installation(self, installation_id: int, account: str,
                         permissions: dict[str, str] | None = None) -> Installation:
        inst = Installation(installation_id, self.user(account), dict(permissions or DEFAULT_PERMISSIONS))
        self.installations[installation_id] = inst
        return inst

    def add_repo(self, full_name: str, *, default_branch: str = "main", files: dict[str, str] | None = None,
                 ref_files: dict[str, dict[str, str]] | None = None, installation_id: int | None = None,
                 installed: bool = True, collaborators: dict[str, str] | None = None,
                 private: bool = False) -> Repo:
        """A repository; `files` are on the default branch, `ref_files` on extra branches.

        The App is installed on it (one installation per owner unless `installation_id` is given)."""
        owner, name = full_name.split("/")
        for login, role in (collaborators or {}).items():
            if role not in ROLE_TO_PERMISSION:
                raise ValueError(f"{login}: role must be one of {sorted(ROLE_TO_PERMISSION)}")
            self.user(login)
        inst = None
        if installed:
            if installation_id is None:
                installation_id = next((i.id for i in self.installations.values()
                                        if i.account.login == owner), None) or next_id("installation")
            inst = self.installations.get(installation_id) or self.add_installation(installation_id, owner)
            inst.repos.add(full_name)
        repo = Repo(self.user(owner), name, default_branch, private, inst.id if inst else None,
                    dict(collaborators or {}))
        for ref, tree in {default_branch: files or {}, **(ref_files or {})}.items():
            sha = fake_sha(f"{full_name}@{ref}")
            repo.branches[ref], repo.trees[sha] = sha, dict(tree)
        self.repos[full_name] = repo
        return repo

    def suspend_installation(self, installation_id: int, by: str = "preview-org") -> None:
        """Suspend the App's installation, as its owner or the account's owner can: it stays in `GET
        /app/installations` (with `suspended_at`, `suspended_by`), and the App may not use it any more:
        token requests and requests with its existing tokens answer 403."""
        inst = self.installations[installation_id]
        inst.suspended_at, inst.suspended_by = time.time(), self.user(by)

    def unsuspend_installation(self, installation_id: int) -> None:
        inst = self.installations[installation_id]
        inst.suspended_at, inst.suspended_by = None, None

    def uninstall_repo(self, full_name: str) -> None:
        """Remove the repository from its App installation (as a "selected repositories" change does):
        tokens lose it, and it disappears from `GET /installation/repositories`."""
        repo = self.repos[full_name]
        if repo.installation_id is not None:
            self.installations[repo.installation_id].repos.discard(full_name)
        for token in self.tokens.values():
            token.repos.discard(full_name)
        repo.installation_id = None

    def rename_repo(self, old: str, new: str) -> Repo:
        """Rename or transfer a repository, as GitHub does: same `id`, new `full_name` everywhere (API
        answers, webhook payloads, installation tokens). A transfer to another owner moves it to that
        owner's installation of the App (created with the same permissions when missing)."""
        repo = self.repos.pop(old)
        owner, name = new.split("/")
        old_inst = self.installations.get(repo.installation_id) if repo.installation_id is not None else None
        repo.owner, repo.name = self.user(owner), name
        new_inst = old_inst
        if old_inst is not None and old_inst.account.login != owner:
            new_inst = next((i for i in self.installations.values() if i.account.login == owner), None) or \
                self.add_installation(next_id("installation"), owner, dict(old_inst.permissions))
        for token in self.tokens.values():
            if old in token.repos:
                token.repos.discard(old)
                if new_inst is old_inst:
                    token.repos.add(new)
            elif new_inst is not None and new_inst is not old_inst and token.installation_id == new_inst.id:
                token.repos.add(new)
        if old_inst is not None and new_inst is not None:
            old_inst.repos.discard(old)
            new_inst.repos.add(new)
            repo.installation_id = new_inst.id
        self.repos[new] = repo
        return repo

    def add_pull(self, full_name: str, number: int, *, head_sha: str | None = None, user: str = "alice",
                 draft: bool = False, labels: list[str] | None = None, fork: bool = False,
                 changed_files: list[str] | None = None, files: dict[str, str | None] | None = None,
                 head_ref: str | None = None, title: str | None = None, behind_base: bool = False,
                 base: str | None = None) -> Pull:
        """An open PR into `base` (default: the default branch). Its head tree is the base branch's with
        `files` applied (None deletes)."""
        repo = self.repos[full_name]
        author = self.user(user)
        head_repo = repo
        if fork:
            fork_name = f"{author.login}/{repo.name}"
            head_repo = self.repos.get(fork_name) or self.add_repo(
                fork_name, default_branch=repo.default_branch, installed=False)
            head_repo.fork = True
        head_sha = head_sha or fake_sha(f"{full_name}#{number}")
        base_sha = repo.branches[base or repo.default_branch]
        head_ref = head_ref or f"pr-{number}"
        pull = Pull(number, author, title or f"Change #{number}", head_ref, head_sha, head_repo, base_sha,
                    draft, list(labels or []), list(changed_files or sorted(files or {})), time.time(),
                    behind_base=behind_base, base_ref=base)
        self._commit(repo, pull, head_sha, files, base=repo.trees[base_sha])
        repo.pulls[number] = pull
        return pull

    def push(self, repo: str | Repo, number: int, new_sha: str,
             files: dict[str, str | None] | None = None) -> Pull:
        """A new head commit on the PR (what a `synchronize` event reports)."""
        r = repo if isinstance(repo, Repo) else self.repos[repo]
        pull = r.pulls[number]
        pull.previous_sha = pull.head_sha
        self._commit(r, pull, new_sha, files, base=r.trees[pull.head_sha])
        pull.head_sha = new_sha
        return pull

    def change_base(self, repo: str | Repo, number: int, branch: str) -> dict[str, Any]:
        """Retarget the PR to `branch` (as "Edit" next to its title does): its diff is now against that
        branch. Returns the `changes` of the `pull_request` `edited` event GitHub then sends."""
        r = repo if isinstance(repo, Repo) else self.repos[repo]
        pull = r.pulls[number]
        old_ref = pull.base_ref or r.default_branch
        changes = {"base": {"ref": {"from": old_ref}, "sha": {"from": r.branches[old_ref]}}}
        pull.base_ref, pull.base_sha = branch, r.branches[branch]
        return changes

    def _commit(self, repo: Repo, pull: Pull, sha: str, files: dict[str, str | None] | None,
                base: dict[str, str] | None = None) -> None:
        tree = dict(base if base is not None else repo.trees[repo.branches[repo.default_branch]])
        for path, text in (files or {}).items():
            if text is None:
                tree.pop(path, None)
            else:
                tree[path] = text
        # The commit is reachable from the base repo too (refs/pull/N/head), as on GitHub.
        for r in {repo.full_name: repo, pull.head_repo.full_name: pull.head_repo}.values():
            r.trees[sha] = tree
        pull.head_repo.branches[pull.head_ref] = sha

    def set_commit_status(self, repo: str, sha: str, context: str, state: str, *, target_url: str | None = None,
                          description: str | None = None, user: str = "ci-bot") -> CommitStatus:
        """A commit status (as a CI service would post it); deployments with `required_contexts` check
        these. Send `status_event(fake, repo, status)` to tell the bot."""
        if state not in ("error", "failure", "pending", "success"):
            raise ValueError(f"state must be error, failure, pending or success, got {state!r}")
        r = self.repos[repo]
        r.commit_statuses.setdefault(sha, {})[context] = state
        now = time.time()
        record = CommitStatus(next_id("commit_status"), sha, context, state, description, target_url,
                              self.user(user), now, now)
        r.status_records.append(record)
        return record

    # -- checks of other Apps (GitHub Actions by default) ------------------------------------------------
    def other_app(self, slug: str = "github-actions") -> OtherApp:
        """Another App that reports checks; `github-actions` is GitHub's own (id 15368)."""
        if slug not in self._other_apps:
            app_id = 15368 if slug == "github-actions" else next_id("app")
            name = "GitHub Actions" if slug == "github-actions" else slug
            self._other_apps[slug] = OtherApp(app_id, slug, name, self.user("github", type="Organization"))
        return self._other_apps[slug]

    def add_check_run(self, repo: str, sha: str, name: str, *, status: str = "queued",
                      conclusion: str | None = None, app: str = "github-actions",
                      details_url: str | None = None) -> CheckRun:
        """A check run on `sha` by another App, in that App's suite for the commit (made on first use)."""
        r = self.repos[repo]
        if sha not in r.trees:
            raise ValueError(f"{sha} is not a commit of {repo}")
        other = self.other_app(app)
        now = time.time()
        suite = next((x for x in r.check_suites if x.head_sha == sha and x.app == other), None)
        if suite is None:
            # The branch of this repository the commit was pushed to; null for a fork's commit (GitHub: "When
            # the check suite's `head_branch` is in a forked repository it will be `null`").
            branch = next((p.head_ref for p in r.pulls.values() if p.head_sha == sha and p.head_repo is r), None) or \
                next((name for name, tip in r.branches.items() if tip == sha), None)
            suite = CheckSuite(next_id("check_suite"), sha, branch, other, now, now)
            r.check_suites.append(suite)
        run = CheckRun(next_id("check_run"), name, sha, suite, "queued", None, now, None, details_url)
        r.check_runs.append(run)
        self.update_check_run(repo, run, status=status, conclusion=conclusion)
        return run

    def update_check_run(self, repo: str, run: CheckRun, *, status: str, conclusion: str | None = None) -> CheckRun:
        """Move a check run on (`completed` needs a conclusion, as on GitHub)."""
        if status == "completed" and conclusion not in SUITE_CONCLUSION_ORDER:
            raise ValueError(f"a completed check run needs a conclusion, got {conclusion!r}")
        if status != "completed" and conclusion is not None:
            raise ValueError("only a completed check run has a conclusion")
        now = time.time()
        run.status, run.conclusion = status, conclusion
        run.completed_at = now if status == "completed" else None
        run.suite.updated_at = now
        return run

    def suite_state(self, r: Repo, suite: CheckSuite) -> tuple[str, str | None]:
        runs = [x for x in r.check_runs if x.suite is suite]
        if not runs or any(x.status != "completed" for x in runs):
            return ("in_progress" if any(x.status == "in_progress" for x in runs) else "queued"), None
        return "completed", min((x.conclusion or "success" for x in runs), key=SUITE_CONCLUSION_ORDER.index)

    def combined_state(self, r: Repo, sha: str) -> str:
        latest = self.latest_statuses(r, sha)
        if any(x.state in ("error", "failure") for x in latest):
            return "failure"
        return "success" if latest and all(x.state == "success" for x in latest) else "pending"

    def latest_statuses(self, r: Repo, sha: str) -> list[CommitStatus]:
        """The newest status of each context, newest first."""
        seen: dict[str, CommitStatus] = {}
        for x in reversed(r.status_records):
            if x.sha == sha and x.context not in seen:
                seen[x.context] = x
        return list(seen.values())

    def add_comment(self, repo: str, number: int, body: str, user: str,
                    app: OtherApp | None = None) -> dict[str, Any]:
        """A comment written by a person (e.g. a `/preview` command), or by another App (`app`: its bot
        account `<slug>[bot]` writes it, and GitHub names the App in `performed_via_github_app`), as the API
        would show it."""
        r = self.repos[repo]
        now = time.time()
        author = self.user(f"{app.slug}[bot]", type="Bot") if app is not None else self.user(user)
        c = Comment(next_id("comment"), number, body, author, now, now, other_app=app)
        r.comments[c.id] = c
        return self.comment_json(r, c)

    def installation_token(self, installation_id: int) -> str:
        """Mint a token without the HTTP round trip (for tests that only need to call the API)."""
        inst = self.installations[installation_id]
        token = "ghs_" + secrets.token_urlsafe(27).replace("-", "A").replace("_", "b")[:36]
        self.tokens[token] = Token(inst.id, time.time() + self.token_lifetime, dict(inst.permissions),
                                   set(inst.repos))
        return token

    def expire_tokens(self) -> None:
        for t in self.tokens.values():
            t.expires_at = min(t.expires_at, time.time() - 1)

    def make_jwt(self, *, iat: float | None = None, exp: float | None = None, iss: int | str | None = None,
                 key_pem: str | None = None) -> str:
        """An App JWT as the bot should make it (backdated 60 s, 9 min life); override to break it."""
        now = time.time()
        claims = {"iat": int(now - 60 if iat is None else iat), "exp": int(now + 540 if exp is None else exp),
                  "iss": str(self.app_id) if iss is None else iss}
        # Signed as raw JWS: PyJWT's encode() refuses an int `iss`, which GitHub (and some clients) use.
        return jwt.PyJWS().encode(json.dumps(claims).encode(), key_pem or self.private_key_pem,
                                  algorithm="RS256", headers={"typ": "JWT"})

    # -- fault injection and rate limits -------------------------------------------------------------
    def inject(self, method: str, path_regex: str, status: int | None = 502, times: int = 1,
               headers: dict[str, str] | None = None, body: Any = None, delay: float = 0.0) -> None:
        """The next `times` requests matching (method or "*", regex searched in the path) wait `delay`
        seconds and then get `status` (None: after the delay they are served normally). `body`: JSON,
        or bytes sent as they are (an HTML page from a proxy or GitHub's own outage page; give its
        Content-Type in `headers`)."""
        self._faults.append(Fault(method.upper(), re.compile(path_regex), status, times,
                                  dict(headers or {}), body, delay))

    def clear_faults(self) -> None:
        """Forget the faults not yet taken. A request already held by one still waits out its delay."""
        self._faults.clear()

    def inject_secondary_limit(self, method: str, path_regex: str, times: int = 1, retry_after: int = 1) -> None:
        self.inject(method, path_regex, 403, times, {"Retry-After": str(retry_after)},
                    {"message": SECONDARY_LIMIT_MESSAGE.format(request_id="0000:0000"),
                     "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api"
                     "#about-secondary-rate-limits"})

    def secondary_limit(self, content_per_minute: int | None = 80) -> None:
        """Answer 403 to content-creating requests (POST/PATCH/PUT/DELETE) beyond this many in any 60 s."""
        self._content_limit = content_per_minute

    def max_content_requests_in_window(self, seconds: float = 60) -> int:
        """The most content-creating requests the client sent within any `seconds` window."""
        times, best, lo = self._content_times, 0, 0
        for hi, t in enumerate(times):
            while t - times[lo] >= seconds:
                lo += 1
            best = max(best, hi - lo + 1)
        return best

    # -- inspection ----------------------------------------------------------------------------------
    def comments(self, repo: str, number: int) -> list[dict[str, Any]]:
        r = self.repos[repo]
        return [self.comment_json(r, c) for c in sorted(r.comments.values(), key=lambda c: c.id)
                if c.number == number]

    def deployments(self, repo: str, *, deleted: bool = False) -> list[dict[str, Any]]:
        """The repository's deployments; with `deleted`, also those deleted through the API (flagged)."""
        r = self.repos[repo]
        found = [self.deployment_json(r, d) | {"state": d.state} for d in r.deployments]
        if deleted:
            found += [self.deployment_json(r, d) | {"state": d.state, "deleted": True} for d in r.deleted_deployments]
        return sorted(found, key=lambda d: int(d["id"]))

    def environments(self, repo: str) -> set[str]:
        return set(self.repos[repo].environments)

    def statuses(self, repo: str, deployment_id: int) -> list[dict[str, Any]]:
        """Oldest first (the API lists newest first); deleted deployments' statuses too."""
        r = self.repos[repo]
        d = next(d for d in [*r.deployments, *r.deleted_deployments] if d.id == deployment_id)
        return [self.status_json(r, d, s) | {"created": s.created_at, "pull_heads": dict(s.pull_heads)}
                for s in d.statuses]

    def reactions(self, repo: str, *, comment_id: int | None = None,
                  number: int | None = None) -> list[dict[str, Any]]:
        return [self.reaction_json(x) for x in self.repos[repo].reactions
                if (comment_id is None or x.comment_id == comment_id) and (number is None or x.number == number)]

    def labels(self, repo: str, number: int) -> list[str]:
        return list(self.repos[repo].pulls[number].labels)

    # -- JSON shapes (GitHub's examples, filled in) --------------------------------------------------
    def _shape(self, example: str, repo: Repo | None = None, **fields: Any) -> dict[str, Any]:
        pairs = [("https://api.github.com", self.url)]
        if repo:
            pairs += [(f"{old}", repo.full_name) for old in ("octocat/Hello-World", "octocat/example",
                                                             "octokit/octokit.rb")]
        shaped: dict[str, Any] = _replace_strings(self.spec.example(example), pairs)
        shaped.update(fields)
        return shaped

    def user_json(self, u: User) -> dict[str, Any]:
        api = f"{self.url}/users/{u.login}"
        kind = {"User": "MDQ6VXNlcg", "Bot": "MDM6Qm90", "Organization": "MDEyOk9yZ2FuaXphdGlvbg"}[u.type]
        return {
            "login": u.login, "id": u.id, "node_id": f"{kind}{u.id}",
            "avatar_url": f"https://avatars.githubusercontent.com/u/{u.id}?v=4", "gravatar_id": "",
            "url": api, "html_url": f"{HTML}/{u.login}", "followers_url": f"{api}/followers",
            "following_url": f"{api}/following{{/other_user}}", "gists_url": f"{api}/gists{{/gist_id}}",
            "starred_url": f"{api}/starred{{/owner}}{{/repo}}", "subscriptions_url": f"{api}/subscriptions",
            "organizations_url": f"{api}/orgs", "repos_url": f"{api}/repos",
            "events_url": f"{api}/events{{/privacy}}", "received_events_url": f"{api}/received_events",
            "type": u.type, "user_view_type": "public", "site_admin": False,
        }

    def app_json(self) -> dict[str, Any]:
        return self._shape(
            "integration", id=self.app_id, slug=self.app_slug, client_id=f"Iv1.{self.app_id:016x}",
            node_id=f"MDM6QXBw{self.app_id}", name=self.app_slug, owner=self.user_json(self.user("preview-org")),
            html_url=f"{HTML}/apps/{self.app_slug}", permissions=dict(DEFAULT_PERMISSIONS),
            events=["issue_comment", "pull_request"],
        )

    def installation_json(self, inst: Installation) -> dict[str, Any]:
        return self._shape(
            "installation", id=inst.id, account=self.user_json(inst.account), repository_selection="selected",
            access_tokens_url=f"{self.url}/app/installations/{inst.id}/access_tokens",
            repositories_url=f"{self.url}/installation/repositories",
            html_url=f"{HTML}/settings/installations/{inst.id}", app_id=self.app_id,
            client_id=f"Iv1.{self.app_id:016x}", target_id=inst.account.id, target_type=inst.account.type,
            permissions=dict(inst.permissions), events=["issue_comment", "pull_request"], app_slug=self.app_slug,
            suspended_at=None if inst.suspended_at is None else iso(inst.suspended_at),
            suspended_by=None if inst.suspended_by is None else self.user_json(inst.suspended_by),
        )

    def repo_json(self, r: Repo) -> dict[str, Any]:
        shaped = self._shape(
            "full-repository", r, id=r.id, node_id=f"R_kgDO{r.id}", name=r.name, full_name=r.full_name,
            owner=self.user_json(r.owner), private=r.private, visibility="private" if r.private else "public",
            fork=r.fork, default_branch=r.default_branch, html_url=f"{HTML}/{r.full_name}",
            description=None, homepage=None, is_template=False, has_discussions=False,
            open_issues_count=sum(p.state == "open" for p in r.pulls.values()), template_repository=None,
            permissions={"admin": False, "maintain": False, "push": False, "triage": False, "pull": True},
        )
        for key in ("organization", "parent", "source", "temp_clone_token"):  # not ours to invent
            shaped.pop(key, None)
        return shaped

    def label_json(self, r: Repo, name: str) -> dict[str, Any]:
        lid = r.label_ids.setdefault(name, next_id("label"))
        return {"id": lid, "node_id": f"LA_kwDO{lid}", "url": f"{self.url}/repos/{r.full_name}/labels/{name}",
                "name": name, "description": f"{name} label", "color": "ededed", "default": False}

    def _association(self, r: Repo, u: User) -> str:
        if u.login == r.owner.login:
            return "OWNER"
        return "COLLABORATOR" if u.login in r.collaborators else "NONE"

    def pull_json(self, r: Repo, p: Pull) -> dict[str, Any]:
        n, api = p.number, f"{self.url}/repos/{r.full_name}"
        base_branch_sha = r.branches[r.default_branch]

        def side(repo: Repo, ref: str, sha: str) -> dict[str, Any]:
            return {"label": f"{repo.owner.login}:{ref}", "ref": ref, "sha": sha,
                    "user": self.user_json(repo.owner), "repo": self.repo_json(repo)}

        example_sha = "6dcb09b5b57875f334f61aebed695e2e4193db5e"
        shaped: dict[str, Any] = _replace_strings(
            self._shape("pull-request", r), [("/1347", f"/{n}"), (example_sha, p.head_sha)])
        shaped.update(
            id=p.id, node_id=f"PR_kwDO{p.id}", number=n, state=p.state, title=p.title, user=self.user_json(p.user),
            body=None, labels=[self.label_json(r, x) for x in p.labels], draft=p.draft, merged=p.merged,
            locked=False, active_lock_reason=None, milestone=None, assignee=None, assignees=[],
            requested_reviewers=[], requested_teams=[], auto_merge=None, merged_by=None,
            created_at=iso(p.created_at), updated_at=iso(p.created_at),
            closed_at=iso(p.closed_at) if p.closed_at else None,
            merged_at=iso(p.closed_at) if p.merged and p.closed_at else None,
            merge_commit_sha=fake_sha(f"merge {p.head_sha}") if p.merged else None,
            mergeable=None if p.state == "closed" else True, mergeable_state="clean",
            html_url=f"{HTML}/{r.full_name}/pull/{n}", url=f"{api}/pulls/{n}",
            statuses_url=f"{api}/statuses/{p.head_sha}", author_association=self._association(r, p.user),
            head=side(p.head_repo, p.head_ref, p.head_sha),
            base=side(r, p.base_ref, r.branches[p.base_ref]) if p.base_ref else side(r, r.default_branch,
                                                                                     base_branch_sha),
            changed_files=len(self.pull_changed_paths(r, p)),
            comments=sum(c.number == n for c in r.comments.values()),
        )
        return shaped

    @staticmethod
    def pull_changed_paths(r: Repo, p: Pull) -> list[str]:
        """Every path the PR changes: its whole diff against its base (plus any a test named), sorted."""
        base, head = r.trees[p.base_sha], r.trees[p.head_sha]
        diff = {path for path in base.keys() | head.keys() if base.get(path) != head.get(path)}
        return sorted(diff | set(p.changed_files))

    def pull_simple_json(self, r: Repo, p: Pull) -> dict[str, Any]:
        # pulls/list returns "pull-request-simple": the full shape minus the counters and merge state.
        full = self.pull_json(r, p)
        keep = set(self.spec.example("pull-request-simple-items")[0]) | {"draft"}
        return {k: v for k, v in full.items() if k in keep}

    def issue_json(self, r: Repo, p: Pull) -> dict[str, Any]:
        pr = self.pull_json(r, p)
        shaped = self._shape("issue", r)
        shaped.update({k: pr[k] for k in ("number", "state", "title", "body", "user", "labels",
                                          "assignee", "assignees", "milestone", "locked", "active_lock_reason",
                                          "comments", "closed_at", "created_at", "updated_at",
                                          "author_association", "draft")})
        api = f"{self.url}/repos/{r.full_name}/issues/{p.number}"
        shaped.update(
            id=p.issue_id, node_id=f"I_kwDO{p.issue_id}", url=api, comments_url=f"{api}/comments",
            repository_url=f"{self.url}/repos/{r.full_name}",
            labels_url=f"{api}/labels{{/name}}", events_url=f"{api}/events",
            html_url=f"{HTML}/{r.full_name}/pull/{p.number}", closed_by=None,
            state_reason="completed" if p.state == "closed" else None, pinned_comment=None,
            pull_request={"url": pr["url"], "html_url": pr["html_url"], "diff_url": pr["diff_url"],
                          "patch_url": pr["patch_url"], "merged_at": pr["merged_at"]},
        )
        return shaped

    def comment_json(self, r: Repo, c: Comment) -> dict[str, Any]:
        shaped = self._shape(
            "issue-comment", r, id=c.id, node_id=f"IC_kwDO{c.id}",
            url=f"{self.url}/repos/{r.full_name}/issues/comments/{c.id}",
            html_url=f"{HTML}/{r.full_name}/pull/{c.number}#issuecomment-{c.id}", body=c.body,
            user=self.user_json(c.user), created_at=iso(c.created_at), updated_at=iso(c.updated_at),
            issue_url=f"{self.url}/repos/{r.full_name}/issues/{c.number}",
            author_association="NONE" if c.via_app or c.other_app else self._association(r, c.user),
        )
        shaped["performed_via_github_app"] = self.app_json() if c.via_app else \
            self.other_app_json(c.other_app) if c.other_app is not None else None
        for key in ("pin", "minimized", "reactions"):
            shaped.pop(key, None)
        return shaped

    def reaction_json(self, x: Reaction) -> dict[str, Any]:
        return self._shape("reaction", id=x.id, node_id=f"REA_lADO{x.id}", user=self.user_json(x.user),
                           content=x.content, created_at=iso(x.created_at))

    def deployment_json(self, r: Repo, d: Deployment) -> dict[str, Any]:
        api = f"{self.url}/repos/{r.full_name}/deployments/{d.id}"
        return self._shape(
            "deployment", r, url=api, id=d.id, node_id=f"DE_kwDO{d.id}", sha=d.sha, ref=d.ref, task=d.task,
            payload=d.payload, original_environment=d.original_environment, environment=d.environment,
            description=d.description, creator=self.user_json(d.creator), created_at=iso(d.created_at),
            updated_at=iso(d.statuses[-1].created_at if d.statuses else d.created_at),
            statuses_url=f"{api}/statuses", repository_url=f"{self.url}/repos/{r.full_name}",
            transient_environment=d.transient, production_environment=d.production,
            performed_via_github_app=self.app_json() if d.creator is self.bot else None,
        )

    def status_json(self, r: Repo, d: Deployment, s: DeploymentStatus) -> dict[str, Any]:
        api = f"{self.url}/repos/{r.full_name}/deployments/{d.id}"
        return self._shape(
            "deployment-status", r, url=f"{api}/statuses/{s.id}", id=s.id, node_id=f"DES_kwDO{s.id}",
            state=s.state, creator=self.user_json(s.creator), description=s.description,
            environment=s.environment, target_url=s.target_url, log_url=s.log_url,
            environment_url=s.environment_url, created_at=iso(s.created_at), updated_at=iso(s.created_at),
            deployment_url=api, repository_url=f"{self.url}/repos/{r.full_name}",
            performed_via_github_app=self.app_json() if s.creator is self.bot else None,
        )

    def other_app_json(self, a: OtherApp) -> dict[str, Any]:
        return self._shape(
            "integration", id=a.id, slug=a.slug, client_id=f"Iv1.{a.id:016x}", node_id=f"MDM6QXBw{a.id}",
            name=a.name, owner=self.user_json(a.owner), html_url=f"{HTML}/apps/{a.slug}",
            permissions={"checks": "write", "metadata": "read"}, events=[],
        )

    def _pulls_of(self, r: Repo, sha: str) -> list[dict[str, Any]]:
        """`pull_requests` of checks: open PRs from this repository whose head is `sha` (never forks)."""
        def ref(branch: str, commit: str) -> dict[str, Any]:
            return {"ref": branch, "sha": commit,
                    "repo": {"id": r.id, "url": f"{self.url}/repos/{r.full_name}", "name": r.name}}
        return [{"url": f"{self.url}/repos/{r.full_name}/pulls/{p.number}", "id": p.id, "number": p.number,
                 "head": ref(p.head_ref, p.head_sha), "base": ref(p.base_ref or r.default_branch, p.base_sha)}
                for p in r.pulls.values() if p.state == "open" and p.head_sha == sha and p.head_repo is r]

    def check_suite_json(self, r: Repo, x: CheckSuite) -> dict[str, Any]:
        status, conclusion = self.suite_state(r, x)
        runs = [c for c in r.check_runs if c.suite is x]
        shaped = self._shape(
            "check-suite", r, id=x.id, node_id=f"CS_kwDO{x.id}", head_branch=x.head_branch, head_sha=x.head_sha,
            status=status, conclusion=conclusion, url=f"{self.url}/repos/{r.full_name}/check-suites/{x.id}",
            before=None, after=x.head_sha, pull_requests=self._pulls_of(r, x.head_sha),
            app=self.other_app_json(x.app), created_at=iso(x.created_at), updated_at=iso(x.updated_at),
            repository=self.repo_json(r), latest_check_runs_count=len(runs),
            check_runs_url=f"{self.url}/repos/{r.full_name}/check-suites/{x.id}/check-runs",
            rerequestable=True, runs_rerequestable=True,
        )
        return shaped

    def check_run_json(self, r: Repo, x: CheckRun) -> dict[str, Any]:
        shaped = self._shape(
            "check-run", r, id=x.id, node_id=f"CR_kwDO{x.id}", head_sha=x.head_sha, name=x.name,
            external_id=x.external_id, url=f"{self.url}/repos/{r.full_name}/check-runs/{x.id}",
            html_url=f"{HTML}/{r.full_name}/runs/{x.id}", details_url=x.details_url or
            f"{HTML}/{r.full_name}/actions/runs/{x.suite.id}/job/{x.id}", status=x.status,
            conclusion=x.conclusion, started_at=iso(x.started_at),
            completed_at=iso(x.completed_at) if x.completed_at is not None else None,
            check_suite={"id": x.suite.id}, app=self.other_app_json(x.suite.app),
            pull_requests=self._pulls_of(r, x.head_sha),
            output={"title": None, "summary": None, "text": None, "annotations_count": 0,
                    "annotations_url": f"{self.url}/repos/{r.full_name}/check-runs/{x.id}/annotations"},
        )
        shaped.pop("deployment", None)
        return shaped

    def combined_repo_json(self, r: Repo) -> dict[str, Any]:
        """A minimal-repository, as the combined status embeds it."""
        minimal: dict[str, Any] = self._shape("combined-commit-status", r)["repository"]
        full = self.repo_json(r)
        return minimal | {k: full[k] for k in ("id", "node_id", "name", "full_name", "owner", "private",
                                               "html_url", "fork", "url") if k in full}

    def commit_status_json(self, r: Repo, x: CommitStatus, *, creator: bool = True) -> dict[str, Any]:
        shaped = self._shape(
            "status", r, url=f"{self.url}/repos/{r.full_name}/statuses/{x.sha}", id=x.id,
            node_id=f"SC_kwDO{x.id}", state=x.state, description=x.description, target_url=x.target_url,
            context=x.context, created_at=iso(x.created_at), updated_at=iso(x.updated_at),
            avatar_url=f"https://avatars.githubusercontent.com/u/{x.creator.id}?v=4",
            creator=self.user_json(x.creator),
        )
        if not creator:  # the combined status lists statuses without their creator
            shaped.pop("creator", None)
        return shaped

    # -- the request pipeline ------------------------------------------------------------------------
    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        self._in_flight += 1
        self.max_concurrency = max(self.max_concurrency, self._in_flight)
        request_id = ":".join(uuid.uuid4().hex[:n].upper() for n in (4, 5, 7, 7, 8))  # GitHub's shape
        raw = await request.read()
        method, path = request.method.upper(), request.path
        route_op: Operation | None = None
        identity = "none"
        try:
            auth_kind, auth_value = self._auth_header(request)
            identity = self._identity(auth_kind, auth_value)
            self._record(request, raw, identity)
            if method in ("POST", "PATCH", "PUT", "DELETE") and not path.startswith("/app/"):
                self._content_times.append(time.monotonic())
            matched = self.spec.match(method, path)
            if matched and matched[0].operation_id not in HANDLERS:
                self.unimplemented.append((method, matched[0].template))
                matched = None
            if matched:
                route_op = self.spec.operations[matched[0].operation_id]
            if (fault := self._take_fault(method, path)) is not None:
                await asyncio.sleep(fault.delay)
                if fault.status is not None:
                    body = fault.body if fault.body is not None else {
                        "message": HTTPStatus(fault.status).phrase, "documentation_url": DOCS}
                    reply = Reply(fault.status, body, dict(fault.headers))
                    return self._finish(reply, route_op, method, path, request_id, identity, check=False)
            if route_op is None:
                raise GitHubError(404, "Not Found")
            ctx = self._authorize(request, route_op, matched[1] if matched else {}, auth_kind, auth_value)
            if method in ("POST", "PATCH", "PUT", "DELETE") and route_op.operation_id not in JWT_OPS:
                self._secondary_limit(request_id)
            ctx.query = self.spec.check_query(route_op, request.query.items())
            ctx.body = self.spec.check_body(route_op, raw)
            reply = await HANDLERS[route_op.operation_id](self, ctx)
        except GitHubError as e:
            doc = route_op.doc_url if route_op and e.status != 404 else DOCS
            reply = Reply(e.status, {"message": e.message, "documentation_url": doc, "status": str(e.status),
                                     **e.extra}, e.headers)
        except RequestInvalid as e:
            doc = route_op.doc_url if route_op else DOCS
            reply = Reply(e.status, {"message": e.message, "documentation_url": doc, "status": str(e.status)})
        except Exception as e:  # a bug in the fake: answer like GitHub would, and make the test fail
            self.response_errors.append(f"{method} {path}: fake crashed: {e!r}")
            reply = Reply(500, {"message": "Server Error", "documentation_url": DOCS, "status": "500"})
        finally:
            self._in_flight -= 1
        return self._finish(reply, route_op, method, path, request_id, identity, check=True)

    def _finish(self, reply: Reply, route_op: Operation | None, method: str, path: str, request_id: str,
                identity: str, *, check: bool) -> web.Response:
        self.calls.append(Call(method, route_op.route.template if route_op else None,
                               route_op.operation_id if route_op else None, reply.status))
        if check and self.check_responses and route_op and reply.body is not None:
            self.response_errors += self.spec.response_errors(route_op, reply.status, reply.body)
        used = self._used[identity] = self._used.get(identity, 0) + 1
        limit = 60 if identity == "none" else 5000
        headers = CIMultiDict({
            "x-github-request-id": request_id, "x-github-api-version-selected": "2022-11-28",
            "x-ratelimit-limit": str(limit), "x-ratelimit-remaining": str(max(limit - used, 0)),
            "x-ratelimit-reset": str(int(time.time()) // 3600 * 3600 + 3600), "x-ratelimit-used": str(used),
            "x-ratelimit-resource": "core", "x-github-media-type": "github.v3; format=json",
        })
        if route_op and route_op.operation_id in REQUIRED_PERMISSIONS:
            headers["x-accepted-github-permissions"] = "; ".join(
                f"{k}={v}" for k, v in REQUIRED_PERMISSIONS[route_op.operation_id])
        headers.update(reply.headers)
        if reply.status == 204 or reply.body is None:
            return web.Response(status=reply.status, headers=headers)
        if isinstance(reply.body, bytes):  # an injected page that is not JSON
            return web.Response(status=reply.status, headers=headers, body=reply.body)
        return web.Response(status=reply.status, headers=headers, text=json.dumps(reply.body),
                            content_type="application/json", charset="utf-8")

    def _take_fault(self, method: str, path: str) -> Fault | None:
        for fault in self._faults:
            if fault.times > 0 and fault.method in ("*", method) and fault.path.search(path):
                fault.times -= 1
                return fault
        return None

    def _secondary_limit(self, request_id: str) -> None:
        if self._content_limit is None:
            return
        now = time.monotonic()
        while self._accepted_content and now - self._accepted_content[0] >= 60:
            self._accepted_content.popleft()
        if len(self._accepted_content) >= self._content_limit:
            wait = int(60 - (now - self._accepted_content[0])) + 1
            raise GitHubError(403, SECONDARY_LIMIT_MESSAGE.format(request_id=request_id),
                              headers={"Retry-After": str(wait), "x-ratelimit-remaining": "4999"})
        self._accepted_content.append(now)

    @staticmethod
    def _auth_header(request: web.Request) -> tuple[str, str]:
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() not in ("token", "bearer") or not value.strip():
            return ("none" if not header else "invalid"), ""
        return scheme.lower(), value.strip()

    def _identity(self, kind: str, value: str) -> str:
        if kind in ("none", "invalid"):
            return kind
        if value.startswith("ghs_"):
            token = self.tokens.get(value)
            return f"installation:{token.installation_id}" if token else "invalid"
        return "jwt"

    def _record(self, request: web.Request, raw: bytes, identity: str) -> None:
        headers = {k: v for k, v in request.headers.items() if k.lower() != "authorization"}
        if "Authorization" in request.headers:  # never keep the credential itself
            headers["Authorization"] = request.headers["Authorization"].split(" ")[0] + " [REDACTED]"
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        self.requests.append(SeenRequest(request.method, request.path, request.query_string, headers, body,
                                         identity))

    def _check_jwt(self, value: str) -> None:
        """GitHub's App JWT rules, with its messages (all 401)."""
        undecodable = GitHubError(401, "A JSON web token could not be decoded")
        try:
            claims = jwt.decode(value, self._public_key, algorithms=["RS256"],
                                options={"verify_exp": False, "verify_iat": False, "verify_iss": False,
                                         "verify_aud": False})
        except jwt.PyJWTError:
            raise undecodable
        if str(claims.get("iss")) != str(self.app_id):  # GitHub accepts the App id as int or str
            raise undecodable
        now, iat, exp = time.time(), claims.get("iat"), claims.get("exp")
        if not isinstance(iat, int | float) or iat > now + 60:  # 60 s of clock drift allowed
            raise GitHubError(401, "'Issued at' claim ('iat') must be an Integer representing the time "
                                   "that the assertion was issued")
        if not isinstance(exp, int | float) or exp <= now:
            raise GitHubError(401, "'Expiration time' claim ('exp') must be a numeric value representing "
                                   "the future time at which the assertion expires")
        if exp - iat > 600:
            raise GitHubError(401, "'Expiration time' claim ('exp') is too far in the future")

    def _authorize(self, request: web.Request, route_op: Operation, params: dict[str, str],
                   kind: str, value: str) -> Ctx:
        ctx = Ctx(request, route_op, params, {}, None, None, None, None)
        if route_op.operation_id in JWT_OPS:
            if kind in ("none", "invalid") or value.startswith("ghs_"):
                raise GitHubError(401, "A JSON web token could not be decoded")
            self._check_jwt(value)
            if "owner" in params:
                ctx.repo = self._find_repo(params)
            return ctx
        token = None
        if kind == "invalid":
            raise GitHubError(401, "Bad credentials")
        if kind != "none":
            if not value.startswith("ghs_"):
                # An App JWT only works on /app endpoints; GitHub refuses it elsewhere.
                self._check_jwt(value)
                raise GitHubError(403, "Resource not accessible by integration")
            token = self.tokens.get(value)
            if token is None or token.expires_at <= time.time():
                raise GitHubError(401, "Bad credentials")
            ctx.installation, ctx.actor = self.installations[token.installation_id], self.bot
            if ctx.installation.suspended_at is not None:
                raise GitHubError(403, SUSPENDED_MESSAGE)
        if route_op.operation_id in INSTALLATION_OPS:
            if token is None:
                raise GitHubError(401, "Requires authentication")
            ctx.token = token
            return ctx
        repo = self._find_repo(params)
        if token is None:
            # Anonymous: public repos are readable (60 requests/hour); everything else needs a login.
            if request.method not in ("GET", "HEAD"):
                raise GitHubError(401, "Requires authentication")
            if repo.private:
                raise GitHubError(404, "Not Found")
        else:
            if repo.full_name not in token.repos:
                raise GitHubError(404, "Not Found")  # GitHub hides repositories you cannot see
            needs = REQUIRED_PERMISSIONS[route_op.operation_id]
            if not any(LEVEL.get(token.permissions.get(k, "none"), 0) >= LEVEL[v] for k, v in needs):
                raise GitHubError(403, "Resource not accessible by integration")
        ctx.repo = repo
        return ctx

    def _find_repo(self, params: dict[str, str]) -> Repo:
        # Owner and repository names are case-insensitive on GitHub.
        wanted = f"{params['owner']}/{params['repo']}".lower()
        repo = next((r for name, r in self.repos.items() if name.lower() == wanted), None)
        if repo is None:
            raise GitHubError(404, "Not Found")
        return repo

    def paginate(self, ctx: Ctx, items: list[Any]) -> Reply:
        """GitHub's page/per_page pagination (max 100 per page) with a Link header."""
        per_page = min(max(int(ctx.query.get("per_page", 30)), 1), 100)
        page = max(int(ctx.query.get("page", 1)), 1)
        last = max((len(items) + per_page - 1) // per_page, 1)
        chunk = items[(page - 1) * per_page: page * per_page]
        base = dict(ctx.request.query)

        def link(n: int, rel: str) -> str:
            return f'<{self.url}{ctx.request.path}?{urlencode(base | {"per_page": per_page, "page": n})}>; rel="{rel}"'

        rels = []
        if page > 1:
            rels += [link(min(page - 1, last), "prev"), link(1, "first")]
        if page < last:
            rels += [link(page + 1, "next"), link(last, "last")]
        return Reply(200, chunk, {"Link": ", ".join(rels)} if rels else {})


from . import handlers as _handlers  # noqa: E402,F401  (registers the operation handlers)
