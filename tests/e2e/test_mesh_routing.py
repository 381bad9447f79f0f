"""Every routing claim of the bot, proven with real requests through a real Istio data plane.

The whole bot (in-process `serve`, the fake GitHub, the control plane) writes its objects; istiod turns
them into Envoy config; the gateway and sidecar Envoys route real HTTP requests to loopback echo
workloads (tests/plugins/mesh.py), which answer with who they are and the headers they saw.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.e2e.harness import REPO, ClusterView, RunningBot, key_of, running_bot
from tests.fakegithub import FakeGitHub, pull_request_event
from tests.plugins.cluster import Cluster
from tests.plugins.mesh import Call, Mesh

pytestmark = [pytest.mark.cluster, pytest.mark.mesh]

TWO_SERVICES = """\
services:
  - name: a
    image: registry.example.com/acme/a:{sha}
    port: 8080
  - name: b
    image: registry.example.com/acme/b:{sha}
    port: 8080
"""


def fqdn(name: str, namespace: str) -> str:
    return f"{name}.{namespace}.svc.cluster.local"


def preview_of(fake: FakeGitHub, number: int, service: str, namespace: str) -> str:
    """The host of PR `number`'s build of `service`: what its workload answers as."""
    return fqdn(key_of(fake, REPO, number).object_name(service), namespace)


def gateway_host(number: int, service: str = "a") -> str:
    return f"preview-{number}-api-{service}.example.com"


async def open_pr(bot: RunningBot, number: int) -> None:
    bot.fake.add_pull(REPO, number, head_sha=f"{number:x}".rjust(40, "a"))
    assert await bot.send("pull_request", pull_request_event(bot.fake, REPO, number, "opened")) == 202


async def close_pr(bot: RunningBot, number: int) -> None:
    assert await bot.send("pull_request", pull_request_event(bot.fake, REPO, number, "closed")) == 202


@pytest.fixture
async def bot(shop: FakeGitHub, cluster: Cluster, namespace: str, mesh: Mesh) -> AsyncIterator[RunningBot]:
    async with running_bot(shop, cluster, namespace, **mesh.bot_env) as running:
        yield running


async def test_gateway_request_reaches_the_prs_build_with_its_key(bot: RunningBot, mesh: Mesh, namespace: str) -> None:
    mesh.real_service(namespace, "a")
    await open_pr(bot, 7)
    await bot.settle()
    key = key_of(bot.fake, REPO, 7)

    answer = await mesh.wait_for(mesh.gateway, gateway_host(7), preview_of(bot.fake, 7, "a", namespace))
    assert answer.status == 200
    assert answer.headers["x-preview"] == key.value

    # A client cannot pick another preview: the gateway overwrites the header it sent.
    who, seen = await mesh.request(mesh.gateway, gateway_host(7), {"x-preview": "preview-1-000000"})
    assert who == preview_of(bot.fake, 7, "a", namespace)
    assert seen["x-preview"] == key.value
    # A host the bot did not publish is not routed anywhere.
    assert (await mesh.request(mesh.gateway, gateway_host(8))).status == 404  # Envoy: no route for the host
    # The preview's kwok pod has a 10.x IP; Envoy knows only loopback workloads (and istiod's xDS).
    for proxy in (mesh.gateway, mesh.client):
        endpoints = [a for addresses in proxy.endpoints().values() for a in addresses]
        assert endpoints and all(a.startswith("127.") for a in endpoints), endpoints


async def test_sidecar_routes_the_exact_key_only(bot: RunningBot, mesh: Mesh, namespace: str) -> None:
    real = mesh.real_service(namespace, "a").host
    await open_pr(bot, 123)
    await bot.settle()
    key = key_of(bot.fake, REPO, 123).value
    preview = preview_of(bot.fake, 123, "a", namespace)

    _, seen = await mesh.wait_for(mesh.client, real, preview, {"x-preview": key})
    assert seen["x-preview"] == key
    assert (await mesh.request(mesh.client, real)).workload == real
    # Prefixes and extensions of the key are other keys: they reach the real service.
    for other in ("preview-12", key[:-1], f"preview-12-{key.rsplit('-', 1)[1]}", key + "0", key.upper()):
        answer = await mesh.request(mesh.client, real, {"x-preview": other})
        assert answer.workload == real, (other, answer)
    # Header names are case-insensitive; the `host:port` and short forms name the same service.
    assert (await mesh.request(mesh.client, real, {"X-Preview": key})).workload == preview
    assert (await mesh.request(mesh.client, f"{real}:8080", {"x-preview": key})).workload == preview


