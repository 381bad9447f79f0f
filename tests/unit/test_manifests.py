"""bot.manifests: the objects of one preview."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from bot import explain, manifests, mesh_routes, naming
from bot.naming import PreviewKey
from bot.repo_config import RepoConfig, ServiceConfig, parse_repo_config
from bot.settings import ClusterSettings, Policy
from tests.unit.test_explain import GATEWAY

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / ".github" / "preview.yml"
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
SHA = "0123456789abcdef0123456789abcdef01234567"
SETTINGS = ClusterSettings(domain="example.com", namespace="previews", routing_namespace="istio-system",
                           gateway="istio-system/preview-gateway")
KEY = PreviewKey("acme/shop", 7, 101)


@pytest.fixture(scope="module")
def config() -> RepoConfig:
    return parse_repo_config(EXAMPLE.read_text(encoding="utf-8"))


def by_kind(documents: list[manifests.Manifest], kind: str) -> list[manifests.Manifest]:
    return [d for d in documents if d["kind"] == kind]


def test_plan_has_one_service_plan_per_service(config: RepoConfig) -> None:
    plan = manifests.plan_preview(SETTINGS, config, KEY, SHA, pushed_at="2024-01-01T00:00:00Z")
    assert [s.service.name for s in plan.services] == ["a", "b"]
    a = plan.services[0]
    assert a.name == KEY.object_name("a")
    assert a.image == f"registry.example.com/acme/a:{SHA}"
    assert a.preview_host == "preview-7-api-a.example.com"
    assert a.url == "https://preview-7-api-a.example.com"
    assert a.mesh_host == "a.previews.svc.cluster.local"
    assert a.destination == f"{a.name}.previews.svc.cluster.local"
    assert plan.services[1].mesh_host == "b.shop.svc.cluster.local"
    # manifests(): workload + gateway route per service, no shared mesh objects.
    kinds = [m["kind"] for m in plan.manifests()]
    assert kinds == ["Deployment", "Service", "VirtualService"] * 2
    for manifest in plan.manifests():
        annotations = manifest["metadata"]["annotations"]
        assert annotations[naming.REPO_ANNOTATION] == "acme/shop"
        assert annotations[naming.SHA_ANNOTATION] == SHA
        assert annotations[naming.PUSHED_AT_ANNOTATION] == "2024-01-01T00:00:00Z"


def test_only_limits_the_services(config: RepoConfig) -> None:
    plan = manifests.plan_preview(SETTINGS, config, KEY, SHA, only=["b"])
    assert [s.service.name for s in plan.services] == ["b"]
    assert manifests.plan_preview(SETTINGS, config, KEY, SHA, only=[]).services == ()


def test_deployment(config: RepoConfig) -> None:
    plan = manifests.plan_preview(SETTINGS, config, KEY, SHA)
    deployment = plan.services[0].workload[0]
    assert deployment["apiVersion"] == "apps/v1" and deployment["kind"] == "Deployment"
    meta = deployment["metadata"]
    assert meta["name"] == KEY.object_name("a") and meta["namespace"] == "previews"
    assert meta["labels"][naming.KEY_LABEL] == KEY.value
    spec = deployment["spec"]
    selector = spec["selector"]["matchLabels"]
    pod_labels = spec["template"]["metadata"]["labels"]
    assert selector.items() <= pod_labels.items()
    # Pods carry only the bot's labels: the real Service's selector (e.g. app: a) must never match them.
    assert all(k.startswith(("preview-bot.dev/", "app.kubernetes.io/managed-by")) for k in pod_labels)
    assert "app" not in pod_labels
    pod = spec["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    assert container["image"] == f"registry.example.com/acme/a:{SHA}"
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert container["env"] == [{"name": "LOG_LEVEL", "value": "debug"}]
    assert container["resources"] == {"requests": {"cpu": "100m", "memory": "128Mi"},
                                      "limits": {"cpu": "500m", "memory": "256Mi"}}
    assert "command" not in container and "args" not in container
    assert spec["template"]["metadata"]["annotations"] == {naming.SHA_ANNOTATION: SHA}


def test_pod_template_changes_only_with_the_sha(config: RepoConfig) -> None:
    first = manifests.plan_preview(SETTINGS, config, KEY, SHA, pushed_at="t1").services[0].workload[0]
    again = manifests.plan_preview(SETTINGS, config, KEY, SHA, pushed_at="t2").services[0].workload[0]
    other = manifests.plan_preview(SETTINGS, config, KEY, "f" * 40).services[0].workload[0]
    assert first["spec"]["template"] == again["spec"]["template"]
    assert first["spec"]["template"] != other["spec"]["template"]


def test_command_args_and_replicas() -> None:
    service = ServiceConfig(name="w", image="r/w:{number}", port=80, replicas=2, command=("run",), args=("-v", "x"),
                            env={"B": "2", "A": "1"})
    plan = manifests.plan_preview(SETTINGS, RepoConfig(services=(service,)), KEY, SHA)
    deployment = plan.services[0].workload[0]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["run"] and container["args"] == ["-v", "x"]
    assert container["image"] == "r/w:7"
    assert [e["name"] for e in container["env"]] == ["A", "B"]
    assert deployment["spec"]["replicas"] == 2


def test_service_object(config: RepoConfig) -> None:
    plan = manifests.plan_preview(SETTINGS, config, KEY, SHA)
    deployment, service = plan.services[1].workload
    assert service["kind"] == "Service" and service["apiVersion"] == "v1"
    assert service["metadata"]["name"] == deployment["metadata"]["name"]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"] == [{"name": "http", "port": 9090, "targetPort": 9090, "protocol": "TCP",
                                         "appProtocol": "http"}]


def test_gateway_route(config: RepoConfig) -> None:
    plan = manifests.plan_preview(SETTINGS, config, KEY, SHA)
    route = plan.services[0].gateway_route
    assert route["apiVersion"] == manifests.VIRTUAL_SERVICE_API and route["kind"] == "VirtualService"
    meta = route["metadata"]
    assert meta["namespace"] == "istio-system"
    assert meta["name"] == naming.gateway_route_name("preview-7-api-a.example.com")
    assert meta["labels"][naming.ROLE_LABEL] == naming.ROLE_GATEWAY
    assert meta["annotations"][naming.HOST_ANNOTATION] == "preview-7-api-a.example.com"
    spec = route["spec"]
    assert spec["hosts"] == ["preview-7-api-a.example.com"]
    assert spec["gateways"] == ["istio-system/preview-gateway"]
    # The gateway's proxy may run in another namespace: visible everywhere, whatever the mesh default.
    assert spec["exportTo"] == ["*"]
    (http,) = spec["http"]
    assert http["headers"] == {"request": {"set": {"x-preview": KEY.value}}}
    assert http["route"] == [{"destination": {"host": plan.services[0].destination, "port": {"number": 8080}}}]


@pytest.mark.parametrize("mode", ["header", "baggage", "both"])
def test_mesh_route_follows_match_mode(config: RepoConfig, mode: str) -> None:
    settings = ClusterSettings(domain="example.com", header_name="x-pr", match_mode=mode)  # type: ignore[arg-type]
    route = manifests.plan_preview(settings, config, KEY, SHA).services[0].mesh_route
    assert route["name"] == KEY.value
    headers = [m["headers"] for m in route["match"]]
    assert {m["port"] for m in route["match"]} == {config.services[0].port}
    assert ({"x-pr": {"exact": KEY.value}} in headers) == (mode in ("header", "both"))
    assert any("baggage" in h for h in headers) == (mode in ("baggage", "both"))


def test_render_adds_one_mesh_virtual_service_per_service(config: RepoConfig) -> None:
    documents = manifests.render(SETTINGS, config, KEY, SHA)
    assert len(documents) == 8
    mesh = [d for d in documents if d["metadata"]["labels"].get(naming.ROLE_LABEL) == naming.ROLE_MESH]
    assert [d["spec"]["hosts"] for d in mesh] == [["a.previews.svc.cluster.local"], ["b.shop.svc.cluster.local"]]
    ports = {s.name: s.port for s in config.services}
    for document, service in zip(mesh, ("a", "b"), strict=True):
        http = document["spec"]["http"]
        assert http[0]["name"] == KEY.value
        # The key routes the service's own port only; other ports of the real service stay on it.
        assert http[0]["match"] == [{"headers": {"x-preview": {"exact": KEY.value}}, "port": ports[service]}]
        assert http[0]["route"][0]["destination"]["port"] == {"number": ports[service]}
        assert http[-1] == mesh_routes.default_route(document["spec"]["hosts"][0])
        assert "port" not in http[-1]["route"][0]["destination"]
        assert document["metadata"]["namespace"] == "istio-system"
        # Seen by sidecars in every namespace whatever the mesh's defaultVirtualServiceExportTo.
        assert document["spec"]["exportTo"] == ["*"]
    for document in documents:
        if document["kind"] == "VirtualService":
            assert document["spec"]["exportTo"] == ["*"], document["metadata"]["name"]
    for document in documents:
        assert DNS_LABEL.match(document["metadata"]["name"]) and len(document["metadata"]["name"]) <= 63


def test_render_is_deterministic(config: RepoConfig) -> None:
    assert manifests.render(SETTINGS, config, KEY, SHA) == manifests.render(SETTINGS, config, KEY, SHA)


def test_resources_follow_policy_defaults() -> None:
    policy = Policy(default_requests={"cpu": "20m"}, default_limits={"cpu": "40m"})
    settings = ClusterSettings(domain="example.com", policy=policy)
    service = ServiceConfig(name="a", image="i", port=1)
    deployment = manifests.plan_preview(settings, RepoConfig(services=(service,)), KEY, SHA).services[0].workload[0]
    resources = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert resources == {"requests": {"cpu": "20m"}, "limits": {"cpu": "40m"}}


def test_two_repos_same_pr_do_not_share_objects(config: RepoConfig) -> None:
    mine = manifests.plan_preview(SETTINGS, config, KEY, SHA)
    theirs = manifests.plan_preview(SETTINGS, config, PreviewKey("other/shop", 7, 202), SHA)
    names_mine = {(m["kind"], m["metadata"]["name"]) for m in mine.manifests() if m["kind"] != "VirtualService"}
    names_theirs = {(m["kind"], m["metadata"]["name"]) for m in theirs.manifests() if m["kind"] != "VirtualService"}
    assert not names_mine & names_theirs
    assert mine.services[0].mesh_route["name"] != theirs.services[0].mesh_route["name"]


@pytest.mark.parametrize("protocol", ["http", "http2", "grpc", "grpc-web"])
def test_protocol_names_the_ports_and_sets_app_protocol(protocol: str) -> None:
    """Istio reads the protocol from appProtocol, else from the port name prefix: both say it."""
    config = RepoConfig(services=(ServiceConfig(name="scanner", image="r/s:{sha}", port=50051, protocol=protocol),))
    service_plan = manifests.plan_preview(SETTINGS, config, KEY, SHA).services[0]
    deployment, service = service_plan.workload
    [container_port] = deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
    assert container_port == {"name": protocol, "containerPort": 50051, "protocol": "TCP"}
    assert service["spec"]["ports"] == [{"name": protocol, "port": 50051, "targetPort": 50051, "protocol": "TCP",
                                         "appProtocol": protocol}]
    # A container port name is an IANA_SVC_NAME: at most 15 characters, a letter, no "--".
    assert len(protocol) <= 15 and re.search("[a-z]", protocol) and "--" not in protocol
    route = service_plan.mesh_route
    assert route["route"][0]["destination"]["port"] == {"number": 50051}


# Strings PyYAML 6 prints plain, since its YAML 1.1 resolver reads them back as strings, that go-yaml v2
# (sigs.k8s.io/yaml: kubectl and the kube-apiserver), go-yaml v3 or YAML 1.2's core schema read as something
# else. Found by dumping candidates with yaml.safe_dump and decoding them with each of those.
MISREAD_WHEN_PLAIN = [
    "y", "Y", "n", "N",  # go-yaml v2: booleans
    "1e3", "1E3", "1e+3", "1e-3", "9e-1", "1.0e3", "1.e3", ".5e3",  # PyYAML's floats need a `.` and a signed exponent
    "+.5", "-.5", "+.1",  # nor a sign before `.5`
    "08", "09", "019", "-09", "0009", "0" * 39 + "9",  # not octal for PyYAML; go-yaml: floats, YAML 1.2: ints
    "0o17", "-0o17", "0O17", "0X1F", "+0X1F", "0B101", "0b+1", "0b-1",  # prefixes Go's strconv reads
    "+_1", "-_1", "0_9", "09_", "1_e3", "1e3_0", "0_x1F",  # go-yaml deletes every `_` first
    "2001-1-2", "2001-1-2T1:2:3Z",  # go-yaml v3: timestamps
    "1e400",  # YAML 1.2: a float (go-yaml: out of range, so a string)
]
# PyYAML quotes these itself.
QUOTED_ANYWAY = ["", "~", "null", "NULL", "true", "False", "yes", "No", "on", "OFF", "1", "+1", "-1", "017", "0x1F",
                 "0b101", "1_000", "12:30", ".5", "1.5", "1.0e+3", ".inf", "-.Inf", ".NaN", "2001-12-14", "<<", "="]
# Ordinary strings stay plain, and so do the number-like ones no reader takes for numbers.
PLAIN = ["debug", f"registry.example.com/acme/a:{SHA}", "preview-7-abc123", "a.previews.svc.cluster.local", "1.2.3",
         "v1.27", "100m", "128Mi", "inf", "nan", "-inf", "0x1p-2", "1,000", "12:60", "e3", "yes-please", "0b2", "_1",
         "2024-06"]


@pytest.mark.parametrize("text", MISREAD_WHEN_PLAIN + QUOTED_ANYWAY)
def test_to_yaml_quotes_strings_another_reader_takes_for_something_else(text: str) -> None:
    out = manifests.to_yaml([{"value": text}])
    assert out == f"value: '{text}'\n"
    assert yaml.safe_load(out) == {"value": text}


@pytest.mark.parametrize("text", PLAIN)
def test_to_yaml_leaves_other_strings_plain(text: str) -> None:
    out = manifests.to_yaml([{"value": text}])
    assert out == f"value: {text}\n"
    assert yaml.safe_load(out) == {"value": text}


# YAML 1.2.2 section 10.3.2 (the core schema): plain scalars that are not strings.
YAML_12_CORE = re.compile(r"null|Null|NULL|~|true|True|TRUE|false|False|FALSE|[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+"
                          r"|[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?|[-+]?\.(inf|Inf|INF)|\.nan|\.NaN|\.NAN")


@given(st.text(alphabet="0189abeEfnNoOxXyY.+-_:~ T") | st.text())
def test_to_yaml_reads_back_and_plain_means_a_string_everywhere(text: str) -> None:
    out = manifests.to_yaml([{"value": text}])
    assert yaml.safe_load(out) == {"value": text}
    if not out.startswith(("value: '", 'value: "', "value: |", "value: >")):
        assert not YAML_12_CORE.fullmatch(text) and text not in ("y", "Y", "n", "N"), out


def test_to_yaml_keeps_documents_and_key_order() -> None:
    out = manifests.to_yaml([{"kind": "A", "b": 1, "a": "09"}, {"kind": "B"}])
    assert out == "kind: A\nb: 1\na: '09'\n---\nkind: B\n"


TWO = """\
services:
  - name: a
    image: registry.example.com/acme/a:{sha}
    port: 8080
  - name: b
    image: registry.example.com/acme/b:{sha}
    port: 8080
