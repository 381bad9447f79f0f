"""bot.gateway: does the Gateway serve the hosts the template produces (Istio's Gateway `hosts` rules)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from bot.errors import StartupError
from bot.gateway import covers, gateway_problem, host_shape, istio_api_problem
from bot.kube.inventory import Inventory
from bot.server import check_gateway
from bot.settings import ClusterSettings

DEFAULT = host_shape("preview-{number}-api-{service}.{domain}", "example.com")
NESTED = host_shape("{service}.pr-{number}.{domain}", "example.com")


def gateway(*servers: tuple[str, list[str]], tls_mode: str | None = None) -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1", "kind": "Gateway",
            "metadata": {"name": "preview-gateway", "namespace": "istio-system"},
            "spec": {"selector": {"istio": "ingressgateway"}, "servers": [
                {"port": {"number": 80, "name": "p", "protocol": protocol}, "hosts": hosts,
                 **({"tls": {"mode": tls_mode}} if tls_mode else {})} for protocol, hosts in servers]}}


def test_host_shape_marks_the_labels_placeholders_fill() -> None:
    assert DEFAULT.labels == (None, "example", "com")
    assert NESTED.labels == (None, None, "example", "com")
    assert NESTED.text == "<service>.pr-<number>.example.com"


@pytest.mark.parametrize(("entry", "shape", "expected"), [
    ("*.example.com", DEFAULT, True),
    ("*.EXAMPLE.com", DEFAULT, True),
    ("*", NESTED, True),
    ("*/*", NESTED, True),
    # A wildcard covers exactly one label: payments.pr-12.example.com is not under *.example.com.
    ("*.example.com", NESTED, False),
    ("*.pr-12.example.com", NESTED, False),  # only PR 12's hosts, not every PR's
    ("*.example.org", DEFAULT, False),
    ("example.com", DEFAULT, False),
    ("preview-1-api-a.example.com", DEFAULT, False),  # one host, not the template's hosts
    ("*.com", DEFAULT, False),
    # namespace/ prefixes: which namespaces' VirtualServices may bind (the bot's are in istio-system here)
    ("istio-system/*.example.com", DEFAULT, True),
    ("./*.example.com", DEFAULT, True),  # the Gateway's own namespace, istio-system
    ("prod/*.example.com", DEFAULT, False),
])
def test_covers(entry: str, shape: Any, expected: bool) -> None:
    assert covers(entry, shape, gateway_namespace="istio-system", routing_namespace="istio-system") is expected


def test_dot_prefix_is_the_gateways_namespace_not_the_routing_one() -> None:
    assert not covers("./*.example.com", DEFAULT, gateway_namespace="gw", routing_namespace="routes")
    assert covers("routes/*.example.com", DEFAULT, gateway_namespace="gw", routing_namespace="routes")


def test_a_long_fixed_label_is_compared_as_the_bot_writes_it() -> None:
    long = "x" * 70
    shape = host_shape("{service}-{number}." + long + ".{domain}", "example.com")
    host = shape.labels[1]
    assert host is not None and len(host) <= 63
    assert covers(f"*.{host}.example.com", shape, gateway_namespace="a", routing_namespace="a")


def test_the_reported_case_is_a_problem_naming_both() -> None:
    settings = ClusterSettings(domain="example.com", host_template="{service}.pr-{number}.{domain}")
    problem = gateway_problem(gateway(("HTTPS", ["*.example.com"]), ("HTTP", ["*.example.com"])), settings)
    assert problem is not None
    assert "<service>.pr-<number>.example.com" in problem and "'*.example.com'" in problem
    assert "istio-system/preview-gateway" in problem and "exactly one label" in problem


def test_the_example_gateway_serves_the_default_template() -> None:
    assert gateway_problem(gateway(("HTTPS", ["*.example.com"])), ClusterSettings(domain="example.com")) is None


def test_a_missing_gateway_is_a_problem() -> None:
    problem = gateway_problem(None, ClusterSettings(domain="example.com", gateway="ns/gw"))
    assert problem is not None and "ns/gw does not exist" in problem


@pytest.mark.parametrize(("protocol", "mode"), [("TCP", None), ("TLS", None), ("HTTPS", "PASSTHROUGH"),
                                                ("TLS", "AUTO_PASSTHROUGH")])
def test_servers_without_http_routes_do_not_count(protocol: str, mode: str | None) -> None:
    settings = ClusterSettings(domain="example.com")
    problem = gateway_problem(gateway((protocol, ["*.example.com"]), tls_mode=mode), settings)
    assert problem is not None and "hosts are none" in problem


@pytest.mark.parametrize("protocol", ["HTTP", "HTTPS", "HTTP2", "GRPC"])
def test_http_servers_count(protocol: str) -> None:
    assert gateway_problem(gateway((protocol, ["*"])), ClusterSettings(domain="example.com")) is None


SERVER = "https://127.0.0.1:6443"


@pytest.mark.parametrize(("served", "missing"), [
    (None, "gateways or virtualservices"),
    (frozenset(), "gateways or virtualservices"),
    (frozenset({"gateways", "sidecars"}), "virtualservices"),
    (frozenset({"virtualservices"}), "gateways"),
])
def test_istio_resources_not_served_are_named(served: frozenset[str] | None, missing: str) -> None:
    problem = istio_api_problem("networking.istio.io/v1", served, SERVER)
    assert problem == (f"Kubernetes: {SERVER} does not serve networking.istio.io/v1 {missing}: Istio's CRDs "
                       "are not installed (preview-bot needs Istio 1.22 or later, which serves networking.istio.io/v1)")


def test_istio_resources_served_are_no_problem() -> None:
    assert istio_api_problem("networking.istio.io/v1", frozenset({"gateways", "virtualservices", "x"}), SERVER) is None


class DiscoveryStub:
    """The API server's answers as the transport gives them: GET path -> object, or None for a 404."""

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    async def get(self, path: str) -> Any:
        self.asked.append(path)
        return self.answers.get(path)

    async def list_objects(self, *_args: Any, **_kw: Any) -> list[dict[str, Any]]:
        raise AssertionError("nothing is listed when the group version is not served")


