"""GitHub App authentication: App JWTs and cached installation tokens."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import aiohttp
import cachetools
from gidgethub import apps

from bot.github.api import PacedGitHubAPI, Pacer
from bot.timestamps import parse_time

# Refresh a token this long before GitHub says it expires, so no request races its expiry.
TOKEN_REFRESH_MARGIN = 300.0
REQUESTER = "preview-bot"


class AppAuth:
    """Makes App JWTs and hands out installation tokens, each cached until shortly before expiry."""

    def __init__(self, *, app_id: int, private_key: str, api_url: str, session: aiohttp.ClientSession,
                 pacer: Pacer, timeout: float = 20.0) -> None:
        self._app_id = str(app_id)
        self._private_key = private_key
        self._api_url = api_url
        self._session = session
        self._pacer = pacer
        self._timeout = timeout
        # Value: (token, monotonic refresh time); TLRU drops each entry at its own refresh time.
        self._tokens: cachetools.TLRUCache[int, tuple[str, float]] = cachetools.TLRUCache(
            maxsize=4096, ttu=lambda _key, value, _now: value[1], timer=time.monotonic)
        self._locks: dict[int, asyncio.Lock] = {}

    def app_jwt(self) -> str:
        """RS256 JWT for the App itself; gidgethub back-dates `iat` for clock drift."""
        return apps.get_jwt(app_id=self._app_id, private_key=self._private_key)

    def api(self, token: str | None = None) -> PacedGitHubAPI:
        return PacedGitHubAPI(self._session, REQUESTER, oauth_token=token, base_url=self._api_url,
                              pacer=self._pacer, timeout=self._timeout)

    async def installation_token(self, installation_id: int) -> str:
        cached = self._tokens.get(installation_id)
        if cached is not None:
            return cached[0]
        lock = self._locks.setdefault(installation_id, asyncio.Lock())
        async with lock:  # one token request per installation, however many events wait for it
            cached = self._tokens.get(installation_id)
            if cached is not None:
                return cached[0]
            response: dict[str, Any] = await self.api().post(
                f"/app/installations/{installation_id}/access_tokens", data=b"", jwt=self.app_jwt())
            token = str(response["token"])
            expires_at = parse_time(str(response["expires_at"]))
            if expires_at is None:
                raise ValueError(f"GitHub answered an unreadable token expiry: {response['expires_at']!r}")
            lifetime = (expires_at - datetime.now(UTC)).total_seconds()
            refresh_in = max(lifetime - TOKEN_REFRESH_MARGIN, min(lifetime / 2, 60.0), 0.0)
            self._tokens[installation_id] = (token, time.monotonic() + refresh_in)
            return token

    def forget(self, installation_id: int) -> None:
        """Drop a token GitHub refused (revoked, or the installation changed)."""
        self._tokens.pop(installation_id, None)

    async def installation_api(self, installation_id: int) -> PacedGitHubAPI:
        return self.api(await self.installation_token(installation_id))

    async def check_key(self) -> None:
        """Readiness: the App key signs a JWT. Deliberately local: a GitHub outage must not take every
        replica out of the Service (deliveries would then fail too); `verify_with_github` runs at start."""
        self.app_jwt()

    async def verify_with_github(self) -> str:
        """GitHub accepts the App's JWT; returns the App's slug."""
        app: dict[str, Any] = await self.api().getitem("/app", jwt=self.app_jwt())
        return str(app.get("slug", ""))
