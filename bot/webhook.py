"""The aiohttp application: verify, dedupe, acknowledge, enqueue; health, readiness and metrics.

Nothing here calls GitHub or Kubernetes before answering: the work runs in the background queue.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import cachetools
import msgspec
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from gidgethub import sansio
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from bot import coalesce, envelope, metrics
from bot.errors import PreviewError, first_line
from bot.queue import Job, QueueClosed, QueueFull
from bot.triggers import event_subject

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Hub-Signature-256"
Dispatch = Callable[[sansio.Event], Awaitable[None]]
Submit = Callable[..., bool]  # WorkQueue.submit
ReadinessCheck = Callable[[], Awaitable[None]]

CONTEXT_KEY: web.AppKey[WebhookConfig] = web.AppKey("webhook_config")

DEDUPE_SIZE = 50_000  # delivery ids remembered
DEDUPE_TTL = 6 * 3600.0  # seconds a delivery id counts as seen
BODY_TIMEOUT = 10.0  # seconds for the rest of a body that did not arrive with its headers
# Seconds a readiness check may take before /readyz counts it failed ("timed out"): below the probe's
# timeoutSeconds (10 in deploy/base/deployment.yaml), so a hung API server gives a 503, not a probe timeout.
READINESS_TIMEOUT = 5.0
READINESS_LOG_INTERVAL = 60.0  # seconds: a check that keeps failing is logged at most this often
REJECTION_LOG_INTERVAL = 10.0  # seconds: at most one warning line per rejection reason
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"


class RejectionLog:
    """A warning line per rejected delivery, at most one per reason every `interval` seconds (`clock`:
    monotonic seconds); the next line of a reason counts the ones left out (`suppressed`). A rotated or
    mistyped secret then shows in the log, and a flood of bad deliveries cannot fill it. Reasons are this
    module's literals (a fixed set: bounded memory); a line names the delivery id, the event, the status,
    the reason and the answer's error, never the body or a signature."""

    def __init__(self, interval: float = REJECTION_LOG_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self._quiet_until: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def note(self, status: int, reason: str, error: str, delivery: str, event: str) -> None:
        now = self.clock()
        if now < self._quiet_until.get(reason, -float("inf")):
            self._suppressed[reason] = self._suppressed.get(reason, 0) + 1
            return
        self._quiet_until[reason] = now + self.interval
        # Header values are the sender's: cut, so a hostile one cannot make the line long.
        log.warning("webhook delivery rejected: %s %s", status, reason,
                    extra={"delivery": delivery[:100], "event": event[:100], "status": status, "reason": reason,
                           "error": error, "suppressed": self._suppressed.pop(reason, 0)})


class WebhookConfig:
    def __init__(self, *, secret: str, max_body_bytes: int, dispatch: Dispatch, submit: Submit,
                 readiness: dict[str, ReadinessCheck], dedupe_size: int = DEDUPE_SIZE,
                 body_timeout: float = BODY_TIMEOUT) -> None:
        self.secret = secret.encode("utf-8")
        self.max_body_bytes = max_body_bytes
        self.body_timeout = body_timeout
        self.dispatch = dispatch
        self.submit = submit
        self.readiness = readiness
        self.readiness_timeout = READINESS_TIMEOUT
        # name -> the check's run from an earlier probe that has not finished yet (awaited again, never
        # started twice: a hung API server must not pile up a blocked request per probe).
        self._checks_running: dict[str, asyncio.Task[None]] = {}
        self._failure_logged: dict[str, float] = {}  # name -> monotonic time of its last warning
        # Delivery id -> monotonic time it stops counting as seen. Every id gets the same TTL, so the first
        # in is the first to expire: a FIFOCache is a TTL cache here. Not cachetools.TTLCache: each of its
        # entries is a linked object the cycle collector tracks, so a flood filling it ran a collection
        # every 700 deliveries and stopped intake for 2-4 ms every 7,000; str keys and float values are
        # not tracked.
        self.seen: cachetools.FIFOCache[str, float] = cachetools.FIFOCache(maxsize=dedupe_size)
        self.rejections = RejectionLog()
        self.draining = False  # intake closed: deliveries get 503, /readyz 503
        self.terminating = False  # SIGTERM received, intake still open: /readyz 503 (bot.server.linger)

    async def readiness_failures(self) -> dict[str, str]:
        """Runs every readiness check at once, each bounded by `readiness_timeout` seconds; returns
        name -> why it failed: the first line of the bot's own error message (PreviewError: written to be
        shown), else only the exception's type (another library's message may quote a URL or a token),
        or "timed out after N s". Each failure is logged, at most once a READINESS_LOG_INTERVAL per check."""
        names = list(self.readiness)
        reasons = await asyncio.gather(*(self._run_check(name) for name in names))
        failures = {name: reason for name, reason in zip(names, reasons, strict=True) if reason is not None}
        now = time.monotonic()
        for name, reason in failures.items():
            if now - self._failure_logged.get(name, -float("inf")) >= READINESS_LOG_INTERVAL:
                self._failure_logged[name] = now
                log.warning("readiness check %s failed: %s", name, reason)
        return failures

    async def _run_check(self, name: str) -> str | None:
        task = self._checks_running.get(name)
        if task is None or task.done():
            task = asyncio.ensure_future(self.readiness[name]())
            # Retrieved here too: a run that ends after its probe gave up must not warn "never retrieved".
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            self._checks_running[name] = task
        try:
            await asyncio.wait_for(asyncio.shield(task), self.readiness_timeout)
        except TimeoutError:
            return f"timed out after {self.readiness_timeout:g} s"
        except Exception as exc:  # readiness reports any failure, it never raises
            if isinstance(exc, PreviewError):
                return first_line(str(exc), 300) or type(exc).__name__
            return type(exc).__name__
        return None

    def seen_before(self, delivery: str, now: float) -> bool:
        """Whether this X-GitHub-Delivery id was accepted in the last DEDUPE_TTL seconds (`now`: monotonic
        seconds). GitHub keeps the id on a redelivery; the last DEDUPE_SIZE ids are remembered."""
        return delivery in self.seen and now < self.seen[delivery]

    def remember(self, delivery: str, now: float) -> None:
        self.seen[delivery] = now + DEDUPE_TTL


class EventJob:
    """The background job for one (possibly merged) delivery: its body is decoded whole only when the job
    runs (bot.envelope), so the deliveries merged away under a flood are never decoded whole."""

    __slots__ = ("body", "delivery", "dispatch", "envelope", "event")

    def __init__(self, dispatch: Dispatch, event: str, delivery: str, body: bytes,
                 envelope_: dict[str, Any]) -> None:
        self.dispatch = dispatch
        self.event = event
        self.delivery = delivery
        self.body = body
        self.envelope = envelope_

    async def __call__(self) -> None:
        try:
            data = envelope.payload(self.body)
        except envelope.InvalidBody as exc:
            # Intake accepted it with the same parser and rules; only nesting near the recursion limit
            # can differ. GitHub still shows the delivery, redeliverable; the reconciler catches up.
            log.error("delivery not decodable when its job ran; not processed",
                      extra={"delivery": self.delivery, "event": self.event, "error": str(exc)})
            return
        merged = self.envelope.get(coalesce.MERGED_KEY)
        if merged is not None:
            data[coalesce.MERGED_KEY] = merged
        if self.envelope.get(coalesce.AFTER_STOP_KEY):
            data[coalesce.AFTER_STOP_KEY] = True
        await self.dispatch(sansio.Event(data, event=self.event, delivery_id=self.delivery))


def continue_after_stop(running: Job) -> Job | None:
    """The rest of a running `pull_request` job or `/preview` deploy command that a `/preview stop` cut
    short (bot.queue `takes_over`): the same job, run again after the stop with a stop at the head
    holding (bot.coalesce "Order rule"). None for any other job (it is not cut short)."""
    if not isinstance(running, EventJob):
        return None
    if running.event != "pull_request" and not (running.event == "issue_comment"
                                                and coalesce.deploy_command(running.envelope)):
        return None
    return EventJob(running.dispatch, running.event, running.delivery, running.body,
                    {**running.envelope, coalesce.AFTER_STOP_KEY: True})


def merge_converge(older: Job, newer: Job) -> Job:
    """Two `pull_request` jobs of one PR, next to each other in its queue, as one: the newer body, both
    envelopes' Pairs (each event's action and PR state; rules: bot.coalesce)."""
    assert isinstance(older, EventJob) and isinstance(newer, EventJob)
    return EventJob(newer.dispatch, newer.event, newer.delivery, newer.body,
                    coalesce.merge_pull_events(older.envelope, newer.envelope))


def enqueue(submit: Submit, kind: str, job: EventJob) -> bool:
    """Queue a delivery's job in its PR's work by its `kind` (bot.coalesce.classify): a converge job merges
    into the PR's last pending job when that is one (and may take a running one over), a command or
    check job is its own (a `/preview stop` may take a running converge job over: continue_after_stop).
    Returns True when merged; raises as WorkQueue.submit."""
    if kind == coalesce.CONVERGE:
        return submit(work_key(job.envelope), job, slot=kind, merge=merge_converge)
    if kind == coalesce.COMMAND and coalesce.takes_over(job.envelope):
        return submit(work_key(job.envelope), job, takes_over=continue_after_stop)
    return submit(work_key(job.envelope), job)


_COUNTERS: dict[tuple[str, str], Any] = {}


# The events app.yml subscribes to, GitHub's App-level ones, and ping; any other header value counts as
# "other", so a sender cannot grow the metric's series without bound.
_EVENT_LABELS = frozenset({"pull_request", "issue_comment", "check_run", "status", "ping", "installation",
                           "installation_repositories", "installation_target", "github_app_authorization",
                           "unknown"})


def _count(event: str, outcome: str) -> None:
    """preview_bot_webhooks_total{event, outcome} += 1 (label children looked up once: the hot path)."""
    if event not in _EVENT_LABELS:
        event = "other"
    child = _COUNTERS.get((event, outcome))
    if child is None:
        child = _COUNTERS[(event, outcome)] = metrics.WEBHOOKS.labels(event=event, outcome=outcome)
    child.inc()


def _answer(status: int, body: bytes) -> web.Response:
    return web.Response(body=body, status=status, content_type="application/json")


def _error(request: web.Request, status: int, reason: str, message: str, event: str = "unknown") -> web.Response:
    """A rejected delivery: counted, logged (RejectionLog, `reason` a short literal), answered with `message`.
    Only rejections come here: the accepted path pays nothing for the log."""
    _count(event, str(status))
    headers = request.headers
    request.app[CONTEXT_KEY].rejections.note(status, reason, message, headers.get("X-GitHub-Delivery", ""),
                                             event if event != "unknown" else headers.get("X-GitHub-Event", ""))
    return _answer(status, msgspec.json.encode({"error": message}))


def signature_valid(secret: bytes, body: bytes, header: str) -> bool:
    """`sha256=<hex HMAC>` compared in constant time; the SHA-1 header is never accepted."""
    expected = b"sha256=" + hmac.digest(secret, body, "sha256").hex().encode("ascii")
    return hmac.compare_digest(expected, header.strip().encode("ascii", "replace"))


def work_key(data: Mapping[str, Any]) -> tuple[str, int]:
    """Events of one PR share a key (ordered); others get the repository's key 0. The repository is its
    numeric id (a rename between two events must not let them run at once). `data`: a payload or its
    envelope (bot.envelope)."""
    subject = event_subject(data)
    return str(subject.repo_id or subject.repo), subject.number or 0


async def read_limited(request: web.Request, limit: int) -> bytes | None:
    """The whole body, or None as soon as it exceeds `limit` (never buffered beyond that). A body
    shorter than its Content-Length (the client went away) is what arrived: its signature fails."""
    length = request.content_length
    if length is not None and length <= limit:  # GitHub sends Content-Length: one read
        try:
            return await request.content.readexactly(length)
        except asyncio.IncompleteReadError as exc:
            return exc.partial
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.read(min(64 * 1024, limit + 1 - size))
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)


