"""Who a webhook event is about, and what a pull_request event means for its preview (pure)."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

from bot.repo_config import RepoConfig


class EventSubject(NamedTuple):  # a tuple: built for every delivery on the intake path
    """The repository and pull request a webhook payload is about (GitHub webhook docs: every
    repository event has `repository`; PR events `pull_request`, comment events `issue`)."""

    repo_id: int | None  # `repository.id`, the identity (None: the payload has none)
    repo: str  # `repository.full_name`, for people and URLs ("" when absent)
    number: int | None  # the PR's (or issue's) number; None for an event about no PR (check_run, status)


def event_subject(data: Mapping[str, Any]) -> EventSubject:
    repository = data.get("repository") or {}
    number = (data.get("pull_request") or data.get("issue") or {}).get("number")
    return EventSubject(repo_id=int(repository["id"]) if repository.get("id") else None,
                        repo=str(repository.get("full_name") or ""),
                        number=int(number) if number is not None else None)


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


def is_fork(pull: Mapping[str, Any]) -> bool:
    """The PR's head is in another repository than its base (a pull request object as GitHub's REST API
    and webhooks give it). A deleted fork has `head.repo` null: it counts as a fork. Compared by id (a
    name can change); by name only for a repository object without one."""
    head_repo = (pull.get("head") or {}).get("repo") or {}
    base_repo = (pull.get("base") or {}).get("repo") or {}
    return not head_repo or head_repo.get("id", head_repo.get("full_name")) != \
        base_repo.get("id", base_repo.get("full_name"))


def label_key(name: str) -> str:
    """A label name as labels are compared: GitHub keeps one label per name whatever its case (creating
    `Preview` next to `preview` is refused as already_exists), so `Preview` is the `preview` label."""
    return name.casefold()


def facts_from_pull(pull: Mapping[str, Any], action: str, changed_label: str | None = None) -> PullRequestFacts:
    return PullRequestFacts(
        action=action,
        draft=bool(pull.get("draft")),
        fork=is_fork(pull),
        labels=frozenset(str(label["name"]) for label in pull.get("labels") or []),
        changed_label=changed_label,
    )


UPDATES = frozenset({"opened", "reopened", "synchronize", "ready_for_review"})
# `edited` with `changes.base` (bot.coalesce.base_changed; intake queues no other edit): the base branch
# changed, so the diff, so which services `paths` select. Decided like a push of the same head, except for
# a fork: no new code came, and its preview (if a writer deployed one) is redeployed by `/preview <sha>`.
BASE_CHANGED = "edited"


def decide(config: RepoConfig, facts: PullRequestFacts) -> Decision:
    """What one `pull_request` action asks for under the repository's config (`trigger`, `label`)."""
    if facts.action == "closed":
        return Decision.TEARDOWN
    if config.trigger == "command":
        return Decision.IGNORE
    if config.trigger == "label":
        label = label_key(config.label)
        changed = label_key(facts.changed_label) if facts.changed_label is not None else None
        if facts.action == "unlabeled" and changed == label:
            return Decision.TEARDOWN
        wants = label in {label_key(name) for name in facts.labels} and (
            facts.action in UPDATES or facts.action == BASE_CHANGED
            or (facts.action == "labeled" and changed == label))
    else:
        wants = facts.action in UPDATES or facts.action == BASE_CHANGED
    if not wants or facts.draft or (facts.fork and facts.action == BASE_CHANGED):
        return Decision.IGNORE
    # Code from a fork runs in the cluster only after a maintainer's `/preview`.
    return Decision.AWAIT_APPROVAL if facts.fork else Decision.DEPLOY


class Pair(NamedTuple):
    """What one `pull_request` event of a merged job stands for (bot.coalesce.pairs_of): its action and
    the PR's state in its own payload (None: not given, the newest payload's applies)."""

    action: str
    label: str | None = None  # the changed label of labeled/unlabeled (`label.name`)
    draft: bool | None = None  # `pull_request.draft`
    closed: bool | None = None  # `pull_request.state` was "closed"
    labels: tuple[str, ...] | None = None  # `pull_request.labels[].name`, sorted


class MergedDecision(NamedTuple):
    """What a merged job does: the decision, the action that asked for it (None with IGNORE), and
    `holds_stop`: the deploy is a base change's, which deploys nothing at a head the PR was stopped at
    (gate.deploy_when_ready `unless_stopped`)."""

    decision: Decision
    action: str | None
    holds_stop: bool = False


def decide_merged(config: RepoConfig, latest: PullRequestFacts, pairs: Sequence[Pair]) -> MergedDecision:
    """The decision for several merged events of one PR, as processing them one by one gives it (see
    bot.coalesce, "Merge rule"): each Pair is judged as its own event would be, against the PR's state
    in its own payload (`latest`, the newest payload's, for what a Pair does not give; one that came
    while the PR was closed asks for nothing unless it is the close, as bot.handlers.pull_request does
    with a closed PR), and the last one that asks for something wins. A base change (BASE_CHANGED) that
    wins deploys regardless of a stop when an earlier event of the job deployed (one by one, that deploy
    lifted the stop); after an earlier teardown it stays stopped, so the teardown is the decision; with
    neither, it holds a stop (`holds_stop`)."""
    base_change = False
    for pair in reversed(pairs):
        if pair.closed and pair.action != "closed":
            continue
        facts = replace(latest, action=pair.action, changed_label=pair.label,
                        draft=latest.draft if pair.draft is None else pair.draft,
                        labels=latest.labels if pair.labels is None else frozenset(pair.labels))
        decision = decide(config, facts)
        if decision is Decision.IGNORE:
            continue
        if decision is Decision.DEPLOY and pair.action == BASE_CHANGED:
            base_change = True  # what came before decides whether a stop holds: look further back
            continue
        if base_change and decision is Decision.DEPLOY:
            return MergedDecision(Decision.DEPLOY, BASE_CHANGED)
        return MergedDecision(decision, pair.action)
    if base_change:
        return MergedDecision(Decision.DEPLOY, BASE_CHANGED, holds_stop=True)
    return MergedDecision(Decision.IGNORE, None)
