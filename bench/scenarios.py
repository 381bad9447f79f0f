"""End-to-end figures on loopback: `preview-bot serve` against the fake GitHub and the real API server.

- flood: deliveries for a few PRs while GitHub answers 502 to everything: the server's memory and
  acknowledgement latency, then the time until every PR's preview runs its head once GitHub is back;
- preview: PR opened -> preview URL in the PR comment (rollout excluded), and the GitHub requests one
  new preview costs, counted at the fake;
- burst: many PRs opened at once: the time until all are ready, and how GitHub writes were paced.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from typing import Any

import aiohttp

from bench import rig
from tests.fakegithub import FakeGitHub, pull_request_event, webhook_headers
from tests.plugins.cluster import Cluster

REPO = rig.EXAMPLE_REPO
WRITES = frozenset({"POST", "PATCH", "PUT", "DELETE"})


def _final_state(fake: FakeGitHub, number: int) -> str | None:
    """success or failure of the PR's newest Deployment; None while it is on its way."""
    ours = [d for d in fake.deployments(REPO) if d["environment"] == f"preview-{number}"]
    if not ours:
        return None
    states = [s["state"] for s in fake.statuses(REPO, max(ours, key=lambda d: d["id"])["id"])]
    return states[-1] if states and states[-1] in ("success", "failure", "error") else None


def _ready_at(fake: FakeGitHub, number: int, sha: str) -> bool:
    """The PR's newest Deployment is for `sha` and succeeded."""
    environment = f"preview-{number}"
    ours = [d for d in fake.deployments(REPO) if d["environment"] == environment]
    if not ours:
        return False
    newest = max(ours, key=lambda d: d["id"])
    states = [s["state"] for s in fake.statuses(REPO, newest["id"])]
    return newest["sha"] == sha and bool(states) and states[-1] == "success"


async def _until(what: str, check: Any, timeout: float) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"not within {timeout:.0f} s: {what}")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def _send(session: aiohttp.ClientSession, url: str, fake: FakeGitHub, number: int, action: str) -> int:
    body = rig.body_of(pull_request_event(fake, REPO, number, action))
    headers = webhook_headers("pull_request", body, rig.SECRET, str(uuid.uuid4()))
    async with session.post(url, data=body, headers=headers) as response:
        return response.status


def _flood_body(fake: FakeGitHub, number: int) -> bytes:
    installation = fake.repos[REPO].installation_id
    assert installation is not None
    payload = rig.example_opened(installation, number)
    payload["action"] = "synchronize"
    return rig.body_of(payload)


async def bench_flood(cluster: Cluster, *, prs: int, deliveries: int, connections: int) -> dict[str, float]:
    async with FakeGitHub() as fake, aiohttp.ClientSession() as session:
        fake.add_repo(REPO, files={".github/preview.yml": rig.CONFIG})
        env = rig.bot_env(fake, cluster, rig.new_namespace(cluster, "bench-flood"), PREVIEW_RECONCILE_INTERVAL="10",
                          PREVIEW_GITHUB_CONTENT_PER_MINUTE="600", PREVIEW_GITHUB_CONTENT_PER_HOUR="20000")
        async with rig.preview_bot(env) as (url, pid):
            for n in range(1, prs + 1):
                fake.add_pull(REPO, n)
                assert await _send(session, url, fake, n, "opened") == 202
            heads = {n: fake.repos[REPO].pulls[n].head_sha for n in range(1, prs + 1)}
            await _until("first previews ready", lambda: all(_ready_at(fake, n, s) for n, s in heads.items()), 300)
            rss_before = rig.rss_mib(pid)

            fake.inject("*", "", status=502, times=10**9)  # GitHub is down
            for n in range(1, prs + 1):
                fake.push(REPO, n, uuid.uuid4().hex + "0" * 8)
            heads = {n: fake.repos[REPO].pulls[n].head_sha for n in range(1, prs + 1)}
            bodies = [_flood_body(fake, n) for n in range(1, prs + 1)]
            load = await asyncio.to_thread(rig.wrk, url, bodies, seconds=120, connections=connections,
                                           round_id=7, limit=deliveries)
            rss_after, peak = rig.rss_mib(pid), rig.peak_rss_mib(pid)

            fake.clear_faults()  # GitHub is back
            converge = await _until("every PR at its head after the outage",
                                    lambda: all(_ready_at(fake, n, s) for n, s in heads.items()), 300)
            fake.response_errors.clear()
    return {"deliveries": load["requests"], "refused": load["errors"], "ack_p99_ms": load["p99_ms"],
            "ack_p50_ms": load["p50_ms"], "rss_before_mib": rss_before, "rss_after_mib": rss_after,
            "peak_rss_mib": peak, "converge_s": converge}


