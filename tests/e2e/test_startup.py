"""`preview-bot serve` start-up checks that need the real control plane, through the real CLI (a
subprocess): the Gateway PREVIEW_GATEWAY names must exist and serve the template's hosts, the port must
be free; each failure is one line and exit status 2. Readiness fails when the Gateway goes away."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time

import aiohttp
import pytest
from kubernetes import client as k8s

from tests.e2e.harness import SECRET, bot_env, ensure_gateway, running_bot
from tests.fakegithub import FakeGitHub
from tests.plugins.cluster import Cluster

pytestmark = pytest.mark.cluster


async def serve(fake: FakeGitHub, cluster: Cluster, namespace: str, *args: str,
                **overrides: str) -> tuple[int, str, str]:
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/"),
           "KUBECONFIG": str(cluster.kubeconfig), **bot_env(fake, namespace, **overrides)}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.cli", "serve", "--host", "127.0.0.1", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(process.communicate(), 60)
    finally:
        if process.returncode is None:
            process.kill()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def assert_one_line(code: int, err: str, *expected: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("preview-bot: error: ") and "Traceback" not in err
    assert SECRET not in err and "PRIVATE KEY" not in err
    for text in expected:
        assert text in lines[0], err


async def test_a_missing_gateway_stops_serve(fake_github: FakeGitHub, cluster: Cluster, namespace: str) -> None:
    code, _, err = await serve(fake_github, cluster, namespace, "--port", "0",
                               PREVIEW_GATEWAY=f"{namespace}/no-such-gateway")
    assert_one_line(code, err, f"Gateway {namespace}/no-such-gateway does not exist")


async def test_a_gateway_that_does_not_serve_the_hosts_stops_serve(fake_github: FakeGitHub, cluster: Cluster,
                                                                   namespace: str) -> None:
    """`{service}.pr-{number}.{domain}` gives payments.pr-12.example.com: not under `*.example.com`."""
    ensure_gateway(cluster, f"{namespace}/preview-gateway", hosts=("*.example.com",))
    code, _, err = await serve(fake_github, cluster, namespace, "--port", "0",
                               PREVIEW_HOST_TEMPLATE="{service}.pr-{number}.{domain}")
    assert_one_line(code, err, "<service>.pr-<number>.example.com", "'*.example.com'", "exactly one label")


async def test_a_port_in_use_stops_serve(fake_github: FakeGitHub, cluster: Cluster, namespace: str) -> None:
    ensure_gateway(cluster, f"{namespace}/preview-gateway")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = await serve(fake_github, cluster, namespace, "--port", str(port))
    assert_one_line(code, err, f"cannot listen on 127.0.0.1:{port}", "in use")


async def test_readiness_fails_when_the_gateway_goes_away(fake_github: FakeGitHub, cluster: Cluster,
                                                          namespace: str) -> None:
    async with running_bot(fake_github, cluster, namespace) as bot, aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{bot.bot.port}/readyz"
        async with session.get(url) as response:
            assert response.status == 200, await response.text()
        api = cluster.api_client()
        try:
            k8s.CustomObjectsApi(api).delete_namespaced_custom_object(
                "networking.istio.io", "v1", namespace, "gateways", "preview-gateway")
        finally:
            api.close()
        deadline, body = time.monotonic() + 25, {}
        while time.monotonic() < deadline:  # a passed check is reused for 10 s
            async with session.get(url) as response:
                body = await response.json()
                if response.status == 503:
                    break
            await asyncio.sleep(1)
        assert body == {"status": "not ready", "failed": {"gateway": (
            f"PREVIEW_GATEWAY: Gateway {namespace}/preview-gateway does not exist; create it (deploy/examples/gateway) "
            "or name an existing one as <namespace>/<name>")}}
