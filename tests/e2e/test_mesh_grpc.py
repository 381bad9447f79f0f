"""gRPC services (issue 10 item 5) on the real data plane: header routing carries gRPC calls.

A repository's service `a` serves gRPC on 50051 and says so (`protocol: grpc`). The bot renders its preview
Service port as `grpc` (name and appProtocol); the mesh fixture reads that as Istio's Kubernetes registry
would, so Envoy speaks HTTP/2 to the preview only because the bot declared it. The real service and the
preview are grpcio servers (HTTP/2 only); every call is a real gRPC call (tests/plugins/mesh.py, grpc=True)
with the preview key as gRPC metadata. Had the bot named the port `http`, Envoy would send HTTP/1.1 to the
preview and the keyed calls would fail (UNAVAILABLE) while the plain ones kept reaching the real service.
"""

from __future__ import annotations

import json

import pytest

from tests.e2e.harness import REPO, key_of, running_bot
from tests.e2e.test_mesh_routing import gateway_host, open_pr, preview_of
from tests.fakegithub import FakeGitHub
from tests.plugins.cluster import Cluster
from tests.plugins.mesh import Mesh, Proxy

pytestmark = [pytest.mark.cluster, pytest.mark.mesh]

GRPC_PORT = 50051
GRPC_SERVICE = f"""\
services:
  - name: a
    image: registry.example.com/acme/a:{{sha}}
    port: {GRPC_PORT}
    protocol: grpc
"""


@pytest.fixture
async def shop_grpc(fake_github: FakeGitHub) -> FakeGitHub:
    fake_github.add_repo(REPO, files={".github/preview.yml": GRPC_SERVICE}, collaborators={"alice": "write"})
    return fake_github


def upstream_cluster(proxy: Proxy, host: str, port: int = GRPC_PORT) -> str:
    """Envoy's outbound cluster for `host:port`, as JSON text (empty if Envoy does not have it)."""
    name = f"outbound|{port}||{host}"
    for item in proxy.config_dump("dynamic_active_clusters").get("configs", []):
        cluster = item.get("cluster") or {}
        if cluster.get("name") == name:
            return json.dumps(cluster)
    return ""


async def test_grpc_calls_with_the_key_reach_the_preview(shop_grpc: FakeGitHub, cluster: Cluster, namespace: str,
                                                         mesh: Mesh) -> None:
    real = mesh.real_service(namespace, "a", ports=(GRPC_PORT,), serves="grpc").host
    mesh.on_preview(namespace, "a", serves="grpc")
    key = key_of(shop_grpc, REPO, 9).value
    preview = preview_of(shop_grpc, 9, "a", namespace)
    target = f"{real}:{GRPC_PORT}"

    async with running_bot(shop_grpc, cluster, namespace, **mesh.bot_env) as bot:
        await open_pr(bot, 9)
        await bot.settle()

        # Through a sidecar: the key in the call's metadata reaches PR 9's build, over HTTP/2 end to end.
        keyed = await mesh.wait_for(mesh.client, target, preview, {"x-preview": key}, grpc=True)
        assert keyed.ok and keyed.grpc == "OK", keyed
        assert keyed.port == GRPC_PORT
        assert keyed.headers["x-preview"] == key
        assert "x-request-id" in keyed.headers  # it went through Envoy
        # Envoy talks HTTP/2 to the preview because the bot's Service port says grpc.
        assert "http2_protocol_options" in upstream_cluster(mesh.client, preview)

        plain = await mesh.request(mesh.client, target, grpc=True)
        assert plain.ok and plain.workload == real, plain
        assert "x-preview" not in plain.headers
        for other in ("preview-9", key[:-1], key + "0"):
            answer = await mesh.request(mesh.client, target, {"x-preview": other}, grpc=True)
            assert answer.ok and answer.workload == real, (other, answer)

        # Through the gateway: gRPC over h2c to its HTTP server on 8080 (Istio gives HTTP gateway servers an
        # HTTP connection manager with the default codec AUTO, which takes HTTP/2 prior knowledge); the preview
        # host reaches the preview with the gateway's key, whatever key the client sent.
        entry = await mesh.wait_for(mesh.gateway, gateway_host(9), preview, grpc=True)
        assert entry.ok and entry.headers["x-preview"] == key, entry
        assert "http2_protocol_options" in upstream_cluster(mesh.gateway, preview)
        forged = await mesh.request(mesh.gateway, gateway_host(9), {"x-preview": "preview-1-000000"}, grpc=True)
        assert forged.ok and forged.workload == preview and forged.headers["x-preview"] == key, forged
        # A host the bot did not publish: Envoy answers 404, which gRPC reports as UNIMPLEMENTED.
        unknown = await mesh.request(mesh.gateway, gateway_host(10), grpc=True)
        assert unknown.workload is None and unknown.grpc == "UNIMPLEMENTED", unknown
