"""bot.envelope: intake reads a few fields; every decision taken on them equals the one on the whole payload."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot import coalesce, envelope
from bot.triggers import Pair
from bot.webhook import EventJob, merge_converge, work_key
from tests.fakegithub.spec import webhook_examples


def is_subtree(part: Any, whole: Any) -> bool:
    if isinstance(part, dict):
        return isinstance(whole, dict) and all(k in whole and is_subtree(v, whole[k]) for k, v in part.items())
    if isinstance(part, list):  # a list of objects: each element's sub-tree (pull_request.labels)
        return isinstance(whole, list) and len(part) == len(whole) and all(map(is_subtree, part, whole))
    return bool(part == whole and type(part) is type(whole))


def outcome(rule: Any, *args: Any) -> Any:
    try:
        return rule(*args)
    except Exception as exc:  # the rules' own failures must match too
        return type(exc)


def decisions(event: str, data: dict[str, Any]) -> tuple[Any, ...]:
    return (outcome(coalesce.classify, event, data), outcome(work_key, data), outcome(coalesce.pairs_of, data),
            "installation" in data, "repository" in data)


EXAMPLES = [(name, i, example) for name, examples in sorted(webhook_examples().items())
            for i, example in enumerate(examples)]


@pytest.mark.parametrize(("event", "index", "example"), EXAMPLES, ids=[f"{n}-{i}" for n, i, _ in EXAMPLES])
def test_every_documented_payload_gives_the_same_decisions(event: str, index: int, example: dict[str, Any]) -> None:
    """Every example payload of @octokit/webhooks-examples (every event GitHub documents), as GitHub
    lays it out: the envelope is part of the payload and intake decides the same on either."""
    body = json.dumps(example, indent=2).encode()
    small = envelope.decode_envelope(body)
    whole = envelope.payload(body)
    assert whole == example
    assert is_subtree(small, whole)
    assert decisions(event, small) == decisions(event, whole)
    if "installation" in whole and "repository" in whole:  # else intake ignores it before any check
        assert envelope.shape_problem(event, small) is None
        assert envelope.shape_problem(event, whole) is None


def test_the_pull_request_envelope_holds_only_what_intake_reads() -> None:
    example = next(e for e in webhook_examples()["pull_request"] if e["action"] == "labeled")
    small = envelope.decode_envelope(json.dumps(example).encode())
    assert set(small) <= {"action", "installation", "repository", "pull_request", "issue", "comment", "label",
                          "changes"}
    assert small["pull_request"] == {"number": example["pull_request"]["number"],
                                     "head": {"sha": example["pull_request"]["head"]["sha"]},
                                     "draft": example["pull_request"]["draft"],
                                     "state": example["pull_request"]["state"],
                                     "labels": [{"name": label["name"]} for label in example["pull_request"]["labels"]]}
    assert small["label"] == {"name": example["label"]["name"]}
    assert small["repository"] == {"id": example["repository"]["id"],
                                   "full_name": example["repository"]["full_name"]}


@pytest.mark.parametrize("edit", ["base", "title"])
async def test_an_edited_pull_request_is_work_only_when_its_base_changed(edit: str) -> None:
    """pull_request.edited as GitHub sends it (the fake checks it against GitHub's schema of the event):
    the envelope decides as the whole payload does, and skips an edited body's old text."""
    from tests.fakegithub import FakeGitHub, pull_request_event

    async with FakeGitHub() as fake:
        fake.add_repo("acme/shop", ref_files={"release": {}})
        fake.add_pull("acme/shop", 7, base="release")
        changes = fake.change_base("acme/shop", 7, "main") if edit == "base" else \
            {"title": {"from": "Old title"}, "body": {"from": "old text " * 5000}}
        example = pull_request_event(fake, "acme/shop", 7, "edited", changes=changes)
    body = json.dumps(example).encode()
    small = envelope.decode_envelope(body)
    assert is_subtree(small, example) and decisions("pull_request", small) == decisions("pull_request", example)
    assert envelope.shape_problem("pull_request", small) is None
    assert coalesce.classify("pull_request", small) == (coalesce.CONVERGE if edit == "base" else None)
    assert small.get("changes") == ({"base": changes["base"]} if edit == "base" else {})


# JSON values of any shape, under the keys intake reads and a few it does not.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.sampled_from(["id", "full_name", "number", "name", "body", "pull_request", "base", "x"]),
                      inner,
                      max_size=4),
    max_leaves=12)
