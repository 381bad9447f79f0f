"""Preview slots per repository (bot/slots.py): who holds one, and whether one more fits."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bot import slots

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
STALE = timedelta(minutes=10)


def at(minutes_ago: float) -> str:
    return (NOW - timedelta(minutes=minutes_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_a_claim_is_granted_below_the_cap_and_recorded() -> None:
    granted, claims = slots.decide({"p-1": at(1)}, {"p-1"}, "p-2", 3, NOW, STALE)
    assert granted and set(claims) == {"p-1", "p-2"}


def test_the_cap_counts_claims_and_live_previews_together() -> None:
    # p-3 has a claim but no objects yet (its deploy is starting); p-4 predates claims (objects only).
    claims = {"p-1": at(1), "p-2": at(1), "p-3": at(0.1)}
    granted, _ = slots.decide(claims, {"p-1", "p-2", "p-4"}, "p-5", 4, NOW, STALE)
    assert not granted
    assert slots.used_count(claims, {"p-4"}, "p-5") == 4


def test_the_preview_itself_does_not_count_against_it() -> None:
    granted, _ = slots.decide({"p-1": at(1), "p-2": at(1)}, {"p-1", "p-2"}, "p-2", 2, NOW, STALE)
    assert granted


def test_old_claims_without_objects_are_leftovers_and_dropped() -> None:
    granted, claims = slots.decide({"p-1": at(30), "p-2": at(30)}, {"p-2"}, "p-3", 2, NOW, STALE)
    assert granted and set(claims) == {"p-2", "p-3"}


def test_eight_at_once_on_one_claim_list_take_exactly_the_cap() -> None:
    claims: dict[str, str] = {}
    results = []
    for n in range(8):  # each decision sees the previous write, as resourceVersion guarantees
        granted, updated = slots.decide(claims, set(), f"p-{n}", 3, NOW, STALE)
        results.append(granted)
        if granted:
            claims = updated
    assert results == [True, True, True, False, False, False, False, False]


def test_the_annotation_round_trips_and_garbage_reads_as_empty() -> None:
    claims = {"p-2": at(0), "p-1": at(1)}
    assert slots.parse_claims(slots.render_claims(claims)) == claims
    assert slots.parse_claims("not json") == {} and slots.parse_claims("[1]") == {} and slots.parse_claims(None) == {}


def test_a_refusal_without_a_line_says_what_deploys_later() -> None:
    assert slots.refusal(1, 1).startswith("Nothing was deployed: this repository already has 1 live preview "
                                          "(the limit is 1). Comment `/preview` to deploy this one once a slot is free")
    assert "already has 3 live previews (the limit is 3)" in slots.refusal(3, 3)


def test_a_refusal_in_line_gives_the_place_and_says_it_deploys_by_itself() -> None:
    text = slots.refusal(3, 3, 2)
    assert text.startswith("Waiting for a preview slot: this repository already has 3 live previews (the limit is "
                           "3). This pull request is 2nd in line (when this was written): it is deployed by itself, "
                           "oldest first, as soon as a slot frees")
    assert "nobody needs to comment" in text and "Comment `/preview`" not in text
    # A free slot kept for the PRs ahead in line.
    assert "already has 0 live previews (the limit is 1), and the free slot goes to the pull requests waiting in " \
           "line before this one. This pull request is 3rd in line" in slots.refusal(0, 1, 3, ahead=2)


def test_a_refusal_with_a_full_line_says_so_and_what_to_do() -> None:
    text = slots.refusal(2, 2, None, line=True)
    assert text.startswith(f"Nothing was deployed: this repository already has 2 live previews (the limit is 2), "
                           f"and {slots.MAX_WAITING} pull requests already wait in line for a slot, the most that "
                           "may wait. This one is not in line: comment `/preview` to deploy it once a slot is free")


def k(n: int) -> str:
    return f"preview-{n}-abc123"


def waiter(n: int, sha: str = "a" * 40, by: str = slots.EVENT) -> slots.Waiter:
    return slots.Waiter(k(n), n, sha, by, at(0))


def line_of(*numbers: int) -> slots.Line:
    return slots.Line(1, "acme/shop", tuple(waiter(n) for n in numbers))


def test_the_free_slots_go_to_the_line_first_oldest_first() -> None:
    line = line_of(5, 6)
    claims = {k(1): at(1)}  # cap 2: one slot free
    assert slots.ahead_of(line, k(5)) == 0 and slots.ahead_of(line, k(6)) == 1
    assert slots.ahead_of(line, k(9)) == 2  # a newcomer waits behind everyone
    assert slots.decide(claims, {k(1)}, k(5), 2, NOW, STALE, slots.ahead_of(line, k(5)))[0]
    assert not slots.decide(claims, {k(1)}, k(6), 2, NOW, STALE, slots.ahead_of(line, k(6)))[0]
    assert not slots.decide(claims, {k(1)}, k(9), 2, NOW, STALE, slots.ahead_of(line, k(9)))[0]
    # A waiter that holds a slot meanwhile (a `/preview` elsewhere) waits no more and keeps nobody out.
    assert slots.ahead_of(line, k(6), holders={k(5)}) == 0
    assert slots.free_slots(claims, {k(1)}, 2, NOW, STALE) == 1
    assert slots.free_slots({k(1): at(30)}, set(), 2, NOW, STALE) == 2  # a crash's leftover claim


def test_joining_keeps_a_place_and_the_line_is_capped() -> None:
    line, place = slots.join(line_of(), waiter(1))
    assert place == 1
    line, place = slots.join(line, waiter(2))
    assert place == 2 and line.keys() == [k(1), k(2)]
    # The first asks again (a push): same place, new commit, same time in line.
    again, place = slots.join(line, replace(waiter(1, "b" * 40), since=at(-5)))
    assert place == 1 and again.keys() == [k(1), k(2)]
    assert again.waiting[0].sha == "b" * 40 and again.waiting[0].since == line.waiting[0].since
    full = line_of(*range(100, 100 + slots.MAX_WAITING))
    assert slots.join(full, waiter(1)) == (full, None)
    assert slots.leave(line, k(1), k(9)).keys() == [k(2)]


def test_the_line_round_trips_and_garbage_reads_as_empty() -> None:
    line = slots.Line(1296269, "acme/shop", (waiter(3), waiter(1, by=slots.COMMAND)))
    assert slots.parse_line(slots.render_line(line)) == line
    assert slots.parse_line("not json") == slots.Line() and slots.parse_line("[1]") == slots.Line()
    assert slots.parse_line(None) == slots.Line()
    damaged = '{"repo_id": 1, "repo": "a/b", "waiting": [{"pr": 2}, {"key": "preview-3-a", "pr": "x"}, ' \
              '{"key": "preview-5-a", "pr": 4}, {"key": "preview-4-a", "pr": 4}, {"key": "preview-4-a", "pr": 4}]}'
    assert slots.parse_line(damaged).keys() == ["preview-4-a"]


@pytest.mark.parametrize(("by", "facts", "expected"), [
    (slots.EVENT, {"is_open": False}, (slots.LEAVE, "the pull request is closed")),
    (slots.EVENT, {"configured": False}, (slots.LEAVE, "no `.github/preview.yml`")),
    (slots.EVENT, {}, (slots.DEPLOY_HEAD, "")),
    (slots.EVENT, {"head": "c" * 40}, (slots.DEPLOY_HEAD, "")),  # a push since: its head, as its event would
    (slots.EVENT, {"event_deploys": False, "draft": True}, (slots.LEAVE, "is a draft")),
    (slots.EVENT, {"event_deploys": False, "trigger": "label"}, (slots.LEAVE, "`preview` label is no longer")),
    (slots.EVENT, {"event_deploys": False, "fork": True}, (slots.LEAVE, "comes from a fork")),
    (slots.EVENT, {"event_deploys": False, "trigger": "command"}, (slots.LEAVE, "`trigger: command`")),
    # A writer's `/preview` asked for this commit: deployed as asked, also for a draft or a fork.
    (slots.COMMAND, {"event_deploys": False, "draft": True, "fork": True}, (slots.DEPLOY_ASKED, "")),
    (slots.COMMAND, {"event_deploys": False, "head": "c" * 40}, (slots.LEAVE, "pushed since `/preview`")),
    (slots.COMMAND, {"head": "c" * 40}, (slots.DEPLOY_HEAD, "")),
    (slots.COMMAND, {"is_open": False}, (slots.LEAVE, "the pull request is closed")),
])
def test_who_is_deployed_and_who_leaves_when_a_slot_frees(by: str, facts: dict[str, Any],
                                                          expected: tuple[str, str]) -> None:
    now = {"is_open": True, "head": "a" * 40, "event_deploys": True, "draft": False, "fork": False,
           "trigger": "auto", "label": "preview", "configured": True, **facts}
    step, reason = slots.next_step(waiter(1, by=by), **now)
    assert step == expected[0] and expected[1] in reason, reason


def test_ordinals() -> None:
    assert [slots.ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 101, 111)] == \
        ["1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "101st", "111th"]
