"""bot.commands: `/preview ...` comment parsing."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.commands import HELP_TEXT, MAX_LINES, MAX_SCANNED, Action, Command, help_reply, might_be_command, parse_command


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("/preview", Command(Action.DEPLOY)),
        ("/preview deploy", Command(Action.DEPLOY)),
        ("/preview stop", Command(Action.STOP)),
        ("/preview keep", Command(Action.KEEP)),
        ("/preview help", Command(Action.HELP)),
        ("/preview explain", Command(Action.EXPLAIN)),
        ("/preview link acme/api#12", Command(Action.LINK, argument="acme/api#12")),
        ("/preview link", Command(Action.LINK)),
        ("/preview unlink", Command(Action.UNLINK)),
        ("/preview Explain please", Command(Action.EXPLAIN)),
        ("/preview STOP", Command(Action.STOP)),
        ("  /preview\tstop  ", Command(Action.STOP)),
        ("/preview stop now please", Command(Action.STOP)),
        ("/preview\r\n", Command(Action.DEPLOY)),
        ("LGTM!\n\n/preview stop\n", Command(Action.STOP)),
        ("/preview frobnicate", Command(Action.HELP, unknown="frobnicate")),
        ("/preview Frob", Command(Action.HELP, unknown="Frob")),
        # Named commits (7 to 40 hex, compared in lower case).
        ("/preview 1a2b3c4", Command(Action.DEPLOY, sha="1a2b3c4")),
        ("/preview deploy 1A2B3C4D", Command(Action.DEPLOY, sha="1a2b3c4d")),
        ("/preview " + "f" * 40, Command(Action.DEPLOY, sha="f" * 40)),
        ("/preview deploy now", Command(Action.DEPLOY)),
        ("/preview 1a2b3c", Command(Action.HELP, unknown="1a2b3c")),  # six: not a commit
        ("/preview " + "f" * 41, Command(Action.HELP, unknown="f" * 40)),
        ("/preview link acme/api#12 " + "a" * 40, Command(Action.LINK, argument="acme/api#12", sha="a" * 40)),
        ("/preview link acme/api#12 please", Command(Action.LINK, argument="acme/api#12")),
        # Where GitHub shows it on a line of its own, it is one.
        ("LGTM!\n/preview stop", Command(Action.STOP)),
        ("LGTM!  \n/preview stop", Command(Action.STOP)),
        ("hello\r/preview stop", Command(Action.STOP)),  # CR is a CommonMark line ending
        ("<details>\n\n/preview stop\n\n</details>", Command(Action.STOP)),
        ("- item\n\n/preview stop", Command(Action.STOP)),
        ("/preview\u00a0stop", Command(Action.STOP)),
        ("/preview stop <!-- why -->", Command(Action.STOP)),
        ("/preview link acme/my\\_api#2", Command(Action.LINK, argument="acme/my_api#2")),
        # ASCII case only: the Kelvin sign lower-cases to `k`, the dotted I to `i̇`.
        ("/preview \u212aeep", Command(Action.HELP, unknown="\u212aeep")),
        ("/preview L\u0130NK acme/x#1", Command(Action.HELP, unknown="L\u0130NK")),
    ],
)
def test_commands(body: str, expected: Command) -> None:
    assert parse_command(body) == expected


@pytest.mark.parametrize(
    "body",
    [
        "",
        "looks good",
        "/previewer stop",
        "/previews",
        "please run /preview",
        "> /preview stop",
        "`/preview stop`",
        "```\n/preview stop\n```",
        "~~~\n/preview\n~~~",
        "/Preview stop",
        "preview stop",
        # Code, quotes, HTML and other blocks, as CommonMark (GitHub Flavored Markdown) reads them.
        "Example of usage:\n\n    /preview stop\n",  # indented code block
        "Usage:\n\n\t/preview stop\n",
        "````md\n```\n/preview stop\n```\n````\n",  # a longer fence holds a shorter one
        "```\n~~~\n/preview stop\n```\n",  # `~~~` does not close a ``` fence
        "~~~~\n~~~\n/preview stop\n~~~~\n",  # nor a shorter one a longer
        "<!--\n/preview stop\n-->\n",  # an HTML comment
        "Some text <!--\n/preview stop\n--> more",  # inline
        "> Someone wrote:\n/preview stop\n",  # a lazy continuation line of the quote
        "> > deep\n/preview stop",
        "a `code span\n/preview stop` b",
        "- /preview stop",
        "1. /preview stop",
        "# /preview stop",
        "/preview stop\n---",  # a heading (setext)
        "| a |\n| --- |\n/preview stop",  # a table row
        "hello\u2028/preview stop",  # U+2028 does not end a line
        "hello\u0085/preview stop",
        "hello\f/preview stop",
        "\\/preview stop",  # escaped
        "/preview`stop`",
        "**/preview stop**",
    ],
)
def test_not_a_command(body: str) -> None:
    assert parse_command(body) is None


def test_first_command_wins() -> None:
    assert parse_command("/preview stop\n/preview") == Command(Action.STOP)
    assert parse_command("```\n/preview stop\n```\n/preview keep") == Command(Action.KEEP)


def test_only_the_first_characters_are_read() -> None:
    """Markdown parsing costs some microseconds a character on hostile input; a comment holds 65,536."""
    filler = ("x" * 99 + "\n") * (MAX_SCANNED // 100 + 1)  # fewer than MAX_LINES lines
    assert parse_command(filler[:MAX_SCANNED - 20] + "\n/preview stop") == Command(Action.STOP)
    assert parse_command(filler + "\n/preview stop") is None
    assert parse_command("x" * (MAX_SCANNED + 1) + "\n/preview stop") is None
    assert parse_command("\n" * (MAX_LINES - 1) + "/preview stop") == Command(Action.STOP)
    assert parse_command("\r\n" * (MAX_LINES - 1) + "/preview stop\r\nmore") == Command(Action.STOP)
    assert parse_command("\n" * MAX_LINES + "/preview stop") is None


_PIECES = ["/preview", " stop", "\n", "\r", "\t", " ", ">", "`", "~", "<!--", "-->", "    ", "- ", "#", "|", "\\",
           "x", "\u2028", "---"]


@given(st.lists(st.sampled_from(_PIECES), max_size=30).map("".join))
def test_the_cheap_test_holds_for_every_command(body: str) -> None:
    """The test that spares most comments the Markdown parse never drops a command."""
    if parse_command(body) is not None:
        assert might_be_command(body)


def test_help_reply_echoes_only_plain_words() -> None:
    assert help_reply(Command(Action.HELP, unknown="frob")).startswith("Unknown command `/preview frob`.")
    assert help_reply(Command(Action.HELP, unknown="`@x")).startswith("Unknown command `/preview that`.")


def test_unclosed_code_block_hides_the_rest() -> None:
    assert parse_command("```python\n/preview stop") is None


def test_unknown_subcommand_is_truncated() -> None:
    command = parse_command("/preview " + "x" * 500)
    assert command is not None
    assert command.action is Action.HELP
    assert command.unknown == "x" * 40


@given(st.text(max_size=200))
def test_never_raises_and_unknown_is_bounded(body: str) -> None:
    command = parse_command(body)
    if command is not None:
        assert isinstance(command.action, Action)
        assert command.unknown is None or 0 < len(command.unknown) <= 40
        assert command.unknown is None or command.action is Action.HELP


def test_help_lists_every_command() -> None:
    for word in ("/preview`", "/preview stop", "/preview keep", "/preview help"):
        assert word in HELP_TEXT
