"""bot.webhook over HTTP: the real aiohttp app behind aiohttp's test server."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import hmac
import json
import logging
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from gidgethub import sansio

from bot.errors import StartupError
from bot.queue import QueueClosed
from bot.webhook import DEDUPE_TTL, RejectionLog, WebhookConfig, create_app, signature_valid, work_key

SECRET = "unit-test-webhook-secret-0123456789"
LIMIT = 4096

PAYLOAD: dict[str, Any] = {
    "action": "opened",
    "number": 7,
    "pull_request": {"number": 7, "head": {"sha": "0" * 40}},
    "repository": {"full_name": "acme/shop"},
    "installation": {"id": 42},
}


def sign(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def headers(body: bytes, *, event: str | None = "pull_request", delivery: str | None = "d-1",
            signature: str | None = "auto") -> dict[str, str]:
    result = {"Content-Type": "application/json"}
    if event is not None:
        result["X-GitHub-Event"] = event
    if delivery is not None:
        result["X-GitHub-Delivery"] = delivery
    if signature == "auto":
        result["X-Hub-Signature-256"] = sign(body)
    elif signature is not None:
        result["X-Hub-Signature-256"] = signature
    return result


@dataclass
class Recorder:
    """submit() records the key and the job; dispatch() records the event and waits for `release`."""

    submitted: list[tuple[tuple[str, int], Callable[[], Awaitable[None]]]] = field(default_factory=list)
    dispatched: list[sansio.Event] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    closed: bool = False
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    run_jobs: bool = False

    def submit(self, key: tuple[str, int], job: Callable[[], Awaitable[None]], **_options: Any) -> bool:
        if self.closed:
            raise QueueClosed
        self.submitted.append((key, job))
        if self.run_jobs:
            self.tasks.append(asyncio.ensure_future(job()))  # type: ignore[arg-type]
        return False

    async def dispatch(self, event: sansio.Event) -> None:
        self.dispatched.append(event)
        await self.release.wait()


@dataclass
class Harness:
    client: TestClient  # type: ignore[type-arg]
    config: WebhookConfig
    recorder: Recorder
    checks: dict[str, Callable[[], Awaitable[None]]]

    async def post(self, body: bytes, **kw: Any) -> tuple[int, Any]:
        response = await self.client.post("/webhook", data=body, headers=headers(body, **kw))
        text = await response.text()
        try:
            return response.status, json.loads(text)
        except json.JSONDecodeError:
            return response.status, text


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    recorder = Recorder()
    checks: dict[str, Callable[[], Awaitable[None]]] = {}
    config = WebhookConfig(secret=SECRET, max_body_bytes=LIMIT, dispatch=recorder.dispatch,
                           submit=recorder.submit, readiness=checks)
    client = TestClient(TestServer(create_app(config)))
    await client.start_server()
    try:
        yield Harness(client, config, recorder, checks)
    finally:
        recorder.release.set()
        for task in recorder.tasks:
            await task
        await client.close()


def body_of(payload: dict[str, Any] = PAYLOAD) -> bytes:
    return json.dumps(payload).encode()


async def test_valid_delivery_is_accepted_and_submitted_with_the_pr_key(harness: Harness) -> None:
    status, answer = await harness.post(body_of(), delivery="abc-1")
    assert status == 202
    assert answer == {"msg": "accepted"}
    ((key, job),) = harness.recorder.submitted
    assert key == ("acme/shop", 7)
    # Acknowledged before any work: the dispatch has not even started.
    assert harness.recorder.dispatched == []
    harness.recorder.release.set()
    await job()
    (event,) = harness.recorder.dispatched
    assert event.event == "pull_request"
    assert event.delivery_id == "abc-1"
    assert event.data == PAYLOAD


async def test_dispatch_is_not_awaited_inside_the_request(harness: Harness) -> None:
    harness.recorder.run_jobs = True  # submit starts the job at once; dispatch blocks on `release`
    status, _ = await asyncio.wait_for(harness.post(body_of()), 5)
    assert status == 202
    await asyncio.sleep(0)
    assert len(harness.recorder.dispatched) == 1, "dispatch started in the background"
    assert not harness.recorder.release.is_set(), "and the answer came while it was still blocked"
    assert not harness.recorder.tasks[0].done()
    harness.recorder.release.set()
    await asyncio.wait_for(harness.recorder.tasks[0], 5)


async def test_issue_comment_key_uses_the_issue_number(harness: Harness) -> None:
    payload = {"action": "created", "issue": {"number": 12, "pull_request": {}}, "comment": {"body": "/preview"},
               "repository": {"full_name": "acme/shop"}, "installation": {"id": 1}}
    status, _ = await harness.post(body_of(payload), event="issue_comment")
    assert status == 202
    assert harness.recorder.submitted[0][0] == ("acme/shop", 12)


async def test_missing_signature_is_401(harness: Harness) -> None:
    status, answer = await harness.post(body_of(), signature=None)
    assert status == 401
    assert "X-Hub-Signature-256" in answer["error"]
    assert harness.recorder.submitted == []


@pytest.mark.parametrize(
    "signature",
    [
        "sha256=" + "0" * 64,
        "sha256=deadbeef",
        sign(body_of(), secret="another-secret-0123456789"),
        "sha1=" + hmac.new(SECRET.encode(), body_of(), hashlib.sha1).hexdigest(),
        sign(body_of()).removeprefix("sha256="),
        sign(body_of()).upper(),
        "",
    ],
)
async def test_bad_signature_is_401(harness: Harness, signature: str) -> None:
    status, _ = await harness.post(body_of(), signature=signature)
    assert status == 401
    assert harness.recorder.submitted == []


async def test_signature_over_another_body_is_401(harness: Harness) -> None:
    status, _ = await harness.post(body_of(), signature=sign(b'{"other": true}'))
    assert status == 401


async def test_legacy_sha1_header_alone_is_refused(harness: Harness) -> None:
    body = body_of()
    legacy = "sha1=" + hmac.new(SECRET.encode(), body, hashlib.sha1).hexdigest()
    hdrs = headers(body, signature=None)
    hdrs["X-Hub-Signature"] = legacy
    response = await harness.client.post("/webhook", data=body, headers=hdrs)
    assert response.status == 401
    assert harness.recorder.submitted == []


@pytest.mark.parametrize("missing", ["event", "delivery"])
async def test_missing_event_or_delivery_header_is_400(harness: Harness, missing: str) -> None:
    status, answer = await harness.post(body_of(), **{missing: None})
    assert status == 400
    assert "X-GitHub-Event" in answer["error"] or "X-GitHub-Delivery" in answer["error"]
    assert harness.recorder.submitted == []


@pytest.mark.parametrize("body", [b"not json", b"\xff\xfe\x00", b"[1, 2, 3]", b'"text"', b""])
async def test_non_json_or_non_object_body_with_valid_signature_is_400(harness: Harness, body: bytes) -> None:
    status, _ = await harness.post(body)
    assert status == 400
    assert harness.recorder.submitted == []


async def test_content_length_over_the_limit_is_413_without_reading_the_body(harness: Harness) -> None:
    """Only the headers are sent: the server must answer from Content-Length alone."""
    server = harness.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(
            b"POST /webhook HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            b"X-GitHub-Event: pull_request\r\nX-GitHub-Delivery: big-1\r\n"
            b"X-Hub-Signature-256: sha256=" + b"0" * 64 + b"\r\n"
            b"Content-Length: 10000000\r\n\r\n"
        )
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 5)
    finally:
        writer.close()
    assert status_line.split()[1] == b"413"
    assert harness.recorder.submitted == []


async def test_content_length_over_the_limit_via_client_is_413(harness: Harness) -> None:
    body = b" " * (LIMIT + 1)
    status, answer = await harness.post(body)
    assert status == 413
    assert str(LIMIT) in answer["error"]


async def test_chunked_body_over_the_limit_is_413(harness: Harness) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(8):
            yield b" " * 1024

    body = b" " * 8 * 1024
    response = await harness.client.post("/webhook", data=chunks(), headers=headers(body))
    assert response.status == 413
    assert harness.recorder.submitted == []


async def test_slow_chunked_body_over_the_limit_is_413(harness: Harness) -> None:
    """The body arrives in pieces: the limit is still enforced on the whole body (not 401 on a prefix)."""
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(8):
            yield b" " * 1024
            await asyncio.sleep(0.01)

    body = b" " * 8 * 1024
    response = await harness.client.post("/webhook", data=chunks(), headers=headers(body))
    assert response.status == 413
    assert harness.recorder.submitted == []


async def test_valid_body_arriving_in_two_segments_is_accepted(harness: Harness) -> None:
    """A signed body under the limit that reaches the server in two TCP segments must verify: the
    handler has to read the whole body, not whatever happened to be buffered."""
    payload = dict(PAYLOAD, padding="x" * 2000)
    body = body_of(payload)
    assert len(body) < LIMIT
    server = harness.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        head = (
            "POST /webhook HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            "X-GitHub-Event: pull_request\r\nX-GitHub-Delivery: split-1\r\n"
            f"X-Hub-Signature-256: {sign(body)}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        writer.write(head + body[:1000])
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.write(body[1000:])
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 5)
    finally:
        writer.close()
    assert status_line.split()[1] == b"202", status_line
    assert [key for key, _ in harness.recorder.submitted] == [("acme/shop", 7)]


@pytest.mark.parametrize(("change", "says"), [
    ({"repository": "acme/shop"}, "repository must be an object, got a string"),
    ({"repository": None}, "repository must be an object, got null"),
    ({"repository": {"id": 1}}, "repository.full_name is missing"),
    ({"repository": {"id": None, "full_name": "acme/shop"}}, "repository.id must be a number, got null"),
    ({"repository": {"id": "1", "full_name": "acme/shop"}}, "repository.id must be a number, got a string"),
    ({"installation": []}, "installation must be an object, got a list"),
    ({"pull_request": None}, "pull_request must be an object, got null"),
    ({"pull_request": []}, "pull_request must be an object, got a list"),
    ({"pull_request": {"number": "7"}}, "pull_request.number must be a number, got a string"),
    ({"pull_request": {"number": True}}, "pull_request.number must be a number, got a boolean"),
    ({"label": {"name": 3}}, "label.name must be a string, got a number"),
])
async def test_a_signed_payload_with_other_types_than_githubs_is_400_naming_the_field(
        harness: Harness, change: dict[str, Any], says: str) -> None:
    payload = {**PAYLOAD, "repository": {"id": 1296269, "full_name": "acme/shop"}, **change}
    status, answer = await harness.post(body_of(payload))
    assert (status, answer) == (400, {"error": f"pull_request payload: {says}"})
    assert harness.recorder.submitted == []
    assert (await harness.post(body_of({**PAYLOAD, "repository": {"id": 1, "full_name": "acme/shop"}}),
                               delivery="next"))[0] == 202  # still serving


async def test_an_issue_comment_with_other_types_is_400_naming_the_field(harness: Harness) -> None:
    payload = {"action": "created", "installation": {"id": 42}, "repository": {"id": 1, "full_name": "acme/shop"},
               "issue": {"number": 7, "pull_request": {}}, "comment": ["/preview"]}
    status, answer = await harness.post(body_of(payload), event="issue_comment")
    assert (status, answer) == (400, {"error": "issue_comment payload: comment must be an object, got a list"})


async def test_a_body_stopping_short_of_its_content_length_is_408_in_time() -> None:
    recorder = Recorder()
    config = WebhookConfig(secret=SECRET, max_body_bytes=LIMIT, dispatch=recorder.dispatch,
                           submit=recorder.submit, readiness={}, body_timeout=0.5)
    async with TestClient(TestServer(create_app(config))) as client:
        reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
        try:
            writer.write(b"POST /webhook HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000\r\n"
                         b"X-GitHub-Event: pull_request\r\nX-GitHub-Delivery: slow\r\n\r\n{")
            await writer.drain()
            status_line = await asyncio.wait_for(reader.readline(), 5)
        finally:
            writer.close()
    assert status_line.split()[1] == b"408", status_line
    assert recorder.submitted == []


async def test_an_unknown_event_name_counts_as_other(harness: Harness) -> None:
    from bot import metrics

    def count(event: str) -> float:
        return metrics.REGISTRY.get_sample_value(
            "preview_bot_webhooks_total", {"event": event, "outcome": "ignored"}) or 0.0
    before = count("other")
    status, _ = await harness.post(body_of(), event="../../etc/passwd", delivery="odd-event")
    assert status == 202
    assert count("other") == before + 1 and count("../../etc/passwd") == 0


async def test_ping_is_200_and_not_submitted(harness: Harness) -> None:
    status, answer = await harness.post(body_of({"zen": "Keep it simple.", "hook_id": 1}), event="ping")
    assert status == 200
    assert answer == {"msg": "pong"}
    assert harness.recorder.submitted == []


async def test_same_delivery_twice_is_submitted_once(harness: Harness) -> None:
    first = await harness.post(body_of(), delivery="same-delivery")
    second = await harness.post(body_of(), delivery="same-delivery")
    assert first[0] == 202
    assert second[0] == 200
    assert "duplicate" in second[1]["msg"]
    assert len(harness.recorder.submitted) == 1
    third = await harness.post(body_of(), delivery="other-delivery")
    assert third[0] == 202
    assert len(harness.recorder.submitted) == 2


def _config(**kw: Any) -> WebhookConfig:
    recorder = Recorder()
    return WebhookConfig(secret=SECRET, max_body_bytes=LIMIT, dispatch=recorder.dispatch,
                         submit=recorder.submit, readiness={}, **kw)


def test_a_delivery_id_counts_as_seen_for_its_ttl_only() -> None:
    config = _config()
    config.remember("d-1", now=1000.0)
    assert config.seen_before("d-1", now=1000.0)
    assert config.seen_before("d-1", now=1000.0 + DEDUPE_TTL - 1)
    assert not config.seen_before("d-1", now=1000.0 + DEDUPE_TTL)
    assert not config.seen_before("d-2", now=1000.0)
    config.remember("d-1", now=1000.0 + DEDUPE_TTL)  # accepted again: counts from then
    assert config.seen_before("d-1", now=1000.0 + DEDUPE_TTL + 1)


def test_the_dedupe_remembers_the_newest_ids_up_to_its_size() -> None:
    config = _config(dedupe_size=3)
    for i in range(5):
        config.remember(f"d-{i}", now=0.0)
    assert [config.seen_before(f"d-{i}", now=1.0) for i in range(5)] == [False, False, True, True, True]
    assert len(config.seen) == 3


def test_remembered_delivery_ids_give_the_cycle_collector_no_work() -> None:
    # Every accepted delivery is remembered: were each entry a GC-tracked object (cachetools.TTLCache's
    # links are), a flood would fill the generations and the collector would stop intake for tens of ms.
    config = _config(dedupe_size=10_000)
    gc.collect()
    gc.disable()
    try:
        before = gc.get_count()[0]
        for i in range(5_000):
            config.remember(f"d-{i}", now=float(i))
        assert gc.get_count()[0] - before < 50
    finally:
        gc.enable()


async def test_rejected_delivery_is_not_remembered_as_seen(harness: Harness) -> None:
    harness.recorder.closed = True
    status, _ = await harness.post(body_of(), delivery="retry-me")
    assert status == 503
    harness.recorder.closed = False
    status, _ = await harness.post(body_of(), delivery="retry-me")
    assert status == 202
    assert len(harness.recorder.submitted) == 1


async def test_event_without_installation_or_repository_is_ignored(harness: Harness) -> None:
    status, answer = await harness.post(body_of({"action": "created", "repository": {"full_name": "acme/shop"}}))
    assert status == 202
    assert "ignored" in answer["msg"]
    assert harness.recorder.submitted == []


async def test_draining_is_503(harness: Harness) -> None:
    harness.config.draining = True
    status, _ = await harness.post(body_of())
    assert status == 503
    assert harness.recorder.submitted == []
    response = await harness.client.get("/readyz")
    assert response.status == 503


async def test_healthz(harness: Harness) -> None:
    response = await harness.client.get("/healthz")
    assert response.status == 200
    assert await response.json() == {"status": "ok"}


async def test_readyz_ready_and_failing_check(harness: Harness) -> None:
    calls: list[str] = []

    async def kube_ok() -> None:
        calls.append("kube")

    async def github_down() -> None:
        calls.append("github")
        raise ConnectionError("secret-ish detail: https://internal.example/token=abc")

    harness.checks["kubernetes"] = kube_ok
    response = await harness.client.get("/readyz")
    assert response.status == 200
    assert await response.json() == {"status": "ready"}

    harness.checks["github"] = github_down
    response = await harness.client.get("/readyz")
    text = await response.text()
    assert response.status == 503
    answer = json.loads(text)
    assert answer["failed"] == {"github": "ConnectionError"}
    assert "kubernetes" not in answer["failed"]
    assert "secret-ish" not in text and "token=abc" not in text
    assert calls == ["kube", "kube", "github"]


async def test_readyz_says_why_and_logs_it_once_a_minute(harness: Harness,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """The bot's own error (written to be shown) gives its first line; the failure is logged, once per
    READINESS_LOG_INTERVAL however often the probe asks."""
    async def gateway_gone() -> None:
        raise StartupError("PREVIEW_GATEWAY: Gateway istio-system/preview-gateway does not exist; create it\nmore")

    harness.checks["gateway"] = gateway_gone
    with caplog.at_level(logging.WARNING, logger="bot.webhook"):
        for _ in range(3):
            response = await harness.client.get("/readyz")
            assert response.status == 503
            assert await response.json() == {"status": "not ready", "failed": {
                "gateway": "PREVIEW_GATEWAY: Gateway istio-system/preview-gateway does not exist; create it"}}
    assert [r.getMessage() for r in caplog.records if r.name == "bot.webhook"] == [
        "readiness check gateway failed: PREVIEW_GATEWAY: Gateway istio-system/preview-gateway does not exist; "
        "create it"]


async def test_readyz_answers_within_its_bound_when_a_check_hangs(harness: Harness) -> None:
    """A check that never returns (an API server stopped mid-request) makes /readyz answer 503 "timed out"
    within the bound; the next probe waits on the same run instead of starting another."""
    started: list[int] = []
    never = asyncio.Event()

    async def hangs() -> None:
        started.append(1)
        await never.wait()

    async def fine() -> None:
        return None

    harness.config.readiness_timeout = 0.05
    harness.checks.update({"kubernetes": hangs, "github-key": fine})
    for _ in range(2):
        response = await asyncio.wait_for(harness.client.get("/readyz"), 5)
        assert response.status == 503
        assert await response.json() == {"status": "not ready", "failed": {"kubernetes": "timed out after 0.05 s"}}
    assert started == [1]
    never.set()
    response = await harness.client.get("/readyz")
    assert (response.status, await response.json()) == (200, {"status": "ready"})


async def test_metrics_is_prometheus_text(harness: Harness) -> None:
    await harness.post(body_of({"zen": "z"}), event="ping")
    response = await harness.client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    text = await response.text()
    assert "# TYPE preview_bot_webhooks_total counter" in text or "# TYPE preview_bot_webhooks counter" in text
    assert 'preview_bot_webhooks_total{event="ping",outcome="200"}' in text


async def test_many_bad_signatures_cause_no_work(harness: Harness) -> None:
    harness.recorder.run_jobs = True
    body = body_of()
    statuses = await asyncio.gather(*[
        harness.post(body, delivery=f"bad-{i}", signature="sha256=" + f"{i:064x}") for i in range(100)
    ])
    assert {status for status, _ in statuses} == {401}
    await asyncio.sleep(0)
    assert harness.recorder.submitted == []
    assert harness.recorder.dispatched == []


def rejections(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records
            if r.name == "bot.webhook" and r.getMessage().startswith("webhook delivery rejected")]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_rejected_delivery_is_logged_naming_its_id_status_and_reason_never_body_or_signature(
        harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    from bot.logs import JsonFormatter

    body = body_of()
    wrong = sign(body, secret="a-rotated-webhook-secret-0123")
    status, _ = await harness.post(body, delivery="rotated-1", signature=wrong)
    assert status == 401
    [record] = rejections(caplog)
    line = json.loads(JsonFormatter().format(record))
    assert record.levelname == "WARNING"
    assert (line["delivery"], line["event"], line["status"], line["reason"]) == \
        ("rotated-1", "pull_request", 401, "bad signature")
    assert "X-Hub-Signature-256" in line["error"] and line["suppressed"] == 0
    text = JsonFormatter().format(record)
    assert wrong.removeprefix("sha256=") not in text and "acme/shop" not in text


@pytest.mark.parametrize("kwargs, status, reason", [
    ({"signature": None}, 401, "missing signature"),
    ({"delivery": None}, 400, "missing headers"),
    ({"body": b"not json"}, 400, "invalid body"),
])
async def test_every_kind_of_rejection_is_logged(harness: Harness, caplog: pytest.LogCaptureFixture,
                                                 kwargs: dict[str, Any], status: int, reason: str) -> None:
    body = kwargs.pop("body", body_of())
    assert (await harness.post(body, **kwargs))[0] == status
    [record] = rejections(caplog)
    assert (record.status, record.reason) == (status, reason)  # type: ignore[attr-defined]


async def test_a_flood_of_rejections_logs_one_line_per_reason_per_interval_with_the_count_left_out(
        harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    harness.config.rejections = RejectionLog(interval=10.0, clock=clock)
    for n in range(50):
        assert (await harness.post(body_of(), delivery=f"bad-{n}", signature="sha256=" + "0" * 64))[0] == 401
    assert (await harness.post(b"not json", delivery="garbled"))[0] == 400  # another reason: its own line
    assert [(r.reason, r.delivery, r.suppressed) for r in rejections(caplog)] == [  # type: ignore[attr-defined]
        ("bad signature", "bad-0", 0), ("invalid body", "garbled", 0)]
    clock.now += 9.9
    assert (await harness.post(body_of(), delivery="bad-50", signature="sha256=" + "0" * 64))[0] == 401
    assert len(rejections(caplog)) == 2
    clock.now += 0.1
    assert (await harness.post(body_of(), delivery="bad-51", signature="sha256=" + "0" * 64))[0] == 401
    last = rejections(caplog)[-1]
    assert (last.reason, last.delivery, last.suppressed) == ("bad signature", "bad-51", 50)  # type: ignore[attr-defined]
    assert harness.recorder.submitted == []


async def test_accepted_deliveries_log_nothing(harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    assert (await harness.post(body_of(), delivery="ok-1"))[0] == 202
    assert (await harness.post(body_of(), delivery="ok-1"))[0] == 200  # a duplicate is not a rejection
    assert rejections(caplog) == []


async def test_a_form_encoded_body_is_415_asking_for_the_json_content_type(
        harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    """A GitHub App webhook whose content type is `form` sends `payload=<url-encoded JSON>`, signed."""
    body = urllib.parse.urlencode({"payload": json.dumps(PAYLOAD)}).encode()
    hdrs = headers(body) | {"Content-Type": "application/x-www-form-urlencoded"}
    response = await harness.client.post("/webhook", data=body, headers=hdrs)
    assert response.status == 415
    assert "set the App's webhook content type to application/json" in (await response.json())["error"]
    [record] = rejections(caplog)
    assert (record.status, record.reason) == (415, "form-encoded body")  # type: ignore[attr-defined]
    assert harness.recorder.submitted == []


async def test_get_on_webhook_is_not_allowed(harness: Harness) -> None:
    response = await harness.client.get("/webhook")
    assert response.status == 405


# --- pure helpers ----------------------------------------------------------------------------------


def test_signature_valid_helper() -> None:
    body = b'{"a": 1}'
    assert signature_valid(SECRET.encode(), body, sign(body))
    assert signature_valid(SECRET.encode(), body, "  " + sign(body) + " ")
    assert not signature_valid(SECRET.encode(), body, sign(body + b" "))
    assert not signature_valid(SECRET.encode(), body, "sha256=ünïcode")


@pytest.mark.parametrize(
    ("data", "key"),
    [
        (PAYLOAD, ("acme/shop", 7)),
        ({"repository": {"full_name": "acme/shop"}, "issue": {"number": 3}}, ("acme/shop", 3)),
        ({"repository": {"full_name": "acme/shop"}, "ref": "refs/heads/main"}, ("acme/shop", 0)),
        ({"repository": None, "pull_request": None}, ("", 0)),
        # By id when there is one: a rename between two deliveries keeps one PR's events in order.
        ({"repository": {"id": 99, "full_name": "acme/shop"}, "number": 8, "pull_request": {"number": 8}},
         ("99", 8)),
        ({"repository": {"id": 99, "full_name": "acme/storefront"}, "issue": {"number": 8}}, ("99", 8)),
    ],
)
def test_work_key(data: dict[str, Any], key: tuple[str, int]) -> None:
    assert work_key(data) == key


@pytest.mark.parametrize("request_bytes", [
    b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",  # framing
    b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",  # smuggling
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 70_000 + b"\r\n\r\n",  # a header line too long
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n",  # a space in a header name
    b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n",  # an unknown version
    # Not HTTP after a first good request (aiohttp logs a first request's bad method at debug level itself).
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n"),
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", b"FOO BAR\r\n\r\n"),
])
async def test_malformed_request_is_one_warning_line_without_traceback(
        harness: Harness, request_bytes: bytes | tuple[bytes, bytes], caplog: pytest.LogCaptureFixture) -> None:
    from bot.logs import JsonFormatter

    server = harness.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        if isinstance(request_bytes, tuple):
            first, request_bytes = request_bytes
            writer.write(first)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200")
            length = int(next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
                         .split(b":")[1])
            await asyncio.wait_for(reader.readexactly(length), 5)
        writer.write(request_bytes)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    assert answer.startswith((b"HTTP/1.1 400", b"HTTP/1.0 400", b"HTTP/1.1 431")), answer[:200]
    records = [r for r in caplog.records if r.name == "aiohttp.server" and r.levelno >= 30]
    assert records, "aiohttp logged nothing"
    for record in records:
        assert record.levelname == "WARNING" and not record.exc_info, record.getMessage()
        assert record.getMessage().startswith("malformed HTTP request from 127.0.0.1: 4")
        line = JsonFormatter().format(record)
        assert "\n" not in line and "exception" not in json.loads(line) and "Traceback" not in line
