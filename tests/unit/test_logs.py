"""bot.logs: JSON lines with the event's fields; secrets scrubbed from messages and exceptions."""

from __future__ import annotations

import contextvars
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from bot import logs

GHS = "ghs_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
GHP = "ghp_" + "z" * 36
PAT = "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz"
JWT = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiIxMjM0NSIsImV4cCI6MTcwMDAwMDAwMH0.c2lnbmF0dXJlLWJ5dGVz_-x"
PEM_BODY = "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gunVTLw7onLRnrq0"
PEM = f"-----BEGIN RSA PRIVATE KEY-----\n{PEM_BODY}\nabcdEFGH1234+/==\n-----END RSA PRIVATE KEY-----"
BEARER = "Bearer s3cretT0kenValue42"
SECRETS = [GHS, GHP, PAT, JWT, PEM, BEARER]


@pytest.fixture
def capture() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    logger = logging.getLogger("tests.unit.logs")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    yield logger, stream
    logger.handlers[:] = []


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def in_context(fields: dict[str, Any], fn: Any) -> None:
    def run() -> None:
        logs.EVENT_FIELDS.set(fields)
        fn()
    contextvars.copy_context().run(run)


def test_each_line_is_json_with_basic_fields(capture: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = capture
    logger.info("hello %s", "world")
    logger.warning("second")
    (first, second) = lines(stream)
    assert first["message"] == "hello world"
    assert first["level"] == "info" and second["level"] == "warning"
    assert first["logger"] == "tests.unit.logs"
    assert first["time"].endswith("+00:00")
    assert "delivery" not in first


def test_event_fields_are_on_every_line(capture: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = capture
    fields = {"delivery": "d-123", "event": "pull_request", "action": "opened", "repo": "acme/shop", "pr": 7}

    def work() -> None:
        logger.info("processing")
        logger.error("failed", extra={"queue_key": "acme/shop#7"})

    in_context(fields, work)
    logger.info("outside")
    inside_1, inside_2, outside = lines(stream)
    for entry in (inside_1, inside_2):
        assert entry["delivery"] == "d-123"
        assert entry["repo"] == "acme/shop"
        assert entry["pr"] == 7
        assert entry["action"] == "opened"
    assert inside_2["queue_key"] == "acme/shop#7"
    assert "delivery" not in outside and "repo" not in outside


async def test_event_fields_do_not_leak_between_tasks(capture: tuple[logging.Logger, io.StringIO]) -> None:
    import asyncio

    logger, stream = capture

    async def handle(delivery: str, pr: int) -> None:
        logs.EVENT_FIELDS.set({"delivery": delivery, "repo": "acme/shop", "pr": pr})
        await asyncio.sleep(0)
        logger.info("done")

    await asyncio.gather(handle("d-1", 1), handle("d-2", 2))
    entries = lines(stream)
    assert sorted((e["delivery"], e["pr"]) for e in entries) == [("d-1", 1), ("d-2", 2)]


@pytest.mark.parametrize("secret", SECRETS, ids=["ghs", "ghp", "pat", "jwt", "pem", "bearer"])
def test_secrets_in_messages_are_redacted(capture: tuple[logging.Logger, io.StringIO], secret: str) -> None:
    logger, stream = capture
    logger.info("calling GitHub with %s now", secret)
    (entry,) = lines(stream)
    assert "[redacted]" in entry["message"]
    assert entry["message"].startswith("calling GitHub with ")
    assert entry["message"].endswith(" now")
    raw = stream.getvalue()
    for piece in (secret, secret.split()[-1], PEM_BODY, GHS[4:], JWT.split(".")[1]):
        if piece in secret:
            assert piece not in raw


@pytest.mark.parametrize("secret", SECRETS, ids=["ghs", "ghp", "pat", "jwt", "pem", "bearer"])
def test_secrets_in_exceptions_are_redacted(capture: tuple[logging.Logger, io.StringIO], secret: str) -> None:
    logger, stream = capture
    try:
        raise RuntimeError(f"request failed: Authorization header was {secret}")
    except RuntimeError:
        logger.exception("GitHub call failed")
    (entry,) = lines(stream)
    assert "RuntimeError" in entry["exception"]
    assert "[redacted]" in entry["exception"]
    assert secret not in stream.getvalue()
    assert secret.split()[-1] not in stream.getvalue()


def test_chained_exception_is_redacted(capture: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = capture
    try:
        try:
            raise ValueError(f"token {GHS}")
        except ValueError as inner:
            raise RuntimeError("outer") from inner
    except RuntimeError:
        logger.exception("boom")
    raw = stream.getvalue()
    assert GHS not in raw
    assert "ValueError" in lines(stream)[0]["exception"]


def test_rfc6750_bearer_token_is_fully_redacted(capture: tuple[logging.Logger, io.StringIO]) -> None:
    """RFC 6750 b64token allows `~ + /` and trailing `=`: no part of the token may remain."""
    logger, stream = capture
    token = "mF_9.B5f-4.1JqM+abcd/efgh~ijkl=="
    logger.info("Authorization: Bearer %s", token)
    raw = stream.getvalue()
    for piece in ("mF_9.B5f-4.1JqM", "abcd/efgh", "ijkl=="):
        assert piece not in raw


def test_ordinary_text_is_left_alone(capture: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = capture
    text = "preview preview-7-abcdef deployed to https://preview-7-api-a.example.com (sha 0123456789ab)"
    logger.info(text)
    assert lines(stream)[0]["message"] == text


def test_scrub_directly() -> None:
    assert logs.scrub(f"x {GHS} y {JWT} z") == "x [redacted] y [redacted] z"
    assert logs.scrub("nothing secret") == "nothing secret"


def test_setup_installs_one_json_handler_on_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    try:
        logs.setup("DEBUG")
        assert len(root.handlers) == 1
        assert isinstance(root.handlers[0].formatter, logs.JsonFormatter)
        assert root.level == logging.DEBUG
        assert logging.getLogger("aiohttp.access").level == logging.WARNING
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
