"""Route-live latency on a real data plane: from the bot's write to Envoy routing the request.

    python -m bench.mesh_latency [--rounds 20]

Starts a control plane (or reuses PREVIEW_BOT_CLUSTER_DIR), istiod and Envoy (tests/plugins/mesh.py),
then for each round writes with the bot's own adapter (`Kube.add_mesh_route`, `Kube.apply` of the
gateway VirtualService, `Kube.remove_mesh_route`) and polls the sidecar or gateway every 20 ms
(bounded: 30 s a round) until the request is routed the new way. The clock starts when the API server
has acknowledged the write. Prints p50 and max per kind; no targets (istiod's push debounce, 100 ms
by default, dominates).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bot import manifests
from bot.kube import Kube
from bot.naming import PreviewKey
from bot.repo_config import parse_repo_config
from bot.settings import ClusterSettings
from tests.plugins.cluster import Cluster
from tests.plugins.mesh import MeshPlane, Proxy

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG = "services:\n  - name: a\n    image: registry.example.com/a:{sha}\n    port: 8080\n"
POLL = 0.02
ROUND_TIMEOUT = 30.0


def until_routed(plane: MeshPlane, via: Proxy, host: str, headers: dict[str, str], workload: str) -> float:
    """Seconds until `workload` answers (polling every 20 ms, at most ROUND_TIMEOUT)."""
    start = time.monotonic()
    while time.monotonic() - start < ROUND_TIMEOUT:
        if plane.request_sync(via, host, headers, timeout=2).workload == workload:
            return time.monotonic() - start
        time.sleep(POLL)
    raise SystemExit(plane.explain(via, f"{host} {headers} not routed to {workload} in {ROUND_TIMEOUT}s"))


async def measure(plane: MeshPlane, rounds: int) -> dict[str, list[float]]:
    namespace = "bench-" + secrets.token_hex(3)
    plane.ensure_namespace(namespace)
    settings = ClusterSettings(domain="example.com", namespace=namespace, routing_namespace=namespace,
                               gateway=plane.gateway_ref)
    config = parse_repo_config(CONFIG)
    real = plane.add_workload(f"a.{namespace}.svc.cluster.local", namespace, (8080,)).host
    kube = Kube.from_environment(settings, str(plane.cluster.kubeconfig))
    times: dict[str, list[float]] = {"mesh route added": [], "gateway route added": [], "mesh route removed": []}

    def timed(kind: str, via: Proxy, host: str, headers: dict[str, str], workload: str) -> Callable[[], None]:
        def run() -> None:
            times[kind].append(until_routed(plane, via, host, headers, workload))
        return run

    try:
        for number in range(1, rounds + 1):
            key = PreviewKey("acme/shop", number)
            plan = manifests.plan_preview(settings, config, key, "a" * 40)
            service = plan.services[0]
            preview = plane.add_workload(service.destination, namespace, (8080,)).host
            await asyncio.to_thread(until_routed, plane, plane.client, preview, {}, preview)  # workload known

            await kube.add_mesh_route(service.mesh_host, service.mesh_route)
            await asyncio.to_thread(timed("mesh route added", plane.client, real, {"x-preview": key.value}, preview))
            await kube.apply(service.gateway_route)
            await asyncio.to_thread(timed("gateway route added", plane.gateway, service.preview_host, {}, preview))
            await kube.remove_mesh_route(service.mesh_host, key.value)
            await asyncio.to_thread(timed("mesh route removed", plane.client, real, {"x-preview": key.value}, real))
    finally:
        kube.close()
        plane.delete_namespace(namespace)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.mesh_latency")
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    reuse = os.environ.get("PREVIEW_BOT_CLUSTER_DIR")
    with tempfile.TemporaryDirectory(prefix="mesh-bench-") as tmp:
        cluster_dir = Path(reuse) if reuse else Path(tmp) / "cluster"
        script = [sys.executable, str(REPO_ROOT / "scripts" / "controlplane")]
        if not reuse:
            subprocess.run([*script, "up", "--watch-pid", str(os.getpid()), str(cluster_dir)], check=True)
        plane = MeshPlane(Cluster.from_dir(cluster_dir.resolve()), Path(tmp) / "mesh")
        try:
            started = time.monotonic()
            plane.start()
            print(f"mesh start (istiod ready, gateway + sidecar LIVE): {time.monotonic() - started:.2f} s")
            times = asyncio.run(measure(plane, args.rounds))
        finally:
            plane.stop()
            if not reuse:
                subprocess.run([*script, "down", str(cluster_dir)], check=False)
    for kind, values in times.items():
        print(f"{kind:22} n={len(values):3}  p50 {statistics.median(values) * 1000:7.0f} ms"
              f"  max {max(values) * 1000:7.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