async def bench_preview(cluster: Cluster, *, prs: int) -> dict[str, float]:
    """PR opened -> URL in the sticky comment, one PR at a time; GitHub requests per new preview."""
    async with FakeGitHub() as fake, aiohttp.ClientSession() as session:
        fake.add_repo(REPO, files={".github/preview.yml": rig.CONFIG})
        # Pacing of writes is tested elsewhere; here it would measure GitHub's limit, not the bot.
        env = rig.bot_env(fake, cluster, rig.new_namespace(cluster, "bench-preview"),
                          PREVIEW_GITHUB_CONTENT_PER_MINUTE="100000", PREVIEW_GITHUB_CONTENT_PER_HOUR="100000")
        latencies: list[float] = []
        calls: list[int] = []
        writes: list[int] = []
        async with rig.preview_bot(env) as (url, _pid):
            # The start-up pass (open PRs missed while down, deploys left half-done) is not a preview's cost.
            await _until("the start-up pass", lambda: any(c.operation_id == "pulls/list" for c in fake.calls), 60)
            await asyncio.sleep(2)
            for n in range(1, prs + 2):
                pull = fake.add_pull(REPO, n)
                host = f"preview-{n}-api-a.example.com"
                before = len(fake.calls)
                started = time.monotonic()
                assert await _send(session, url, fake, n, "opened") == 202
                await _until(f"URL of PR {n} in its comment",
                             lambda n=n, host=host: any(host in str(c["body"]) for c in fake.comments(REPO, n)), 60)
                elapsed = time.monotonic() - started
                try:
                    await _until(f"PR {n} ready", lambda n=n, sha=pull.head_sha: _ready_at(fake, n, sha), 120)
                except RuntimeError as exc:
                    raise RuntimeError(f"{exc}; its comment: {fake.comments(REPO, n)[-1]['body']}") from None
                await asyncio.sleep(0.2)  # the READY edit lands after the status
                if n == 1:
                    continue  # the first one also mints the installation token: not the steady state
                latencies.append(elapsed)
                made = fake.calls[before:]
                if len(made) > 8:
                    print(f"  PR {n}: {len(made)} GitHub requests:",
                          ", ".join(f"{c.method} {c.path_template} {c.status}" for c in made), flush=True)
                calls.append(len(made))
                writes.append(sum(c.method in WRITES for c in made))
            fake.response_errors.clear()
    latencies.sort()
    return {"url_p50_ms": statistics.median(latencies) * 1000,
            "url_p99_ms": latencies[max(0, round(len(latencies) * 0.99) - 1)] * 1000,
            "github_calls_per_preview": max(calls), "github_writes_per_preview": max(writes)}


