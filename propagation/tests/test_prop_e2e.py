"""The proof: four real processes on loopback, A (aiohttp) -> B (ASGI on uvicorn, httpx)
-> C (WSGI on wsgiref, requests) -> D (http.server sink echoing the headers it got)."""

from __future__ import annotations

import asyncio
import re
import select
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from preview_propagation import baggage_match_regex

SERVICES = Path(__file__).with_name("_services.py")
KEY = "preview-7-abc123"


def _start(name: str, mode: str, downstream: str, log: Path) -> tuple[subprocess.Popen[str], str]:
    with log.open("w") as err:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            [sys.executable, str(SERVICES), name, mode, downstream],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    # Bounded wait for "PORT <n>": the service binds before announcing, so it is reachable.
    ready, _, _ = select.select([proc.stdout], [], [], 30)
    line = proc.stdout.readline() if ready and proc.stdout else ""
    if not line.startswith("PORT "):
        proc.kill()
        raise RuntimeError(f"service {name} did not start:\n{log.read_text()}")
    return proc, f"http://127.0.0.1:{int(line.split()[1])}/"


def _chain(mode: str, tmp: Path) -> Iterator[str]:
    procs: list[subprocess.Popen[str]] = []
    try:
        url = ""
        for name in "dcba":  # start from the sink so each hop knows its downstream
            proc, url = _start(name, mode, url, tmp / f"{name}.log")
            procs.append(proc)
        yield url
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout:
                proc.stdout.close()


@pytest.fixture(scope="module")
def header_chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from _chain("header", tmp_path_factory.mktemp("header"))


@pytest.fixture(scope="module")
def baggage_chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from _chain("baggage", tmp_path_factory.mktemp("baggage"))


async def _get(session: aiohttp.ClientSession, url: str, headers: Any = None) -> dict[str, Any]:
    async with session.get(url, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        body: dict[str, Any] = await resp.json()
        return body


def _hops(body: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    """The keys seen by A, B, C, and the sink's echo of the headers it received."""
    seen = []
    while body["hop"] != "d":
        seen.append(body["seen"])
        body = body["downstream"]
    return seen, body


@pytest.fixture
async def client() -> Any:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def test_key_reaches_the_last_hop(header_chain: str, client: aiohttp.ClientSession) -> None:
    seen, sink = _hops(await _get(client, header_chain, {"X-PREVIEW": KEY}))
    assert seen == [KEY, KEY, KEY]
    assert sink["x_preview"] == [KEY]


async def test_concurrent_requests_never_mix(
    header_chain: str, client: aiohttp.ClientSession
) -> None:
    keys = [f"preview-{i}-ab{i:02d}cd" for i in range(50)]
    bodies = await asyncio.gather(*(_get(client, header_chain, {"X-PREVIEW": k}) for k in keys))
    for key, body in zip(keys, bodies, strict=True):
        seen, sink = _hops(body)
        assert seen == [key, key, key]
        assert sink["x_preview"] == [key]


async def test_no_header_stays_absent(header_chain: str, client: aiohttp.ClientSession) -> None:
    seen, sink = _hops(await _get(client, header_chain))
    assert seen == [None, None, None]
    assert sink["x_preview"] is None


@pytest.mark.parametrize(
    "headers",
    [
        {"X-PREVIEW": "Preview-7-ABC123"},  # uppercase
        {"X-PREVIEW": "p" * 100},  # too long for a DNS label
        {"X-PREVIEW": "preview-7;rm -rf"},
        [("X-PREVIEW", "preview-1"), ("X-PREVIEW", "preview-2")],  # ambiguous
    ],
)
async def test_invalid_values_are_not_forwarded(
    header_chain: str, client: aiohttp.ClientSession, headers: Any
) -> None:
    seen, sink = _hops(await _get(client, header_chain, headers))
    assert seen == [None, None, None]
    assert sink["x_preview"] is None


async def test_baggage_mode_end_to_end(baggage_chain: str, client: aiohttp.ClientSession) -> None:
    incoming = f"other=1, preview={KEY};ttl=5, more=x%20y"
    seen, sink = _hops(await _get(client, baggage_chain, {"baggage": incoming}))
    assert seen == [KEY, KEY, KEY]
    # C's own entry survives the merge; the X-PREVIEW header is not used in this mode.
    assert sink["baggage"] == [f"tenant=acme,preview={KEY}"]
    assert sink["x_preview"] is None
    # ... and what arrives is routable by the bot's VirtualService regex.
    assert re.match(baggage_match_regex(KEY), sink["baggage"][0])
    assert not re.match(baggage_match_regex("preview-7-abc12"), sink["baggage"][0])


async def test_baggage_mode_concurrent(baggage_chain: str, client: aiohttp.ClientSession) -> None:
    keys = [f"preview-{i}-x" for i in range(20)]
    bodies = await asyncio.gather(
        *(_get(client, baggage_chain, {"baggage": f"preview={k}"}) for k in keys)
    )
    for key, body in zip(keys, bodies, strict=True):
        seen, sink = _hops(body)
        assert seen == [key] * 3
        assert sink["baggage"] == [f"tenant=acme,preview={key}"]


@pytest.mark.parametrize(
    "baggage", [None, "other=1", "preview=Bad_Key", f"preview={KEY},preview=Bad_Key"]
)
async def test_baggage_mode_without_valid_key(
    baggage_chain: str, client: aiohttp.ClientSession, baggage: str | None
) -> None:
    headers = {"baggage": baggage} if baggage else {}
    # An X-PREVIEW header is ignored in baggage mode as well.
    seen, sink = _hops(await _get(client, baggage_chain, {**headers, "X-PREVIEW": KEY}))
    assert seen == [None, None, None]
    assert sink["baggage"] == ["tenant=acme"]
    assert sink["x_preview"] is None
