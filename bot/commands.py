"""`/preview ...` comment commands (pure): their syntax, the answers the bot gives to people without write
access, and which commit a deploy command approves.

Syntax. A command is a line of a comment, in a paragraph at the top level of the comment's Markdown, that
starts with `/preview` followed by a space, a tab or the end of the line. The block structure is
CommonMark's, as GitHub renders comments (GitHub Flavored Markdown: tables too), read by markdown-it-py:
lines in code blocks (fenced or indented), block quotes (lazy continuation lines included), HTML blocks and
comments, list items, headings and table cells are not commands, nor is a line that starts inside a code
span or inline HTML. Lines end at CommonMark's line endings only (LF, CR LF, CR; not U+2028). Words are
compared ignoring case in ASCII only (the Kelvin sign is not a `k`). Only the first MAX_LINES lines of a
comment, at most MAX_SCANNED characters, are read: a comment may hold 65,536 characters, and intake
parses every comment in which `might_be_command` finds a line starting with `/preview` (most comments
have none and cost no parsing).
"""

from __future__ import annotations

import enum
import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from markdown_it import MarkdownIt
from markdown_it.rules_inline import StateInline
from markdown_it.token import Token

from bot.comment import by_app
from bot.triggers import is_fork

PREFIX = "/preview"
# What is read of a comment: Markdown parsing costs tens of microseconds a line (markdown-it-py, pure
# Python), and intake parses every comment that has a line starting with `/preview`.
MAX_SCANNED = 10_000  # characters
MAX_LINES = 200
# A commit named in a command: `/preview 1a2b3c4`, `/preview link acme/api#7 1a2b3c4...`.
_SHA = re.compile(r"[0-9A-Fa-f]{7,40}")


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
    sha: str | None = None  # the commit named (7 to 40 hex, lower case): `/preview <sha>`, `/preview link X <sha>`


HELP_TEXT = "\n".join([
    "**preview-bot commands** (in a comment on the pull request):",
    "",
    "| command | what it does |",
    "| --- | --- |",
    "| `/preview` (or `/preview deploy`) | deploy (or redeploy) this pull request's head commit now |",
    "| `/preview <commit>` | the same, if the head is still that commit (from a fork: required, with the full "
    "40-character SHA) |",
    "| `/preview stop` | tear the preview down |",
    "| `/preview keep` | keep the preview even when it is idle (no automatic clean-up) |",
    "| `/preview explain` | show how requests reach this preview: which route matches, and why the others do not |",
    "| `/preview link owner/repo#N` | PR N of owner/repo joins this preview: one URL reaches both builds (write on "
    "both; from a fork, add its full commit SHA) |",
    "| `/preview unlink` | end this pull request's links |",
    "| `/preview help` | show this help |",
    "",
    "Every command but help needs write access to the repository.",
])

_SUBCOMMANDS = {"": Action.DEPLOY, "deploy": Action.DEPLOY, "stop": Action.STOP, "help": Action.HELP,
                "keep": Action.KEEP, "explain": Action.EXPLAIN, "link": Action.LINK, "unlink": Action.UNLINK}

# -- parsing --------------------------------------------------------------------------------------

# A line that starts with the prefix, after spaces or tabs (the only indentation CommonMark strips).
_CANDIDATE = re.compile(r"(?:^|[\r\n])[ \t]*" + re.escape(PREFIX))
_LINE_END = re.compile(r"\r\n?|\n")  # CommonMark's line endings
# Inline, only what can hide the start of a line: code spans, raw HTML (comments, tags over several
# lines), autolinks, backslash escapes, line breaks. Links and emphasis never hide text, and they are
# what makes inline parsing slow on hostile input.
_INLINE_STOPS = re.compile(r"[\n\\`<]")


def _text(state: StateInline, silent: bool) -> bool:
    """markdown-it's `text` rule, stopping only where an enabled inline rule may start."""
    found = _INLINE_STOPS.search(state.src, state.pos, state.posMax)
    end = found.start() if found else state.posMax
    if end == state.pos:
        return False
    if not silent:
        state.pending += state.src[state.pos:end]
    state.pos = end
    return True


def _markdown() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": True}).enable("table")
    md.disable(["emphasis", "link", "image", "entity", "text_join"])  # text_join: an escaped `\/preview` stays apart
    md.inline.ruler.at("text", _text)
    return md


_MD = _markdown()


def might_be_command(body: str) -> bool:
    """Cheap: some line starts with `/preview`; false only for comments without a command."""
    return PREFIX in body and _CANDIDATE.search(body) is not None


def _scanned(body: str) -> str:
    """The first MAX_LINES whole lines of `body`, at most MAX_SCANNED characters."""
    ends = [found.start() for found in itertools.islice(_LINE_END.finditer(body), MAX_LINES)]
    if len(ends) < MAX_LINES:
        ends.append(len(body))  # the last line, which has no line ending
    kept = [end for end in ends if end <= MAX_SCANNED]
    return body[:kept[-1]] if kept else ""


