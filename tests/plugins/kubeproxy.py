"""pytest plugin: `fault_proxy`, a fault-injecting reverse proxy in front of the test API server.

The proxy listens on plain HTTP on 127.0.0.1 (random port) and forwards every request (method, path,
query, headers including Authorization, body) to the real API server over HTTPS, verified with the
cluster CA, streaming the answer back with its status and headers. Faults are injected per request:

    proxy.inject("PATCH", r"/deployments/", status=500, times=2)       # two 500s, then forward
    proxy.inject("GET", r"/virtualservices/", status=None, delay=5.0)   # slow: wait, then forward
    proxy.inject("*", r".*", status=500, times=None)                    # everything fails, forever

Rules are tried in the order they were added; the first one that matches and has uses left answers.
`proxy.calls` lists (method, path, status) in arrival order; status is None while a request is still
in flight (e.g. a delayed request the client already gave up on).
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.plugins.cluster import Cluster

# Hop-by-hop headers (RFC 9110 7.6.1) and those the client library recomputes.
_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                  "transfer-encoding", "upgrade", "host", "content-length"})
_REASONS = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 409: "Conflict",
            422: "Invalid", 429: "TooManyRequests", 500: "InternalError", 502: "BadGateway",
            503: "ServiceUnavailable", 504: "Timeout"}


@dataclass
class Fault:
    method: str
    pattern: re.Pattern[str]
    status: int | None
    times: int | None  # None: forever
    delay: float
    body: Any
    headers: dict[str, str]
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        return self.method in ("*", method) and self.pattern.search(path) is not None


@dataclass
class Call:
    method: str
    path: str
    query: str
    started: float
    status: int | None = None
    injected: bool = False
    finished: float | None = None
    notes: list[str] = field(default_factory=list)


class FaultProxy:
    def __init__(self, upstream: str, ca_file: Path | str, token: str, workdir: Path) -> None:
        self.upstream = upstream.rstrip("/")
        self._ca_file = str(ca_file)
        self._token = token
        self._workdir = workdir
        self.faults: list[Fault] = []
        self.records: list[Call] = []
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._inflight: set[asyncio.Task[Any]] = set()

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        context = ssl.create_default_context(cafile=self._ca_file)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=context, limit=64), auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10))
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def close(self) -> None:
        # Delayed requests whose client already gave up must not hold the shutdown.
        for task in list(self._inflight):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kubeconfig(self, token: str | None = None) -> Path:
        """A kubeconfig that talks to the API server through this proxy (admin token by default)."""
        path = self._workdir / f"kubeconfig-proxy-{secrets.token_hex(4)}"
        path.write_text(json.dumps({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "proxy", "cluster": {"server": self.url}}],
            "users": [{"name": "user", "user": {"token": token or self._token}}],
            "contexts": [{"name": "proxy", "context": {"cluster": "proxy", "user": "user"}}],
            "current-context": "proxy",
        }, indent=2))
        path.chmod(0o600)
        return path

    # -- faults and observations ------------------------------------------------------------------

    def inject(self, method: str, path_regex: str, status: int | None = 500, times: int | None = 1,
               delay: float = 0.0, body: Any = None, headers: dict[str, str] | None = None) -> Fault:
        """Answer the next `times` matching requests (None: all) with `status` after `delay` seconds.

        `method` "*" matches every method. `status` None forwards the request after the delay. `body`
        defaults to a Kubernetes Status object; a dict is sent as JSON, str/bytes as they are."""
        fault = Fault(method.upper(), re.compile(path_regex), status, times, delay, body, dict(headers or {}))
        self.faults.append(fault)
        return fault

    def clear(self) -> None:
        """Remove every fault (the ones already served stay in `calls`)."""
        self.faults.clear()

    def reset_calls(self) -> None:
        self.records.clear()

    @property
    def calls(self) -> list[tuple[str, str, int | None]]:
        return [(c.method, c.path, c.status) for c in self.records]

    def calls_to(self, method: str, path_regex: str) -> list[tuple[str, str, int | None]]:
        pattern = re.compile(path_regex)
        return [c for c in self.calls if method in ("*", c[0]) and pattern.search(c[1])]

    def statuses(self, method: str, path_regex: str) -> list[int | None]:
        return [c[2] for c in self.calls_to(method, path_regex)]

    # -- the proxy itself ---------------------------------------------------------------------------

    def _fault_for(self, method: str, path: str) -> Fault | None:
        for fault in self.faults:
            if fault.matches(method, path):
                fault.hits += 1  # claimed now, so concurrent requests each take one use
                return fault
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        task = asyncio.current_task()
        assert task is not None
        self._inflight.add(task)
        call = Call(request.method, request.path, request.query_string, time.monotonic())
        self.records.append(call)
        try:
            fault = self._fault_for(request.method, request.path)
            body = await request.read()
            if fault is not None and fault.delay:
                await asyncio.sleep(fault.delay)
            if fault is not None and fault.status is not None:
                call.injected = True
                call.status = fault.status
                return self._injected(fault)
            return await self._forward(request, body, call)
        finally:
            call.finished = time.monotonic()
            self._inflight.discard(task)

    @staticmethod
    def _injected(fault: Fault) -> web.Response:
        status = fault.status
        assert status is not None
        headers = dict(fault.headers)
        if fault.body is None or isinstance(fault.body, dict):
            payload = fault.body if fault.body is not None else {
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": f"injected fault {status}", "reason": _REASONS.get(status, ""), "code": status}
            headers.setdefault("Content-Type", "application/json")
            return web.Response(status=status, body=json.dumps(payload).encode(), headers=headers)
        raw = fault.body.encode() if isinstance(fault.body, str) else bytes(fault.body)
        return web.Response(status=status, body=raw, headers=headers)

    async def _forward(self, request: web.Request, body: bytes, call: Call) -> web.StreamResponse:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        headers.setdefault("Accept-Encoding", "identity")
        try:
            upstream = await self._session.request(
                request.method, self.upstream + request.rel_url.raw_path_qs, headers=headers,
                data=body if body else None, allow_redirects=False)
        except aiohttp.ClientError as exc:
            call.status = 502
            call.notes.append(f"upstream unreachable: {type(exc).__name__}")
            return web.Response(status=502, text=f"proxy: upstream unreachable: {type(exc).__name__}")
        async with upstream:
            call.status = upstream.status
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for name, value in upstream.headers.items():
                if name.lower() not in _HOP:
                    response.headers.add(name, value)
            if upstream.headers.get("Content-Length") is not None:
                response.content_length = int(upstream.headers["Content-Length"])
            try:
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
            except ConnectionError as exc:
                call.notes.append(f"client gone: {type(exc).__name__}")
            return response


@pytest.fixture
async def fault_proxy(cluster: Cluster, tmp_path: Path) -> AsyncIterator[FaultProxy]:
    proxy = FaultProxy(cluster.server, cluster.ca_file, cluster.admin_token, tmp_path)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()
