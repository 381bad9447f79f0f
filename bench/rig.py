"""The bench's real parts: a control plane, the fake GitHub, `preview-bot serve`, Probot, and wrk.

Everything binds 127.0.0.1. Servers are pinned to core 0 and the load generator to core 1 (taskset),
so neither steals the other's CPU. Every process started here is stopped here, by its PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import hmac
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp

from tests.e2e.harness import ensure_gateway
from tests.fakegithub import FakeGitHub
from tests.fakegithub.spec import webhook_examples
from tests.plugins.cluster import Cluster

ROOT = Path(__file__).resolve().parents[1]
PROBOT_DIR = ROOT / "bench" / "probot"
SECRET = "bench-webhook-secret-0123456789abcdef"
EXAMPLE_REPO = "Codertocat/Hello-World"  # the repository of @octokit/webhooks-examples' payloads
CONFIG = "services:\n  - name: a\n    image: registry.example.com/acme/a:{sha}\n    port: 8080\n"
SERVER_CORE = "0"
LOAD_CORE = "1"

WRK_SCRIPT = r"""
-- Every request: the next of the signed bodies (round robin), a fresh X-GitHub-Delivery (GitHub's UUID shape).
local bodies, signatures = {}, {}
for path in string.gmatch(os.getenv("BENCH_BODIES"), "[^,]+") do
  local f = assert(io.open(path, "rb")); table.insert(bodies, f:read("*a")); f:close()
end
for sig in string.gmatch(os.getenv("BENCH_SIGNATURES"), "[^,]+") do table.insert(signatures, sig) end
local headers = {["Content-Type"] = "application/json", ["X-GitHub-Event"] = os.getenv("BENCH_EVENT")}
local round = tonumber(os.getenv("BENCH_ROUND"))
local limit = tonumber(os.getenv("BENCH_LIMIT") or "0")
local n, answered = 0, 0
request = function()
  local i = n % #bodies + 1
  n = n + 1
  headers["X-GitHub-Delivery"] = string.format("%08x-%04x-4000-8000-%012x", round, os.time() % 65536, n)
  headers["X-Hub-Signature-256"] = signatures[i]
  return wrk.format("POST", nil, headers, bodies[i])
end
if limit > 0 then
  response = function(status, hdrs, b)
    answered = answered + 1
    if answered >= limit then wrk.thread:stop() end
  end
end
done = function(summary, latency, requests)
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"status_errors":%d,"socket_errors":%d,"p50_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sign(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def example_opened(installation_id: int, number: int = 2) -> dict[str, Any]:
    """The ~28 KB `pull_request.opened` example (sent to an App installation), for our installation."""
    example = next(e for e in webhook_examples()["pull_request"]
                   if e.get("action") == "opened" and "installation" in e)
    payload = copy.deepcopy(example)
    payload["installation"]["id"] = installation_id
    payload["number"] = payload["pull_request"]["number"] = number
    return payload


def body_of(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, indent=2).encode()  # GitHub-like: the example file's own layout


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


@contextlib.contextmanager
def control_plane() -> Iterator[Cluster]:
    """A fresh control plane for the bench (scripts/controlplane), taken down at the end; with
    PREVIEW_BOT_CLUSTER_DIR (as for the tests), the one already running there, left running."""
    script = [sys.executable, str(ROOT / "scripts" / "controlplane")]
    reuse = os.environ.get("PREVIEW_BOT_CLUSTER_DIR")
    if reuse:
        cluster = Cluster.from_dir(Path(reuse).resolve())
        ensure_capacity(cluster)
        try:
            yield cluster
        finally:
            drop_capacity(cluster)
        return
    folder = Path(tempfile.mkdtemp(prefix="preview-bot-bench-"))
    up = subprocess.run([*script, "up", "--watch-pid", str(os.getpid()), str(folder)], capture_output=True,
                        text=True, timeout=600, check=False)
    if up.returncode != 0:
        raise RuntimeError(f"control plane did not start:\n{up.stdout[-3000:]}{up.stderr[-3000:]}")
    try:
        cluster = Cluster.from_dir(folder)
        ensure_capacity(cluster)
        yield cluster
    finally:
        subprocess.run([*script, "down", "--purge", str(folder)], capture_output=True, timeout=120, check=False)
        shutil.rmtree(folder, ignore_errors=True)


def _started_at(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]  # field 22: starttime
    except OSError:
        return None


@contextlib.contextmanager
def control_plane_on(cluster: Cluster, core: str) -> Iterator[None]:
    """Every thread of the control plane's processes (as scripts/controlplane recorded them, PID and
    start time) runs on `core` for the block, then on every core again: under the peer load the
    servers' core runs the server under test and nothing else (the API server, etcd, kwok and the
    controllers answer the bot's background work from the load core)."""
    state = json.loads((cluster.dir / "state.json").read_text())
    threads = [int(task.name) for entry in state.get("pids", {}).values()
               if _started_at(entry["pid"]) == entry.get("start")
               for task in Path(f"/proc/{entry['pid']}/task").glob("*")]

    def pin(cpus: set[int]) -> None:
        for tid in threads:
            with contextlib.suppress(OSError):  # a thread that ended meanwhile
                os.sched_setaffinity(tid, cpus)

    pin({int(core)})
    try:
        yield
    finally:
        pin(set(range(os.cpu_count() or 1)))


def ensure_capacity(cluster: Cluster, pods: int = 5000) -> None:
    """One more fake node (kwok manages every node) so a thousand preview pods can run: the control
    plane's own node takes 110 pods, as a kubelet does by default."""
    from kubernetes import client

    node = {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "kwok-bench-0", "annotations": {"kwok.x-k8s.io/node": "fake"},
                         "labels": {"type": "kwok", "kubernetes.io/hostname": "kwok-bench-0",
                                    "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}},
            "status": {"allocatable": {"cpu": "512", "memory": "4Ti", "pods": str(pods)},
                       "capacity": {"cpu": "512", "memory": "4Ti", "pods": str(pods)}}}
    with cluster.api_client() as api:
        try:
            client.CoreV1Api(api).create_node(node)
        except client.exceptions.ApiException as exc:
            if exc.status != 409:
                raise


def drop_capacity(cluster: Cluster) -> None:
    """Leave a reused control plane as it was: the extra node and the bench's namespaces go."""
    from kubernetes import client

    with cluster.api_client() as api:
        core = client.CoreV1Api(api)
        for namespace in core.list_namespace().items:
            if namespace.metadata.name.startswith("bench-"):
                core.delete_namespace(namespace.metadata.name)
        with contextlib.suppress(client.exceptions.ApiException):
            core.delete_node("kwok-bench-0")


def new_namespace(cluster: Cluster, prefix: str) -> str:
    from kubernetes import client

    name = f"{prefix}-{os.urandom(3).hex()}"
    with cluster.api_client() as api:
        core = client.CoreV1Api(api)
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                core.read_namespaced_service_account("default", name)
                break
            except client.exceptions.ApiException:
                time.sleep(0.1)
    # `serve` checks at start that the Gateway it binds preview hosts to exists and covers them.
    ensure_gateway(cluster, f"{name}/{GATEWAY_NAME}")
    return name


GATEWAY_NAME = "preview-gateway"


def bot_env(fake: FakeGitHub, cluster: Cluster, namespace: str, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    env.update({
        "GITHUB_APP_ID": str(fake.app_id), "GITHUB_PRIVATE_KEY": fake.private_key_pem,
        "GITHUB_WEBHOOK_SECRET": SECRET, "GITHUB_API_URL": fake.url, "PREVIEW_DOMAIN": "example.com",
        "PREVIEW_NAMESPACE": namespace, "PREVIEW_ROUTING_NAMESPACE": namespace, "POD_NAMESPACE": namespace,
        "PREVIEW_READY_TIMEOUT": "60", "PREVIEW_RECONCILE_INTERVAL": "3600", "KUBECONFIG": str(cluster.kubeconfig),
        "PREVIEW_MAX_PER_REPO": "1000", "LOG_LEVEL": "INFO", "PREVIEW_GATEWAY": f"{namespace}/{GATEWAY_NAME}",
        "PREVIEW_SHUTDOWN_DELAY": "0",  # nothing routes to a bench server: stop at once
    })
    env.update(overrides)
    return env


async def wait_http(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(url) as response:
                    if response.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")
            await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def process(argv: list[str], env: Mapping[str, str], ready_url: str, *, core: str | None = SERVER_CORE,
                  cwd: Path | None = None) -> AsyncIterator[subprocess.Popen[bytes]]:
    """Start `argv` (pinned to `core`), wait until `ready_url` answers, stop it (SIGTERM, then SIGKILL)."""
    pinned = ["taskset", "-c", core, *argv] if core is not None else argv
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(pinned, env=dict(env), cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        try:
            try:
                await wait_http(ready_url)
            except RuntimeError:
                log.seek(0)
                output = log.read()[-3000:].decode(errors="replace")
                raise RuntimeError(f"{argv[0]} did not start:\n{output}") from None
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(asyncio.to_thread(proc.wait), 40)
                except TimeoutError:
                    proc.kill()
                    proc.wait()


@contextlib.asynccontextmanager
async def preview_bot(env: Mapping[str, str], *, core: str | None = SERVER_CORE) -> AsyncIterator[tuple[str, int]]:
    """`preview-bot serve` on a free port; yields (webhook URL, PID)."""
    port = free_port()
    argv = [str(Path(sys.executable).parent / "preview-bot"), "serve", "--host", "127.0.0.1", "--port", str(port)]
    async with process(argv, env, f"http://127.0.0.1:{port}/healthz", core=core) as proc:
        yield f"http://127.0.0.1:{port}/webhook", proc.pid


@contextlib.asynccontextmanager
async def probot(*, core: str | None = SERVER_CORE) -> AsyncIterator[tuple[str, int]]:
    """The minimal Probot app of bench/probot on a free port; yields (webhook URL, PID)."""
    port = free_port()
    key = subprocess.run(["openssl", "genrsa", "2048"], capture_output=True, check=True, text=True).stdout
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    env.update({"APP_ID": "1", "PRIVATE_KEY": key, "WEBHOOK_SECRET": SECRET, "HOST": "127.0.0.1",
                "PORT": str(port), "NODE_ENV": "production", "LOG_LEVEL": "info"})
    argv = [str(PROBOT_DIR / "node_modules" / ".bin" / "probot"), "run", "./app.js"]
    async with process(argv, env, f"http://127.0.0.1:{port}/", core=core, cwd=PROBOT_DIR) as proc:
        yield f"http://127.0.0.1:{port}/api/github/webhooks", proc.pid


def cpu_times(core: str) -> tuple[int, int]:
    """(all, steal) clock ticks of one CPU since boot, from /proc/stat (proc(5)): steal is the time the
    hypervisor ran something else while this virtual CPU wanted to run."""
    with open("/proc/stat", encoding="ascii") as stat:
        for line in stat:
            fields = line.split()
            if fields[0] == f"cpu{core}":
                ticks = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
                return sum(ticks), ticks[7]
    raise RuntimeError(f"no cpu{core} in /proc/stat")


def wrk(url: str, bodies: bytes | list[bytes], *, seconds: float, connections: int, round_id: int,
        event: str = "pull_request", limit: int = 0) -> dict[str, float]:
    """wrk (one thread, pinned to the load core), the bodies in turn: requests/s, p50/p99/max in ms,
    errors (non-2xx answers and socket errors). With `limit`, it stops after that many answers (or
    `seconds`, whichever comes first)."""
    bodies = [bodies] if isinstance(bodies, bytes) else bodies
    with tempfile.TemporaryDirectory() as folder:
        script = Path(folder) / "load.lua"
        script.write_text(WRK_SCRIPT)
        files = []
        for i, body in enumerate(bodies):
            files.append(Path(folder) / f"body-{i}.json")
            files[-1].write_bytes(body)
        env = {**os.environ, "BENCH_BODIES": ",".join(map(str, files)),
               "BENCH_SIGNATURES": ",".join(sign(b) for b in bodies), "BENCH_EVENT": event,
               "BENCH_ROUND": str(round_id), "BENCH_LIMIT": str(limit)}
        out = subprocess.run(["taskset", "-c", LOAD_CORE, "wrk", "-t1", f"-c{connections}",
                              f"-d{max(1, round(seconds))}s", "--timeout", "5s", "-s", str(script), url],
                             capture_output=True, text=True, env=env, timeout=seconds + 60, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"wrk failed: {out.stdout[-2000:]}{out.stderr[-2000:]}")
    data = json.loads(next(x for x in out.stdout.splitlines() if x.startswith("{")))
    return {"requests": data["requests"], "rps": data["requests"] / (data["duration_us"] / 1e6),
            "p50_ms": data["p50_us"] / 1000, "p99_ms": data["p99_us"] / 1000, "max_ms": data["max_us"] / 1000,
            "errors": data["status_errors"] + data["socket_errors"]}
