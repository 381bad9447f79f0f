"""`preview-bot explain` reads the live Gateway and VirtualServices from the real kube-apiserver."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from bot import manifests, mesh_routes
from bot.naming import PreviewKey
from bot.repo_config import parse_repo_config
from bot.settings import ClusterSettings
from tests.plugins.cluster import Cluster

REPO = "acme/shop"
CONFIG = parse_repo_config("services:\n  - name: a\n    image: r.example.com/a:{sha}\n    port: 8080\n", "preview.yml")


def create(api: Any, namespace: str, plural: str, body: dict[str, Any]) -> None:
    body = {**body, "metadata": {**body["metadata"], "namespace": namespace}}
    client.CustomObjectsApi(api).create_namespaced_custom_object("networking.istio.io", "v1", namespace, plural, body)


@pytest.fixture
def routing(cluster: Cluster, namespace: str) -> Iterator[dict[str, Any]]:
    """The Gateway and the bot's objects for PRs 12 and 123 of acme/shop, created on the API server."""
    settings = ClusterSettings(domain="example.com", namespace=namespace, routing_namespace=namespace,
                               gateway=f"{namespace}/preview-gateway")
    mesh_host = f"a.{namespace}.svc.cluster.local"
    with cluster.api_client() as api:
        create(api, namespace, "gateways", {
            "apiVersion": "networking.istio.io/v1", "kind": "Gateway", "metadata": {"name": "preview-gateway"},
            "spec": {"selector": {"istio": "ingressgateway"},
                     "servers": [{"port": {"number": 80, "name": "http", "protocol": "HTTP"},
                                  "hosts": ["*.example.com"]}]}})
        spec = mesh_routes.new_spec(mesh_host)
        for number in (12, 123):
            plan = manifests.plan_preview(settings, CONFIG, PreviewKey(REPO, number, 1296269), "a" * 40)
            for service in plan.services:
                create(api, namespace, "virtualservices", service.gateway_route)
                spec = mesh_routes.with_route(spec, mesh_host, service.mesh_route)
        create(api, namespace, "virtualservices", manifests.mesh_virtual_service(settings, mesh_host, spec))
        yield {"api": api, "mesh_host": mesh_host}


