"""bot.commands: `/preview ...` comment parsing."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.commands import HELP_TEXT, Action, Command, parse_command


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
    ],
)
def test_not_a_command(body: str) -> None:
    assert parse_command(body) is None


def test_first_command_wins() -> None:
    assert parse_command("/preview stop\n/preview") == Command(Action.STOP)
    assert parse_command("```\n/preview stop\n```\n/preview keep") == Command(Action.KEEP)


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
