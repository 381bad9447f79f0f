"""The sticky pull-request comment: its hidden marker and its text (pure)."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

MARKER = "<!-- preview-bot:sticky -->"


class State(enum.Enum):
    DEPLOYING = "deploying"
    READY = "ready"
    FAILED = "failed"
    STOPPED = "stopped"
    WAITING_APPROVAL = "waiting for approval"
    CONFIG_ERROR = "configuration error"
    NOT_DEPLOYED = "not deployed"
    WAITING_CHECKS = "waiting for checks"


_ICONS = {State.DEPLOYING: "⏳", State.READY: "✅", State.FAILED: "❌", State.STOPPED: "🛑",
          State.WAITING_APPROVAL: "✋", State.CONFIG_ERROR: "⚠️", State.NOT_DEPLOYED: "💤",
          State.WAITING_CHECKS: "🕒"}


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
    header_value: str | None = None


def is_sticky(body: str | None) -> bool:
    return bool(body) and MARKER in (body or "")


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(report: Report) -> str:
    lines = [MARKER, f"### {_ICONS[report.state]} Preview: {report.state.value}", ""]
    if report.sha:
        lines.append(f"Commit: `{report.sha[:12]}`")
    if report.header_value:
        lines.append(f"Header: `X-PREVIEW: {report.header_value}` (forward it on your services' outgoing calls)")
    if report.services:
        lines += ["", "| service | URL | image | ready |", "| --- | --- | --- | --- |"]
        lines += [f"| {_escape(s.name)} | {s.url} | `{_escape(s.image)}` | {'yes' if s.ready else 'no'} |"
                  for s in report.services]
    if report.detail:
        lines += ["", report.detail]
    lines += ["", "<sub>Comment `/preview help` for commands. This comment is updated in place.</sub>"]
    return "\n".join(lines)