def run(cluster: Cluster, namespace: str, *args: str, kubeconfig: Path | None = None) -> tuple[int, str, str]:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig or cluster.kubeconfig), "PREVIEW_DOMAIN": "example.com",
           "PREVIEW_NAMESPACE": namespace, "PREVIEW_ROUTING_NAMESPACE": namespace,
           "PREVIEW_GATEWAY": f"{namespace}/preview-gateway"}
    done = subprocess.run([sys.executable, "-m", "bot.cli", "explain", *args], env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    return done.returncode, done.stdout, done.stderr


def test_explain_follows_the_gateway_and_the_mesh(cluster: Cluster, namespace: str,
                                                  routing: dict[str, Any]) -> None:
    key, other = PreviewKey(REPO, 123, 1296269).value, PreviewKey(REPO, 12, 1296269).value
    code, out, err = run(cluster, namespace, "--host", "preview-123-api-a.example.com", "--header",
                         "X-Preview=preview-12", "--then", routing["mesh_host"], "--output", "json")
    assert code == 0, err
    data = json.loads(out)
    assert data["reached"] == f"{key}-a.{namespace}.svc.cluster.local"
    gateway, sidecar = data["hops"]
    assert gateway["proxy"] == f"gateway {namespace}/preview-gateway"
    assert gateway["headers_after"]["x-preview"] == key
    assert sidecar["proxy"] == f"sidecar in namespace {namespace}"
    assert [(r["name"], r["matched"]) for r in sidecar["rules"]] == [(other, False), (key, True)]
    assert sidecar["rules"][0]["reasons"] == [f"`x-preview:` `{key}` is not `{other}`"]
    assert data["findings"] == [] and data["notes"] == []

    # In the mesh, a prefix of a key reaches the real service; the text report says why.
    code, out, err = run(cluster, namespace, "--host", f"a.{namespace}", "--from", "web", "--header",
                         "x-preview: preview-12")
    assert code == 0, err
    assert f"Hop 1: sidecar in namespace web, host {routing['mesh_host']}" in out
    assert f"x-preview: preview-12 is not {other}" in out
    assert f"x-preview: preview-12 is not {key}" in out
    assert f"✓ rule 3 default (http[2] of {namespace}/preview-mesh-" in out
    assert out.rstrip().endswith(f"-> {routing['mesh_host']}")


def test_explain_flags_what_makes_istio_ignore_routes(cluster: Cluster, namespace: str,
                                                      routing: dict[str, Any]) -> None:
    key = PreviewKey(REPO, 123, 1296269).value
    time.sleep(1.1)  # creation times have a one-second resolution: this one is younger
    create(routing["api"], namespace, "virtualservices", {
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "team-a"},
        "spec": {"hosts": [routing["mesh_host"]], "exportTo": ["."],
                 "http": [{"name": "all", "route": [{"destination": {"host": routing["mesh_host"]}}]},
                          {"name": "canary", "match": [{"headers": {"x-canary": {"exact": "1"}}}],
                           "route": [{"destination": {"host": "canary"}}]}]}})
    code, out, err = run(cluster, namespace, "--host", routing["mesh_host"], "--from", namespace, "--header",
                         f"x-preview={key}", "--output", "json")
    assert code == 0, err
    data = json.loads(out)
    # Private to the caller's namespace, the team's VirtualService is listed first and wins.
    assert data["reached"] == routing["mesh_host"]
    kinds = sorted(f["kind"] for f in data["findings"])
    assert kinds == ["duplicate-host", "shadowed"], data["findings"]
    # From another namespace the team's VirtualService is hidden by its exportTo.
    code, out, err = run(cluster, namespace, "--host", routing["mesh_host"], "--from", "web", "--header",
                         f"x-preview={key}", "--output", "json")
    data = json.loads(out)
    assert data["reached"] == f"{key}-a.{namespace}.svc.cluster.local"
    assert [f["kind"] for f in data["findings"]] == ["hidden-by-export-to"]


def test_explain_with_the_bots_own_rights_reads_the_routing_namespace(cluster: Cluster, namespace: str,
                                                                      routing: dict[str, Any]) -> None:
    rbac = client.RbacAuthorizationV1Api(routing["api"])
    rbac.create_namespaced_role(namespace, {
        "metadata": {"name": "vs-reader"},
        "rules": [{"apiGroups": ["networking.istio.io"], "resources": ["virtualservices"],
                   "verbs": ["get", "list"]}]})
    rbac.create_namespaced_role_binding(namespace, {
        "metadata": {"name": "vs-reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "vs-reader"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "nobody"}]})
    kubeconfig = cluster.kubeconfig_for_token(cluster.token_for("nobody"))
    key = PreviewKey(REPO, 12, 1296269).value

    def attempt() -> tuple[int, str, str]:
        return run(cluster, namespace, "--host", "preview-12-api-a.example.com", "--output", "json",
                   kubeconfig=kubeconfig)

    code, out, err = attempt()
    for _ in range(20):  # RBAC changes reach the authorizer within moments
        if code == 0:
            break
        time.sleep(0.5)
        code, out, err = attempt()
    assert code == 0, err
    data = json.loads(out)
    assert data["reached"] == f"{key}-a.{namespace}.svc.cluster.local"
    assert any("could not be read (403)" in n for n in data["notes"])
    assert any(f"read in namespace {namespace} only" in n for n in data["notes"])
    # No right at all: one line, no traceback.
    code, out, err = run(cluster, namespace, "--host", "x.example.com",
                         kubeconfig=cluster.kubeconfig_for_token("not-a-token"))
    assert code == 2 and out == "" and err.count("\n") == 1 and "401" in err
