"""The fake's world: users, installations, repositories, pull requests, comments, deployments."""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, field
from typing import Any

# Distinct ranges per kind, so an id passed to the wrong endpoint is never accidentally valid.
_ids = {kind: itertools.count(start) for kind, start in {
    "user": 1000, "app": 900_000, "repo": 100_000, "installation": 4_000, "comment": 2_000_000, "reaction": 3_000_000,
    "deployment": 5_000_000, "status": 6_000_000, "label": 7_000_000, "pull": 8_000_000, "issue": 9_000_000,
    "check_run": 10_000_000, "check_suite": 11_000_000, "commit_status": 12_000_000,
}.items()}


def next_id(kind: str) -> int:
    return next(_ids[kind])


def blob_sha(text: str) -> str:
    """Git's blob id, as GitHub reports in `sha` of contents and file entries."""
    data = text.encode()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def fake_sha(seed: str) -> str:
    return hashlib.sha1(seed.encode()).hexdigest()


@dataclass
class User:
    login: str
    id: int = field(default_factory=lambda: next_id("user"))
    type: str = "User"  # or "Bot" / "Organization"


@dataclass
class Installation:
    id: int
    account: User
    permissions: dict[str, str]
    repos: set[str] = field(default_factory=set)  # full names; repository_selection "selected"
    # Suspended (GitHub docs, "Suspending a GitHub App installation"): still listed, with `suspended_at`
    # and `suspended_by`, but the App may not use the API there (its token requests answer 403).
    suspended_at: float | None = None
    suspended_by: User | None = None


@dataclass
class Token:
    installation_id: int
    expires_at: float
    permissions: dict[str, str]
    repos: set[str]


@dataclass
class Comment:
    id: int
    number: int
    body: str
    user: User
    created_at: float
    updated_at: float
    via_app: bool = False  # written by the bot (the App), with an installation token
    other_app: OtherApp | None = None  # written by another App's bot account


@dataclass
class Reaction:
    id: int
    content: str
    user: User
    created_at: float
    comment_id: int | None = None  # on an issue comment, else on the issue `number`
    number: int | None = None


@dataclass
class DeploymentStatus:
    id: int
    state: str
    description: str
    environment: str
    target_url: str
    log_url: str
    environment_url: str
    creator: User
    created_at: float
    # Every PR's head commit when this status was posted (lets a test tell a stale success apart).
    pull_heads: dict[int, str] = field(default_factory=dict)


@dataclass
class Deployment:
    id: int
    sha: str
    ref: str
    task: str
    payload: Any
    environment: str
    original_environment: str
    description: str | None
    transient: bool
    production: bool
    creator: User
    created_at: float
    statuses: list[DeploymentStatus] = field(default_factory=list)

    @property
    def state(self) -> str | None:
        return self.statuses[-1].state if self.statuses else None


@dataclass(frozen=True)
class OtherApp:
    """A GitHub App other than the bot (e.g. GitHub Actions) that reports checks."""

    id: int
    slug: str
    name: str
    owner: User


@dataclass
class CheckSuite:
    """All check runs of one App on one commit (GitHub makes one per App and SHA)."""

    id: int
    head_sha: str
    head_branch: str | None
    app: OtherApp
    created_at: float
    updated_at: float


@dataclass
class CheckRun:
    id: int
    name: str
    head_sha: str
    suite: CheckSuite
    status: str  # queued, in_progress, completed (and waiting/requested/pending for Actions)
    conclusion: str | None
    started_at: float
    completed_at: float | None
    details_url: str | None = None
    external_id: str = ""


@dataclass
class CommitStatus:
    id: int
    sha: str
    context: str
    state: str  # error, failure, pending, success
    description: str | None
    target_url: str | None
    creator: User
    created_at: float
    updated_at: float


@dataclass
class Pull:
    number: int
    user: User
    title: str
    head_ref: str
    head_sha: str
    head_repo: Repo
    base_sha: str
    draft: bool
    labels: list[str]
    changed_files: list[str]
    created_at: float
    id: int = field(default_factory=lambda: next_id("pull"))
    issue_id: int = field(default_factory=lambda: next_id("issue"))  # a PR is also an issue, with its own id
    state: str = "open"
    merged: bool = False
    behind_base: bool = False  # a deployment of the head branch with auto_merge answers 202
    previous_sha: str | None = None
    closed_at: float | None = None
    base_ref: str | None = None  # the base branch; None: the repository's default branch


@dataclass
class Repo:
    owner: User
    name: str
    default_branch: str
    private: bool
    installation_id: int | None
    collaborators: dict[str, str]  # login -> admin/maintain/write/triage/read
    id: int = field(default_factory=lambda: next_id("repo"))
    fork: bool = False
    branches: dict[str, str] = field(default_factory=dict)  # name -> sha
    trees: dict[str, dict[str, str]] = field(default_factory=dict)  # sha -> {path: text}
    pulls: dict[int, Pull] = field(default_factory=dict)
    comments: dict[int, Comment] = field(default_factory=dict)
    reactions: list[Reaction] = field(default_factory=list)
    deployments: list[Deployment] = field(default_factory=list)
    deleted_deployments: list[Deployment] = field(default_factory=list)  # for tests to inspect
    environments: set[str] = field(default_factory=set)
    commit_statuses: dict[str, dict[str, str]] = field(default_factory=dict)  # sha -> {context: state}
    status_records: list[CommitStatus] = field(default_factory=list)  # oldest first
    check_suites: list[CheckSuite] = field(default_factory=list)
    check_runs: list[CheckRun] = field(default_factory=list)
    label_ids: dict[str, int] = field(default_factory=dict)

    @property
    def full_name(self) -> str:
        return f"{self.owner.login}/{self.name}"

    def resolve(self, ref: str) -> str | None:
        """The commit a branch, `refs/heads/..`, `refs/pull/N/head`, SHA or unique SHA prefix names."""
        ref = ref.removeprefix("refs/heads/")
        if ref in self.branches:
            return self.branches[ref]
        if ref.startswith("refs/pull/") and ref.endswith("/head"):
            pull = self.pulls.get(int(ref.split("/")[2])) if ref.split("/")[2].isdigit() else None
            return pull.head_sha if pull else None
        hits = [sha for sha in self.trees if len(ref) >= 7 and sha.startswith(ref.lower())]
        return hits[0] if len(hits) == 1 else None