async def test_two_prs_each_reach_their_own_build_and_closing_one_restores_the_real_service(
        bot: RunningBot, mesh: Mesh, namespace: str, view: ClusterView) -> None:
    real = mesh.real_service(namespace, "a").host
    await open_pr(bot, 21)
    await open_pr(bot, 22)
    await bot.settle()
    first, second = key_of(bot.fake, REPO, 21).value, key_of(bot.fake, REPO, 22).value

    await mesh.wait_for(mesh.client, real, preview_of(bot.fake, 21, "a", namespace), {"x-preview": first})
    await mesh.wait_for(mesh.client, real, preview_of(bot.fake, 22, "a", namespace), {"x-preview": second})
    await mesh.wait_for(mesh.gateway, gateway_host(21), preview_of(bot.fake, 21, "a", namespace))
    await mesh.wait_for(mesh.gateway, gateway_host(22), preview_of(bot.fake, 22, "a", namespace))
    assert (await mesh.request(mesh.client, real)).workload == real
    assert envoy_route_names(mesh, real) == [first, second, "default"]

    await close_pr(bot, 21)
    await bot.settle()
    # The closed PR's key now reaches the real service; the other PR is untouched.
    await mesh.wait_for(mesh.client, real, real, {"x-preview": first})
    second_build = preview_of(bot.fake, 22, "a", namespace)
    assert (await mesh.request(mesh.client, real, {"x-preview": second})).workload == second_build
    await mesh.wait_for(mesh.gateway, gateway_host(21), None, status=404)
    assert (await mesh.request(mesh.gateway, gateway_host(22))).workload == preview_of(bot.fake, 22, "a", namespace)
    assert [r["name"] for r in view.mesh_routes(real)] == [second, "default"]
    assert envoy_route_names(mesh, real) == [second, "default"]


def envoy_route_names(mesh: Mesh, host: str, port: int = 8080) -> list[str]:
    """The routes the client sidecar's Envoy holds for `host:port`, in match order."""
    routes: dict[str, Any] = mesh.client.routes().get(str(port), {})
    return list(routes.get(f"{host}:{port}", []))


@pytest.fixture
async def shop_ab(fake_github: FakeGitHub) -> FakeGitHub:
    fake_github.add_repo(REPO, files={".github/preview.yml": TWO_SERVICES}, collaborators={"alice": "write"})
    return fake_github


@pytest.mark.parametrize("match", ["header", "baggage", "both"])
async def test_seed_story_a_calls_b_and_the_key_follows(shop_ab: FakeGitHub, cluster: Cluster, namespace: str,
                                                        mesh: Mesh, match: str) -> None:
    """PR n's preview of a is an aiohttp app using preview_propagation; it calls b through its sidecar
    and PR n's preview of b answers. Without the key the chain stays on the real services."""
    mode = "baggage" if match == "baggage" else "header"
    sidecar_a = mesh.sidecar("a", namespace)
    real_b = mesh.real_service(namespace, "b").host
    calls_b = Call(via=sidecar_a, host=real_b, mode=mode)
    real_a = mesh.real_service(namespace, "a", calls=calls_b).host
    mesh.on_preview(namespace, "a", calls_b)
    key = key_of(shop_ab, REPO, 5).value
    carry = {"baggage": f"tenant=acme,preview={key};ttl=60"} if mode == "baggage" else {"x-preview": key}

    async with running_bot(shop_ab, cluster, namespace, PREVIEW_MATCH=match, **mesh.bot_env) as bot:
        await open_pr(bot, 5)
        await bot.settle()
        # Wait for both hops' routes, then take the whole chain in one request.
        await mesh.wait_for(sidecar_a, real_b, preview_of(shop_ab, 5, "b", namespace), carry)
        answer = await mesh.wait_for(mesh.client, real_a, preview_of(shop_ab, 5, "a", namespace), carry)
        assert answer.downstream is not None
        assert answer.downstream.workload == preview_of(shop_ab, 5, "b", namespace), answer.downstream
        assert answer.downstream.headers.get("baggage" if mode == "baggage" else "x-preview", "").find(key) >= 0

        plain = await mesh.request(mesh.client, real_a)
        assert plain.workload == real_a
        assert plain.downstream is not None and plain.downstream.workload == real_b

        # Entering at the gateway: it puts the key on the request as the match mode needs (header, baggage
        # member, or both), a forwards it, b's preview answers.
        entry = await mesh.wait_for(mesh.gateway, gateway_host(5), preview_of(shop_ab, 5, "a", namespace))
        assert entry.downstream is not None and entry.downstream.workload == preview_of(shop_ab, 5, "b", namespace)
        if match != "header":
            # A client's own baggage keeps its members, and its own preview member loses to the gateway's.
            own = await mesh.request(mesh.gateway, gateway_host(5), {"baggage": "tenant=acme,preview=preview-1-000000"})
            assert own.workload == preview_of(shop_ab, 5, "a", namespace), own
            assert own.headers["baggage"] == f"tenant=acme,preview=preview-1-000000,preview={key}"
            assert own.downstream is not None and own.downstream.workload == preview_of(shop_ab, 5, "b", namespace)
            if mode == "baggage":  # the helper forwards the key (OpenTelemetry would forward the rest)
                assert own.downstream.headers["baggage"] == f"preview={key}"
        if match == "both":
            # Either carrier routes: baggage alone too.
            alone = await mesh.request(sidecar_a, real_b, {"baggage": f"preview={key}"})
            assert alone.workload == preview_of(shop_ab, 5, "b", namespace)
        if match != "header":
            # Baggage entries are matched whole: a prefix of the key or another entry's value is not the key.
            for other in (f"preview={key[:-1]}", f"notpreview={key}", f"x=1,preview={key}0"):
                answer = await mesh.request(sidecar_a, real_b, {"baggage": other})
                assert answer.workload == real_b, (other, answer)