"""


@pytest.mark.parametrize("mode", ["header", "baggage", "both"])
@pytest.mark.parametrize("client", [{}, {"baggage": "tenant=acme"}, {"baggage": "tenant=acme,preview=preview-1-000000"},
                                    {"x-pr": "preview-1-000000"}])
def test_gateway_route_puts_the_key_on_the_request_as_the_mesh_matches_it(mode: str, client: dict[str, str]) -> None:
    """Entering through a preview URL, whatever the client sends, every hop behind the gateway reaches the
    PR's builds (explain models Istio; tests/e2e/test_mesh_routing.py shows it on Envoy): the gateway sets
    the header, or makes `baggage` one line ending in `preview=<key>` that keeps the client's members."""
    settings = ClusterSettings(domain="example.com", namespace="shop", header_name="x-pr",
                               match_mode=mode)  # type: ignore[arg-type]
    documents = manifests.render(settings, parse_repo_config(TWO, "preview.yml"), KEY, SHA)
    routing = explain.Routing(GATEWAY, [d for d in documents if d["kind"] == "VirtualService"])
    request = explain.Request(host="preview-7-api-a.example.com", headers=client)
    result = explain.explain(routing, request, then=["b.shop.svc.cluster.local"], forward=("x-pr", "baggage"))
    assert [hop.destinations[0].host for hop in result.hops] == [
        f"{KEY.object_name(s)}.shop.svc.cluster.local" for s in ("a", "b")]
    seen = result.hops[0].request_headers
    if mode != "header":
        assert seen["baggage"].split(",")[-1] == f"preview={KEY.value}"
        assert ("tenant=acme" in seen["baggage"]) == ("baggage" in client)
    if mode != "baggage":
        assert seen["x-pr"] == KEY.value