async def handle_webhook(request: web.Request) -> web.Response:
    config = request.app[CONTEXT_KEY]
    if config.draining:
        return _error(request, 503, "shutting down",
                      "shutting down; GitHub will show this delivery as failed and the reconciler catches up")
    if request.content_length is not None and request.content_length > config.max_body_bytes:
        return _error(request, 413, "body too large", f"body larger than {config.max_body_bytes} bytes")
    if request.content.is_eof():  # all of it is here (GitHub sends it at once): no timer on the hot path
        body = await read_limited(request, config.max_body_bytes)
    else:
        try:
            async with asyncio.timeout(config.body_timeout):
                body = await read_limited(request, config.max_body_bytes)
        except TimeoutError:  # a sender that stops short of its Content-Length must not hold a connection
            return _error(request, 408, "body too slow", f"body not received within {config.body_timeout:g} s")
    if body is None:
        return _error(request, 413, "body too large", f"body larger than {config.max_body_bytes} bytes")
    signature = request.headers.get(SIGNATURE_HEADER)
    if not signature:
        return _error(request, 401, "missing signature", f"missing {SIGNATURE_HEADER}")
    if not signature_valid(config.secret, body, signature):
        return _error(request, 401, "bad signature",
                      f"bad {SIGNATURE_HEADER} (is GITHUB_WEBHOOK_SECRET the App's webhook secret?)")
    event_name = request.headers.get("X-GitHub-Event", "")
    delivery = request.headers.get("X-GitHub-Delivery", "")
    if not event_name or not delivery:
        return _error(request, 400, "missing headers", "missing X-GitHub-Event or X-GitHub-Delivery")
    now = time.monotonic()
    if config.seen_before(delivery, now):  # before parsing: a redelivery costs no more than the signature check
        _count(event_name, "duplicate")
        return _answer(200, b'{"msg":"duplicate delivery ignored"}')
    try:
        data = envelope.decode_envelope(body)  # the fields deciding the work; the rest when it runs
    except envelope.InvalidBody as exc:
        if request.content_type == FORM_CONTENT_TYPE:  # GitHub's content type `form`: `payload=<JSON>`
            return _error(request, 415, "form-encoded body", "body is form-encoded: set the App's webhook "
                          "content type to application/json", event_name)
        return _error(request, 400, "invalid body", str(exc), event_name)
    if event_name == "ping":
        _count(event_name, "200")
        return _answer(200, b'{"msg":"pong"}')
    if "installation" not in data or "repository" not in data:
        _count(event_name, "ignored")
        return _answer(202, b'{"msg":"not a repository event of an installation; ignored"}')
    problem = envelope.shape_problem(event_name, data)
    if problem:  # signed, so sent by someone holding the secret; GitHub's payloads always fit
        return _error(request, 400, "payload shape", f"{event_name} payload: {problem}", event_name)
    kind = coalesce.classify(event_name, data)
    if kind is None:
        config.remember(delivery, now)
        _count(event_name, "ignored")
        return _answer(202, b'{"msg":"no preview work in this event; ignored"}')
    try:
        merged = enqueue(config.submit, kind, EventJob(config.dispatch, event_name, delivery, body, data))
    except QueueClosed:
        return _error(request, 503, "shutting down", "shutting down", event_name)
    except QueueFull:
        # Not remembered as seen: GitHub shows a failed delivery (redeliverable), and the reconciler
        # converges every open PR anyway.
        return _error(request, 503, "work queue full", "too much work queued; retry later (the reconciler "
                      "converges every open PR; a command is lost unless redelivered or commented again)",
                      event_name)
    config.remember(delivery, now)
    _count(event_name, "merged" if merged else "accepted")
    return _answer(202, b'{"msg":"accepted"}')