payloads = st.dictionaries(
    st.sampled_from(["action", "installation", "repository", "pull_request", "issue", "comment", "label",
                     "changes", "number", "other"]),
    json_values | st.sampled_from(["opened", "created", "labeled", "edited", "/preview", "/preview stop"]),
    max_size=7)


@settings(max_examples=400, deadline=None)
@given(payloads, st.sampled_from(["pull_request", "issue_comment", "check_run", "status", "push"]))
def test_any_json_object_gives_the_same_decisions(data: dict[str, Any], event: str) -> None:
    """Whatever the types under the envelope's keys, nothing valid is refused and nothing decided
    differently: a body the envelope's types do not fit is read whole."""
    body = json.dumps(data).encode()
    small = envelope.decode_envelope(body)
    assert is_subtree(small, data)
    assert decisions(event, small) == decisions(event, data)
    # What intake then does: a body whose fields fit GitHub's types is decided without a fault.
    # (Other events are ignored after `classify`, which reads only `action` of them.)
    if (event != "push" and "installation" in small and "repository" in small
            and envelope.shape_problem(event, small) is None):
        assert not any(isinstance(d, type) and issubclass(d, Exception) for d in decisions(event, small)), data


@pytest.mark.parametrize(("body", "says"), [
    (b'{"action": "opened", "other": "\xff\xfe"}', "not UTF-8 at byte 31"),  # in a string the envelope skips
    (b'{"action": "opened"} trailing', "not JSON"),
    (b'{"action": "opened", "x": NaN}', "not JSON"),
    (b'{"action": "opened", "x": "\\ud800"}', "not JSON"),  # a lone surrogate
    (b"[1, 2]", "not a JSON object"),
    (b'"text"', "not a JSON object"),
    (b"", "not JSON"),
    (b'{"x": ' + b"[" * 5000 + b"]" * 5000 + b"}", "nested too deeply"),
])
def test_bodies_that_are_not_json_objects_are_refused_with_the_reason(body: bytes, says: str) -> None:
    with pytest.raises(envelope.InvalidBody, match=says):
        envelope.decode_envelope(body)


def test_payload_refuses_what_intake_refuses() -> None:
    for body in (b"[1]", b'{"a": 1} x', b'{"a": "\xff"}'):
        with pytest.raises(envelope.InvalidBody):
            envelope.payload(body)


async def test_a_job_decodes_the_newest_body_and_carries_the_merged_pairs() -> None:
    seen: list[Any] = []

    async def dispatch(event: Any) -> None:
        seen.append(event)

    def job(action: str, sha: str) -> EventJob:
        payload = {"action": action, "number": 7, "pull_request": {"number": 7, "head": {"sha": sha}},
                   "repository": {"id": 1, "full_name": "acme/shop"}, "installation": {"id": 2}}
        body = json.dumps(payload).encode()
        return EventJob(dispatch, "pull_request", f"d-{sha}", body, envelope.decode_envelope(body))

    merged = merge_converge(merge_converge(job("opened", "a"), job("synchronize", "b")), job("synchronize", "c"))
    await merged()
    (event,) = seen
    assert event.delivery_id == "d-c"
    assert event.data["pull_request"]["head"]["sha"] == "c"
    assert coalesce.pairs_of(event.data) == [Pair("opened"), Pair("synchronize")]


async def test_a_body_that_fails_to_decode_when_the_job_runs_is_logged_in_one_line(
        caplog: pytest.LogCaptureFixture) -> None:
    async def dispatch(event: Any) -> None:
        raise AssertionError("must not be dispatched")

    body = b'{"x": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    await EventJob(dispatch, "pull_request", "d-deep", body, {})()
    (record,) = caplog.records
    assert record.levelname == "ERROR" and record.exc_info is None
    assert record.delivery == "d-deep" and "nested too deeply" in record.error
