"""Intake next to Probot: the same signed `pull_request.opened` load against both, alternating."""

from __future__ import annotations

import asyncio
import os
import statistics

from bench import rig
from tests.fakegithub import FakeGitHub
from tests.plugins.cluster import Cluster


async def bench_peer(cluster: Cluster, *, rounds: int, seconds: float, connections: int) -> dict[str, float]:
    """`preview-bot serve` (config present: every merged event converges PR #2 against the fake GitHub
    and the API server) and the minimal Probot app, each pinned to core 0, loaded by wrk on core 1 in
    alternating rounds; the fake GitHub and the control plane run on core 1 too. Medians over the rounds."""
    os.sched_setaffinity(0, {int(rig.LOAD_CORE)})  # the fake GitHub (this process) stays off the servers' core
    try:
        with rig.control_plane_on(cluster, rig.LOAD_CORE):
            async with FakeGitHub() as fake:
                fake.add_repo(rig.EXAMPLE_REPO, files={".github/preview.yml": rig.CONFIG})
                fake.add_pull(rig.EXAMPLE_REPO, 2)
                installation = fake.repos[rig.EXAMPLE_REPO].installation_id
                assert installation is not None
                body = rig.body_of(rig.example_opened(installation))
                env = rig.bot_env(fake, cluster, rig.new_namespace(cluster, "bench-intake"))
                async with rig.preview_bot(env) as (bot_url, _), rig.probot() as (probot_url, _):
                    runs = await _alternate({"preview-bot": bot_url, "probot": probot_url}, body,
                                            rounds=rounds, seconds=seconds, connections=connections)
                fake.response_errors.clear()
    finally:
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    bot, peer = runs["preview-bot"], runs["probot"]
    result = {
        "bot_rps": statistics.median(r["rps"] for r in bot),
        "bot_p99_ms": statistics.median(r["p99_ms"] for r in bot),
        "probot_rps": statistics.median(r["rps"] for r in peer),
        "probot_p99_ms": statistics.median(r["p99_ms"] for r in peer),
        "errors": sum(r["errors"] for r in bot + peer),
        # Not targets: how much of each core the hypervisor took (a slow phase of a shared VM). Steal on
        # the load core delays wrk reading answers, which counts in the latency it measures.
        "server_core_steal_pct": statistics.median(r["steal_pct"] for r in bot + peer),
        "load_core_steal_pct": statistics.median(r["load_steal_pct"] for r in bot + peer),
    }
    result["rps_ratio"] = result["bot_rps"] / result["probot_rps"]
    return result


async def _alternate(urls: dict[str, str], body: bytes, *, rounds: int, seconds: float,
                     connections: int) -> dict[str, list[dict[str, float]]]:
    """A warm-up (JIT, caches, connections; not counted), then `rounds` rounds of wrk on each URL in turn."""
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in urls}
    for url in urls.values():
        await asyncio.to_thread(rig.wrk, url, body, seconds=2, connections=connections, round_id=99)
    for round_id in range(rounds):
        for name, url in urls.items():
            before = {core: rig.cpu_times(core) for core in (rig.SERVER_CORE, rig.LOAD_CORE)}
            run = await asyncio.to_thread(rig.wrk, url, body, seconds=seconds, connections=connections,
                                          round_id=round_id)
            steal = {core: _steal_pct(before[core], rig.cpu_times(core)) for core in before}
            run["steal_pct"], run["load_steal_pct"] = steal[rig.SERVER_CORE], steal[rig.LOAD_CORE]
            runs[name].append(run)
            print(f"  round {round_id + 1} {name:12} {run['rps']:8.0f} req/s  p50 {run['p50_ms']:6.2f} ms"
                  f"  p99 {run['p99_ms']:6.2f} ms  errors {run['errors']:.0f}  steal: servers' core"
                  f" {run['steal_pct']:4.1f} %, load core {run['load_steal_pct']:4.1f} %", flush=True)
    return runs


def _steal_pct(before: tuple[int, int], after: tuple[int, int]) -> float:
    """Percent of a core's time between two `rig.cpu_times` readings that the hypervisor took."""
    return 100 * (after[1] - before[1]) / max(1, after[0] - before[0])
