"""`preview-bot serve` as real subprocesses, for restart, shutdown and multi-replica tests.

The fake GitHub lives in the test's event loop, so everything here is asyncio (subprocesses, HTTP,
sleeps): a blocking wait would freeze the fake and with it the bot under test.

    async with BotProcesses(fake, cluster, namespace, tmp_path) as procs:
        a = await procs.start("a", PREVIEW_DRAIN_TIMEOUT="5")
        await a.send("pull_request", payload)
        await a.terminate()
        assert await a.wait(10) == 0

Each process gets `bot_env(...)` plus KUBECONFIG (the admin kubeconfig of the test cluster), listens on
a free 127.0.0.1 port, and writes its JSON log lines to `<tmp_path>/<name>.stdout.log` (stderr beside
it). Leaving the block SIGKILLs whatever still runs: no process outlives its test.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import aiohttp

from bot import comment
from tests.e2e.harness import SECRET, ClusterView, bot_env, ensure_gateway, key_of
from tests.fakegithub import FakeGitHub, webhook_headers
from tests.plugins.cluster import Cluster

REPO_ROOT = Path(__file__).resolve().parents[2]
# Passed through to the bot; everything else comes from bot_env(), so the caller's own GITHUB_*,
# PREVIEW_*, KUBERNETES_SERVICE_* or POD_* variables never leak in.
_INHERITED = ("PATH", "HOME", "TMPDIR", "LANG", "LC_ALL", "VIRTUAL_ENV", "SSL_CERT_FILE")
START_TIMEOUT = 30.0
_PR_SET_PDEATHSIG = 1


def _libc() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
    except OSError:  # pragma: no cover - no libc to ask
        return None


_LIBC = _libc()  # loaded in the parent: the child only makes one call between fork and exec


def _die_with_parent() -> None:
    """In the child: SIGKILL when the test process dies, even if pytest itself is killed."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def eventually(check: Callable[[], Awaitable[list[str]]], timeout: float, interval: float = 0.25) -> list[str]:
    """Run `check` until it reports no problems or `timeout` passes; return the last problems."""
    deadline = time.monotonic() + timeout
    while True:
        problems = await check()
        if not problems or time.monotonic() >= deadline:
            return problems
        await asyncio.sleep(interval)


