"""The mesh fixture's own promises (no bot): what other mesh tests build on.

Each is checked with real requests through istiod + Envoy: workloads answer on every port, sidecars
get their own outbound address, istiod's conflict signal and the mesh config switch really work.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.plugins.mesh import Mesh

pytestmark = [pytest.mark.cluster, pytest.mark.mesh]


def virtual_service(name: str, namespace: str, host: str, destination: str, *, key: str | None = None,
                    **spec: Any) -> dict[str, Any]:
    routes: list[dict[str, Any]] = []
    if key:
        routes.append({"name": key, "match": [{"headers": {"x-preview": {"exact": key}}}],
                       "route": [{"destination": {"host": destination}}]})
    routes.append({"name": "default", "route": [{"destination": {"host": host}}]})
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"hosts": [host], "http": routes, **spec}}


async def test_multi_port_workload_answers_on_each_port(mesh: Mesh, namespace: str) -> None:
    real = mesh.real_service(namespace, "a", ports=(8080, 9090)).host
    first = await mesh.wait_for(mesh.client, real, real)
    assert first.port == 8080
    second = await mesh.wait_for(mesh.client, f"{real}:9090", real)
    assert second.port == 9090
    assert f"{mesh.client.ip}:9090" in mesh.client.listeners()


async def test_sidecars_have_their_own_addresses(mesh: Mesh, namespace: str) -> None:
    real = mesh.real_service(namespace, "a").host
    own = mesh.sidecar("caller", namespace)
    assert own.ip != mesh.client.ip
    for proxy in (own, mesh.client):
        await mesh.wait_for(proxy, real, real)
        listeners = proxy.listeners()
        assert listeners and all(address.startswith(proxy.ip + ":") for address in listeners), listeners


async def test_conflicting_virtual_services_show_in_istiods_signal(mesh: Mesh, namespace: str) -> None:
    real = mesh.real_service(namespace, "a").host
    preview = mesh.real_service(namespace, "a-preview").host
    key = "preview-1-abcdef"
    mesh.apply(virtual_service("one", namespace, real, preview, key=key))
    await mesh.wait_for(mesh.client, real, preview, {"x-preview": key})
    await mesh.assert_no_conflicts(real)

    # A team's own VirtualService for the same host, in its own namespace.
    mesh.apply(virtual_service("team", mesh.namespace("team"), real, real))
    # Istio uses one of the two and says so in pilot_vservice_dup_domain.
    entries = await mesh.wait_dup_domains(real, expect=True)
    assert list(entries) == [f"{real}:8080"]
    assert mesh.dup_domain_metric() >= 1


async def test_default_export_to_dot_hides_other_namespaces_virtual_services(mesh: Mesh, namespace: str) -> None:
    real = mesh.real_service(namespace, "a").host
    preview = mesh.real_service(namespace, "a-preview").host
    key = "preview-2-abcdef"
    mesh.apply(virtual_service("routes", namespace, real, preview, key=key))
    await mesh.wait_for(mesh.client, real, preview, {"x-preview": key})

    mesh.set_mesh_config(defaultVirtualServiceExportTo=["."])
    # The client sidecar lives in another namespace: it no longer sees the VirtualService.
    await mesh.wait_for(mesh.client, real, real, {"x-preview": key})
    local = mesh.sidecar("local", namespace)
    assert (await mesh.wait_for(local, real, preview, {"x-preview": key})).workload == preview
