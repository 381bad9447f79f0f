"""gidgethub's aiohttp API with the retries and pacing a busy organisation needs.

- 5xx answers, timeouts and dropped connections are retried with exponential backoff;
- secondary rate limits (403/429, often with Retry-After) and an exhausted primary limit wait for
  the time GitHub names, then retry;
- content-creating requests (POST/PATCH/PUT/DELETE) share one pacer so that a burst of events stays
  under GitHub's documented ~80 content-creating requests per minute;
- an error status that is not retried, or still there after the retries, raises the bot's own
  `bot.github.errors.GitHubError` (a subclass per kind), never gidgethub's exceptions.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import random
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
import gidgethub
import gidgethub.aiohttp

from bot import metrics
from bot.errors import first_line
from bot.github import errors

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5
MAX_RATE_LIMIT_WAIT = 300.0
REQUEST_TIMEOUT = 20.0
_CONTENT_METHODS = frozenset({"POST", "PATCH", "PUT", "DELETE"})
_STATUS: contextvars.ContextVar[int] = contextvars.ContextVar("github_status", default=0)


def _not_json(content_type: str, payload: bytes) -> str:
    return (f"GitHub's answer is {content_type or 'untyped'}, not JSON (a proxy between the bot and GitHub?): "
            f"{first_line(payload, 120)!r}")


class Pacer:
    """Sliding-window limiter for content-creating requests: at most `per_minute` in any `window`
    seconds and, optionally, `per_hour` in any hour (GitHub documents about 80 and 500).

    A request counts from when it was let through until the window after it completed, so the server,
    which sees it arrive somewhere in between, never counts more than the limit in any window."""

    def __init__(self, per_minute: int, window: float = 60.0, per_hour: int | None = None) -> None:
        self.limits = [(per_minute, window)] + ([(per_hour, 3600.0)] if per_hour else [])
        self._stamps: list[list[float]] = []  # one mutable cell per request: its latest time
        self._lock = asyncio.Lock()

    def _wait_needed(self, now: float) -> float:
        for limit, window in self.limits:
            recent = sorted(cell[0] for cell in self._stamps if now - cell[0] < window)
            if len(recent) >= limit:
                return window - (now - recent[len(recent) - limit]) + 0.01
        return 0.0

    async def acquire(self) -> list[float]:
        async with self._lock:  # FIFO: waiters are served in arrival order
            longest = max(window for _limit, window in self.limits)
            while True:
                now = time.monotonic()
                self._stamps = [cell for cell in self._stamps if now - cell[0] < longest]
                wait = self._wait_needed(now)
                if wait <= 0:
                    cell = [now]
                    self._stamps.append(cell)
                    return cell
                await asyncio.sleep(wait)

    def complete(self, cell: list[float]) -> None:
        cell[0] = time.monotonic()
        if cell not in self._stamps:
            self._stamps.append(cell)


_PACED: contextvars.ContextVar[list[float] | None] = contextvars.ContextVar("paced_request", default=None)


def _retry_delay(headers: Mapping[str, str], attempt: int) -> float:
    """Seconds to wait: Retry-After, else x-ratelimit-reset, else exponential backoff."""
    retry_after = headers.get("retry-after")
    if retry_after and retry_after.strip().isdigit():
        return float(retry_after)
    if headers.get("x-ratelimit-remaining") == "0" and (headers.get("x-ratelimit-reset") or "").isdigit():
        return max(float(headers["x-ratelimit-reset"]) - time.time(), 0.0) + 1.0
    return min(2.0 ** attempt, 60.0)


class PacedGitHubAPI(gidgethub.aiohttp.GitHubAPI):
    def __init__(self, session: aiohttp.ClientSession, requester: str, *, pacer: Pacer,
                 timeout: float = REQUEST_TIMEOUT, **kwargs: Any) -> None:
        super().__init__(session, requester, **kwargs)
        self._pacer = pacer
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    async def _make_request(self, *args: Any, **kwargs: Any) -> tuple[bytes, str | None, int]:
        # Every call (getitem, getiter, post, ...) goes through here, after gidgethub's retry loop.
        try:
            return await super()._make_request(*args, **kwargs)
        except gidgethub.HTTPException as exc:
            raise errors.from_gidgethub(exc) from exc
        except ValueError:  # gidgethub decoding a body that says it is JSON and is not
            raise errors.InvalidAnswer(_STATUS.get(), "GitHub's answer is not valid JSON") from None

    async def _request(self, method: str, url: str, headers: Mapping[str, str],
                       body: bytes = b"") -> tuple[int, Mapping[str, str], bytes]:
        cell = _PACED.get()
        try:
            return await self._send(method, url, headers, body)
        finally:
            if cell is not None:
                self._pacer.complete(cell)

    async def _send(self, method: str, url: str, headers: Mapping[str, str],
                    body: bytes) -> tuple[int, Mapping[str, str], bytes]:
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                async with self._session.request(method, url, headers=headers, data=body,
                                                 timeout=self._timeout) as response:
                    payload = await response.read()
                    metrics.GITHUB_CALLS.labels(method=method, outcome=str(response.status)).inc()
                    _STATUS.set(response.status)
                    if response.status < 300 and payload and response.content_type != "application/json":
                        # A proxy's page (a sign-in form) where GitHub answers JSON; error statuses keep
                        # their meaning and retries (gidgethub reads a body that is not JSON as no message).
                        raise errors.InvalidAnswer(response.status, _not_json(response.content_type, payload))
                    remaining = response.headers.get("x-ratelimit-remaining")
                    if remaining and remaining.isdigit():
                        metrics.GITHUB_RATE_REMAINING.set(int(remaining))
                    return response.status, response.headers, payload
            except (TimeoutError, aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
                metrics.GITHUB_CALLS.labels(method=method, outcome="network-error").inc()
                if attempt == MAX_ATTEMPTS:
                    raise
                delay = min(0.5 * 2 ** attempt, 30.0) * random.uniform(0.5, 1.0)  # noqa: S311
                log.warning("GitHub request failed (%s), retrying in %.1f s", type(exc).__name__, delay,
                            extra={"method": method})
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def manage_rate_limit(self, *, method: str, url: str) -> None:
        # Minting an installation token creates no content; pacing it could starve the requests it serves.
        paced = method in _CONTENT_METHODS and not url.endswith("/access_tokens")
        _PACED.set(await self._pacer.acquire() if paced else None)

    async def handle_rate_limit_error(self, *, method: str, url: str, exception: gidgethub.HTTPException,
                                      attempt: int) -> bool:
        if attempt >= MAX_ATTEMPTS:
            return False
        if errors.is_rate_limited(exception):
            delay = _retry_delay(exception.headers or {}, attempt)
            if delay > MAX_RATE_LIMIT_WAIT:
                return False
            log.warning("GitHub rate limit hit, waiting %.1f s", delay, extra={"method": method})
        elif isinstance(exception, gidgethub.GitHubBroken):
            delay = min(0.5 * 2 ** attempt, 30.0) * random.uniform(0.5, 1.0)  # noqa: S311
            log.warning("GitHub answered %s, retrying in %.1f s", int(exception.status_code), delay,
                        extra={"method": method})
        else:
            return False
        await asyncio.sleep(delay)
        return True
