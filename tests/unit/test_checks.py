"""bot.checks: which checks a preview waits for, and what their states mean (pure)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from bot.checks import CheckEvent, Verdict, decide, event_facts, from_check_runs, from_statuses

HOUR = timedelta(hours=1)


def run(name: str, status: str = "completed", conclusion: str | None = "success", *, id: int = 1,
        started: str = "2026-01-01T00:00:00Z") -> dict[str, Any]:
    return {"id": id, "name": name, "status": status, "conclusion": conclusion, "started_at": started,
            "html_url": f"https://github.com/acme/shop/runs/{id}"}


def decide_runs(required: list[str], runs: list[dict[str, Any]], statuses: list[dict[str, Any]] = (),  # type: ignore[assignment]
                waited: timedelta = timedelta(0)) -> Any:
    return decide(required, from_check_runs(runs), from_statuses(statuses), waited=waited, timeout=HOUR)


def test_all_required_succeeded_deploys() -> None:
    decision = decide_runs(["build-images"], [run("build-images"), run("lint", conclusion="failure", id=2)])
    assert decision.verdict is Verdict.DEPLOY  # a failing check nobody waits for does not matter


@pytest.mark.parametrize("status", ["queued", "in_progress", "waiting", "pending", "requested"])
def test_running_checks_wait_and_say_how_far_they_are(status: str) -> None:
    decision = decide_runs(["build-images", "build-web"], [run("build-images", status, None)])
    assert decision.verdict is Verdict.WAIT
    progress = status.replace("_", " ")
    assert decision.waiting == (("build-images", progress), ("build-web", "not reported yet"))
    assert decision.summary() == f"waiting for checks: `build-images` ({progress}), `build-web` (not reported yet)"


@pytest.mark.parametrize("conclusion", ["failure", "cancelled", "timed_out", "action_required", "neutral",
                                        "skipped", "stale", "startup_failure"])
def test_any_conclusion_but_success_stops_the_deploy(conclusion: str) -> None:
    decision = decide_runs(["build-images"], [run("build-images", conclusion=conclusion, id=9)])
    assert decision.verdict is Verdict.FAIL
    assert decision.failed is not None and decision.failed.url == "https://github.com/acme/shop/runs/9"
    assert decision.summary() == f"not deployed: check `build-images` concluded {conclusion}"


def test_a_failure_wins_over_checks_still_running() -> None:
    decision = decide_runs(["a", "b"], [run("a", "in_progress", None, id=1), run("b", conclusion="failure", id=2)])
    assert decision.verdict is Verdict.FAIL and decision.failed is not None and decision.failed.name == "b"


def test_a_rerun_replaces_the_earlier_run_of_the_same_name() -> None:
    failed = run("build-images", conclusion="failure", id=1, started="2026-01-01T00:00:00Z")
    rerun = run("build-images", "in_progress", None, id=2, started="2026-01-01T00:10:00Z")
    assert decide_runs(["build-images"], [rerun, failed]).verdict is Verdict.WAIT
    passed = run("build-images", id=3, started="2026-01-01T00:20:00Z")
    assert decide_runs(["build-images"], [failed, passed, rerun]).verdict is Verdict.DEPLOY


def test_commit_status_contexts_count_too() -> None:
    statuses = [{"context": "ci/images", "state": "pending", "target_url": "https://ci.example.com/1"}]
    assert decide_runs(["ci/images"], [], statuses).waiting == (("ci/images", "pending"),)
    done = [{"context": "ci/images", "state": "success"}, {"context": "ci/images", "state": "pending"}]
    assert decide_runs(["ci/images"], [], done).verdict is Verdict.DEPLOY  # newest first
    for state in ("failure", "error"):
        decision = decide_runs(["ci/images"], [], [{"context": "ci/images", "state": state,
                                                    "target_url": "https://ci.example.com/2"}])
        assert decision.verdict is Verdict.FAIL and decision.failed is not None
        assert decision.failed.url == "https://ci.example.com/2"
        assert decision.summary() == f"not deployed: check `ci/images` concluded {state}"


def test_a_check_run_wins_over_a_status_of_the_same_name() -> None:
    statuses = [{"context": "build", "state": "failure"}]
    assert decide_runs(["build"], [run("build")], statuses).verdict is Verdict.DEPLOY


def test_waiting_past_the_timeout_fails_naming_what_never_came() -> None:
    decision = decide_runs(["build-images", "done"], [run("done")], waited=HOUR)
    assert decision.verdict is Verdict.FAIL and decision.timed_out == ("build-images",)
    assert decision.summary() == "not deployed: `build-images` did not succeed within the wait timeout"
    assert decide_runs(["build-images"], [], waited=HOUR - timedelta(seconds=1)).verdict is Verdict.WAIT
    # success just in time still deploys
    assert decide_runs(["build-images"], [run("build-images")], waited=2 * HOUR).verdict is Verdict.DEPLOY


def test_summary_fits_a_deployment_description() -> None:
    decision = decide_runs([f"check-{i:03d}" for i in range(40)], [])
    assert len(decision.summary()) == 140 and decision.summary().endswith("…")


def test_event_facts() -> None:
    payload = {"action": "completed", "check_run": {"head_sha": "a" * 40, "name": "build-images"}}
    assert event_facts("check_run", payload) == CheckEvent("a" * 40, "build-images")
    assert event_facts("check_run", {**payload, "action": "created"}) == CheckEvent("a" * 40, "build-images")
    for action in ("rerequested", "requested_action"):
        assert event_facts("check_run", {**payload, "action": action}) is None
    assert event_facts("status", {"sha": "b" * 40, "context": "ci/images", "state": "success"}) == \
        CheckEvent("b" * 40, "ci/images")
    assert event_facts("status", {"sha": "b" * 40, "context": None}) is None
    assert event_facts("check_run", {"action": "completed", "check_run": {"name": "x"}}) is None
    assert event_facts("pull_request", {"action": "opened"}) is None
