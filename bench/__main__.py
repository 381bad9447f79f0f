"""Benchmarks with targets: webhook intake latency, mesh-route updates, render, memory.

Bounded in count and time, loopback only. Prints one line per figure and exits non-zero when a
target is missed, so `make bench` can gate a change.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import multiprocessing
import resource
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web

from bot import manifests, mesh_routes
from bot.naming import PreviewKey
from bot.queue import WorkQueue
from bot.repo_config import parse_repo_config
from bot.settings import ClusterSettings
from bot.webhook import WebhookConfig, create_app

SECRET = "bench-secret-0123456789abcdef"
CONFIG = "services:\n  - name: a\n    image: registry.example.com/a:{sha}\n    port: 8080\n"


def _payload(number: int) -> bytes:
    return json.dumps({"action": "opened", "number": number, "installation": {"id": 1},
                       "repository": {"full_name": "acme/shop"},
                       "pull_request": {"number": number, "head": {"sha": "a" * 40}},
                       "filler": "x" * 20_000}).encode()


def _serve_intake(port: Any, stop: Any, rss: Any) -> None:
    """The webhook app alone in its own process (a client in the same event loop would skew latency)."""
    async def run() -> None:
        queue = WorkQueue(8)

        async def dispatch(_event: Any) -> None:
            return None

        config = WebhookConfig(secret=SECRET, max_body_bytes=25 * 1024 * 1024, dispatch=dispatch,
                               submit=queue.submit, readiness={})
        runner = web.AppRunner(create_app(config), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port.value = runner.addresses[0][1]
        while not stop.is_set():
            await asyncio.sleep(0.05)
        await queue.join()
        await runner.cleanup()

    asyncio.run(run())
    rss.value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def bench_intake(deliveries: int, concurrency: int) -> dict[str, float]:
    """Acknowledge latency of signed 20 kB deliveries; the background work is a no-op."""
    port, stop, rss = multiprocessing.Value("i", 0), multiprocessing.Event(), multiprocessing.Value("d", 0.0)
    server = multiprocessing.Process(target=_serve_intake, args=(port, stop, rss), daemon=True)
    server.start()
    deadline = time.monotonic() + 30
    while port.value == 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    url = f"http://127.0.0.1:{port.value}/webhook"
    bodies = [_payload(i % 500 + 1) for i in range(deliveries)]
    latencies: list[float] = []
    semaphore = asyncio.Semaphore(concurrency)

    async def send(session: aiohttp.ClientSession, body: bytes) -> None:
        headers = {"X-GitHub-Event": "pull_request", "X-GitHub-Delivery": str(uuid.uuid4()),
                   "X-Hub-Signature-256": "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest(),
                   "Content-Type": "application/json"}
        async with semaphore:
            started = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as response:
                assert response.status == 202, response.status
            latencies.append(time.perf_counter() - started)

    try:
        started = time.perf_counter()
        async with aiohttp.ClientSession() as session:
            await asyncio.wait_for(asyncio.gather(*(send(session, b) for b in bodies)), 120)
        elapsed = time.perf_counter() - started
    finally:
        stop.set()
        server.join(30)
    latencies.sort()
    return {"deliveries_per_s": deliveries / elapsed,
            "ack_p50_ms": statistics.median(latencies) * 1000,
            "ack_p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
            "server_max_rss_mib": rss.value}


def bench_mesh_routes(previews: int) -> dict[str, float]:
    """Adding then removing `previews` routes on one host, one at a time (the read-modify-write core)."""
    host = "a.default.svc.cluster.local"
    spec = mesh_routes.new_spec(host)
    started = time.perf_counter()
    for n in range(1, previews + 1):
        key = PreviewKey("acme/shop", n, 1296269).value
        route = mesh_routes.preview_route(key, destination=f"{key}-a.default.svc.cluster.local", port=8080,
                                          header_name="x-preview", mode="header")
        spec = mesh_routes.with_route(spec, host, route)
    added = time.perf_counter() - started
    assert len(spec["http"]) == previews + 1
    started = time.perf_counter()
    for n in range(1, previews + 1):
        spec = mesh_routes.without_key(spec, host, PreviewKey("acme/shop", n, 1296269).value)
    removed = time.perf_counter() - started
    return {"add_ms_per_route": added / previews * 1000, "remove_ms_per_route": removed / previews * 1000}


def bench_render(count: int) -> dict[str, float]:
    settings = ClusterSettings(domain="example.com")
    config = parse_repo_config(CONFIG)
    started = time.perf_counter()
    for n in range(1, count + 1):
        manifests.render(settings, config, PreviewKey("acme/shop", n, 1296269), "a" * 40)
    return {"render_ms": (time.perf_counter() - started) / count * 1000}


def bench_mesh_size(routes: int) -> dict[str, float]:
    """The shared mesh VirtualService of one host with `routes` previews from 50 repositories, against
    etcd's 1.5 MiB request limit (the API server stores the object whole, as one etcd value)."""
    host = "a.default.svc.cluster.local"
    result: dict[str, float] = {}
    for mode in ("header", "both"):
        spec = mesh_routes.new_spec(host)
        for i in range(routes):
            key = PreviewKey(f"org{i % 50}/repo{i % 50}", i // 50 + 1, 5000 + i % 50).value
            spec = mesh_routes.with_route(spec, host, mesh_routes.preview_route(
                key, destination=f"{key}-a.default.svc.cluster.local", port=8080, header_name="x-preview",
                mode=mode))  # type: ignore[arg-type]
        result[f"{mode}_{routes}_routes_kib"] = mesh_routes.spec_bytes(spec) / 1024
        result[f"{mode}_routes_under_refusal"] = mesh_routes.MAX_SPEC_BYTES / (mesh_routes.spec_bytes(spec) / routes)
    return result


Target = tuple[str, str, Callable[[float], bool], str]
ETCD_LIMIT_KIB = 1.5 * 1024
TARGETS: list[Target] = [
    ("intake", "ack_p99_ms", lambda v: v < 100, "< 100 ms"),
    ("intake", "deliveries_per_s", lambda v: v > 200, "> 200 /s"),
    ("mesh_routes", "add_ms_per_route", lambda v: v < 5, "< 5 ms at 500 routes"),
    ("render", "render_ms", lambda v: v < 5, "< 5 ms"),
    ("intake", "server_max_rss_mib", lambda v: v < 150, "< 150 MiB"),
    ("mesh_size", "header_1000_routes_kib", lambda v: v < ETCD_LIMIT_KIB, "< 1536 KiB (etcd)"),
    ("mesh_size", "both_1000_routes_kib", lambda v: v < ETCD_LIMIT_KIB, "< 1536 KiB (etcd)"),
    ("peer", "rps_ratio", lambda v: v >= 1.5, ">= 1.5 x Probot"),
    ("peer", "bot_p99_ms", lambda v: v < 10, "< 10 ms"),
    ("peer", "errors", lambda v: v == 0, "= 0"),
    ("flood", "peak_rss_mib", lambda v: v < 150, "< 150 MiB"),
    ("flood", "ack_p99_ms", lambda v: v < 20, "< 20 ms"),
    ("flood", "refused", lambda v: v == 0, "= 0"),
    ("preview", "github_calls_per_preview", lambda v: v <= 8, "<= 8"),
    ("preview", "github_writes_per_preview", lambda v: v <= 5, "<= 5"),
    ("burst", "secondary_limit_403s", lambda v: v == 0, "= 0"),
    ("burst", "not_ready", lambda v: v == 0, "= 0"),
    ("burst", "max_writes_per_min_scaled", lambda v: v <= 80, "<= 80 (GitHub's limit)"),
    ("scale", "github_calls_growth", lambda v: v <= 0, "<= 0"),
    ("scale", "kube_calls_growth", lambda v: v <= 0, "<= 0"),
    ("scale", "mesh_share_of_etcd_limit_pct", lambda v: v < 100, "< 100 %"),
]
CLUSTER_SECTIONS = ("peer", "flood", "preview", "burst", "scale")


def print_group(group: str, figures: dict[str, float]) -> int:
    failed = 0
    for name, value in figures.items():
        target = next((t for t in TARGETS if t[0] == group and t[1] == name), None)
        verdict = ""
        if target is not None:
            ok = target[2](value)
            failed += not ok
            verdict = f"  target {target[3]}: {'ok' if ok else 'MISSED'}"
        print(f"{group:12} {name:30} {value:10.2f}{verdict}", flush=True)
    return failed


async def cluster_sections(args: argparse.Namespace, only: set[str]) -> int:
    from bench import peer, rig, scenarios

    failed = 0
    with rig.control_plane() as cluster:
        if "peer" in only:
            failed += print_group("peer", await peer.bench_peer(
                cluster, rounds=args.rounds, seconds=args.seconds, connections=args.connections))
        if "flood" in only:
            failed += print_group("flood", await scenarios.bench_flood(
                cluster, prs=args.flood_prs, deliveries=args.flood, connections=args.connections))
        if "preview" in only:
            failed += print_group("preview", await scenarios.bench_preview(cluster, prs=args.prs))
        if "burst" in only:
            failed += print_group("burst", await scenarios.bench_burst(cluster, prs=args.burst, speedup=10))
        if "scale" in only:
            failed += print_group("scale", await scenarios.bench_scale(
                cluster, repos=args.scale_repos, per_repo=args.scale_per_repo))
    return failed


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--deliveries", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--previews", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds against Probot")
    parser.add_argument("--seconds", type=float, default=5, help="seconds of load per round")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--flood", type=int, default=20_000, help="deliveries while GitHub is down")
    parser.add_argument("--flood-prs", type=int, default=10)
    parser.add_argument("--prs", type=int, default=50, help="PRs timed from opened to URL")
    parser.add_argument("--burst", type=int, default=200, help="PRs opened at once")
    parser.add_argument("--scale-repos", type=int, default=50)
    parser.add_argument("--scale-per-repo", type=int, default=20)
    parser.add_argument("--only", default="", help="comma-separated sections (default: all)")
    args = parser.parse_args()
    sections = ("intake", "mesh_routes", "render", "mesh_size", *CLUSTER_SECTIONS)
    only = set(args.only.split(",")) if args.only else set(sections)
    failed = 0
    if "intake" in only:
        failed += print_group("intake", asyncio.run(bench_intake(args.deliveries, args.concurrency)))
    if "mesh_routes" in only:
        failed += print_group("mesh_routes", bench_mesh_routes(args.previews))
    if "render" in only:
        failed += print_group("render", bench_render(200))
    if "mesh_size" in only:
        failed += print_group("mesh_size", bench_mesh_size(1000))
    if only & set(CLUSTER_SECTIONS):
        failed += asyncio.run(cluster_sections(args, only))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