def _line_starts(inline: Token) -> list[str]:
    """The lines of a paragraph that start with plain text, as text (code spans with their backticks,
    inline HTML left out)."""
    lines: list[str] = []
    current: list[str] | None = []
    for child in inline.children or []:
        if child.type in ("softbreak", "hardbreak"):
            if current is not None:
                lines.append("".join(current))
            current = []
        elif current is None:
            continue
        elif not current and child.type != "text":
            current = None  # the line starts with something else: a code span, HTML, an escape
        elif child.type in ("text", "text_special"):  # text_special: a backslash escape
            current.append(child.content)
        elif child.type == "code_inline":
            current.append(f"{child.markup}{child.content}{child.markup}")
    if current is not None:
        lines.append("".join(current))
    return lines


def _command(line: str) -> Command | None:
    if not line.startswith(PREFIX):
        return None
    rest = line[len(PREFIX):]
    if rest and not rest[0].isspace():
        return None  # `/previewer` is not our command
    words = rest.split()
    word = words[0] if words else ""
    sub = word.lower() if word.isascii() else word  # ASCII only: `\u212aeep` (Kelvin sign) is not `keep`
    if _SHA.fullmatch(word):
        return Command(Action.DEPLOY, sha=word.lower())
    action = _SUBCOMMANDS.get(sub)
    if action is None:
        return Command(Action.HELP, unknown=word[:40])
    if action is Action.DEPLOY and len(words) > 1 and _SHA.fullmatch(words[1]):
        return Command(action, sha=words[1].lower())
    if action is Action.LINK:
        sha = words[2].lower() if len(words) > 2 and _SHA.fullmatch(words[2]) else None
        return Command(action, argument=words[1][:200] if len(words) > 1 else None, sha=sha)
    return Command(action)


def parse_command(body: str) -> Command | None:
    """The first command of a comment (see the module docstring); None if there is none."""
    if not might_be_command(body):
        return None
    tokens = _MD.parse(_scanned(body))
    for opening, token in itertools.pairwise(tokens):
        if opening.type != "paragraph_open" or opening.level != 0 or PREFIX not in token.content:
            continue  # level 0: a paragraph at the top level, not in a quote, a list item or a table
        for line in _line_starts(token):
            command = _command(line)
            if command is not None:
                return command
    return None


# -- people without write access ------------------------------------------------------------------

# Marks the bot's answer to a person without write access: the record that the PR had its answer.
ANSWER_MARKER = "<!-- preview-bot:answer -->"
STRANGER_NOTE = ("<sub>People without write access to this repository get one answer of the bot per pull request "
                 "a day, this one; their other commands until then get none.</sub>")


def help_reply(command: Command) -> str:
    """The answer to `/preview help` or an unknown subcommand."""
    # Echo the word only when it is plain: a backtick or @mention must not escape into Markdown.
    word = command.unknown if command.unknown and re.fullmatch(r"[\w-]{1,40}", command.unknown) else "that"
    prefix = f"Unknown command `/preview {word}`.\n\n" if command.unknown else ""
    return prefix + HELP_TEXT


def stranger_reply(command: Command, user: str) -> str:
    """The one answer a person without write access gets (see ANSWER_MARKER)."""
    if command.action is Action.HELP:
        text = help_reply(command)
    else:
        text = (f"@{user} `/preview {command.action.value}` needs write access to this repository; nothing was "
                f"changed.\n\n{HELP_TEXT}")
    return f"{ANSWER_MARKER}\n{text}\n\n{STRANGER_NOTE}"


def is_answer(item: Mapping[str, Any], app_id: int | None) -> bool:
    """A comment of the App `app_id` carrying ANSWER_MARKER (bot.comment.by_app)."""
    return by_app(item, app_id) and ANSWER_MARKER in str(item.get("body") or "")


# -- which commit a deploy command approves --------------------------------------------------------


@dataclass(frozen=True)
class Approval:
    """The commit a deploy command lets the bot deploy (`sha`), or None and why not (`reason`)."""

    head: str  # the PR's head commit when the command runs
    sha: str | None
    reason: str = ""

    def refusal(self, command: str) -> str:
        """The reply when nothing is deployed; `command` is how to ask again (`/preview`, `/preview link X`)."""
        return (f"Nothing was deployed: {self.reason}. The head commit is now `{self.head}`: if that is the commit "
                f"you reviewed, comment `{command} {self.head}`.")


def approve(pull: Mapping[str, Any], named: str | None) -> Approval:
    """Which commit of `pull` (as read when the command runs) a writer's command deploys.

    `named` (from `/preview <sha>`) must be the head's SHA or its start: the bot previews heads. A pull
    request from a fork is deployed only when the command names its head in full: its author can push at
    any time, also between a maintainer's review and the moment the command runs, and can make a commit
    whose SHA starts with chosen characters; a full SHA names one commit."""
    head = str(pull["head"]["sha"])
    if named is not None and not head.startswith(named):
        return Approval(head, None, f"`{named}` is not the head of the pull request")
    if is_fork(pull) and named != head:
        what = "with its full SHA (40 hex characters)" if named else "by its SHA"
        return Approval(head, None, f"the pull request comes from a fork, so its code is deployed only when the "
                                    f"command names the commit {what}")
    return Approval(head, head)
