"""`/preview ...` comment commands (pure)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

PREFIX = "/preview"


class Action(enum.Enum):
    DEPLOY = "deploy"
    STOP = "stop"
    HELP = "help"
    KEEP = "keep"
    EXPLAIN = "explain"


@dataclass(frozen=True)
class Command:
    action: Action
    unknown: str | None = None  # the subcommand we did not understand, answered with help


HELP_TEXT = """\
**preview-bot commands** (in a comment on the pull request):

| command | what it does |
| --- | --- |
| `/preview` | deploy (or redeploy) this pull request's head commit now |
| `/preview stop` | tear the preview down |
| `/preview keep` | keep the preview even when it is idle (no automatic clean-up) |
| `/preview explain` | show how requests reach this preview: which route matches, and why the others do not |
| `/preview help` | show this help |

Deploying, stopping, keeping and explaining need write access to the repository."""

_SUBCOMMANDS = {"": Action.DEPLOY, "deploy": Action.DEPLOY, "stop": Action.STOP, "help": Action.HELP,
                "keep": Action.KEEP, "explain": Action.EXPLAIN}


def parse_command(body: str) -> Command | None:
    """The first `/preview` line of a comment, outside quotes and code blocks; None if there is none."""
    in_code = False
    for raw_line in body.splitlines():
        line = raw_line.strip()
        if line.startswith("```") or line.startswith("~~~"):
            in_code = not in_code
            continue
        if in_code or not line.startswith(PREFIX):
            continue
        rest = line[len(PREFIX):]
        if rest and not rest[0].isspace():
            continue  # `/previewer` is not our command
        words = rest.split()
        sub = words[0].lower() if words else ""
        action = _SUBCOMMANDS.get(sub)
        if action is None:
            return Command(Action.HELP, unknown=words[0][:40])
        return Command(action)
    return None
