"""Inventory.served_resources on the real API server: the resource types a group version serves, from
its discovery document. The start-up check that names missing Istio CRDs stands on it (bot.server)."""

from __future__ import annotations

import pytest

from bot.gateway import istio_api_problem
from bot.kube import Kube
from bot.manifests import VIRTUAL_SERVICE_API

pytestmark = pytest.mark.cluster


async def test_istios_group_version_serves_gateways_and_virtual_services(direct: Kube) -> None:
    served = await direct.inventory.served_resources(VIRTUAL_SERVICE_API)
    assert served is not None and {"gateways", "virtualservices"} <= served
    assert istio_api_problem(VIRTUAL_SERVICE_API, served, direct.server) is None


@pytest.mark.parametrize("api_version", ["networking.preview-bot.invalid/v1", "networking.istio.io/v1alpha9"])
async def test_a_group_version_the_api_server_does_not_serve_is_none(direct: Kube, api_version: str) -> None:
    # As an API server without Istio's CRDs answers for networking.istio.io/v1.
    assert await direct.inventory.served_resources(api_version) is None
    problem = istio_api_problem(api_version, None, direct.server)
    assert problem is not None and "Istio's CRDs are not installed" in problem


async def test_the_core_group_version(direct: Kube) -> None:
    served = await direct.inventory.served_resources("v1")
    assert served is not None and {"services", "pods"} <= served
