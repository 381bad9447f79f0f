"""Whether a commit's checks allow its preview to deploy (pure).

A name in `wait_for` matches a check run (e.g. a GitHub Actions job) or a commit-status context. Only
`success` lets a preview deploy; any other conclusion of a completed check run (failure, cancelled,
timed_out, action_required, neutral, skipped, stale, startup_failure) and a status of `failure` or
`error` stop it. Sources: GitHub REST "Check runs" (`status`: queued, in_progress, completed, waiting,
requested, pending; `conclusion` once completed) and "Commit statuses" (`state`: error, failure, pending,
success), https://docs.github.com/en/rest/checks/runs and https://docs.github.com/en/rest/commits/statuses.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

# Deployment status descriptions are at most 140 characters (GitHub REST "Create a deployment status").
DESCRIPTION_MAX = 140


@dataclass(frozen=True)
class CheckState:
    """The latest state of one named check on one commit."""

    name: str
    kind: Literal["check run", "status"]
    completed: bool
    conclusion: str | None  # success, failure, ... (statuses: success, failure, error); None while running
    progress: str  # what the PR shows while it runs: "queued", "in progress", "pending"
    url: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.completed and self.conclusion == "success"


class Verdict(enum.Enum):
    WAIT = "wait"
    DEPLOY = "deploy"
    FAIL = "fail"


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    # (name, progress) of every check still awaited, in `wait_for` order; "not reported yet" when absent.
    waiting: tuple[tuple[str, str], ...] = ()
    failed: CheckState | None = None  # the first required check that concluded otherwise than success
    timed_out: tuple[str, ...] = ()   # checks still awaited when `wait_timeout` ran out

    def summary(self) -> str:
        """One line for the Deployment status and the PR comment (at most DESCRIPTION_MAX characters)."""
        if self.verdict is Verdict.WAIT:
            text = "waiting for checks: " + ", ".join(f"`{n}` ({p})" for n, p in self.waiting)
        elif self.failed is not None:
            text = f"not deployed: check `{self.failed.name}` concluded {self.failed.conclusion}"
        elif self.timed_out:
            text = "not deployed: " + ", ".join(f"`{n}`" for n in self.timed_out) + \
                   " did not succeed within the wait timeout"
        else:
            text = "all checks succeeded"
        return text if len(text) <= DESCRIPTION_MAX else text[:DESCRIPTION_MAX - 1] + "…"


def _progress(status: str) -> str:
    return {"queued": "queued", "in_progress": "in progress", "waiting": "waiting",
            "requested": "requested", "pending": "pending"}.get(status, status.replace("_", " ") or "pending")


def from_check_runs(runs: Iterable[Mapping[str, Any]]) -> dict[str, CheckState]:
    """name -> state of the newest check run of that name (a re-run replaces the earlier run).

    `runs` are items of GET /repos/{owner}/{repo}/commits/{ref}/check-runs."""
    newest: dict[str, Mapping[str, Any]] = {}
    for run in runs:
        name = str(run.get("name") or "")
        current = newest.get(name)
        if current is None or (str(run.get("started_at") or ""), int(run.get("id") or 0)) > \
                (str(current.get("started_at") or ""), int(current.get("id") or 0)):
            newest[name] = run
    return {name: CheckState(
        name=name, kind="check run", completed=run.get("status") == "completed",
        conclusion=str(run["conclusion"]) if run.get("status") == "completed" and run.get("conclusion") else None,
        progress=_progress(str(run.get("status") or "")),
        url=str(run.get("html_url") or run.get("details_url") or "") or None,
    ) for name, run in newest.items()}


def from_statuses(statuses: Iterable[Mapping[str, Any]]) -> dict[str, CheckState]:
    """context -> state, from the `statuses` of GET /repos/{owner}/{repo}/commits/{ref}/status (the
    latest status of each context)."""
    result: dict[str, CheckState] = {}
    for status in statuses:
        context, state = str(status.get("context") or ""), str(status.get("state") or "pending")
        if context in result:
            continue  # newest first
        result[context] = CheckState(name=context, kind="status", completed=state != "pending",
                                     conclusion=None if state == "pending" else state, progress="pending",
                                     url=str(status.get("target_url") or "") or None)
    return result


def decide(required: Sequence[str], runs: Mapping[str, CheckState], statuses: Mapping[str, CheckState], *,
           waited: timedelta, timeout: timedelta) -> Decision:
    """Deploy when every required check succeeded; fail on the first that concluded otherwise, or when
    some are still awaited after `timeout`; else wait. A check run wins over a status of the same name."""
    states = {name: runs.get(name) or statuses.get(name) for name in required}
    for name in required:
        state = states[name]
        if state is not None and state.completed and not state.succeeded:
            return Decision(Verdict.FAIL, failed=state)
    pending = [(name, state) for name in required if (state := states[name]) is None or not state.succeeded]
    if not pending:
        return Decision(Verdict.DEPLOY)
    if waited >= timeout:
        return Decision(Verdict.FAIL, timed_out=tuple(name for name, _state in pending))
    return Decision(Verdict.WAIT, waiting=tuple(
        (name, state.progress if state is not None else "not reported yet") for name, state in pending))


@dataclass(frozen=True)
class CheckEvent:
    """What a check_run or status delivery says: which commit, which check."""

    sha: str
    name: str


def _of_a_fork(run: Mapping[str, Any]) -> bool:
    """The check run belongs to a suite of a fork's branch: GitHub then gives the suite's `head_branch` as
    null and its `pull_requests` empty (GitHub docs, webhook `check_run`: "When the check suite's
    `head_branch` is in a forked repository it will be `null` and the `pull_requests` array will be empty")."""
    suite = run.get("check_suite")
    return isinstance(suite, Mapping) and "head_branch" in suite and suite["head_branch"] is None and \
        not suite.get("pull_requests") and not run.get("pull_requests")


def event_facts(event: str, data: Mapping[str, Any]) -> CheckEvent | None:
    """The commit and check name of a `check_run` (created/completed) or `status` delivery; None for
    anything else (rerequested, requested_action: a check changing state sends created/completed too), and
    for a check run of a fork's suite: a fork's PR is deployed only by a writer's `/preview <sha>`, never by
    a check, and its author's workflows make as many check runs as they like (each event would cost a read
    of the config, from the installation's rate limit)."""
    if event == "check_run" and data.get("action") in ("created", "completed"):
        run = data.get("check_run") or {}
        sha, name = run.get("head_sha"), run.get("name")
        if _of_a_fork(run):
            return None
    elif event == "status":
        sha, name = data.get("sha"), data.get("context")
    else:
        return None
    if not isinstance(sha, str) or not isinstance(name, str) or not sha or not name:
        return None
    return CheckEvent(sha=sha, name=name)
