"""Which deliveries become work, and how a PR's pending work merges (pure).

The bot is level-triggered: a `pull_request` event means "look at this PR and converge its preview".
One PR therefore needs at most one pending converge job behind the running one; every further
`pull_request` event merges into it (`merge_pull_events`). Commands are different: each `/preview`
comment gets its own reaction or reply, so each stays its own job, in arrival order.

Order rule. A merged converge job moves to the end of the PR's pending work, behind any command that
arrived before its newest event. So `/preview stop` followed by a push deploys the pushed head again
(as processing the two one by one would), and a push followed by `/preview stop` ends stopped: the
last thing that happened wins, never a stale event. A stop is never lost: it is not merged, and a
running deploy stops waiting for its rollout as soon as anything is pending behind it.

Merge rule. A merged event keeps the newest payload (the PR's latest state: labels, draft, open or
closed) and the distinct `(action, changed label)` pairs seen, ordered by their last occurrence. The
handler evaluates each pair against the newest state and acts on the last one that asks for
something (`bot.triggers.decide_merged`): the result is the one that processing every event in order
against the PR's current state would give, since repeating a pair does not change its decision.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from bot.commands import parse_command

# pull_request actions a handler acts on (bot.handlers.pull_request); the others need no work. `edited`
# only when it changed the base branch (`base_changed`): that changes the PR's diff, so what `paths`
# select; a title or body edit changes nothing the bot deploys.
PULL_ACTIONS: Final = frozenset({"opened", "reopened", "synchronize", "ready_for_review", "labeled",
                                 "unlabeled", "closed", "edited"})
BASE_CHANGED: Final = "edited"  # the action of a base branch change (with `changes.base`)
CONVERGE: Final = "converge"
COMMAND: Final = "command"
CHECKS: Final = "checks"  # a check run or commit status changed: its own job (bot.handlers.checks)
# check_run actions a handler acts on: a run appearing (waited for, in progress) or concluding.
CHECK_RUN_ACTIONS: Final = frozenset({"created", "completed"})
# Distinct (action, label) pairs a merged event remembers; beyond this the oldest are forgotten. There
# are 8 actions, so only a PR whose labels change more than ~30 ways while one job runs gets here.
MAX_ACTIONS: Final = 32
MERGED_KEY: Final = "preview_bot_actions"  # where a merged event lists its pairs (not a GitHub key)

Pair = tuple[str, str | None]


def classify(event: str, data: Mapping[str, Any]) -> str | None:
    """The kind of work a delivery needs: CONVERGE (mergeable), COMMAND or CHECKS (its own job), or None
    (no handler would act on it: acknowledged, not queued)."""
    action = data.get("action")
    if event == "pull_request" and action in PULL_ACTIONS and (action != BASE_CHANGED or base_changed(data)):
        return CONVERGE
    if (event == "check_run" and action in CHECK_RUN_ACTIONS) or event == "status":
        return CHECKS
    if event == "issue_comment" and action == "created":
        issue = data.get("issue") or {}
        body = (data.get("comment") or {}).get("body")
        if "pull_request" in issue and isinstance(body, str) and parse_command(body) is not None:
            return COMMAND
    return None


def base_changed(data: Mapping[str, Any]) -> bool:
    """A `pull_request` `edited` payload that changed the PR's base branch: GitHub then sends
    `changes.base` (`{ref: {from}, sha: {from}}`), next to `changes.title`/`changes.body` for other edits
    (GitHub docs, "Webhook events and payloads", pull_request edited)."""
    changes = data.get("changes")
    return isinstance(changes, Mapping) and isinstance(changes.get("base"), Mapping)


def pairs_of(data: Mapping[str, Any]) -> list[Pair]:
    """The (action, changed label) pairs an event stands for: its own, or those merged into it."""
    merged = data.get(MERGED_KEY)
    if merged is not None:
        return [(str(a), None if label is None else str(label)) for a, label in merged]
    return [(str(data.get("action")), (data.get("label") or {}).get("name"))]


def merge_pull_events(older: Mapping[str, Any], newer: Mapping[str, Any]) -> dict[str, Any]:
    """One payload standing for `older` then `newer`: `newer`'s data, both events' pairs (each pair once,
    at its last occurrence, at most MAX_ACTIONS of them)."""
    older_pairs, newer_pairs = pairs_of(older), pairs_of(newer)
    if newer_pairs == older_pairs[-1:]:
        pairs = older_pairs  # a flood repeating the last pair: nothing moves (the common case)
    else:
        latest_first: list[Pair] = []
        for pair in reversed(older_pairs + newer_pairs):
            if pair not in latest_first:
                latest_first.append(pair)
        pairs = list(reversed(latest_first[:MAX_ACTIONS]))
    merged = dict(newer)
    merged[MERGED_KEY] = [list(p) for p in pairs]
    return merged
