"""The shared mesh VirtualService against the API server's object size limit (etcd: 1.5 MiB a request).

A route the bot adds is refused before the limit (bot.mesh_routes.MAX_SPEC_BYTES); an object the API
server refuses for its size anyway (a team's own huge VirtualService) fails at once, never retried."""

from __future__ import annotations

import time
from typing import Any

import pytest

from bot import mesh_routes, metrics
from bot.kube import Kube, KubeError
from bot.naming import PreviewKey, mesh_route_name
from bot.settings import ClusterSettings


def route(n: int, namespace: str) -> dict[str, Any]:
    key = PreviewKey("acme/shop", n, 1296269).value
    return mesh_routes.preview_route(key, destination=f"{key}-a.{namespace}.svc.cluster.local", port=8080,
                                     header_name="x-preview", mode="header")


async def mesh_service(kube: Kube, settings: ClusterSettings, host: str) -> dict[str, Any] | None:
    """The bot's own mesh VirtualService of the host (no team's serves it in these tests)."""
    return await kube.get(f"/apis/networking.istio.io/v1/namespaces/{settings.routing_namespace}/virtualservices/"
                          f"{mesh_route_name(host)}")


def puts() -> float:
    return sum(metrics.REGISTRY.get_sample_value("preview_bot_kubernetes_requests_total",
                                                 {"method": "PUT", "outcome": o}) or 0.0
               for o in ("200", "413", "500", "422"))


async def test_a_spec_over_etcds_limit_is_refused_by_the_real_api_server_once(
        direct: Kube, settings: ClusterSettings, namespace: str) -> None:
    host = f"a.{namespace}.svc.cluster.local"
    assert await direct.add_mesh_route(host, route(1, namespace))
    current = await mesh_service(direct, settings, host)
    assert current is not None
    # 1.8 MB of routes written straight through the adapter (as a team's own object could be). Few,
    # fat routes: the API server validates thousands of small ones for longer than any timeout.
    huge = [{**route(n, namespace), "headers": {"request": {"set": {"x-pad": "p" * 9000}}}} for n in range(2, 200)]
    spec = {**current["spec"], "http": huge + current["spec"]["http"]}
    assert mesh_routes.spec_bytes(spec) > 1.5 * 2**20
    path = f"/apis/networking.istio.io/v1/namespaces/{namespace}/virtualservices/{current['metadata']['name']}"
    before, started = puts(), time.monotonic()
    with pytest.raises(KubeError) as refused:
        await direct.call("PUT", path, body={**current, "spec": spec})
    assert refused.value.status in (413, 500)
    assert "too large" in str(refused.value).lower()
    assert puts() - before == 1, "refused for its size: not retried"
    assert time.monotonic() - started < 10
    still = await mesh_service(direct, settings, host)
    assert still is not None and mesh_routes.preview_keys(still["spec"]) == [PreviewKey("acme/shop", 1, 1296269).value]


async def test_the_bot_refuses_a_new_route_before_the_limit_and_keeps_the_others(
        direct: Kube, settings: ClusterSettings, namespace: str, monkeypatch: pytest.MonkeyPatch) -> None:
    host = f"a.{namespace}.svc.cluster.local"
    for n in (1, 2):
        assert await direct.add_mesh_route(host, route(n, namespace))
    current = await mesh_service(direct, settings, host)
    assert current is not None
    monkeypatch.setattr(mesh_routes, "MAX_SPEC_BYTES", mesh_routes.spec_bytes(current["spec"]) + 10)
    before = puts()
    with pytest.raises(mesh_routes.TooManyRoutes, match="would hold 3 preview routes"):
        await direct.add_mesh_route(host, route(3, namespace))
    assert puts() == before, "nothing written"
    # An existing preview's route is still replaced (its redeploy works at the limit).
    assert await direct.add_mesh_route(host, {**route(2, namespace), "route": [
        {"destination": {"host": f"x.{namespace}.svc.cluster.local", "port": {"number": 80}}}]})
    after = await mesh_service(direct, settings, host)
    assert after is not None
    assert mesh_routes.preview_keys(after["spec"]) == sorted(PreviewKey("acme/shop", n, 1296269).value for n in (1, 2))
