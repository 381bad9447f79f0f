"""Per-repository preview slots: who holds one, whether one more fits under the cap, and the line of
pull requests waiting for one (pure).

The claims and the line live in one object per repository on the API server (see arbiter.py), written
with a resourceVersion precondition, so that concurrent deploys on any number of replicas cannot all see
"2 of 3 used" and all go ahead, and no replica loses another's place in line. This module only decides;
it does no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from bot.timestamps import parse_time

CLAIMS_ANNOTATION = "preview-bot.dev/claims"


def json_object(text: str | None) -> dict[str, Any]:
    """An annotation's JSON object; anything unreadable (not JSON, not an object) counts as empty."""
    try:
        data = json.loads(text or "{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def parse_claims(text: str | None) -> dict[str, str]:
    """The annotation's JSON `{preview key: ISO time claimed}`; anything unreadable counts as empty."""
    return {str(k): str(v) for k, v in json_object(text).items()}


def render_claims(claims: Mapping[str, str]) -> str:
    return json.dumps(dict(sorted(claims.items())), separators=(",", ":"))


def decide(claims: Mapping[str, str], live: Iterable[str], key: str, cap: int, now: datetime,
           stale_after: timedelta, ahead: int = 0) -> tuple[bool, dict[str, str]]:
    """(may `key` take a slot, the claims to write if so).

    A slot is used by every preview live in the cluster (`live`: keys with objects, including previews
    made before slots existed) and by every claim younger than `stale_after` (a deploy between its claim
    and its first object). Older claims without objects are leftovers of a crash and are dropped. The free
    slots go first to the `ahead` PRs waiting in line before `key` (ahead_of): oldest first."""
    live_keys = set(live)
    kept = {k: at for k, at in claims.items()
            if k in live_keys or ((t := parse_time(at)) is not None and now - t <= stale_after)}
    used = (set(kept) | live_keys) - {key}
    if len(used) + ahead >= cap:
        return False, kept
    return True, {**kept, key: now.strftime("%Y-%m-%dT%H:%M:%SZ")}


def used_count(claims: Mapping[str, str], live: Iterable[str], key: str) -> int:
    """How many other previews hold a slot, for the refusal message."""
    return len((set(claims) | set(live)) - {key})


def refusal(used: int, cap: int, place: int | None = None, *, line: bool = False, ahead: int = 0) -> str:
    """What a PR refused at the repository's cap (PREVIEW_MAX_PER_REPO) shows. `place`: its 1-based place in
    the line of PRs waiting for a slot (it then deploys by itself when one frees); `line` without a place:
    it asked to wait but the line is full (MAX_WAITING); neither: it does not wait (a linked deploy), a
    `/preview` once a slot is free deploys it. `ahead`: PRs waiting before it that the free slots go to."""
    previews = "preview" if used == 1 else "previews"
    count = f"this repository already has {used} live {previews} (the limit is {cap})"
    if used < cap and ahead:
        count += (f", and the free {'slot goes' if cap - used == 1 else 'slots go'} to the pull requests "
                  "waiting in line before this one")
    frees = ("`/preview stop` on another pull request frees one, and so does closing it or its removal after "
             "the idle TTL")
    if place is not None:
        return (f"Waiting for a preview slot: {count}. This pull request is {ordinal(place)} in line (when this "
                f"was written): it is deployed by itself, oldest first, as soon as a slot frees ({frees}); "
                "nobody needs to comment. It leaves the line when it is closed, stopped with `/preview stop`, "
                "changes no service any more, or no longer asks for a preview (a draft, its label removed).")
    if line:
        return (f"Nothing was deployed: {count}, and {MAX_WAITING} pull requests already wait in line for a "
                f"slot, the most that may wait. This one is not in line: comment `/preview` to deploy it once "
                f"a slot is free ({frees}).")
    return (f"Nothing was deployed: {count}. Comment `/preview` to deploy this one once a slot is free: "
            f"{frees}.")


# -- the line of pull requests waiting for a slot ------------------------------------------------------
#
# A PR refused at the cap waits in a line kept next to the claims, in the same Lease (LINE_ANNOTATION),
# written with the same resourceVersion precondition: a replica restarting, or another one, finds it.
# Free slots go to the line first, oldest first: a PR not in the line (or behind others in it) is
# refused while PRs ahead of it wait for the free slots, so a newcomer never jumps the line.

LINE_ANNOTATION = "preview-bot.dev/line"
# At most this many PRs of one repository wait (the Lease stays small: ~120 bytes an entry); a PR refused
# with a full line is told to comment `/preview` later.
MAX_WAITING = 20
EVENT, COMMAND = "event", "command"  # what asked: the PR's own event (a push, a label, ...) or a `/preview`


@dataclass(frozen=True)
class Waiter:
    """One PR in line. `key`: its preview key; `number`: the PR; `sha`: the commit asked for when it last
    asked; `by`: EVENT or COMMAND (a writer's `/preview`, which deploys a commit as named, even a draft's or a
    fork's); `since`: when it joined (ISO 8601 UTC)."""

    key: str
    number: int
    sha: str
    by: str
    since: str


@dataclass(frozen=True)
class Line:
    """The repository's line (oldest first) and the repository it belongs to (`repo_id`, `repo`: its name
    as last seen), so that the reconciler can act on it from the Lease alone."""

    repo_id: int | None = None
    repo: str = ""
    waiting: tuple[Waiter, ...] = ()

    def keys(self) -> list[str]:
        return [w.key for w in self.waiting]

    def place(self, key: str) -> int | None:
        """1-based place of `key` in line; None when it does not wait."""
        return next((i + 1 for i, w in enumerate(self.waiting) if w.key == key), None)


def parse_line(text: str | None) -> Line:
    """The annotation's JSON `{"repo_id": int, "repo": str, "waiting": [{"key", "pr", "sha", "by", "since"}]}`;
    anything unreadable counts as empty, an unreadable entry (or a key that is not its PR's) is dropped."""
    data = json_object(text)
    waiting: list[Waiter] = []
    for item in data.get("waiting") or []:
        try:
            waiter = Waiter(str(item["key"]), int(item["pr"]), str(item.get("sha") or ""),
                            COMMAND if item.get("by") == COMMAND else EVENT, str(item.get("since") or ""))
        except (KeyError, TypeError, ValueError):
            continue
        # A key is its PR's (bot.naming: `preview-<number>-<hash>`): anything else could never leave the line.
        if waiter.key.startswith(f"preview-{waiter.number}-") and waiter.key not in {w.key for w in waiting}:
            waiting.append(waiter)
    repo_id = data.get("repo_id")
    return Line(repo_id if isinstance(repo_id, int) else None, str(data.get("repo") or ""),
                tuple(waiting[:MAX_WAITING]))


def render_line(line: Line) -> str:
    return json.dumps({"repo_id": line.repo_id, "repo": line.repo,
                       "waiting": [{"key": w.key, "pr": w.number, "sha": w.sha, "by": w.by, "since": w.since}
                                   for w in line.waiting]}, separators=(",", ":"))


def holding(claims: Mapping[str, str], live: Iterable[str], now: datetime, stale_after: timedelta) -> set[str]:
    """The previews holding a slot: every live one, and every claim younger than `stale_after` (see decide)."""
    live_keys = set(live)
    return live_keys | {k for k, at in claims.items()
                        if (t := parse_time(at)) is not None and now - t <= stale_after}


def free_slots(claims: Mapping[str, str], live: Iterable[str], cap: int, now: datetime,
               stale_after: timedelta) -> int:
    """How many of the `cap` slots nobody holds: what the line may take now."""
    return max(cap - len(holding(claims, live, now, stale_after)), 0)


def ahead_of(line: Line, key: str, holders: Iterable[str] = ()) -> int:
    """How many PRs wait before `key` (all of them when it is not in line); one holding a slot (`holders`,
    e.g. deployed by a `/preview` meanwhile) waits no more and does not count."""
    held = set(holders)
    count = 0
    for waiter in line.waiting:
        if waiter.key == key:
            return count
        if waiter.key not in held:
            count += 1
    return count


def join(line: Line, waiter: Waiter) -> tuple[Line, int | None]:
    """`waiter` in line: one already there keeps its place (what it asks for is updated, e.g. a push);
    a new one goes last. (the line, its 1-based place), place None when the line is full (MAX_WAITING)."""
    for i, present in enumerate(line.waiting):
        if present.key == waiter.key:
            updated = (*line.waiting[:i], replace(waiter, since=present.since), *line.waiting[i + 1:])
            return replace(line, waiting=updated), i + 1
    if len(line.waiting) >= MAX_WAITING:
        return line, None
    return replace(line, waiting=(*line.waiting, waiter)), len(line.waiting) + 1


def leave(line: Line, *keys: str) -> Line:
    """The line without `keys` (deployed, closed, stopped, no longer asking)."""
    gone = set(keys)
    return replace(line, waiting=tuple(w for w in line.waiting if w.key not in gone))


@dataclass(frozen=True)
class Claim:
    """The answer to a slot request: `granted`; `used`: slots held by other previews; `place`: the PR's
    1-based place in the line when refused and waiting (None: not in line); `line_full`: it asked to wait
    and the line was full (slots.MAX_WAITING); `ahead`: PRs waiting before it that free slots go to."""

    granted: bool
    used: int
    place: int | None = None
    line_full: bool = False
    ahead: int = 0


DEPLOY_HEAD, DEPLOY_ASKED, LEAVE = "deploy-head", "deploy-asked", "leave"


def next_step(waiter: Waiter, *, is_open: bool, head: str, event_deploys: bool, draft: bool, fork: bool,
              trigger: str, label: str, configured: bool = True) -> tuple[str, str]:
    """What to do with a waiter offered a free slot, from the PR as GitHub shows it now (level-triggered):

    - DEPLOY_HEAD: the PR's own `synchronize` event would deploy its head now (bot.triggers.decide:
      `event_deploys`); deployed as that event would be (checks awaited, a stop at the head respected);
    - DEPLOY_ASKED: a writer's `/preview` asked for the commit that is still the head: deployed as the
      command would (at once), also for a draft or a fork;
    - LEAVE: closed, or nothing asks any more (a draft, the label removed under `trigger: label`, a push
      since the `/preview` under `trigger: command` or from a fork, the config file removed from the default
      branch: `configured` False); the reason as the PR comment says it.
    Returns (step, reason)."""
    if not is_open:
        return LEAVE, "the pull request is closed"
    if not configured:
        return LEAVE, "this repository has no `.github/preview.yml` on its default branch any more"
    if event_deploys:
        return DEPLOY_HEAD, ""
    if waiter.by == COMMAND and head == waiter.sha:
        return DEPLOY_ASKED, ""
    if waiter.by == COMMAND:
        return LEAVE, ("a commit was pushed since `/preview` asked for a preview; comment `/preview` to deploy "
                       "the new head")
    if draft:
        return LEAVE, "the pull request is a draft (drafts are not deployed automatically)"
    if trigger == "label":
        return LEAVE, f"the `{label}` label is no longer on the pull request"
    if fork:
        return LEAVE, "the pull request comes from a fork: a maintainer deploys its head with `/preview <sha>`"
    return LEAVE, "this repository's config no longer deploys pull requests by themselves (`trigger: command`)"


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"