async def healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    config = request.app[CONTEXT_KEY]
    if config.draining:
        return web.json_response({"status": "draining"}, status=503)
    if config.terminating:
        return web.json_response({"status": "terminating"}, status=503)
    failures = await config.readiness_failures()
    if failures:
        return web.json_response({"status": "not ready", "failed": failures}, status=503)
    return web.json_response({"status": "ready"})


async def prometheus(_request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(metrics.REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})


class MalformedRequests(logging.Filter):
    """aiohttp logs a request it cannot parse (bad framing, a header line too long, TLS or other bytes
    that are not HTTP on the plain port) as an error with a traceback. That is the client's fault, and
    anyone who can reach the port can cause it: this makes it one warning line naming the client and
    what was wrong, with no traceback. Installed on aiohttp's `aiohttp.server` logger by `create_app`."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            remote = record.args[0] if isinstance(record.args, tuple) and record.args else "unknown"
            record.msg = "malformed HTTP request from %s: %s %s"
            record.args = (remote, exc.code, " ".join(str(exc.message).split())[:200])
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info = record.exc_text = None
        return True


_MALFORMED = MalformedRequests()


def create_app(config: WebhookConfig) -> web.Application:
    logging.getLogger("aiohttp.server").addFilter(_MALFORMED)  # once: a filter is added at most once
    # client_max_size guards every other route too; the webhook reads with its own limit.
    app = web.Application(client_max_size=config.max_body_bytes)
    app[CONTEXT_KEY] = config
    app.router.add_post("/webhook", handle_webhook)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", prometheus)
    return app
