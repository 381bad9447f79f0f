"""The Kubernetes adapter against a real API server behind a fault-injecting proxy.

Issue 4, item 6: 409 / 5xx / timeouts are retried, with a bound; 4xx errors that will not get better
(403) are not; nothing is left half-changed that a retry of the same operation would not fix.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from bot import metrics
from bot.errors import TemporaryError
from bot.kube import Kube, KubeError, collection_path, object_path
from bot.manifests import VIRTUAL_SERVICE_API, PreviewPlan, plan_preview
from bot.naming import PreviewKey, mesh_route_name
from bot.repo_config import RepoConfig, ServiceConfig
from bot.settings import ClusterSettings
from tests.plugins.kubeproxy import FaultProxy

pytestmark = pytest.mark.cluster

TIMEOUT = 2.0  # the adapter's per-request timeout in these tests
ATTEMPTS = 6  # Kube's default attempts per call
CONFIG = RepoConfig(services=(ServiceConfig(name="a", image="x:{sha}", port=8080),))
SHA = "a" * 40


@pytest.fixture
async def kube(fault_proxy: FaultProxy, settings: ClusterSettings) -> AsyncIterator[Kube]:
    k = Kube.from_environment(settings, kubeconfig=str(fault_proxy.kubeconfig()), timeout=TIMEOUT)
    try:
        yield k
    finally:
        k.close()


def plan(settings: ClusterSettings, number: int) -> PreviewPlan:
    return plan_preview(settings, CONFIG, PreviewKey("acme/shop", number, 1296269), SHA)


def by_kind(p: PreviewPlan, kind: str) -> dict[str, Any]:
    return next(m for m in p.manifests() if m["kind"] == kind)


def conflicts() -> float:
    return metrics.REGISTRY.get_sample_value("preview_bot_mesh_update_conflicts_total") or 0.0


async def objects_of(k: Kube, p: PreviewPlan) -> dict[str, dict[str, Any] | None]:
    return {m["kind"]: await k.get(object_path(m)) for m in p.manifests()}


def mesh_path(settings: ClusterSettings, host: str) -> str:
    vs = collection_path(VIRTUAL_SERVICE_API, "virtualservices", settings.routing_namespace)
    return f"{vs}/{mesh_route_name(host)}"


def route_names(vs: dict[str, Any] | None) -> list[str]:
    assert vs is not None, "the mesh VirtualService is gone"
    return [r["name"] for r in vs["spec"]["http"]]


def bounded(calls: list[Any], what: str, limit: int = ATTEMPTS) -> None:
    assert 1 <= len(calls) <= limit, f"{what}: {len(calls)} attempts (bound {limit}): {calls}"


# -- (a) 5xx on a write ---------------------------------------------------------------------------------


async def test_5xx_on_deployment_apply_is_retried(kube: Kube, direct: Kube, fault_proxy: FaultProxy,
                                                   settings: ClusterSettings) -> None:
    p = plan(settings, 1)
    fault_proxy.inject("PATCH", r"/deployments/", status=500)
    fault_proxy.inject("PATCH", r"/deployments/", status=503)

    await kube.apply_preview(p)

    assert fault_proxy.statuses("PATCH", r"/deployments/") in ([500, 503, 201], [500, 503, 200])
    live = await objects_of(direct, p)
    assert all(live.values()), live
    assert live["Deployment"]["spec"]["template"]["spec"]["containers"][0]["image"] == f"x:{SHA}"


# -- (b) 429 with Retry-After ------------------------------------------------------------------------------


async def test_429_with_retry_after_on_get_is_retried(kube: Kube, direct: Kube, fault_proxy: FaultProxy,
                                                      settings: ClusterSettings) -> None:
    p = plan(settings, 2)
    await direct.apply_preview(p)
    path = object_path(by_kind(p, "Deployment"))
    fault_proxy.inject("GET", path + "$", status=429, headers={"Retry-After": "1"})

    got = await kube.get(path)

    assert got is not None and got["metadata"]["name"] == p.services[0].name
    assert fault_proxy.statuses("GET", path + "$") == [429, 200]
    first, second = [c for c in fault_proxy.records if c.path == path]
    # Informational: how long the adapter waited although the server asked for 1 s.
    print(f"retry after 429 (Retry-After: 1) came {second.started - first.started:.2f} s later")


# -- (c) a slow answer: client timeout, then retry ----------------------------------------------------------


async def test_slow_get_times_out_and_is_retried(kube: Kube, direct: Kube, fault_proxy: FaultProxy,
                                                 settings: ClusterSettings) -> None:
    p = plan(settings, 3)
    await direct.apply_preview(p)
    path = object_path(by_kind(p, "Deployment"))
    fault_proxy.inject("GET", path + "$", status=None, delay=5.0)

    started = time.monotonic()
    got = await kube.get(path)
    elapsed = time.monotonic() - started

    assert got is not None and got["metadata"]["name"] == p.services[0].name
    assert TIMEOUT <= elapsed < 5.0, f"took {elapsed:.2f} s: the client did not give up after {TIMEOUT} s"
    statuses = fault_proxy.statuses("GET", path + "$")
    assert len(statuses) == 2 and statuses[1] == 200, statuses
    assert statuses[0] is None  # the slow one was still held by the proxy when the retry succeeded


# -- (d) 409 on the shared mesh VirtualService ---------------------------------------------------------------


async def test_409_on_mesh_put_is_retried_and_keeps_other_routes(kube: Kube, direct: Kube,
                                                                 fault_proxy: FaultProxy,
                                                                 settings: ClusterSettings) -> None:
    first, second = plan(settings, 4).services[0], plan(settings, 5).services[0]
    host = first.mesh_host
    assert host == f"a.{settings.namespace}.svc.cluster.local"
    assert await kube.add_mesh_route(host, first.mesh_route)  # creates the VirtualService (POST)
    vs_path = mesh_path(settings, host)
    fault_proxy.inject("PUT", vs_path + "$", status=409, times=3)
    before = conflicts()

    assert await kube.add_mesh_route(host, second.mesh_route)

    assert fault_proxy.statuses("PUT", vs_path + "$") == [409, 409, 409, 200]
    assert conflicts() - before == 3
    keys = sorted([first.mesh_route["name"], second.mesh_route["name"]])
    assert route_names(await direct.get(vs_path)) == [*keys, "default"]


# -- (e) a server that keeps failing -------------------------------------------------------------------------


async def test_persistent_500_gives_up_after_bounded_attempts(kube: Kube, direct: Kube, fault_proxy: FaultProxy,
                                                              settings: ClusterSettings) -> None:
    p = plan(settings, 6)
    fault_proxy.inject("*", r".*", status=500, times=None)

    started = time.monotonic()
    with pytest.raises((KubeError, TemporaryError)) as caught:
        await kube.apply_preview(p)
    elapsed = time.monotonic() - started

    bounded(fault_proxy.calls, "apply_preview under a persistent 500")
    assert len({(m, path) for m, path, _ in fault_proxy.calls}) == 1  # gave up on the first call
    assert "500" in str(caught.value) or isinstance(caught.value, TemporaryError), caught.value
    assert elapsed < 30, f"gave up only after {elapsed:.1f} s"
    # Nothing reached the server; once it recovers, the same call does the whole job.
    assert not any((await objects_of(direct, p)).values())
    fault_proxy.clear()
    await kube.apply_preview(p)
    assert all((await objects_of(direct, p)).values())


def _with_attempts(kube: Kube, attempts: int) -> Kube:
    """The same API client, fewer attempts per call: keeps the half-failure tests short."""
    return Kube(kube._api, kube.settings, request_timeout=TIMEOUT, attempts=attempts)


async def test_apply_failing_half_way_is_repaired_by_a_retry(kube: Kube, direct: Kube, fault_proxy: FaultProxy,
                                                             settings: ClusterSettings) -> None:
    p = plan(settings, 7)
    short = _with_attempts(kube, 2)
    fault_proxy.inject("PATCH", r"/services/", status=500, times=None)

    with pytest.raises(KubeError):
        await short.apply_preview(p)

    bounded(fault_proxy.calls_to("PATCH", r"/services/"), "Service apply", limit=2)
    live = await objects_of(direct, p)
    # The gateway VirtualService was created first (POST: it claims the preview host), then the
    # Deployment; the Service apply failed.
    assert live["Deployment"] is not None and live["Service"] is None and live["VirtualService"] is not None
    fault_proxy.clear()
    await short.apply_preview(p)
    live = await objects_of(direct, p)
    assert all(live.values()), live
    assert len(await direct.live_previews((1296269, "acme/shop"))) == 1


async def test_mesh_write_failing_keeps_the_existing_routes(kube: Kube, direct: Kube, fault_proxy: FaultProxy,
                                                            settings: ClusterSettings) -> None:
    first, second = plan(settings, 8).services[0], plan(settings, 9).services[0]
    host = first.mesh_host
    vs_path = mesh_path(settings, host)
    short = _with_attempts(kube, 3)
    await direct.add_mesh_route(host, first.mesh_route)
    fault_proxy.inject("PUT", vs_path + "$", status=503, times=None)
    fault_proxy.inject("DELETE", vs_path + "$", status=503, times=None)

    with pytest.raises((KubeError, TemporaryError)):
        await short.add_mesh_route(host, second.mesh_route)
    bounded(fault_proxy.calls_to("PUT", vs_path + "$"), "mesh PUT", limit=3)
    fault_proxy.reset_calls()
    with pytest.raises((KubeError, TemporaryError)):
        await short.remove_mesh_route(host, first.mesh_route["name"])
    bounded(fault_proxy.calls_to("DELETE", vs_path + "$"), "mesh DELETE", limit=3)

    assert route_names(await direct.get(vs_path)) == [first.mesh_route["name"], "default"]
    fault_proxy.clear()
    assert await short.add_mesh_route(host, second.mesh_route)
    keys = sorted([first.mesh_route["name"], second.mesh_route["name"]])
    assert route_names(await direct.get(vs_path)) == [*keys, "default"]


# -- (f) errors that will not get better ------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "PATCH"])
async def test_403_is_not_retried(kube: Kube, fault_proxy: FaultProxy, settings: ClusterSettings,
                                  method: str) -> None:
    p = plan(settings, 10)
    path = object_path(by_kind(p, "Deployment"))
    fault_proxy.inject(method, path + "$", status=403)
    call: Callable[[], Any] = (lambda: kube.get(path)) if method == "GET" else (
        lambda: kube.apply(by_kind(p, "Deployment")))

    with pytest.raises(KubeError) as caught:
        await call()

    assert caught.value.status == 403
    assert fault_proxy.statuses(method, path + "$") == [403]


# -- the transport below the adapter must not multiply the attempts -------------------------------------------


@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_does_not_multiply_attempts(kube: Kube, fault_proxy: FaultProxy, settings: ClusterSettings,
                                                      status: int) -> None:
    """An overloaded API server answers 429/503 with Retry-After; each adapter attempt is one request."""
    p = plan(settings, 11)
    path = object_path(by_kind(p, "Deployment"))
    short = _with_attempts(kube, 2)
    fault_proxy.inject("GET", path + "$", status=status, times=None, headers={"Retry-After": "0"})

    with pytest.raises((KubeError, TemporaryError)) as caught:
        await short.get(path)

    print(f"\n{status} + Retry-After, 2 attempts: {len(fault_proxy.calls)} requests; raised {caught.value!r}")
    bounded(fault_proxy.calls, f"GET under a persistent {status} with Retry-After", limit=2)
    assert isinstance(caught.value, KubeError) and caught.value.status == status, \
        f"the error names the wrong cause: {caught.value!r}"


# -- answers that are not JSON --------------------------------------------------------------------------------


async def test_a_path_the_api_server_does_not_serve_is_not_found(direct: Kube, settings: ClusterSettings) -> None:
    """The real API server answers `404 page not found` in plain text for a group it does not serve
    (a cluster without Istio's CRDs, for every Gateway or VirtualService path)."""
    path = f"{collection_path('networking.preview-bot.invalid/v1', 'gateways', settings.namespace)}/g"
    assert await direct.get(path) is None
    with pytest.raises(KubeError) as caught:
        await direct.call("DELETE", path)
    assert caught.value.status == 404 and "404 page not found" in str(caught.value)


@pytest.mark.parametrize("status", [502, 503])
async def test_a_proxys_html_error_page_is_retried_then_named(kube: Kube, fault_proxy: FaultProxy,
                                                              settings: ClusterSettings, status: int) -> None:
    path = object_path(by_kind(plan(settings, 12), "Deployment"))
    page = "<html><head><title>Bad Gateway</title></head>\n<body>upstream went away</body></html>"
    fault_proxy.inject("GET", path + "$", status=status, times=None, body=page,
                       headers={"Content-Type": "text/html"})
    with pytest.raises(KubeError) as caught:
        await _with_attempts(kube, 2).get(path)
    assert caught.value.status == status and "Bad Gateway" in str(caught.value)
    assert fault_proxy.statuses("GET", path + "$") == [status, status]


async def test_a_success_answer_that_is_not_json_is_an_error_not_a_crash(
        kube: Kube, fault_proxy: FaultProxy, settings: ClusterSettings) -> None:
    path = object_path(by_kind(plan(settings, 13), "Deployment"))
    fault_proxy.inject("GET", path + "$", status=200, body="<html>sign in to continue</html>",
                       headers={"Content-Type": "text/html"})
    with pytest.raises(KubeError) as caught:
        await kube.get(path)
    assert caught.value.status == 200 and "not JSON" in str(caught.value)
    assert fault_proxy.statuses("GET", path + "$") == [200]
