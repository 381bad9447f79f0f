"""What a pull_request event means for its preview (pure)."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bot.repo_config import RepoConfig


class Decision(enum.Enum):
    DEPLOY = "deploy"
    TEARDOWN = "teardown"
    IGNORE = "ignore"
    AWAIT_APPROVAL = "await approval"


@dataclass(frozen=True)
class PullRequestFacts:
    action: str
    draft: bool
    fork: bool
    labels: frozenset[str]
    changed_label: str | None = None  # the label of a labeled/unlabeled event


def facts_from_pull(pull: Mapping[str, Any], action: str, changed_label: str | None = None) -> PullRequestFacts:
    head_repo = (pull.get("head") or {}).get("repo") or {}
    base_repo = (pull.get("base") or {}).get("repo") or {}
    return PullRequestFacts(
        action=action,
        draft=bool(pull.get("draft")),
        # A deleted fork has head.repo null: treat it as a fork. Compared by id (a name can change).
        fork=not head_repo or head_repo.get("id", head_repo.get("full_name")) !=
        base_repo.get("id", base_repo.get("full_name")),
        labels=frozenset(str(label["name"]) for label in pull.get("labels") or []),
        changed_label=changed_label,
    )


_UPDATES = frozenset({"opened", "reopened", "synchronize", "ready_for_review"})


def decide(config: RepoConfig, facts: PullRequestFacts) -> Decision:
    if facts.action == "closed":
        return Decision.TEARDOWN
    if config.trigger == "command":
        return Decision.IGNORE
    if config.trigger == "label":
        if facts.action == "unlabeled" and facts.changed_label == config.label:
            return Decision.TEARDOWN
        wants = config.label in facts.labels and (
            facts.action in _UPDATES or (facts.action == "labeled" and facts.changed_label == config.label))
    else:
        wants = facts.action in _UPDATES
    if not wants or facts.draft:
        return Decision.IGNORE
    # Code from a fork runs in the cluster only after a maintainer's `/preview`.
    return Decision.AWAIT_APPROVAL if facts.fork else Decision.DEPLOY
