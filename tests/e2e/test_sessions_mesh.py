"""Browser sessions with real requests through istiod + Envoy: opening a preview URL sets the cookie; the
normal API host then sends that browser to the PR's build, everybody else to the real service."""

from __future__ import annotations

import asyncio
import http.client

import pytest

from tests.e2e.harness import REPO, key_of, running_bot
from tests.fakegithub import FakeGitHub, pull_request_event
from tests.plugins.mesh import Mesh, Proxy

pytestmark = [pytest.mark.cluster, pytest.mark.mesh]

CONFIG = """\
services:
  - name: web
    image: registry.example.com/acme/web:{sha}
    port: 8080
  - name: a
    image: registry.example.com/acme/a:{sha}
    port: 8080
"""


def open_in_browser(gateway: Proxy, host: str) -> tuple[int, list[str]]:
    """GET / on the gateway as a browser would: (status, Set-Cookie headers)."""
    conn = http.client.HTTPConnection(gateway.ip, gateway.port, timeout=10)
    try:
        conn.request("GET", "/", headers={"Host": host})
        response = conn.getresponse()
        response.read()
        return response.status, response.headers.get_all("set-cookie") or []
    finally:
        conn.close()


async def test_a_browser_stays_on_its_preview(fake_github: FakeGitHub, cluster: object, namespace: str,
                                             mesh: Mesh) -> None:
    fake_github.add_repo(REPO, files={".github/preview.yml": CONFIG}, collaborators={"alice": "write"})
    real_a = mesh.real_service(namespace, "a").host
    gateway_ref = mesh.bot_env["PREVIEW_GATEWAY"]
    # The team's own gateway route for the normal API host.
    mesh.apply({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                "metadata": {"name": "team-api", "namespace": namespace},
                "spec": {"hosts": ["api.example.com"], "gateways": [gateway_ref],
                         "http": [{"name": "api", "route": [{"destination": {"host": real_a,
                                                                             "port": {"number": 8080}}}]}]}})
    env = {**mesh.bot_env, "PREVIEW_BROWSER_SESSIONS": "true",
           "PREVIEW_SESSION_HOSTS": f"api.example.com={real_a}:8080"}
    k8, k9 = key_of(fake_github, REPO, 8), key_of(fake_github, REPO, 9)
    a8, a9 = (f"{k.object_name('a')}.{namespace}.svc.cluster.local" for k in (k8, k9))
    async with running_bot(fake_github, cluster, namespace, **env) as bot:  # type: ignore[arg-type]
        for number in (8, 9):
            fake_github.add_pull(REPO, number)
            await bot.send("pull_request", pull_request_event(fake_github, REPO, number, "opened"))
        await bot.settle()
        web8 = f"{k8.object_name('web')}.{namespace}.svc.cluster.local"
        await mesh.wait_for(mesh.gateway, "preview-8-api-web.example.com", web8)

        # Opening the preview URL sets the cookie for the whole domain.
        status, cookies = await asyncio.to_thread(open_in_browser, mesh.gateway, "preview-8-api-web.example.com")
        assert status == 200
        [cookie] = cookies
        assert cookie.startswith(f"x-preview={k8.value};") and "Domain=example.com" in cookie
        sent = cookie.split(";", 1)[0]

        # The page's calls to the normal API host carry it and reach PR 8's build, with the header set.
        answer = await mesh.wait_for(mesh.gateway, "api.example.com", a8, {"cookie": f"theme=dark; {sent}"})
        assert answer.headers["x-preview"] == k8.value
        # Nobody else is moved: no cookie, another PR's cookie, a prefix of the key.
        assert (await mesh.request(mesh.gateway, "api.example.com")).workload == real_a
        await mesh.wait_for(mesh.gateway, "api.example.com", a9, {"cookie": f"x-preview={k9.value}"})
        for other in ("x-preview=preview-8", f"x-preview={k8.value}0", f"other-x-preview={k8.value}"):
            assert (await mesh.request(mesh.gateway, "api.example.com", {"cookie": other})).workload == real_a, other

        # Closing the PR removes its session route: the old cookie leads to the real service again.
        await bot.send("pull_request", pull_request_event(fake_github, REPO, 8, "closed"))
        await bot.settle()
        await mesh.wait_for(mesh.gateway, "api.example.com", real_a, {"cookie": sent})
        assert (await mesh.request(mesh.gateway, "api.example.com", {"cookie": f"x-preview={k9.value}"})).workload \
            == a9


async def test_with_baggage_matching_the_session_puts_the_baggage_member_on(
        fake_github: FakeGitHub, cluster: object, namespace: str, mesh: Mesh) -> None:
    """PREVIEW_MATCH=baggage: the mesh matches `baggage`, so the cookie routes put the key there (one line,
    the client's members first, its own stale `preview` member overridden), as preview URLs do."""
    fake_github.add_repo(REPO, files={".github/preview.yml": CONFIG}, collaborators={"alice": "write"})
    real_a = mesh.real_service(namespace, "a").host
    env = {**mesh.bot_env, "PREVIEW_MATCH": "baggage", "PREVIEW_BROWSER_SESSIONS": "true",
           "PREVIEW_SESSION_HOSTS": f"api.example.com={real_a}:8080"}
    key = key_of(fake_github, REPO, 8)
    a8 = f"{key.object_name('a')}.{namespace}.svc.cluster.local"
    cookie = {"cookie": f"x-preview={key.value}"}
    async with running_bot(fake_github, cluster, namespace, **env) as bot:  # type: ignore[arg-type]
        fake_github.add_pull(REPO, 8)
        await bot.send("pull_request", pull_request_event(fake_github, REPO, 8, "opened"))
        await bot.settle()
        alone = await mesh.wait_for(mesh.gateway, "api.example.com", a8, cookie)
        assert alone.headers["baggage"] == f"preview={key.value}"
        own = await mesh.request(mesh.gateway, "api.example.com",
                                 {**cookie, "baggage": "tenant=acme,preview=preview-1-000000"})
        assert own.workload == a8
        assert own.headers["baggage"] == f"tenant=acme,preview=preview-1-000000,preview={key.value}"
