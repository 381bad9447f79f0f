"""The errors GitHub's answers raise, in the bot's own types: code outside `bot/github/` never sees
gidgethub's exceptions (as kopf wraps its Kubernetes client's errors in `APIError` and subclasses).

A `GitHubError` means GitHub *answered* with an error status (or with a body that is not JSON), after
the retries of `bot.github.api` (5xx answers and rate limits are retried there). A request that got no
answer at all (refused connection, timeout, dropped connection) still raises what aiohttp raised
(`aiohttp.ClientError`, `TimeoutError`), after the same retries.

    GitHubError          any error status; `status` (int) and `headers` (lower-case names)
    ├── Unauthorized     401: the token or JWT is refused (revoked, expired, a rotated key)
    ├── Forbidden        403 that is not a rate limit: the App lacks a permission
    ├── NotFound         404: no such object, or one the token may not see
    ├── RateLimited      403/429 of a primary or secondary rate limit still hit after waiting
    ├── GitHubUnavailable  5xx: GitHub failed, still after the retries
    └── InvalidAnswer    a success status whose body is not JSON (a proxy's page), or invalid JSON

Statuses are documented in GitHub's REST docs ("Troubleshooting the REST API", "Rate limits for the
REST API").
"""

from __future__ import annotations

from collections.abc import Mapping

import gidgethub


class GitHubError(Exception):
    """GitHub answered `status`; the message is GitHub's (its `message` field, or the status phrase)."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        self.status = status
        self.headers: Mapping[str, str] = headers or {}
        super().__init__(message)


class Unauthorized(GitHubError):
    """401: the installation token (or the App's JWT) is not accepted any more."""


class Forbidden(GitHubError):
    """403 that is not a rate limit: the App lacks the permission the request needs."""


class NotFound(GitHubError):
    """404: the object does not exist, or the App's installation cannot see it."""


class RateLimited(GitHubError):
    """A rate limit (403 or 429) that outlasted `bot.github.api`'s waits."""


class GitHubUnavailable(GitHubError):
    """5xx: GitHub could not serve the request, still after `bot.github.api`'s retries."""


class InvalidAnswer(GitHubError):
    """The answer is not the JSON GitHub's REST API always sends: a proxy or captive portal in between,
    or a damaged body. `status` is the answer's own; not retried."""


def is_rate_limited(exc: gidgethub.HTTPException) -> bool:
    """403 or 429 of a rate limit: 429, or 403 with Retry-After, no requests remaining, or a message
    naming the rate limit (GitHub REST docs, "Rate limits for the REST API": exceeding a limit)."""
    if exc.status_code == 429:
        return True
    if exc.status_code != 403:
        return False
    headers = exc.headers or {}
    return ("retry-after" in headers or headers.get("x-ratelimit-remaining") == "0"
            or "rate limit" in str(exc).lower())


def from_gidgethub(exc: gidgethub.HTTPException) -> GitHubError:
    """The bot's error for gidgethub's `exc` (its message and headers kept)."""
    status = int(exc.status_code)
    kind: type[GitHubError]
    if is_rate_limited(exc):
        kind = RateLimited
    elif status == 401:
        kind = Unauthorized
    elif status == 403:
        kind = Forbidden
    elif status == 404:
        kind = NotFound
    elif status >= 500:
        kind = GitHubUnavailable
    else:
        kind = GitHubError
    return kind(status, str(exc), exc.headers)
