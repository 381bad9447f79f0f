"""pytest plugin: a real Kubernetes control plane (scripts/controlplane) for tests marked `cluster`.

Fixtures:
  cluster    (session) -> Cluster: one control plane for the whole session, taken down at the end.
             Set PREVIEW_BOT_CLUSTER_DIR to a folder where `scripts/controlplane up DIR` already runs
             to reuse that cluster (it is then left running).
  namespace  (function) -> str: a fresh namespace `t-<random>`, deleted afterwards.

Every test that uses `cluster` (directly or through another fixture) or lives under tests/cluster/ is
marked `cluster`. Without binaries and without Go (and CI unset) those tests are skipped; under CI a
control plane that cannot start is an error.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "controlplane"
CLUSTER_TESTS = REPO / "tests" / "cluster"
SKIP_REASON = (
    "no control-plane binaries and no Go: run `scripts/controlplane binaries` "
    "or set KUBEBUILDER_ASSETS (folder with etcd and kube-apiserver)"
)


@dataclass
class Cluster:
    dir: Path
    kubeconfig: Path
    server: str
    ca_file: Path
    admin_token: str
    tokens: dict[str, str] = field(default_factory=dict, repr=False)

    def token_for(self, user: str) -> str:
        """Bearer token of an extra token user (e.g. `nobody`: no groups, no RBAC; `tester`)."""
        return self.tokens[user]

    def kubeconfig_for_token(self, token: str, path: Path | None = None) -> Path:
        """Write a kubeconfig for any bearer token (e.g. a ServiceAccount's) and return its path."""
        if path is None:
            kdir = self.dir / "kubeconfigs"
            kdir.mkdir(exist_ok=True)
            path = kdir / f"kubeconfig-{secrets.token_hex(4)}"
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {"name": "test", "cluster": {"server": self.server, "certificate-authority": str(self.ca_file)}}
                    ],
                    "users": [{"name": "user", "user": {"token": token}}],
                    "contexts": [{"name": "test", "context": {"cluster": "test", "user": "user"}}],
                    "current-context": "test",
                },
                indent=2,
            )
        )
        path.chmod(0o600)
        return path

    def api_client(self, token: str | None = None) -> Any:
        """A `kubernetes.client.ApiClient` authenticated with `token` (default: the admin's)."""
        from kubernetes import client

        conf = client.Configuration()
        conf.host = self.server
        conf.ssl_ca_cert = str(self.ca_file)
        conf.verify_ssl = True
        conf.api_key = {"authorization": "Bearer " + (token or self.admin_token)}
        return client.ApiClient(conf)

    @classmethod
    def from_dir(cls, d: Path) -> Cluster:
        st = json.loads((d / "state.json").read_text())
        return cls(
            dir=d,
            kubeconfig=Path(st["kubeconfig"]),
            server=st["server"],
            ca_file=Path(st["ca_file"]),
            admin_token=st["tokens"]["admin"],
            tokens=dict(st["tokens"]),
        )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cluster: needs the real control plane (scripts/controlplane)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "cluster" in getattr(item, "fixturenames", ()) or CLUSTER_TESTS in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.cluster)


def _controlplane(*args: str, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        timeout=timeout,
    )


def _say(config: pytest.Config, msg: str) -> None:
    tr = config.pluginmanager.get_plugin("terminalreporter")
    if tr is not None:
        tr.write_line(msg)
    else:
        print(msg, file=sys.stderr)


_start_error: str | None = None


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    global _start_error
    if _start_error is not None:  # fail fast for every later test, with the first failure's output
        pytest.fail(_start_error, pytrace=False)
    reuse = os.environ.get("PREVIEW_BOT_CLUSTER_DIR")
    if reuse and _controlplane("status", reuse, timeout=30).returncode == 0:
        yield Cluster.from_dir(Path(reuse).resolve())
        return

    ci = bool(os.environ.get("CI"))
    if _controlplane("binaries", "--check", timeout=60).returncode != 0:
        if not shutil.which("go") and not ci:
            pytest.skip(SKIP_REASON)
        _say(request.config, "\ncontrolplane: building etcd/kube-apiserver/kwok with Go (first time: long)...")
        res = _controlplane("binaries")
        if res.returncode != 0:
            _start_error = f"building the control-plane binaries failed:\n{res.stdout[-4000:]}"
            pytest.fail(_start_error, pytrace=False)

    d = Path(reuse) if reuse else tmp_path_factory.mktemp("controlplane")
    # A cluster started for this session only goes down with it, even if pytest is killed.
    watch = [] if reuse else ["--watch-pid", str(os.getpid())]
    res = _controlplane("up", *watch, str(d), timeout=600)
    if res.returncode != 0:
        _start_error = f"`scripts/controlplane up {d}` failed:\n{res.stdout[-6000:]}"
        pytest.fail(_start_error, pytrace=False)
    try:
        yield Cluster.from_dir(d.resolve())
    finally:
        if not reuse:
            _controlplane("down", str(d), timeout=120)


@contextlib.contextmanager
def _scratch_namespace(cluster: Cluster, prefix: str) -> Iterator[str]:
    """A fresh namespace `<prefix>-<8 hex>`, ready for pods (its default ServiceAccount exists), deleted after."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    name = f"{prefix}-{secrets.token_hex(4)}"
    with cluster.api_client() as api:
        core = client.CoreV1Api(api)
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
        # Pods need the namespace's default ServiceAccount; it appears within moments.
        deadline = time.monotonic() + 30
        while True:
            try:
                core.read_namespaced_service_account("default", name)
                break
            except ApiException as e:
                if e.status != 404 or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        try:
            yield name
        finally:
            # Its VirtualServices go first, at once: the reconciler reads mesh routes cluster-wide, and while
            # the namespace is being deleted (asynchronously) its routes would dangle into a later test's pass.
            try:
                client.CustomObjectsApi(api).delete_collection_namespaced_custom_object(
                    "networking.istio.io", "v1", name, "virtualservices")
            except ApiException as e:
                if e.status != 404:
                    raise
            try:
                core.delete_namespace(name)
            except ApiException as e:
                if e.status != 404:
                    raise


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    with _scratch_namespace(cluster, "t") as name:
        yield name


@pytest.fixture
def team_namespace(cluster: Cluster) -> Iterator[str]:
    """Another namespace, where a team keeps its own VirtualServices."""
    with _scratch_namespace(cluster, "team") as name:
        yield name


def wait_until(what: str, pred: Callable[[], Any], timeout: float = 60.0) -> Any:
    """Poll a blocking predicate until it is truthy; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f}s: {what}")
        time.sleep(0.25)
