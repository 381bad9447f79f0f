"""Coalescing and bounding: bot.coalesce (pure rules), WorkQueue slots and bound, the webhook's 503."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from gidgethub import sansio
from hypothesis import given, settings
from hypothesis import strategies as st

from bot import coalesce, metrics
from bot.queue import QueueFull, WorkQueue
from bot.repo_config import RepoConfig, ServiceConfig
from bot.triggers import Decision, MergedDecision, Pair, PullRequestFacts, decide, decide_merged
from bot.webhook import WebhookConfig, create_app

SERVICES = (ServiceConfig(name="a", image="i", port=1),)
AUTO = RepoConfig(services=SERVICES, trigger="auto")
LABEL = RepoConfig(services=SERVICES, trigger="label", label="preview")
SECRET = "unit-test-webhook-secret-0123456789"


def pull_event(action: str, *, number: int = 7, label: str | None = None, state: str = "open",
               labels: tuple[str, ...] = (), sha: str = "0" * 40) -> dict[str, Any]:
    data: dict[str, Any] = {
        "action": action, "number": number,
        "pull_request": {"number": number, "state": state, "head": {"sha": sha},
                         "labels": [{"name": n} for n in labels]},
        "repository": {"full_name": "acme/shop"}, "installation": {"id": 42}}
    if label is not None:
        data["label"] = {"name": label}
    return data


def merged(*events: dict[str, Any]) -> dict[str, Any]:
    result = events[0]
    for newer in events[1:]:
        result = coalesce.merge_pull_events(result, newer)
    return result


# -- the pure rules ---------------------------------------------------------------------------------

def test_classify() -> None:
    assert coalesce.classify("pull_request", pull_event("synchronize")) == coalesce.CONVERGE
    assert coalesce.classify("pull_request", pull_event("closed")) == coalesce.CONVERGE
    assert coalesce.classify("pull_request", pull_event("edited")) is None
    title_edit = {**pull_event("edited"), "changes": {"title": {"from": "old"}, "body": {"from": "old text"}}}
    assert coalesce.classify("pull_request", title_edit) is None, "a title or body edit deploys nothing"
    base_edit = {**pull_event("edited"), "changes": {"base": {"ref": {"from": "release"}, "sha": {"from": "1" * 40}}}}
    assert coalesce.classify("pull_request", base_edit) == coalesce.CONVERGE, "a new base changes the diff"
    assert coalesce.classify("pull_request", {**base_edit, "action": "labeled"}) == coalesce.CONVERGE
    assert coalesce.classify("pull_request", pull_event("assigned")) is None
    comment = {"action": "created", "issue": {"number": 7, "pull_request": {}}, "comment": {"body": "/preview stop"}}
    assert coalesce.classify("issue_comment", comment) == coalesce.COMMAND
    assert coalesce.classify("issue_comment", {**comment, "comment": {"body": "looks good"}}) is None
    assert coalesce.classify("issue_comment", {**comment, "issue": {"number": 7}}) is None, "an issue, not a PR"
    assert coalesce.classify("issue_comment", {**comment, "action": "edited"}) is None
    assert coalesce.classify("push", {"ref": "refs/heads/main"}) is None
    # Every event a handler is registered for becomes work (bot.handlers.checks: runs and statuses).
    assert coalesce.classify("check_run", {"action": "completed"}) == coalesce.CHECKS
    assert coalesce.classify("check_run", {"action": "created"}) == coalesce.CHECKS
    assert coalesce.classify("check_run", {"action": "rerequested"}) is None
    assert coalesce.classify("status", {"state": "success"}) == coalesce.CHECKS


def test_merge_keeps_the_newest_payload_and_each_pair_once_at_its_last_occurrence() -> None:
    result = merged(pull_event("opened", sha="1" * 40), pull_event("labeled", label="bug"),
                    pull_event("synchronize", sha="2" * 40), pull_event("labeled", label="bug"),
                    pull_event("synchronize", sha="3" * 40))
    assert result["pull_request"]["head"]["sha"] == "3" * 40
    assert coalesce.pairs_of(result) == [Pair("opened", closed=False, labels=()),
                                         Pair("labeled", "bug", closed=False, labels=()),
                                         Pair("synchronize", closed=False, labels=())]


def test_merge_keeps_each_events_own_draft_flag() -> None:
    """A PR turns draft without an event the bot queues (converted_to_draft): a push before it deploys,
    one after it does not, so each event keeps its own `draft`."""
    ready, draft = pull_event("synchronize"), pull_event("labeled", label="bug")
    ready["pull_request"]["draft"], draft["pull_request"]["draft"] = False, True
    pairs = coalesce.pairs_of(merged(ready, draft))
    assert pairs == [Pair("synchronize", None, False, False, ()), Pair("labeled", "bug", True, False, ())]
    latest = PullRequestFacts("labeled", True, False, frozenset(), "bug")
    assert decide_merged(AUTO, latest, pairs).decision is Decision.DEPLOY, "as one by one: the push deployed"
    assert decide_merged(AUTO, latest, [Pair("synchronize"), Pair("labeled", "bug")]).decision is Decision.IGNORE


def test_each_event_is_judged_with_the_labels_of_its_own_payload() -> None:
    """`trigger: label`: the label removed, the PR marked ready (no label: nothing), turned draft, then
    labelled (a draft: nothing). One by one nothing deploys; judged with the newest labels, the ready
    would."""
    unlabel = pull_event("unlabeled", label="preview")
    ready = pull_event("ready_for_review")
    label = pull_event("labeled", label="preview", labels=("preview",))
    label["pull_request"]["draft"] = True
    pairs = coalesce.pairs_of(merged(unlabel, ready, label))
    assert pairs[1] == Pair("ready_for_review", closed=False, labels=())
    latest = PullRequestFacts("labeled", True, False, frozenset({"preview"}), "preview")
    assert decide_merged(LABEL, latest, pairs) == MergedDecision(Decision.TEARDOWN, "unlabeled")


def test_an_event_that_came_while_the_pr_was_closed_asks_for_nothing_but_the_close() -> None:
    """Closed (in an earlier job), then `/preview` redeployed, then the label removed and the PR reopened:
    one by one, the unlabel on the closed PR does nothing (bot.handlers.pull_request) and the reopen
    without the label asks for nothing, so the preview `/preview` deployed stays."""
    unlabel = pull_event("unlabeled", label="preview", state="closed")
    reopen = pull_event("reopened")
    pairs = coalesce.pairs_of(merged(unlabel, reopen))
    assert pairs == [Pair("unlabeled", "preview", closed=True, labels=()), Pair("reopened", closed=False, labels=())]
    latest = PullRequestFacts("reopened", False, False, frozenset(), None)
    assert decide_merged(LABEL, latest, pairs).decision is Decision.IGNORE
    close_too = coalesce.pairs_of(merged(pull_event("closed", state="closed"), unlabel, reopen))
    assert decide_merged(LABEL, latest, close_too) == MergedDecision(Decision.TEARDOWN, "closed")


@pytest.mark.parametrize(("pairs", "expected"), [
    # A base change deploys only a PR not stopped at its head ...
    ([Pair("edited")], MergedDecision(Decision.DEPLOY, "edited", holds_stop=True)),
    ([Pair("edited"), Pair("labeled", "bug")], MergedDecision(Decision.DEPLOY, "edited", holds_stop=True)),
    # ... but after a push of the same job, which deployed regardless of a stop, it deploys too ...
    ([Pair("synchronize"), Pair("edited")], MergedDecision(Decision.DEPLOY, "edited")),
    ([Pair("synchronize"), Pair("edited"), Pair("labeled", "bug")], MergedDecision(Decision.DEPLOY, "edited")),
    # ... and after a close, nothing (a reopen deploys regardless of a stop).
    ([Pair("closed"), Pair("edited")], MergedDecision(Decision.TEARDOWN, "closed")),
    ([Pair("closed"), Pair("reopened"), Pair("edited")], MergedDecision(Decision.DEPLOY, "edited")),
])
def test_a_merged_base_change_holds_a_stop_as_one_by_one(pairs: list[Pair], expected: MergedDecision) -> None:
    latest = PullRequestFacts(pairs[-1].action, False, False, frozenset(), pairs[-1].label)
    assert decide_merged(AUTO, latest, pairs) == expected


def test_merged_pairs_are_bounded() -> None:
    events = [pull_event("labeled", label=f"l{i}") for i in range(coalesce.MAX_ACTIONS + 20)]
    result = merged(*events)
    pairs = coalesce.pairs_of(result)
    assert len(pairs) == coalesce.MAX_ACTIONS
    assert pairs[-1] == Pair("labeled", f"l{coalesce.MAX_ACTIONS + 19}", closed=False, labels=())


@pytest.mark.parametrize(("config", "actions", "labels", "expected"), [
    # A push after a close-and-reopen deploys; a close after a push tears down.
    (AUTO, [("closed", None), ("reopened", None)], (), Decision.DEPLOY),
    (AUTO, [("opened", None), ("closed", None)], (), Decision.TEARDOWN),
    # An event that asks for nothing does not hide an earlier one that did.
    (AUTO, [("synchronize", None), ("labeled", "bug")], (), Decision.DEPLOY),
    (LABEL, [("unlabeled", "preview"), ("synchronize", None)], (), Decision.TEARDOWN),
    (LABEL, [("unlabeled", "preview"), ("labeled", "preview")], ("preview",), Decision.DEPLOY),
    (LABEL, [("labeled", "preview"), ("unlabeled", "preview")], (), Decision.TEARDOWN),
    (LABEL, [("labeled", "bug")], (), Decision.IGNORE),
])
def test_decide_merged_examples(config: RepoConfig, actions: list[tuple[str, str | None]],
                                labels: tuple[str, ...], expected: Decision) -> None:
    latest = PullRequestFacts(actions[-1][0], False, False, frozenset(labels), actions[-1][1])
    assert decide_merged(config, latest, [Pair(*pair) for pair in actions])[0] is expected


PAIRS = st.sampled_from([("opened", None), ("reopened", None), ("synchronize", None), ("ready_for_review", None),
                         ("closed", None), ("labeled", "preview"), ("labeled", "bug"), ("unlabeled", "preview"),
                         ("unlabeled", "bug")])


@settings(max_examples=300)
@given(st.sampled_from([AUTO, LABEL]), st.lists(PAIRS, min_size=1, max_size=12), st.booleans(), st.booleans(),
       st.frozensets(st.sampled_from(["preview", "bug"])))
def test_merging_decides_like_processing_one_by_one(config: RepoConfig, pairs: list[tuple[str, str | None]],
                                                    draft: bool, fork: bool, labels: frozenset[str]) -> None:
    """Processing events one by one against the PR's current state ends with the last decision that
    asked for something; the merged event must reach the same one."""
    events = [pull_event(a, label=lbl, labels=tuple(labels)) for a, lbl in pairs]
    latest = PullRequestFacts(pairs[-1][0], draft, fork, labels, pairs[-1][1])
    one_by_one = [decide(config, PullRequestFacts(a, draft, fork, labels, lbl)) for a, lbl in pairs]
    effective = [d for d in one_by_one if d is not Decision.IGNORE]
    expected = effective[-1] if effective else Decision.IGNORE
    assert decide_merged(config, latest, coalesce.pairs_of(merged(*events)))[0] is expected


# -- the queue --------------------------------------------------------------------------------------

class Rec:
    """A job that logs its name (merged jobs: names joined with +) and may wait on a gate."""

    def __init__(self, log: list[str], name: str, gate: asyncio.Event | None = None) -> None:
        self.log, self.name, self.gate = log, name, gate

    async def __call__(self) -> None:
        self.log.append(self.name)
        if self.gate is not None:
            await self.gate.wait()


def recording_job(log: list[str], name: str, gate: asyncio.Event | None = None) -> Rec:
    return Rec(log, name, gate)


def join_names(older: Rec, newer: Rec) -> Rec:
    return Rec(newer.log, f"{older.name}+{newer.name}")


async def test_a_flood_for_one_pr_holds_one_pending_job_behind_the_running_one() -> None:
    queue = WorkQueue(max_concurrency=2, max_pending=5)
    log: list[str] = []
    gate = asyncio.Event()
    assert queue.submit("pr", recording_job(log, "first", gate), slot="converge") is False
    await asyncio.sleep(0)
    assert log == ["first"]
    merges = [queue.submit("pr", recording_job(log, f"e{i}"), slot="converge", merge=join_names)
              for i in range(1000)]
    assert merges == [False] + [True] * 999
    assert queue.waiting == 1
    assert queue.depth == 2
    # The running job may stop early: the pending one takes its work over (merged into it, first).
    assert queue.supersedes_running("pr")
    gate.set()
    await queue.join()
    assert log == ["first", "first+" + "+".join(f"e{i}" for i in range(1000))]
    assert queue.depth == 0


async def test_commands_are_never_merged_and_events_merge_only_with_the_job_last_in_line() -> None:
    queue = WorkQueue(max_concurrency=1, max_pending=10)
    log: list[str] = []
    gate = asyncio.Event()
    queue.submit("pr", recording_job(log, "running", gate))  # a command: no job takes it over
    await asyncio.sleep(0)
    queue.submit("pr", recording_job(log, "push1"), slot="converge", merge=join_names)
    queue.submit("pr", recording_job(log, "/preview stop"))
    queue.submit("pr", recording_job(log, "label1"), slot="converge", merge=join_names)
    queue.submit("pr", recording_job(log, "/preview stop again"))
    queue.submit("pr", recording_job(log, "push2"), slot="converge", merge=join_names)
    queue.submit("pr", recording_job(log, "label2"), slot="converge", merge=join_names)
    assert queue.waiting == 5
    assert not queue.supersedes_running("pr"), "a running command is never cut short"
    gate.set()
    await queue.join()
    # Arrival order: each stop after the events before it, before the ones after it.
    assert log == ["running", "push1", "/preview stop", "label1", "/preview stop again", "push2+label2"]


async def test_only_a_converge_job_next_in_line_takes_a_running_one_over() -> None:
    queue = WorkQueue(max_concurrency=1, max_pending=10)
    log: list[str] = []
    gate = asyncio.Event()
    queue.submit("pr", recording_job(log, "deploy", gate), slot="converge", merge=join_names)
    await asyncio.sleep(0)
    queue.submit("pr", recording_job(log, "/preview explain"))
    queue.submit("pr", recording_job(log, "push"), slot="converge", merge=join_names)
    assert not queue.supersedes_running("pr"), "the explain must see the deploy finished"
    gate.set()
    await queue.join()
    assert log == ["deploy", "/preview explain", "push"]

    gate.clear()
    queue.submit("pr", recording_job(log, "deploy", gate), slot="converge", merge=join_names)
    await asyncio.sleep(0)
    queue.submit("pr", recording_job(log, "label"), slot="converge", merge=join_names)
    assert queue.supersedes_running("pr") and queue.supersedes_running("pr")
    queue.submit("pr", recording_job(log, "push"), slot="converge", merge=join_names)
    gate.set()
    await queue.join()
    # The running deploy (cut short or not) is done again by the job that took it over.
    assert log[3:] == ["deploy", "deploy+label+push"]


async def test_events_waiting_for_a_concurrency_slot_still_merge() -> None:
    queue = WorkQueue(max_concurrency=1, max_pending=10)
    log: list[str] = []
    gate = asyncio.Event()
    queue.submit("other", recording_job(log, "other", gate))
    await asyncio.sleep(0)
    queue.submit("pr", recording_job(log, "a"), slot="converge")
    await asyncio.sleep(0)  # pr's worker now waits for the only slot
    queue.submit("pr", recording_job(log, "b"), slot="converge", merge=join_names)
    assert queue.waiting == 1
    gate.set()
    await queue.join()
    assert log == ["other", "a+b"]


async def test_the_bound_refuses_new_work_but_never_a_merge() -> None:
    queue = WorkQueue(max_concurrency=1, max_pending=2)
    log: list[str] = []
    gate = asyncio.Event()
    queue.submit(0, recording_job(log, "running", gate))
    await asyncio.sleep(0)
    queue.submit(1, recording_job(log, "one"), slot="converge")
    queue.submit(2, recording_job(log, "two"), slot="converge")
    with pytest.raises(QueueFull):
        queue.submit(3, recording_job(log, "three"), slot="converge")
    with pytest.raises(QueueFull):
        queue.submit(1, recording_job(log, "a command"))
    assert queue.submit(1, recording_job(log, "one-more"), slot="converge", merge=join_names) is True
    assert queue.waiting == 2
    gate.set()
    await queue.join()
    assert log == ["running", "one+one-more", "two"]
    queue.submit(3, recording_job(log, "three"))  # room again
    await queue.join()
    assert log[-1] == "three"


# -- the webhook: 503 when full, counted ------------------------------------------------------------

async def test_full_queue_answers_503_counts_it_and_does_not_remember_the_delivery(
        caplog: pytest.LogCaptureFixture) -> None:
    queue = WorkQueue(max_concurrency=1, max_pending=1)
    gate = asyncio.Event()
    dispatched: list[sansio.Event] = []

    async def dispatch(event: sansio.Event) -> None:
        dispatched.append(event)
        await gate.wait()

    config = WebhookConfig(secret=SECRET, max_body_bytes=1 << 20, dispatch=dispatch, submit=queue.submit,
                           readiness={})
    client = TestClient(TestServer(create_app(config)))
    await client.start_server()

    async def post(data: dict[str, Any], delivery: str) -> int:
        body = json.dumps(data).encode()
        signature = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        response = await client.post("/webhook", data=body, headers={
            "X-GitHub-Event": "pull_request", "X-GitHub-Delivery": delivery, "X-Hub-Signature-256": signature})
        return response.status

    def refused() -> float:
        return metrics.REGISTRY.get_sample_value(
            "preview_bot_webhooks_total", {"event": "pull_request", "outcome": "503"}) or 0.0

    before = refused()
    try:
        assert await post(pull_event("opened", number=1), "d1") == 202  # runs
        await asyncio.sleep(0.01)
        assert await post(pull_event("opened", number=2), "d2") == 202  # waits: the queue is now full
        for i in range(50):  # PR 2's flood merges into its pending job: never refused
            assert await post(pull_event("synchronize", number=2, sha=f"{i:040d}"), f"s{i}") == 202
        with caplog.at_level("WARNING", logger="bot.webhook"):
            assert await post(pull_event("opened", number=3), "d3") == 503
        assert refused() == before + 1
        assert any("queue full" in r.getMessage() for r in caplog.records)
        assert "d3" not in config.seen, "a refused delivery can be redelivered"
        gate.set()
        await queue.join()
        assert await post(pull_event("opened", number=3), "d3") == 202, "accepted once there is room"
        await queue.join()
    finally:
        gate.set()
        await client.close()
    assert [e.data["number"] for e in dispatched] == [1, 2, 3]
    pr2 = dispatched[1].data
    assert pr2["pull_request"]["head"]["sha"] == f"{49:040d}", "the merged job carries the newest payload"
    assert coalesce.pairs_of(pr2) == [Pair("opened", closed=False, labels=()),
                                      Pair("synchronize", closed=False, labels=())]


async def test_mergeable_jobs_of_one_key_start_at_most_once_per_interval_commands_never_wait() -> None:
    queue = WorkQueue(max_concurrency=2, max_pending=10, min_interval=0.3)
    loop = asyncio.get_running_loop()
    starts: dict[str, float] = {}

    class Timed(Rec):
        async def __call__(self) -> None:
            starts[self.name] = loop.time()

    log: list[str] = []
    queue.submit("pr", Timed(log, "first"), slot="converge")
    await asyncio.sleep(0.01)
    queue.submit("pr", Timed(log, "command"))
    queue.submit("pr", Timed(log, "second"), slot="converge")
    for i in range(20):  # a flood while the second waits out the interval: all merge into it
        queue.submit("pr", Timed(log, f"e{i}"), slot="converge", merge=lambda old, new: Timed(log, "merged"))
    await queue.join()
    assert set(starts) == {"first", "command", "merged"}
    assert starts["command"] - starts["first"] < 0.2, "a command does not wait for the interval"
    assert starts["merged"] - starts["first"] >= 0.3 - 0.01
