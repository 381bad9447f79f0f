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
    LINK = "link"
    UNLINK = "unlink"


@dataclass(frozen=True)
class Command:
    action: Action
    unknown: str | None = None  # the subcommand we did not understand, answered with help
    argument: str | None = None  # the word after the subcommand (`/preview link owner/repo#N`)


HELP_TEXT = """\
**preview-bot commands** (in a comment on the pull request):

| command | what it does |
| --- | --- |
| `/preview` (or `/preview deploy`) | deploy (or redeploy) this pull request's head commit now |
| `/preview stop` | tear the preview down |
| `/preview keep` | keep the preview even when it is idle (no automatic clean-up) |
| `/preview explain` | show how requests reach this preview: which route matches, and why the others do not |
| `/preview link owner/repo#N` | PR N of owner/repo joins this preview: one URL reaches both builds (write on both) |
| `/preview unlink` | end this pull request's links |
| `/preview help` | show this help |

Every command but help needs write access to the repository."""

_SUBCOMMANDS = {"": Action.DEPLOY, "deploy": Action.DEPLOY, "stop": Action.STOP, "help": Action.HELP,
                "keep": Action.KEEP, "explain": Action.EXPLAIN, "link": Action.LINK, "unlink": Action.UNLINK}


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
        if action is Action.LINK:
            return Command(action, argument=words[1][:200] if len(words) > 1 else None)
        return Command(action)
    return None