@dataclass
class BotProcess:
    """One `preview-bot serve` process."""

    name: str
    env: dict[str, str]
    log_dir: Path
    port: int = 0
    proc: asyncio.subprocess.Process | None = None
    _session: aiohttp.ClientSession | None = None
    _files: list[IO[bytes]] = field(default_factory=list)

    @property
    def stdout_path(self) -> Path:
        return self.log_dir / f"{self.name}.stdout.log"

    @property
    def stderr_path(self) -> Path:
        return self.log_dir / f"{self.name}.stderr.log"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pod_name(self) -> str:
        return self.env.get("POD_NAME", "")

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.returncode

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start and return once /healthz answers; a port taken in between is retried on another."""
        for _attempt in range(3):
            self.port = free_port()
            await self._spawn()
            if await self._healthy(timeout):
                return
            assert self.proc is not None
            if self.proc.returncode is None:
                await self.kill()
                raise AssertionError(f"bot {self.name} did not answer /healthz within {timeout} s\n{self.tail()}")
            if "address already in use" not in self.tail().lower():
                raise AssertionError(f"bot {self.name} exited with {self.proc.returncode} at start\n{self.tail()}")
        raise AssertionError(f"bot {self.name} found no free port\n{self.tail()}")

    async def _spawn(self) -> None:
        self._close_files()
        out, err = self.stdout_path.open("ab"), self.stderr_path.open("ab")
        self._files = [out, err]
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port),
            env=self.env, cwd=REPO_ROOT, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=err,
            start_new_session=True, preexec_fn=_die_with_parent)

    async def _healthy(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.running:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with self.session.get(f"{self.base_url}/healthz",
                                            timeout=aiohttp.ClientTimeout(total=1)) as response:
                    if response.status == 200:
                        return True
            await asyncio.sleep(0.1)
        return False

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    async def send(self, event: str, payload: Mapping[str, Any], *, delivery: str | None = None,
                   timeout: float = 10.0) -> int:
        """Deliver a signed webhook; the HTTP status. Raises aiohttp.ClientError when nothing listens."""
        body = json.dumps(payload).encode()
        headers = webhook_headers(event, body, SECRET, delivery or str(uuid.uuid4()))
        async with self.session.post(f"{self.base_url}/webhook", data=body, headers=headers,
                                     timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            return response.status

    def _signal(self, sig: signal.Signals) -> None:
        if self.running:
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    async def terminate(self) -> None:
        """SIGTERM: the bot's orderly shutdown (PREVIEW_SHUTDOWN_DELAY still accepting, then intake closed,
        drain, lease released); a second one ends the delay."""
        self._signal(signal.SIGTERM)

    async def kill(self) -> int:
        """SIGKILL, as a crash or an OOM kill would; returns once the process is gone."""
        self._signal(signal.SIGKILL)
        return await self.wait(30)

    async def wait(self, timeout: float) -> int:
        """The exit code; raises TimeoutError if the process still runs after `timeout` seconds."""
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), timeout)

    def logs(self) -> list[dict[str, Any]]:
        """The JSON log records written so far (other lines are skipped)."""
        records = []
        if self.stdout_path.exists():
            for line in self.stdout_path.read_text(errors="replace").splitlines():
                with contextlib.suppress(ValueError):
                    record = json.loads(line)
                    if isinstance(record, dict):
                        records.append(record)
        return records

    def tail(self, lines: int = 40) -> str:
        parts = []
        for path in (self.stdout_path, self.stderr_path):
            text = path.read_text(errors="replace").splitlines()[-lines:] if path.exists() else []
            parts.append(f"--- {path.name} (last {len(text)} lines) ---\n" + "\n".join(text))
        return "\n".join(parts)

    def _close_files(self) -> None:
        for handle in self._files:
            handle.close()
        self._files = []

    async def aclose(self) -> None:
        try:
            if self.running:
                await self.kill()
        finally:
            if self._session is not None:
                await self._session.close()
            self._close_files()


class BotProcesses:
    """Starts bots against one fake GitHub and one namespace; SIGKILLs the survivors on exit."""

    def __init__(self, fake: FakeGitHub, cluster: Cluster, namespace: str, log_dir: Path) -> None:
        self.fake = fake
        self.cluster = cluster
        self.namespace = namespace
        self.log_dir = log_dir
        self.all: list[BotProcess] = []

    def environment(self, **overrides: str) -> dict[str, str]:
        env = {name: os.environ[name] for name in _INHERITED if name in os.environ}
        env["PYTHONUNBUFFERED"] = "1"
        env.update(bot_env(self.fake, self.namespace, **overrides))
        env["KUBECONFIG"] = str(self.cluster.kubeconfig)
        return env

    async def start(self, name: str, **overrides: str) -> BotProcess:
        bot = BotProcess(name, self.environment(**overrides), self.log_dir)
        ensure_gateway(self.cluster, bot.env["PREVIEW_GATEWAY"])
        self.all.append(bot)
        await bot.start()
        return bot

    def tails(self) -> str:
        return "\n".join(bot.tail() for bot in self.all)

    async def aclose(self) -> None:
        results = await asyncio.gather(*(bot.aclose() for bot in self.all), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]

    async def __aenter__(self) -> BotProcesses:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


# -- what "converged" means, for tests that can only watch the bot from outside ------------------------
MESH_HOST = "a.{namespace}.svc.cluster.local"  # the mesh host of CONFIG's service `a`


@dataclass
class ClusterState:
    deployments: dict[str, Any]  # name -> V1Deployment managed by the bot
    routes: list[dict[str, Any]]  # the mesh VirtualService's http routes for MESH_HOST


async def cluster_state(view: ClusterView, namespace: str) -> ClusterState:
    """One read of the cluster, off the event loop (the fake GitHub must keep answering meanwhile)."""
    def read() -> ClusterState:
        return ClusterState(view.deployments(), view.mesh_routes(MESH_HOST.format(namespace=namespace)))
    return await asyncio.to_thread(read)


def sticky_comments(fake: FakeGitHub, repo: str, number: int) -> list[dict[str, Any]]:
    return [c for c in fake.comments(repo, number) if comment.MARKER in str(c["body"])]


def deployment_history(fake: FakeGitHub, repo: str, number: int) -> list[tuple[dict[str, Any], list[str]]]:
    """The PR's GitHub deployments, oldest first (deleted ones too, flagged `deleted`), each with its
    status states (oldest first)."""
    environment = key_of(fake, repo, number).environment
    records = [d for d in fake.deployments(repo, deleted=True) if d["environment"] == environment]
    return [(d, [s["state"] for s in fake.statuses(repo, d["id"])]) for d in records]


def preview_problems(fake: FakeGitHub, state: ClusterState, repo: str, number: int, sha: str, *,
                     strict_history: bool = True) -> list[str]:
    """Why PR `number`'s preview is not (yet) converged on `sha`; [] when it is.

    Converged: its Deployment runs `sha` and is available, its mesh route exists, its latest GitHub
    deployment is at `sha` and ends in success, exactly one sticky comment says ready at `sha`. With
    `strict_history`, every earlier deployment must also end inactive (none left in_progress)."""
    key = key_of(fake, repo, number)
    where = f"{repo}#{number}"
    problems = []
    deployment = state.deployments.get(key.object_name("a"))
    if deployment is None:
        problems.append(f"{where}: no Deployment in the cluster")
    else:
        image = deployment.spec.template.spec.containers[0].image
        if not image.endswith(sha):
            problems.append(f"{where}: Deployment runs {image}, not {sha[:12]}")
        if (deployment.status.available_replicas or 0) < 1:
            problems.append(f"{where}: Deployment not available")
    if key.value not in [r.get("name") for r in state.routes]:
        problems.append(f"{where}: no mesh route {key.value}")
    history = deployment_history(fake, repo, number)
    if not history:
        problems.append(f"{where}: no GitHub deployment")
    else:
        latest, states = history[-1]
        if latest["sha"] != sha or states[-1:] != ["success"]:
            problems.append(f"{where}: latest GitHub deployment is at {latest['sha'][:12]} with statuses {states}")
        if strict_history:
            for earlier, earlier_states in history[:-1]:
                if earlier_states[-1:] != ["inactive"]:
                    problems.append(f"{where}: earlier deployment {earlier['id']} ends with {earlier_states}")
    stickies = sticky_comments(fake, repo, number)
    if len(stickies) != 1:
        problems.append(f"{where}: {len(stickies)} sticky comments")
    elif f"Preview: {comment.State.READY.value}" not in str(stickies[0]["body"]) \
            or sha[:12] not in str(stickies[0]["body"]):
        problems.append(f"{where}: sticky comment does not say ready at {sha[:12]}: {stickies[0]['body']!r}")
    return problems


def route_problems(state: ClusterState, keys: list[str]) -> list[str]:
    """The mesh VirtualService must hold exactly these preview routes, then `default` last."""
    names = [str(r.get("name")) for r in state.routes]
    if sorted(names[:-1]) != sorted(keys) or names[-1:] != ["default"]:
        return [f"mesh routes are {names}, expected {len(keys)} preview routes then default"]
    return []
