"""Per-service protocols on the real API server: the port names and `appProtocol` Istio reads
(protocol selection) are accepted by Kubernetes' validation and stored as rendered."""

from __future__ import annotations

import pytest

from bot import manifests
from bot.kube import Kube
from bot.naming import PreviewKey
from bot.repo_config import ROUTABLE_PROTOCOLS, RepoConfig, ServiceConfig
from bot.settings import ClusterSettings

pytestmark = pytest.mark.cluster


async def test_every_routable_protocol_is_stored_as_rendered(direct: Kube, settings: ClusterSettings) -> None:
    services = tuple(ServiceConfig(name=f"s-{p}", image="registry.example.com/s:{sha}", port=50051, protocol=p)
                     for p in ROUTABLE_PROTOCOLS)
    plan = manifests.plan_preview(settings, RepoConfig(services=services), PreviewKey("acme/grpc", 5, 77), "a" * 40)
    await direct.apply_preview(plan)
    for service_plan in plan.services:
        protocol = service_plan.service.protocol
        stored = await direct.get(f"/api/v1/namespaces/{settings.namespace}/services/{service_plan.name}")
        assert stored is not None
        [port] = stored["spec"]["ports"]
        assert (port["name"], port["appProtocol"], port["port"]) == (protocol, protocol, 50051)
        deployment = await direct.get(f"/apis/apps/v1/namespaces/{settings.namespace}/deployments/{service_plan.name}")
        assert deployment is not None
        [container_port] = deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
        assert container_port["name"] == protocol
    assert await direct.delete_preview(plan.key) == 3 * len(services)
