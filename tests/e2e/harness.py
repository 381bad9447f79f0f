"""The whole bot, in-process, against the fake GitHub and the real control plane."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
from kubernetes import client as k8s

from bot.naming import PreviewKey
from bot.server import Bot, running
from bot.settings import load_settings
from tests.fakegithub import FakeGitHub, webhook_headers
from tests.plugins.cluster import Cluster

SECRET = "e2e-webhook-secret-0123456789"
REPO = "acme/shop"
CONFIG = """\
services:
  - name: a
    image: registry.example.com/acme/a:{sha}
    port: 8080
"""


def bot_env(fake: FakeGitHub, namespace: str, **overrides: str) -> dict[str, str]:
    env = {
        "GITHUB_APP_ID": str(fake.app_id),
        "GITHUB_PRIVATE_KEY": fake.private_key_pem,
        "GITHUB_WEBHOOK_SECRET": SECRET,
        "GITHUB_API_URL": fake.url,
        "PREVIEW_DOMAIN": "example.com",
        "PREVIEW_NAMESPACE": namespace,
        "PREVIEW_ROUTING_NAMESPACE": namespace,
        "PREVIEW_READY_TIMEOUT": "90",
        "PREVIEW_RECONCILE_INTERVAL": "3600",
        "POD_NAMESPACE": namespace,
        "PREVIEW_GATEWAY": f"{namespace}/preview-gateway",
    }
    env.update(overrides)
    return env


def ensure_gateway(cluster: Cluster, gateway: str, hosts: tuple[str, ...] = ("*.example.com",)) -> None:
    """The Istio Gateway `<namespace>/<name>` the bot checks at start: created (serving `hosts` over HTTP)
    unless it exists, and its namespace with it (a test run alone has no istio-system)."""
    namespace, _, name = gateway.partition("/")
    api = cluster.api_client()
    try:
        try:
            k8s.CoreV1Api(api).create_namespace({"metadata": {"name": namespace}})
        except k8s.ApiException as exc:
            if exc.status != 409:
                raise
        custom = k8s.CustomObjectsApi(api)
        try:
            custom.get_namespaced_custom_object("networking.istio.io", "v1", namespace, "gateways", name)
            return
        except k8s.ApiException as exc:
            if exc.status != 404:
                raise
        custom.create_namespaced_custom_object("networking.istio.io", "v1", namespace, "gateways", {
            "apiVersion": "networking.istio.io/v1", "kind": "Gateway",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"selector": {"istio": "ingressgateway"}, "servers": [
                {"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": list(hosts)}]}})
    finally:
        api.close()


@dataclass
class RunningBot:
    bot: Bot
    fake: FakeGitHub
    session: aiohttp.ClientSession
    namespace: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.bot.port}/webhook"

    async def send(self, event: str, payload: Mapping[str, Any], *, delivery: str | None = None,
                   secret: str = SECRET) -> int:
        body = json.dumps(payload).encode()
        headers = webhook_headers(event, body, secret, delivery or str(uuid.uuid4()))
        async with self.session.post(self.url, data=body, headers=headers) as response:
            return response.status

    async def startup_pass(self, timeout: float = 60) -> None:
        """Wait until the bot's start-up pass (discovery, reconciliation) is over: it calls GitHub too."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not self.bot.first_pass_done:
            assert asyncio.get_running_loop().time() < deadline, "the start-up pass did not finish"
            await asyncio.sleep(0.05)

    async def settle(self, timeout: float = 180) -> None:
        """Wait until every queued event has been processed."""
        await asyncio.wait_for(self.bot.queue.join(), timeout)


@asynccontextmanager
async def running_bot(fake: FakeGitHub, cluster: Cluster, namespace: str, *, kubeconfig: str | None = None,
                      reconcile_every: float | None = None, **overrides: str) -> AsyncIterator[RunningBot]:
    """The bot in this process on `namespace`; `reconcile_every`: seconds between passes, below the
    operator's minimum PREVIEW_RECONCILE_INTERVAL (tests watch several passes)."""
    env = bot_env(fake, namespace, **overrides)
    ensure_gateway(cluster, env["PREVIEW_GATEWAY"])
    settings = load_settings(env)
    if reconcile_every is not None:
        settings = dataclasses.replace(settings, reconcile_interval=reconcile_every)
    async with running(settings, "127.0.0.1", 0, kubeconfig=kubeconfig or str(cluster.kubeconfig)) as bot, \
            aiohttp.ClientSession() as session:
        yield RunningBot(bot, fake, session, namespace)


def key_of(fake: FakeGitHub, repo: str, number: int) -> PreviewKey:
    """The preview key the bot gives PR `number` of `repo`: by the repository's id in the fake."""
    return PreviewKey(repo, number, fake.repos[repo].id)


class ClusterView:
    """Reads the cluster with admin rights, for assertions."""

    def __init__(self, cluster: Cluster, namespace: str) -> None:
        self.api = cluster.api_client()
        self.namespace = namespace

    def close(self) -> None:
        self.api.close()

    def deployments(self) -> dict[str, Any]:
        items = k8s.AppsV1Api(self.api).list_namespaced_deployment(
            self.namespace, label_selector="app.kubernetes.io/managed-by=preview-bot").items
        return {d.metadata.name: d for d in items}

    def services(self) -> list[str]:
        items = k8s.CoreV1Api(self.api).list_namespaced_service(
            self.namespace, label_selector="app.kubernetes.io/managed-by=preview-bot").items
        return sorted(s.metadata.name for s in items)

    def virtual_services(self) -> dict[str, dict[str, Any]]:
        result = k8s.CustomObjectsApi(self.api).list_namespaced_custom_object(
            "networking.istio.io", "v1", self.namespace, "virtualservices")
        return {item["metadata"]["name"]: item for item in result["items"]}

    def mesh_routes(self, host: str) -> list[dict[str, Any]]:
        for item in self.virtual_services().values():
            spec = item["spec"]
            if host in spec.get("hosts", []) and not spec.get("gateways"):
                return list(spec["http"])
        return []