async def bench_burst(cluster: Cluster, *, prs: int, speedup: int) -> dict[str, float]:
    """`prs` PRs opened at once. GitHub's content limit (80 a minute; the bot paces itself to 60) is
    scaled by `speedup` on both sides, so the bench takes minutes, not half an hour; the figures say
    what that means at the real limits."""
    async with FakeGitHub() as fake, aiohttp.ClientSession() as session:
        fake.add_repo(REPO, files={".github/preview.yml": rig.CONFIG})
        fake.secondary_limit(80 * speedup)
        env = rig.bot_env(fake, cluster, rig.new_namespace(cluster, "bench-burst"), PREVIEW_READY_TIMEOUT="300",
                          PREVIEW_GITHUB_CONTENT_PER_MINUTE=str(60 * speedup),
                          PREVIEW_GITHUB_CONTENT_PER_HOUR=str(450 * speedup))
        async with rig.preview_bot(env) as (url, _pid):
            for n in range(1, prs + 1):
                fake.add_pull(REPO, n)
            started = time.monotonic()
            statuses = await asyncio.gather(*(_send(session, url, fake, n, "opened") for n in range(1, prs + 1)))
            assert statuses == [202] * prs, statuses
            await _until(f"{prs} previews deployed", lambda: all(_final_state(fake, n) for n in range(1, prs + 1)),
                         1200)
            elapsed = time.monotonic() - started
            ready = sum(_final_state(fake, n) == "success" for n in range(1, prs + 1))
            writes = sum(c.method in WRITES and "/access_tokens" not in str(c.path_template) for c in fake.calls)
            fake.response_errors.clear()
            return {"converge_s": elapsed, "not_ready": prs - ready, "writes": writes,
                    "max_writes_per_min_scaled": fake.max_content_requests_in_window(60) / speedup,
                    "secondary_limit_403s": sum(c.status == 403 for c in fake.calls),
                    "minutes_at_real_pacing": writes / 60}


def _running_pods(cluster: Cluster, namespace: str) -> int:
    from kubernetes import client

    with cluster.api_client() as api:
        pods = client.CoreV1Api(api).list_namespaced_pod(namespace).items
    return sum(p.status.phase == "Running" for p in pods)


async def _counters(base: str) -> dict[str, float]:
    """Sum of the bot's GitHub and Kubernetes request counters, from its /metrics."""
    async with aiohttp.ClientSession() as session, session.get(f"{base}/metrics") as response:
        text = await response.text()
    totals = {"kube": 0.0, "github": 0.0, "rollout": 0.0, "lease": 0.0}
    for line in text.splitlines():
        for name, metric in (("kube", "preview_bot_kubernetes_requests_total{"),
                             ("github", "preview_bot_github_requests_total{"),
                             ("rollout", "preview_bot_kubernetes_rollout_requests_total "),
                             ("lease", "preview_bot_kubernetes_lease_requests_total ")):
            if line.startswith(metric):
                totals[name] += float(line.rsplit(" ", 1)[1])
    return totals


