"""Which deliveries become work, and how a PR's pending work merges (pure).

The bot is level-triggered: a `pull_request` event means "look at this PR and converge its preview".
A run of `pull_request` events with nothing else between them therefore needs one converge job: each
such event merges into the PR's last pending job when that is a converge job (`merge_pull_events`,
bot.queue.WorkQueue.submit). Commands are different: each `/preview` comment gets its own reaction or
reply, so each stays its own job; so does each check_run/status job (bot.handlers.checks).

Order rule. A PR's work runs in arrival order, merged or not: an event merges only into a converge job
that nothing (no command, no check job) follows, else it starts a new converge job behind what came
before it (which later events merge into). So `/preview stop` then a push deploys the pushed head, a push
then `/preview stop` ends stopped, and a push, `/preview stop`, then a label at the same head ends
stopped too (a label asks for no preview; a stopped head stays stopped). One PR thus holds at most one
converge job more than its pending commands and check jobs: a flood of `pull_request` events for it
stays one job. A running deploy stops waiting for its rollout only when the job next in line is a
converge job, into which the running one is then merged (bot.queue.WorkQueue.supersedes_running): the
deploy cut short is done again by it, whatever the newer events ask for (at the head as it is then: the
same end as if the running job had started after those events), or when it is a `/preview stop`
(`takes_over`): a stop must not wait minutes for a rollout. The running job's work (a converge job's
or a `/preview` deploy's) then continues right behind the stop, marked AFTER_STOP_KEY: a stop recorded
at the head holds (the stop did its work), and after a stop that changed nothing (a stranger's) the
deploy is finished, as one by one. A running `/preview` deploy also stops waiting once a push is
queued (a converge job with another head, bot.context.newer_head_queued): a commit that is no longer
the head never reports success after its newer push was delivered; the push's job decides. Any
other command or check job waits for the running job to finish: cutting it short for a `/preview
explain` would leave the PR half-deployed.

Merge rule. A merged event keeps the newest payload and, for each event merged, a Pair: its action, its
changed label and the PR's state in its own payload (labels, draft, open or closed), each distinct Pair
once, ordered by its last occurrence. The handler judges each Pair as its own event would be judged
(`bot.triggers.decide_merged`; an event on a closed PR asks for nothing unless it is the close) and acts
on the last one that asks for something; a base change (`edited`, which deploys only a PR not stopped
at its head) deploys regardless of a stop when an earlier Pair of the job deployed first, and nothing
after an earlier teardown of the job (which then decides). This is what processing the events one by
one gives: every event after the one that decides asks for nothing, and repeating a Pair does not
change its decision. Not the newest state for all: a PR turns draft without an event the bot queues
(`converted_to_draft`), and a label or a close can be in an earlier job, before a command.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from bot.commands import Action, parse_command
from bot.triggers import Pair

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
# Distinct Pairs a merged event remembers; beyond this the oldest are forgotten (the one deciding is
# almost always among the newest). A flood repeating one event is one Pair; only a PR whose labels or
# draft state change more than ~30 ways while one job runs gets here.
MAX_ACTIONS: Final = 32
MERGED_KEY: Final = "preview_bot_actions"  # where a merged event lists its pairs (not a GitHub key)
# On a converge job continued after a `/preview stop` cut it short: a stop at the head holds (not a GitHub key).
AFTER_STOP_KEY: Final = "preview_bot_after_stop"


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
    """The Pairs (action, changed label, the PR's state in the event's payload) an event stands for: its
    own, or those merged into it (`data`: a payload or its envelope, bot.envelope)."""
    merged = data.get(MERGED_KEY)
    if merged is not None:
        return [Pair(str(a), None if label is None else str(label), None if draft is None else bool(draft),
                     None if closed is None else bool(closed), None if labels is None else tuple(labels))
                for a, label, draft, closed, labels in merged]
    pull = data.get("pull_request") or {}
    draft, state, labels = pull.get("draft"), pull.get("state"), pull.get("labels")
    return [Pair(str(data.get("action")), (data.get("label") or {}).get("name"),
                 draft if isinstance(draft, bool) else None, state == "closed" if isinstance(state, str) else None,
                 tuple(sorted(str(item.get("name")) for item in labels if isinstance(item, Mapping)))
                 if isinstance(labels, list) else None)]


def merge_pull_events(older: Mapping[str, Any], newer: Mapping[str, Any]) -> dict[str, Any]:
    """One payload standing for `older` then `newer` (two `pull_request` events of one PR, nothing between
    them in its queue): `newer`'s data, both events' Pairs (each once, at its last occurrence, at most
    MAX_ACTIONS of them)."""
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
    merged[MERGED_KEY] = [[p.action, p.label, p.draft, p.closed, None if p.labels is None else list(p.labels)]
                          for p in pairs]
    return merged


def takes_over(data: Mapping[str, Any]) -> bool:
    """Whether a COMMAND delivery (`data`: its payload or envelope) may cut the PR's running deploy
    short: a `/preview stop` ("Order rule")."""
    return _command_action(data) is Action.STOP


def deploy_command(data: Mapping[str, Any]) -> bool:
    """Whether a COMMAND delivery is a `/preview` deploy (its job may be cut short by a stop)."""
    return _command_action(data) is Action.DEPLOY


def _command_action(data: Mapping[str, Any]) -> Action | None:
    body = (data.get("comment") or {}).get("body")
    command = parse_command(body) if isinstance(body, str) else None
    return None if command is None else command.action
