"""bot.comment: the sticky pull-request comment."""

from __future__ import annotations

import pytest

from bot.comment import (
    MARKER,
    Report,
    ServiceLine,
    State,
    is_sticky,
    live_section,
    render,
    stopped_at,
    with_links,
)


def test_marker_first_and_state_heading() -> None:
    text = render(Report(State.READY))
    lines = text.splitlines()
    assert lines[0] == MARKER
    assert lines[1] == "### ✅ Preview: ready"
    assert "/preview help" in text
    assert is_sticky(text)


@pytest.mark.parametrize("state", list(State))
def test_every_state_renders(state: State) -> None:
    text = render(Report(state))
    assert f"Preview: {state.value}" in text
    assert text.startswith(MARKER)


def test_sha_is_shortened_and_header_shown() -> None:
    text = render(Report(State.DEPLOYING, sha="0123456789abcdef0123", header_value="preview-7-abcdef"))
    assert "Commit: `0123456789ab`" in text
    assert "0123456789abc`" not in text
    assert "Header: `x-preview: preview-7-abcdef` (forward it" in text


@pytest.mark.parametrize(("name", "mode", "line"), [
    ("x-pr-key", "header", "Header: `x-pr-key: preview-7-abcdef` (forward it on your services' outgoing calls)"),
    ("x-preview", "baggage", "Baggage: the W3C baggage member `preview=preview-7-abcdef` "
                             "(`baggage: preview=preview-7-abcdef`) (forward it on your services' outgoing calls)"),
    ("x-pr-key", "both", "Header or baggage: `x-pr-key: preview-7-abcdef` or the W3C baggage member "
                         "`preview=preview-7-abcdef` (`baggage: preview=preview-7-abcdef`) (forward it on your "
                         "services' outgoing calls)"),
])
def test_key_line_names_what_the_mesh_matches(name: str, mode: str, line: str) -> None:
    """PREVIEW_HEADER and PREVIEW_MATCH decide what services must forward; the comment says exactly that."""
    text = render(Report(State.READY, header_value="preview-7-abcdef", header_name=name,
                         match_mode=mode))  # type: ignore[arg-type]
    assert line in text.splitlines()
    assert "X-PREVIEW" not in text


def test_service_table() -> None:
    services = [
        ServiceLine("a", "https://preview-7-api-a.example.com", "registry.example.com/a:1", True),
        ServiceLine("b|c", "https://preview-7-api-b.example.com", "img|x\ny", False),
    ]
    text = render(Report(State.READY, services=services))
    lines = text.splitlines()
    assert "| service | URL | image | ready |" in lines
    assert "| a | https://preview-7-api-a.example.com | `registry.example.com/a:1` | yes |" in lines
    # A pipe or newline in a value cannot break the table.
    assert "| b\\|c | https://preview-7-api-b.example.com | `img\\|x y` | no |" in lines


def test_no_table_without_services_and_detail_is_appended() -> None:
    text = render(Report(State.CONFIG_ERROR, detail="`.github/preview.yml`: services[0].port: bad"))
    assert "| service |" not in text
    assert "services[0].port: bad" in text
    assert text.index("services[0].port") > text.index("Preview: configuration error")


@pytest.mark.parametrize(("body", "expected"), [(None, False), ("", False), ("hello", False),
                                                 (f"x\n{MARKER}\ny", True)])
def test_is_sticky(body: str | None, expected: bool) -> None:
    assert is_sticky(body) is expected


def test_render_is_deterministic() -> None:
    report = Report(State.FAILED, sha="abc", detail="boom", services=[ServiceLine("a", "u", "i", False)])
    assert render(report) == render(report)


def test_a_stopped_comment_records_the_head_it_was_stopped_at() -> None:
    sha = "ab" * 20
    body = render(Report(State.STOPPED, sha=sha.upper(), detail="Stopped by @alice with `/preview stop`."))
    assert stopped_at(body) == sha
    assert stopped_at(with_links(body, ["linked to acme/web#3"])) == sha
    assert stopped_at(render(Report(State.STOPPED, sha="cd" * 32))) == "cd" * 32  # SHA-256 repositories


@pytest.mark.parametrize("report", [
    Report(State.STOPPED, detail="older comments have no record"),
    Report(State.READY, sha="ab" * 20),
    Report(State.NOT_DEPLOYED, sha="ab" * 20),
    Report(State.STOPPED, sha="ab" * 20, detail="<!-- preview-bot:stopped-at " + "cd" * 20 + " --> quoted"),
])
def test_only_a_stop_records_a_head(report: Report) -> None:
    body = render(report)
    assert stopped_at(body) == (report.sha if report.state is State.STOPPED else None)
    assert stopped_at(None) is None


OLD = "a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1"
NEW = "b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2"
LIVE = Report(State.READY, sha=OLD, header_value="preview-7-abcdef",
              services=[ServiceLine("a", "https://preview-7-api-a.example.com", "registry.example.com/a:1", True)])


@pytest.mark.parametrize("state", [State.WAITING_CHECKS, State.NOT_DEPLOYED, State.CONFIG_ERROR,
                                   State.WAITING_APPROVAL])
def test_a_newer_commit_that_does_not_deploy_keeps_showing_the_live_preview(state: State) -> None:
    """A push waiting for checks (or refused by them, or by a broken config, or a fork's waiting for a
    maintainer) leaves the earlier preview serving: its URL and commit stay in the comment, said to be
    live until the new commit deploys; and again in the next such comment."""
    section = live_section(render(LIVE))
    assert section is not None and "https://preview-7-api-a.example.com" in section and "a1a1a1a1a1a1" in section
    text = render(Report(state, sha=NEW, detail="why", keeps_live=True, still_live=section))
    assert text.index("Commit: `b2b2b2b2b2b2`") < text.index("why") < text.index("**Still live**") \
        < text.index("Commit: `a1a1a1a1a1a1`") < text.index("https://preview-7-api-a.example.com")
    assert live_section(text) == section  # carried again by the next one


def test_nothing_is_carried_unless_the_preview_stays() -> None:
    section = live_section(render(LIVE))
    assert "Still live" not in render(Report(State.STOPPED, sha=NEW, still_live=section))
    assert "Still live" not in render(Report(State.WAITING_CHECKS, sha=NEW, keeps_live=True, still_live=None))
    for state in (State.DEPLOYING, State.FAILED, State.STOPPED, State.NOT_DEPLOYED):
        assert live_section(render(Report(state, sha=OLD, services=LIVE.services))) is None