ISTIO_DISCOVERY = {"/apis/networking.istio.io/v1": {"resources": [{"name": "gateways"}, {"name": "virtualservices"}]}}


def kube_over(answers: dict[str, Any], settings: ClusterSettings) -> Any:
    inventory = Inventory(DiscoveryStub(answers), settings)  # type: ignore[arg-type]
    return SimpleNamespace(server=SERVER, gateway=inventory.gateway, inventory=inventory)


@pytest.mark.parametrize(("answers", "expected"), [
    ({}, "does not serve networking.istio.io/v1 gateways or virtualservices: Istio's CRDs are not installed"),
    (ISTIO_DISCOVERY, "PREVIEW_GATEWAY: Gateway ns/gw does not exist"),
])
async def test_a_missing_gateway_is_told_apart_from_missing_istio_crds(answers: dict[str, Any], expected: str) -> None:
    settings = ClusterSettings(domain="example.com", gateway="ns/gw")
    with pytest.raises(StartupError) as caught:
        await check_gateway(kube_over(answers, settings), SimpleNamespace(cluster=settings))  # type: ignore[arg-type]
    assert expected in str(caught.value)


async def test_explain_without_istio_crds_says_so_and_lists_nothing() -> None:
    settings = ClusterSettings(domain="example.com", gateway="ns/gw")
    gateway, items, notes = await kube_over({}, settings).inventory.routing_objects()
    assert (gateway, items) == (None, [])
    assert notes == ["the API server does not serve networking.istio.io/v1 VirtualServices (Istio's CRDs are "
                     "not installed): no routing to explain"]


@pytest.mark.parametrize(("status", "hint"), [(401, "does not accept the credentials"),
                                              (403, "needs `get` on gateways.networking.istio.io")])
async def test_refused_gateway_reads_name_the_likely_cause(status: int, hint: str) -> None:
    from bot.kube import KubeError

    async def refused(_name: str) -> Any:
        raise KubeError(status, "Unauthorized" if status == 401 else "Forbidden", "no")
    settings = ClusterSettings(domain="example.com", gateway="ns/gw")
    kube = SimpleNamespace(server=SERVER, gateway=refused)
    with pytest.raises(StartupError) as caught:
        await check_gateway(kube, SimpleNamespace(cluster=settings))  # type: ignore[arg-type]
    assert hint in str(caught.value)
    assert ("needs `get`" in str(caught.value)) is (status == 403)
