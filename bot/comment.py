"""The sticky pull-request comment: its hidden marker and its text (pure)."""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bot import mesh_routes
from bot.settings import MatchMode

MARKER = "<!-- preview-bot:sticky -->"
LINKS_START = "<!-- preview-bot:links -->"
LINKS_END = "<!-- /preview-bot:links -->"
_FOOTER = "<sub>Comment `/preview help` for commands. This comment is updated in place.</sub>"


class State(enum.Enum):
    DEPLOYING = "deploying"
    READY = "ready"
    FAILED = "failed"
    STOPPED = "stopped"
    WAITING_APPROVAL = "waiting for approval"
    CONFIG_ERROR = "configuration error"
    NOT_DEPLOYED = "not deployed"
    WAITING_CHECKS = "waiting for checks"
    WAITING_SLOT = "waiting for a slot"  # refused at the repository's cap, in line for a slot (bot.slots)


_ICONS = {State.DEPLOYING: "⏳", State.READY: "✅", State.FAILED: "❌", State.STOPPED: "🛑",
          State.WAITING_APPROVAL: "✋", State.CONFIG_ERROR: "⚠️", State.NOT_DEPLOYED: "💤",
          State.WAITING_CHECKS: "🕒", State.WAITING_SLOT: "🚦"}


@dataclass(frozen=True)
class ServiceLine:
    name: str
    url: str
    image: str
    ready: bool


@dataclass(frozen=True)
class Report:
    state: State
    sha: str | None = None
    services: Sequence[ServiceLine] = ()
    detail: str | None = None
    header_value: str | None = None  # the preview key
    # How requests carry the key (PREVIEW_HEADER, PREVIEW_MATCH): the line says what to forward.
    header_name: str = "x-preview"
    match_mode: MatchMode = "header"
    links: Sequence[str] = ()  # linked previews across repositories (bot.links), one line each
    # This report is about a newer commit while the preview of an earlier one keeps serving (waiting for
    # checks or approval, a check failed, a broken config): the comment keeps showing it (still_live).
    keeps_live: bool = False
    still_live: str | None = None  # the live section of the comment this one replaces (live_section)


# A stopped preview's comment records the PR's head at the stop, for the bot itself: discovery after a
# restart must not take a preview stopped on purpose (or removed when idle) for a deploy lost while down.
_STOPPED_AT = re.compile(r"^<!-- preview-bot:stopped-at ([0-9a-f]{40}|[0-9a-f]{64}) -->$", re.MULTILINE)


def stopped_at(body: str | None) -> str | None:
    """The head commit (40 or 64 hex characters) at which the sticky comment `body` says the preview was
    stopped; None when it says something else (or is an older comment without the record)."""
    found = _STOPPED_AT.search(body or "")
    return found.group(1) if found else None


def fork_waiting(sha: str) -> str:
    """What a fork's PR shows until a maintainer deploys a commit of it (bot.commands.approve)."""
    return ("This pull request comes from a fork, so its code is not deployed automatically. A maintainer "
            f"(write access) who has reviewed the head commit deploys it with `/preview {sha}` (the command names "
            "the commit in full); each later push needs a new one.")


def by_app(item: Mapping[str, Any], app_id: int | None) -> bool:
    """The comment `item` (as GitHub's REST API and webhooks give it) was written by the App `app_id`:
    GitHub names the App that made a comment in `performed_via_github_app` (its author is then the App's
    bot account). Not any bot's: another App may post text a stranger chose (a file name, a PR title), and
    the markers the bot reads in its own comments must not be forged that way. `app_id` None (a tool that
    does not know the App): any bot account's comment counts."""
    if app_id is None:
        return (item.get("user") or {}).get("type") == "Bot"
    return (item.get("performed_via_github_app") or {}).get("id") == app_id


def is_sticky(body: str | None) -> bool:
    return bool(body) and MARKER in (body or "")


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


LIVE_START = "<!-- preview-bot:live -->"
LIVE_END = "<!-- /preview-bot:live -->"
_STILL_LIVE = "**Still live** until this commit deploys: the preview of an earlier commit."


def live_section(body: str | None) -> str | None:
    """The part of a sticky comment that shows a serving preview (commit, header, URLs), markers
    included: from a `ready` comment, or carried over by a later one; None when there is none."""
    text = body or ""
    start, end = text.find(LIVE_START), text.find(LIVE_END)
    return text[start:end + len(LIVE_END)] if start != -1 and end > start else None


def shows(body: str | None, state: State) -> bool:
    """The sticky comment `body` reports `state` (its heading, as `render` writes it)."""
    return _heading(state) in (body or "")


def _heading(state: State) -> str:
    return f"### {_ICONS[state]} Preview: {state.value}"


def render(report: Report) -> str:
    lines = [MARKER, _heading(report.state), ""]
    if report.state is State.STOPPED and report.sha:
        lines.insert(1, f"<!-- preview-bot:stopped-at {report.sha.lower()} -->")
    shown: list[str] = []
    if report.sha:
        shown.append(f"Commit: `{report.sha[:12]}`")
    if report.header_value:
        carrier = mesh_routes.carrier_text(report.header_value, header_name=report.header_name,
                                           mode=report.match_mode)
        what = {"header": "Header", "baggage": "Baggage", "both": "Header or baggage"}[report.match_mode]
        shown.append(f"{what}: {carrier} (forward it on your services' outgoing calls)")
    if report.services:
        shown += ["", "| service | URL | image | ready |", "| --- | --- | --- | --- |"]
        shown += [f"| {_escape(s.name)} | {s.url} | `{_escape(s.image)}` | {'yes' if s.ready else 'no'} |"
                  for s in report.services]
    lines += [LIVE_START, *shown, "", LIVE_END] if report.state is State.READY else shown
    if report.detail:
        lines += ["", report.detail]
    if report.keeps_live and report.still_live:
        lines += ["", _STILL_LIVE, "", report.still_live]
    lines += ["", _FOOTER]
    return with_links("\n".join(lines), report.links)


def links_section(links: Sequence[str]) -> str:
    return "\n".join([LINKS_START, *links, LINKS_END]) if links else ""


def with_links(body: str, links: Sequence[str]) -> str:
    """The sticky text with its links section replaced (or added above the footer, or removed)."""
    start, end = body.find(LINKS_START), body.find(LINKS_END)
    section = links_section(links)
    if start != -1 and end > start:
        head, tail = body[:start].rstrip("\n"), body[end + len(LINKS_END):].lstrip("\n")
        return f"{head}\n\n{section}\n\n{tail}" if section else f"{head}\n\n{tail}"
    if not section:
        return body
    footer = body.rfind(_FOOTER)
    if footer == -1:
        return f"{body.rstrip()}\n\n{section}"
    return f"{body[:footer].rstrip()}\n\n{section}\n\n{body[footer:]}"
