"""Per-repository preview slots: who holds one, and whether one more fits under the cap (pure).

The claims live in one object per repository on the API server (see arbiter.py), written with a
resourceVersion precondition, so that concurrent deploys on any number of replicas cannot all see
"2 of 3 used" and all go ahead. This module only decides; it does no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta

from bot.timestamps import parse_time

CLAIMS_ANNOTATION = "preview-bot.dev/claims"


def parse_claims(text: str | None) -> dict[str, str]:
    """The annotation's JSON `{preview key: ISO time claimed}`; anything unreadable counts as empty."""
    try:
        data = json.loads(text or "{}")
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): str(v) for k, v in data.items()}


def render_claims(claims: Mapping[str, str]) -> str:
    return json.dumps(dict(sorted(claims.items())), separators=(",", ":"))


def decide(claims: Mapping[str, str], live: Iterable[str], key: str, cap: int, now: datetime,
           stale_after: timedelta) -> tuple[bool, dict[str, str]]:
    """(may `key` take a slot, the claims to write if so).

    A slot is used by every preview live in the cluster (`live`: keys with objects, including previews
    made before slots existed) and by every claim younger than `stale_after` (a deploy between its claim
    and its first object). Older claims without objects are leftovers of a crash and are dropped."""
    live_keys = set(live)
    kept = {k: at for k, at in claims.items()
            if k in live_keys or ((t := parse_time(at)) is not None and now - t <= stale_after)}
    used = (set(kept) | live_keys) - {key}
    if len(used) >= cap:
        return False, kept
    return True, {**kept, key: now.strftime("%Y-%m-%dT%H:%M:%SZ")}


def used_count(claims: Mapping[str, str], live: Iterable[str], key: str) -> int:
    """How many other previews hold a slot, for the refusal message."""
    return len((set(claims) | set(live)) - {key})


def refusal(used: int, cap: int) -> str:
    """What a PR refused at the repository's cap (PREVIEW_MAX_PER_REPO) shows. Nothing retries the deploy
    when a slot frees, so the comment says what will: a `/preview` then."""
    previews = "preview" if used == 1 else "previews"
    return (f"Nothing was deployed: this repository already has {used} live {previews} (the limit is {cap}). "
            "Comment `/preview` to deploy this one once a slot is free: `/preview stop` on another pull "
            "request frees one, and so does closing it.")
