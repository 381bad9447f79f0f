"""Preview slots per repository (bot/slots.py): who holds one, and whether one more fits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

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


def test_a_refusal_at_the_cap_counts_in_words_and_says_what_deploys_later() -> None:
    assert slots.refusal(1, 1).startswith("Nothing was deployed: this repository already has 1 live preview "
                                          "(the limit is 1). Comment `/preview` to deploy this one once a slot is free")
    assert "already has 3 live previews (the limit is 3)" in slots.refusal(3, 3)