async def bench_scale(cluster: Cluster, *, repos: int, per_repo: int) -> dict[str, float]:
    """GitHub and Kubernetes requests for one push to a live preview, with 1 and with repos*per_repo
    previews live (the others made with the bot's own adapter: the same objects and mesh routes). Kubernetes
    requests are counted besides the readiness wait and Lease renewals, which follow the rollout's duration
    (reported apart as rollout_wait_calls and lease_calls)."""
    from datetime import UTC, datetime

    from bot import manifests, mesh_routes
    from bot.kube import Kube
    from bot.naming import PreviewKey, mesh_route_name
    from bot.repo_config import parse_repo_config
    from bot.settings import ClusterSettings, Policy

    namespace = rig.new_namespace(cluster, "bench-scale")
    template = "{key}-{service}.{domain}"  # 50 repositories: hosts must tell them apart
    settings = ClusterSettings(domain="example.com", host_template=template, namespace=namespace,
                               routing_namespace=namespace, policy=Policy(max_previews_per_repo=10_000))
    config = parse_repo_config(rig.CONFIG)

    async with FakeGitHub() as fake, aiohttp.ClientSession() as session:
        fake.add_repo(REPO, files={".github/preview.yml": rig.CONFIG})
        env = rig.bot_env(fake, cluster, namespace, PREVIEW_GITHUB_CONTENT_PER_MINUTE="100000",
                          PREVIEW_GITHUB_CONTENT_PER_HOUR="100000", PREVIEW_HOST_TEMPLATE=template)
        async with rig.preview_bot(env) as (url, _pid):
            base = url.rsplit("/", 1)[0]
            fake.add_pull(REPO, 1)
            assert await _send(session, url, fake, 1, "opened") == 202
            await _until("PR 1 ready", lambda: _ready_at(fake, 1, fake.repos[REPO].pulls[1].head_sha), 120)

            async def one_push() -> tuple[float, float, float, float, float]:
                await asyncio.sleep(0.5)
                before_fake, before = len(fake.calls), await _counters(base)
                sha = uuid.uuid4().hex + "0" * 8
                fake.push(REPO, 1, sha)
                assert await _send(session, url, fake, 1, "synchronize") == 202
                took = await _until("the push deployed", lambda: _ready_at(fake, 1, sha), 120)
                await asyncio.sleep(0.5)
                after = await _counters(base)
                rollout, lease = after["rollout"] - before["rollout"], after["lease"] - before["lease"]
                other = after["kube"] - before["kube"] - rollout - lease
                return len(fake.calls) - before_fake, other, rollout, lease, took

            await one_push()  # the first push also deactivates the first Deployment: not the steady state
            github_small, kube_small, rollout_small, lease_small, push_small = await one_push()

            kube = Kube.from_environment(settings, str(cluster.kubeconfig))
            started = time.monotonic()
            limit = asyncio.Semaphore(8)

            plans = [manifests.plan_preview(settings, config, PreviewKey(f"bench{r}/shop{r}", n, 7000 + r), "b" * 40,
                                            only=["a"], pushed_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
                     for r in range(repos) for n in range(1, per_repo + 1) if (r, n) != (0, 1)]

            async def make(plan: manifests.PreviewPlan) -> None:
                async with limit:
                    await kube.apply_preview(plan)

            def add_all(spec: dict[str, Any]) -> dict[str, Any]:
                for plan in plans:
                    for service in plan.services:
                        spec = mesh_routes.with_route(spec, service.mesh_host, service.mesh_route)
                return spec

            try:
                await asyncio.gather(*(make(plan) for plan in plans))
                # The routes in one write: adding 999 one by one rewrites a growing object 999 times.
                await kube.update_mesh_routes(plans[0].services[0].mesh_host, add_all)
                # Every pod scheduled and running first: the push's pod must not queue behind 999 others.
                await _until("the previews' pods running", lambda: _running_pods(cluster, namespace) >= len(plans) + 1,
                             900)
                fill_s = time.monotonic() - started
                live = len(await kube.live_previews())
                mesh = await kube.get(f"/apis/networking.istio.io/v1/namespaces/{namespace}/virtualservices/"
                                      f"{mesh_route_name(f'a.{namespace}.svc.cluster.local')}")
            finally:
                kube.close()
            assert mesh is not None
            github_big, kube_big, rollout_big, lease_big, push_big = await one_push()
            fake.response_errors.clear()
    return {"live_previews": live, "fill_s": fill_s,
            "github_calls_push_1": github_small, f"github_calls_push_{live}": github_big,
            "kube_calls_push_1": kube_small, f"kube_calls_push_{live}": kube_big,
            "rollout_wait_calls_1": rollout_small, f"rollout_wait_calls_{live}": rollout_big,
            "lease_calls_1": lease_small, f"lease_calls_{live}": lease_big,
            "push_to_ready_s_1": push_small, f"push_to_ready_s_{live}": push_big,
            "github_calls_growth": github_big - github_small, "kube_calls_growth": kube_big - kube_small,
            "mesh_routes": len(mesh["spec"]["http"]), "mesh_spec_kib": mesh_routes.spec_bytes(mesh["spec"]) / 1024,
            "mesh_share_of_etcd_limit_pct": mesh_routes.spec_bytes(mesh["spec"]) / (1.5 * 2**20) * 100}
