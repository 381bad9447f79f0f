"""The test control plane is a real Kubernetes API server: each test asserts the server's own answer."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.plugins.cluster import Cluster, wait_until

pytestmark = pytest.mark.cluster



@pytest.fixture
def api(cluster: Cluster) -> Iterator[client.ApiClient]:
    with cluster.api_client() as a:
        yield a


def deployment(name: str, replicas: int = 1) -> client.V1Deployment:
    labels = {"app": name}
    return client.V1Deployment(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1DeploymentSpec(
            replicas=replicas,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(containers=[client.V1Container(name="web", image="example.invalid/web:1")]),
            ),
        ),
    )


def body(e: ApiException) -> dict[str, Any]:
    return json.loads(e.body)


def test_uppercase_deployment_name_is_refused_with_422(api: client.ApiClient, namespace: str) -> None:
    with pytest.raises(ApiException) as ei:
        client.AppsV1Api(api).create_namespaced_deployment(namespace, deployment("Web"))
    assert ei.value.status == 422
    st = body(ei.value)
    assert st["reason"] == "Invalid"
    assert "metadata.name" in st["message"]
    assert "RFC 1123" in st["message"]


def virtual_service(name: str, http0: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": name},
        "spec": {"hosts": ["web"], "http": [http0]},
    }


ROUTE = {"route": [{"destination": {"host": "web", "port": {"number": 80}}}]}


def test_virtualservice_unknown_field_is_refused_by_istio_schema(api: client.ApiClient, namespace: str) -> None:
    co = client.CustomObjectsApi(api)
    args = ("networking.istio.io", "v1", namespace, "virtualservices")
    # The schema is real: a valid VirtualService is accepted...
    co.create_namespaced_custom_object(*args, virtual_service("ok", ROUTE), field_validation="Strict")
    # ...and a field that Istio's schema does not declare is refused.
    with pytest.raises(ApiException) as ei:
        co.create_namespaced_custom_object(
            *args, virtual_service("bogus", {**ROUTE, "bogusField": 1}), field_validation="Strict"
        )
    assert ei.value.status == 400
    st = body(ei.value)
    assert st["reason"] == "BadRequest"
    assert 'unknown field "spec.http[0].bogusField"' in st["message"]


def test_virtualservice_wrong_type_is_refused_with_422(api: client.ApiClient, namespace: str) -> None:
    vs = virtual_service("wrongtype", ROUTE)
    vs["spec"]["hosts"] = "web"  # must be a list of strings
    with pytest.raises(ApiException) as ei:
        client.CustomObjectsApi(api).create_namespaced_custom_object(
            "networking.istio.io", "v1", namespace, "virtualservices", vs
        )
    assert ei.value.status == 422
    st = body(ei.value)
    assert st["reason"] == "Invalid"
    assert "spec.hosts" in st["message"]


def test_update_with_stale_resource_version_gets_409(api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api)
    cm = core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="cm"), data={"k": "1"})
    )
    stale = cm.metadata.resource_version
    cm.data = {"k": "2"}
    core.replace_namespaced_config_map("cm", namespace, cm)
    cm.data = {"k": "3"}
    cm.metadata.resource_version = stale
    with pytest.raises(ApiException) as ei:
        core.replace_namespaced_config_map("cm", namespace, cm)
    assert ei.value.status == 409
    st = body(ei.value)
    assert st["reason"] == "Conflict"
    assert "the object has been modified" in st["message"]


def _available(apps: client.AppsV1Api, namespace: str, name: str) -> bool:
    d = apps.read_namespaced_deployment(name, namespace)
    return any(c.type == "Available" and c.status == "True" for c in (d.status.conditions or []))


def test_deployment_becomes_available(api: client.ApiClient, namespace: str) -> None:
    apps = client.AppsV1Api(api)
    apps.create_namespaced_deployment(namespace, deployment("web", replicas=2))
    wait_until("Deployment web Available", lambda: _available(apps, namespace, "web"))
    d = apps.read_namespaced_deployment("web", namespace)
    assert d.status.ready_replicas == 2
    pods = client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector="app=web").items
    assert len(pods) == 2
    for p in pods:
        assert p.spec.node_name == "kwok-node-0"  # placed by kube-scheduler
        assert p.status.phase == "Running"  # reported by kwok
        assert p.metadata.owner_references[0].kind == "ReplicaSet"


def test_background_delete_garbage_collects_replicaset(api: client.ApiClient, namespace: str) -> None:
    apps = client.AppsV1Api(api)
    apps.create_namespaced_deployment(namespace, deployment("gc"))
    rs = wait_until(
        "ReplicaSet of gc", lambda: apps.list_namespaced_replica_set(namespace, label_selector="app=gc").items
    )
    assert rs[0].metadata.owner_references[0].name == "gc"
    apps.delete_namespaced_deployment("gc", namespace, propagation_policy="Background")
    wait_until(
        "ReplicaSet of gc garbage-collected",
        lambda: not apps.list_namespaced_replica_set(namespace, label_selector="app=gc").items,
    )


def test_user_without_rbac_gets_403(cluster: Cluster, namespace: str) -> None:
    with cluster.api_client(cluster.token_for("nobody")) as nobody, pytest.raises(ApiException) as ei:
        client.AppsV1Api(nobody).create_namespaced_deployment(namespace, deployment("web"))
    assert ei.value.status == 403
    st = body(ei.value)
    assert st["reason"] == "Forbidden"
    assert 'User "nobody" cannot create resource "deployments"' in st["message"]


def test_serviceaccount_token_authenticates(cluster: Cluster, api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api)
    core.create_namespaced_service_account(namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="bot")))
    tr = core.create_namespaced_service_account_token(
        "bot", namespace, client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[]))
    )
    kubeconfig = cluster.kubeconfig_for_token(tr.status.token)
    assert kubeconfig.exists()
    with cluster.api_client(tr.status.token) as sa:
        review = client.AuthenticationV1Api(sa).create_self_subject_review(client.V1SelfSubjectReview())
        assert review.status.user_info.username == f"system:serviceaccount:{namespace}:bot"
        # Authenticated but not authorized: RBAC answers 403 for the ServiceAccount too.
        with pytest.raises(ApiException) as ei:
            client.CoreV1Api(sa).list_namespaced_secret(namespace)
        assert ei.value.status == 403
