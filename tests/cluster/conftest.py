"""Fixtures shared by the cluster tests of the Kubernetes adapter."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bot.kube import Kube
from bot.settings import ClusterSettings
from tests.plugins.cluster import Cluster


@pytest.fixture
def settings(namespace: str) -> ClusterSettings:
    return ClusterSettings(domain="example.com", namespace=namespace, routing_namespace=namespace)


@pytest.fixture
def direct(cluster: Cluster, settings: ClusterSettings) -> Iterator[Kube]:
    """The adapter on the admin kubeconfig, straight to the API server (no fault proxy)."""
    k = Kube.from_environment(settings, kubeconfig=str(cluster.kubeconfig), timeout=10.0)
    try:
        yield k
    finally:
        k.close()
