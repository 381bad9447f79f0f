"""gidgethub's exceptions become the bot's own GitHub errors, one kind per status (bot.github.errors)."""

from __future__ import annotations

import http

import gidgethub
import pytest

from bot.github import errors


def _bad(status: int, message: str = "", **headers: str) -> gidgethub.HTTPException:
    code = http.HTTPStatus(status)
    if status >= 500:
        return gidgethub.GitHubBroken(code, headers=headers)
    return gidgethub.BadRequest(code, *([message] if message else []), headers=headers)


@pytest.mark.parametrize(("exc", "kind"), [
    (_bad(401, "Bad credentials"), errors.Unauthorized),
    (_bad(403, "Resource not accessible by integration"), errors.Forbidden),
    (_bad(404, "Not Found"), errors.NotFound),
    (_bad(422, "Validation Failed"), errors.GitHubError),
    (_bad(429), errors.RateLimited),
    (_bad(403, "You have exceeded a secondary rate limit"), errors.RateLimited),
    (_bad(403, "Forbidden", **{"retry-after": "30"}), errors.RateLimited),
    (_bad(403, "Forbidden", **{"x-ratelimit-remaining": "0"}), errors.RateLimited),
    (_bad(502), errors.GitHubUnavailable),
    (gidgethub.RedirectionException(http.HTTPStatus(304)), errors.GitHubError),
])
def test_each_status_gets_its_kind(exc: gidgethub.HTTPException, kind: type[errors.GitHubError]) -> None:
    wrapped = errors.from_gidgethub(exc)
    assert type(wrapped) is kind
    assert wrapped.status == int(exc.status_code)
    assert str(wrapped) == str(exc)  # GitHub's message (or the status phrase), as reports and logs showed it
    assert not isinstance(wrapped, gidgethub.GitHubException)


def test_headers_are_kept() -> None:
    wrapped = errors.from_gidgethub(_bad(403, "x", **{"retry-after": "7"}))
    assert wrapped.headers["retry-after"] == "7"
