"""bot.repo_config: parsing, validation messages (file, field, reason) and policy checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bot.errors import ConfigError
from bot.repo_config import (
    CONFIG_PATH,
    RepoConfig,
    ServiceConfig,
    check_hosts,
    check_policy,
    declared_trigger,
    effective_resources,
    image_problem,
    parse_repo_config,
)
from bot.settings import Policy

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / ".github" / "preview.yml"

MINIMAL = """
services:
  - name: api
    image: registry.example.com/acme/api:{sha}
    port: 8080
"""


def config_error(text: str, source: str = CONFIG_PATH) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_repo_config(text, source=source)
    return info.value


def one_service(extra: str, name: str = "api", image: str = "registry.example.com/acme/api:{sha}",
                port: str = "8080") -> str:
    lines = ["services:", f"  - name: {name}", f"    image: {image!r}" if image else "", f"    port: {port}"]
    lines += [f"    {line}" for line in extra.strip("\n").splitlines()] if extra else []
    return "\n".join(line for line in lines if line) + "\n"


def test_example_config_parses() -> None:
    config = parse_repo_config(EXAMPLE.read_text(encoding="utf-8"))
    assert config.trigger == "auto"
    assert config.label == "preview"
    assert [s.name for s in config.services] == ["a", "b"]
    a, b = config.services
    assert a.port == 8080 and a.paths == ("services/a/**",)
    assert a.env == {"LOG_LEVEL": "debug"}
    assert a.requests == {"cpu": "100m", "memory": "128Mi"} and a.limits == {"memory": "256Mi"}
    assert b.host == "b.shop.svc.cluster.local"
    assert b.mesh_host("default") == "b.shop.svc.cluster.local"
    assert a.mesh_host("default") == "a.default.svc.cluster.local"
    assert config.service("b") is b and config.service("zzz") is None


def test_minimal_config_defaults() -> None:
    config = parse_repo_config(MINIMAL)
    service = config.services[0]
    assert config == RepoConfig(services=(service,), trigger="auto", label="preview")
    assert service.replicas == 1 and service.host is None and service.env == {}
    assert service.image_for(sha="0123456789abcdef", number=5) == "registry.example.com/acme/api:0123456789abcdef"


@pytest.mark.parametrize("protocol", ["http", "http2", "grpc", "grpc-web", "GRPC"])
def test_header_routable_protocols_are_accepted(protocol: str) -> None:
    assert parse_repo_config(one_service(f"protocol: {protocol}")).services[0].protocol == protocol.lower()


@pytest.mark.parametrize("protocol", ["https", "tls", "tcp", "mongo", "mysql", "redis", "udp"])
def test_every_other_istio_protocol_is_refused_with_its_reason(protocol: str) -> None:
    """Istio's explicit protocol selection knows these too; none of them can carry a routing header."""
    err = config_error(one_service(f"protocol: {protocol}"))
    assert err.field == "services[0].protocol"
    assert err.reason.startswith(f"{protocol} cannot be routed by a request header")


def test_image_placeholders() -> None:
    service = ServiceConfig(name="a", image="r/a:{short_sha}-pr{number}", port=1)
    assert service.image_for(sha="0123456789abcdef", number=5) == "r/a:0123456-pr5"


def test_env_values_become_strings() -> None:
    config = parse_repo_config(one_service("env:\n  A: 1\n  B: true\n  C: 1.5\n  D.E-F: x"))
    assert config.services[0].env == {"A": "1", "B": "true", "C": "1.5", "D.E-F": "x"}


def test_env_numbers_booleans_and_dates_are_passed_as_the_text_of_their_yaml_value() -> None:
    """As README says: YAML 1.1 reads `0755` as 493, `1.10` as 1.1 and `yes` as true; quoted, they stay text."""
    env = "env:\n  A: 0755\n  B: 1.10\n  C: yes\n  D: 2024-06-01\n  E: '0755'\n  F: 1e3\n  G: False"
    assert parse_repo_config(one_service(env)).services[0].env == {
        "A": "493", "B": "1.1", "C": "true", "D": "2024-06-01", "E": "0755", "F": "1e3", "G": "false"}


@pytest.mark.parametrize(("value", "kind"), [("2001-12-14 21:59:43.10 -5", "a timestamp"),
                                             ("!!binary aGk=", "binary data"), ("!!set {a: null}", "a set"),
                                             ("{a: 1}", "a mapping"), ("", "nothing")])
def test_env_values_that_would_print_as_python_text_are_errors(value: str, kind: str) -> None:
    err = config_error(one_service(f"env:\n  A: {value}"))
    assert (err.field, err.reason) == ("services[0].env.A", f"must be a string or number, got {kind}")


def test_paths_affect_services() -> None:
    service = ServiceConfig(name="a", image="i", port=1, paths=("services/a/**", "*.md"))
    assert service.affected_by(["services/a/main.py"])
    assert service.affected_by(["README.md"])
    assert not service.affected_by(["services/b/main.py"])
    assert not service.affected_by([])
    assert ServiceConfig(name="a", image="i", port=1).affected_by([])


@pytest.mark.parametrize(
    ("text", "field", "reason"),
    [
        ("", "", "mapping"),
        ("- a\n- b\n", "", "mapping"),
        ("services: [\n", "line", "invalid YAML"),
        ("service: []\n", "service", "unknown field"),
        ("services: []\n", "services", "non-empty list"),
        ("services: {}\n", "services", "non-empty list"),
        ("trigger: sometimes\n" + MINIMAL, "trigger", "auto, label or command"),
        ("label: ''\n" + MINIMAL, "label", "non-empty string"),
        ("label: [a]\n" + MINIMAL, "label", "non-empty string"),
        ("services: [42]\n", "services[0]", "mapping"),
        ("services:\n  - image: x\n    port: 1\n", "services[0].name", "required"),
        ("services:\n  - name: a\n    port: 1\n", "services[0].image", "required"),
        ("services:\n  - name: a\n    image: x\n", "services[0].port", "required"),
        (one_service("colour: red"), "services[0].colour", "unknown field"),
        (one_service("", name="Api"), "services[0].name", "lowercase"),
        (one_service("", name="1api"), "services[0].name", "start with a letter"),
        (one_service("", name="a" * 41), "services[0].name", "40"),
        (one_service("", name="'42'"), "services[0].name", "lowercase"),
        (one_service("", name="7"), "services[0].name", "non-empty string"),
        (one_service("", port="http"), "services[0].port", "whole number from 1 to 65535"),
        (one_service("", port="0"), "services[0].port", "whole number"),
        (one_service("", port="65536"), "services[0].port", "whole number"),
        (one_service("", port="true"), "services[0].port", "whole number"),
        (one_service("", port="80.5"), "services[0].port", "whole number"),
        (one_service("", image="r/a:{branch}"), "services[0].image", "unknown placeholder"),
        (one_service("", image="r/a:{}"), "services[0].image", "unknown placeholder"),
        (one_service("", image="r/a:{sha!r}"), "services[0].image", "unknown placeholder"),
        (one_service("", image="r/a :x"), "services[0].image", "white space"),
        (one_service("host: localhost"), "services[0].host", "DNS name"),
        (one_service("host: 'a..b'"), "services[0].host", "DNS name"),
        (one_service("host: 12"), "services[0].host", "non-empty string"),
        (one_service(f"host: {'a' * 64}.shop.svc.cluster.local"), "services[0].host", "64 characters (at most 63)"),
        (one_service("env: [A]"), "services[0].env", "mapping"),
        (one_service("env:\n  1BAD: x"), "services[0].env", "invalid variable name"),
        (one_service("env:\n  A: [1]"), "services[0].env.A", "string or number"),
        (one_service("env:\n  A:"), "services[0].env.A", "string or number"),
        (one_service("replicas: 0"), "services[0].replicas", "whole number from 1 to 1000"),
        (one_service("replicas: many"), "services[0].replicas", "whole number"),
        (one_service("resources: []"), "services[0].resources", "mapping"),
        (one_service("resources: {requested: {}}"), "services[0].resources.requested", "unknown field"),
        (one_service("resources: {requests: {gpu: 1}}"), "services[0].resources.requests.gpu", "unknown field"),
        (one_service("resources: {requests: {cpu: lots}}"), "services[0].resources.requests.cpu", "quantity"),
        (one_service("resources: {limits: {memory: 1XB}}"), "services[0].resources.limits.memory", "quantity"),
        (one_service("paths: services/a"), "services[0].paths", "list of strings"),
        (one_service("paths: ['a', '']"), "services[0].paths[1]", "non-empty string"),
        (one_service("command: [1]"), "services[0].command[0]", "non-empty string"),
        (one_service("args: x"), "services[0].args", "list of strings"),
        (one_service("protocol: tcp"), "services[0].protocol", "tcp cannot be routed by a request header"),
        (one_service("protocol: https"), "services[0].protocol", "does not decrypt"),
        (one_service("protocol: udp"), "services[0].protocol", "not proxied"),
        (one_service("protocol: websocket"), "services[0].protocol", "one of http, http2, grpc, grpc-web"),
        (one_service("protocol: [grpc]"), "services[0].protocol", "one of http, http2, grpc, grpc-web"),
        (MINIMAL + "  - name: api\n    image: x\n    port: 1\n", "services[1].name", "duplicate"),
        (MINIMAL + "  - name: web\n    image: x\n    port: none\n", "services[1].port", "whole number"),
        # Python's `$` also matches before a last line break: the API server would refuse the Deployment.
        (one_service('env: {"LOG_LEVEL\\n": debug}'), "services[0].env", "invalid variable name"),
    ],
)
def test_validation_errors_name_file_field_and_reason(text: str, field: str, reason: str) -> None:
    err = config_error(text, source="acme/shop:.github/preview.yml")
    assert err.source == "acme/shop:.github/preview.yml"
    assert err.field.startswith(field) if field == "line" else err.field == field
    assert reason in err.reason
    message = str(err)
    assert message.startswith("acme/shop:.github/preview.yml")
    assert field in message and reason in message


@pytest.mark.parametrize("image", ["r/a:{sha", "r/a:v1}", "r/a:{sha}}", "r/a:{{sha}"])
def test_image_with_unbalanced_braces_is_a_config_error(image: str) -> None:
    """A template that str.format cannot expand must be refused while parsing, naming the field;
    otherwise it only fails later, at deploy/render time, with a bare ValueError."""
    try:
        config = parse_repo_config(one_service("", image=image))
    except ConfigError as err:
        assert err.field == "services[0].image"
        return
    config.services[0].image_for(sha="0123456789abcdef", number=1)  # must not raise either


def test_yaml_error_names_the_line() -> None:
    err = config_error("services:\n  - name: a\n    image: [unclosed\n")
    assert err.field.startswith("line ")
    assert err.source == CONFIG_PATH


def alias_bomb(levels: int = 9) -> str:
    """Nested YAML aliases ("billion laughs"): a few hundred bytes standing for 9**levels strings."""
    lines = ['  - &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"  - &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("field", ["trigger", "wait_timeout", "label", "services"])
def test_an_alias_bomb_is_refused_before_it_is_expanded(field: str) -> None:
    text = f"{field}:\n{alias_bomb()}" + ("" if field == "services" else one_service(""))
    assert len(text) < 1000
    err = config_error(text)
    assert err.reason == "more than 10,000 values once its aliases are expanded; write the values out"


def test_an_alias_bomb_in_a_service_field_is_refused() -> None:
    text = "services:\n  - name: api\n    image: x:{sha}\n    port:\n" + alias_bomb().replace("  - ", "      - ")
    assert "aliases are expanded" in config_error(text).reason


def test_a_recursive_alias_is_refused() -> None:
    assert config_error("trigger: &a [*a]\n" + one_service("")).reason == "nested more than 20 levels deep"


@pytest.mark.parametrize("depth", [21, 500, 5_000])
def test_deep_nesting_is_refused_whatever_the_depth(depth: int) -> None:
    err = config_error("services: " + "[" * depth + "]" * depth + "\n")
    assert err.reason.endswith("nested more than 20 levels deep") and "Traceback" not in str(err)


def test_aliases_within_the_bounds_still_work() -> None:
    text = "services:\n  - &api\n    name: api\n    image: x:{sha}\n    port: 8080\n    env: &env {A: '1'}\n" \
           "  - name: web\n    image: y:{sha}\n    port: 80\n    env: *env\n"
    config = parse_repo_config(text)
    assert [s.name for s in config.services] == ["api", "web"]
    assert config.services[1].env == config.services[0].env


def test_a_duplicate_key_is_refused_naming_its_line() -> None:
    err = config_error("services:\n  - name: api\n    image: x:{sha}\n    port: 8080\n    name: web\n")
    assert (err.field, err.reason) == ("line 5", "duplicate key 'name'")
    assert config_error("trigger: auto\ntrigger: label\n" + one_service("")).reason == "duplicate key 'trigger'"


def test_a_long_bad_value_is_cut_in_the_message() -> None:
    err = config_error("trigger: " + "x" * 100_000 + "\n" + one_service(""))
    assert len(str(err)) < 300 and err.reason.endswith("...")


# --- policy ---------------------------------------------------------------------------------------


def policy_error(extra: str, policy: Policy, image: str = "registry.example.com/acme/api:{sha}") -> ConfigError:
    config = parse_repo_config(one_service(extra, image=image))
    with pytest.raises(ConfigError) as info:
        check_policy(config, policy, source="acme/shop:.github/preview.yml")
    assert str(info.value).startswith("acme/shop:.github/preview.yml: services[0].")
    return info.value


def test_policy_image_prefix() -> None:
    policy = Policy(allowed_image_prefixes=("ghcr.io/acme/", "registry.example.com/other/"))
    err = policy_error("", policy)
    assert err.field == "services[0].image"
    assert "ghcr.io/acme/" in err.reason
    check_policy(parse_repo_config(one_service("", image="ghcr.io/acme/api:{sha}")), policy)


def test_policy_replicas() -> None:
    err = policy_error("replicas: 4", Policy(max_replicas=3))
    assert err.field == "services[0].replicas"
    assert "4" in err.reason and "3" in err.reason
    check_policy(parse_repo_config(one_service("replicas: 3")), Policy(max_replicas=3))


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ("resources: {requests: {cpu: '3'}}", "services[0].resources.requests.cpu"),
        ("resources: {limits: {memory: 3Gi}}", "services[0].resources.limits.memory"),
        ("resources: {limits: {cpu: 2001m}}", "services[0].resources.limits.cpu"),
    ],
)
def test_policy_resource_caps(extra: str, field: str) -> None:
    err = policy_error(extra, Policy(max_resources={"cpu": "2", "memory": "2Gi"}))
    assert err.field == field
    assert "maximum" in err.reason


def test_policy_request_above_limit() -> None:
    err = policy_error("resources: {requests: {memory: 512Mi}, limits: {memory: 256Mi}}", Policy())
    assert err.field == "services[0].resources.requests.memory"
    assert "512Mi" in err.reason and "256Mi" in err.reason


def test_policy_accepts_what_is_within_limits() -> None:
    extra = "replicas: 2\nresources: {requests: {cpu: 2}, limits: {cpu: '2', memory: 2Gi}}"
    config = parse_repo_config(one_service(extra))
    check_policy(config, Policy(max_replicas=2))


def test_policy_names_the_right_service_index() -> None:
    config = parse_repo_config(MINIMAL + "  - name: web\n    image: x\n    port: 1\n    replicas: 9\n")
    with pytest.raises(ConfigError) as info:
        check_policy(config, Policy())
    assert info.value.field == "services[1].replicas"


# --- effective resources ----------------------------------------------------------------------------


def test_effective_resources_merge_defaults() -> None:
    service = ServiceConfig(name="a", image="i", port=1, requests={"cpu": "100m"}, limits={"memory": "1Gi"})
    result = effective_resources(service, Policy())
    assert result == {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": "500m", "memory": "1Gi"}}


def test_effective_request_above_default_limit_lifts_the_limit() -> None:
    service = ServiceConfig(name="a", image="i", port=1, requests={"memory": "1Gi"})
    result = effective_resources(service, Policy())
    assert result["limits"]["memory"] == "1Gi"


def test_effective_limit_below_default_request_lowers_the_request() -> None:
    service = ServiceConfig(name="a", image="i", port=1, limits={"cpu": "10m"})
    result = effective_resources(service, Policy())
    assert result["requests"]["cpu"] == "10m" and result["limits"]["cpu"] == "10m"


def test_effective_resources_do_not_mutate_policy() -> None:
    policy = Policy()
    before = (dict(policy.default_requests), dict(policy.default_limits))
    effective_resources(ServiceConfig(name="a", image="i", port=1, requests={"memory": "1Gi"}), policy)
    assert (dict(policy.default_requests), dict(policy.default_limits)) == before


# -- wait_for / wait_timeout -----------------------------------------------------------------------------

def test_wait_for_top_level_and_per_service() -> None:
    text = """
wait_for: [build-images, "ci/lint"]
wait_timeout: 90m
services:
  - name: a
    image: registry.example.com/acme/a:{sha}
    port: 8080
  - name: b
    image: registry.example.com/acme/b:{sha}
    port: 8080
    wait_for: [build-b]
  - name: c
    image: registry.example.com/acme/c:latest
    port: 8080
    wait_for: []
"""
    config = parse_repo_config(text)
    assert config.wait_for == ("build-images", "ci/lint") and config.wait_timeout_minutes == 90
    assert config.checks_for() == ("build-b", "build-images", "ci/lint")
    assert config.checks_for(["a"]) == ("build-images", "ci/lint")
    assert config.checks_for(["b"]) == ("build-b",)       # its own list replaces the top-level one
    assert config.checks_for(["c"]) == ()                 # an empty list: deploy at once
    assert config.waits_for("build-b") and not config.waits_for("unit-tests")


def test_wait_for_defaults() -> None:
    config = parse_repo_config(MINIMAL)
    assert config.wait_for == () and config.wait_timeout_minutes == 60 and config.checks_for() == ()
    assert parse_repo_config("wait_timeout: 2h\n" + MINIMAL).wait_timeout_minutes == 120
    assert parse_repo_config("wait_timeout: 15\n" + MINIMAL).wait_timeout_minutes == 15


@pytest.mark.parametrize(("yaml_text", "field", "reason"), [
    ("wait_for: build-images\n", "wait_for", "must be a list of check names, got a string"),
    ("wait_for: [build, build]\n", "wait_for[1]", "duplicate check name 'build'"),
    ("wait_for: ['']\n", "wait_for[0]", "must be a non-empty check name"),
    ("wait_for: [{a: 1}]\n", "wait_for[0]", "must be a check name (a string), got a mapping"),
    ("wait_for: [true]\n", "wait_for[0]", "must be a check name (a string), got a boolean"),
    (f"wait_for: [{'x' * 256}]\n", "wait_for[0]", "must be at most 255 characters"),
    ('wait_for: ["a\\tb"]\n', "wait_for[0]", "must not contain control characters"),
    ("wait_timeout: 0\n", "wait_timeout", "must be whole minutes from 1 to 1440"),
    ("wait_timeout: 25h\n", "wait_timeout", "must be whole minutes from 1 to 1440"),
    ("wait_timeout: soon\n", "wait_timeout", "must be whole minutes from 1 to 1440"),
    ("wait_timeout: 1.5\n", "wait_timeout", "must be whole minutes from 1 to 1440"),
    ("wait_timeout: true\n", "wait_timeout", "must be whole minutes from 1 to 1440"),
])
def test_wait_for_errors_name_the_field(yaml_text: str, field: str, reason: str) -> None:
    error = config_error(yaml_text + MINIMAL)
    assert error.field == field
    assert reason in error.reason
    assert str(error).startswith(f"{CONFIG_PATH}: {field}: ")


def test_service_wait_for_errors_name_the_service() -> None:
    error = config_error(one_service("wait_for: [ok, 3.5]"))
    assert (error.field, error.reason) == ("services[0].wait_for[1]", "must be a check name (a string), got a number")
    assert config_error(one_service("wait_for: nope")).field == "services[0].wait_for"


SHA_TAG = "{sha}"


@pytest.mark.parametrize("image", [
    "nginx", "nginx:1.27", "library/nginx:1.27-alpine", "docker.io/library/nginx:latest", "acme/api:{sha}",
    "localhost/api:{sha}", "localhost:5000/x", "localhost:5000",  # docker.io/library/localhost, tag 5000
    "registry.example.com:5000/acme/api:{sha}", "127.0.0.1:5000/a/b/c:{short_sha}-pr{number}",
    "[::1]:5000/acme/api:{sha}", "[fe80::1]/acme/api", "ghcr.io/acme/team/sub/api:{sha}",
    "Registry.Example.COM/acme/api:v1",  # a registry is a host name: any case
    "a.b/c__d/e--f/g.h/i_j:T_1.x-y", "ghcr.io/acme/api@sha256:" + "a" * 64,
    "ghcr.io/acme/api:{sha}@sha256:" + "0123456789abcdef" * 4, "ghcr.io/acme/api@sha512:" + "f" * 128,
    "ghcr.io/acme/api:" + "x" * 63 + "-" + SHA_TAG,  # 128 characters with a 64-digit SHA
    "ghcr.io/acme/" + "a" * 250,
])
def test_valid_image_references(image: str) -> None:
    assert image_problem(image) is None
    assert parse_repo_config(one_service("", image=image)).services[0].image == image


@pytest.mark.parametrize(("image", "reason"), [
    ("Ghcr.io/Acme/API:{sha}", "repository path 'Acme/API' must be lowercase"),
    ("ghcr.io/acme/API", "repository path 'acme/API' must be lowercase"),
    ("NGINX:1", "repository path 'NGINX' must be lowercase"),
    ("ghcr.io/acme/api::{sha}", "tag ':{sha}' must be letters, digits, '_', '.' and '-', not starting with"),
    ("ghcr.io/acme/api:-{sha}", "tag '-{sha}' must be"),
    ("ghcr.io/acme/api:.v1", "tag '.v1' must be"),
    ("ghcr.io/acme/api:", "tag '' must be"),
    ("ghcr.io/acme/api:v1+build", "tag 'v1+build' must be"),
    ("ghcr.io/acme/api:" + "x" * 64 + "-" + SHA_TAG, "can be 129 characters long; at most 128"),
    ("ghcr.io/acme/api:" + "x" * 129, "can be 129 characters long; at most 128"),
    ("ghcr.io/acme/api:{sha}@sha256:zz", "digest 'sha256:zz' must be sha256: and 64 lowercase hex digits"),
    ("ghcr.io/acme/api@sha256:" + "a" * 32, "digest 'sha256:aaaa"),  # the grammar's 32, not go-digest's 64
    ("ghcr.io/acme/api@sha256:" + "A" * 64, "must be sha256: and 64 lowercase hex digits"),
    ("ghcr.io/acme/api@md5:" + "a" * 32, "must be sha256: and 64 lowercase hex digits"),
    ("ghcr.io/acme/api:v1@", "digest '' must be"),
    ("ghcr.io:/acme/api", "registry 'ghcr.io:' must be a host name or [IPv6 address], with an optional :port"),
    ("ghcr..io/acme/api", "registry 'ghcr..io' must be"),
    ("-ghcr.io/acme/api", "registry '-ghcr.io' must be"),
    ("[::1/acme/api", "registry '[::1' must be"),
    ("acme//api", "path component '' must be lowercase letters and digits joined by '.', '_' or '-'"),
    ("acme/-api", "path component '-api' must be"),
    ("acme/api-", "path component 'api-' must be"),
    ("acme/a..b:{sha}", "path component 'a..b' must be"),
    ("acme/a___b", "path component 'a___b' must be"),
    ("registry.example.com/acme/\u00e4pi", "path component '\u00e4pi' must be"),
    ("a" * 64, "64 hex digits are an image ID, not a name"),
    ("ghcr.io/acme/" + "a" * 251, "the repository path can be 256 characters long; at most 255"),
])
def test_invalid_image_references_are_config_errors_naming_what_is_wrong(image: str, reason: str) -> None:
    err = config_error(one_service("", image=image))
    assert err.field == "services[0].image"
    assert err.reason.startswith("is not an image reference the kubelet can pull: ")
    assert reason in err.reason
    assert "\n" not in str(err) and len(str(err)) < 300


@pytest.mark.parametrize(("paths", "changed", "affected"), [
    (["services/a/**"], ["services/a/main.go"], True),
    (["services/a/"], ["services/a/cmd/main.go"], True),  # a folder: everything under it (fnmatch: never)
    (["services/a"], ["services/a/main.go"], True),
    (["services/a/"], ["services/ab/main.go"], False),
    (["**/*.go"], ["main.go"], True),  # `**/` is zero or more folders (fnmatch needed a `/`)
    (["*.go"], ["cmd/tool/main.go"], True),  # no slash: at any depth, as in .gitignore
    (["services/*/main.go"], ["services/a/b/main.go"], False),  # `*` stays within one folder
    (["services/", "!services/docs/"], ["services/docs/readme.md"], False),  # a later `!` takes files out
    (["services/", "!services/docs/"], ["services/docs/readme.md", "services/a/x.py"], True),
])
def test_paths_are_gitignore_patterns(paths: list[str], changed: list[str], affected: bool) -> None:
    config = parse_repo_config(f"services:\n  - name: a\n    image: r.example.com/a:{{sha}}\n    port: 80\n"
                               f"    paths: {paths!r}\n")
    assert config.services[0].affected_by(changed) is affected


@pytest.mark.parametrize(("pattern", "says"), [
    ("services/{a,b}/**", "uses braces, which .gitignore patterns do not expand"),
    ("  ", "must be a non-empty string"),
    ("services/a\\", "is not a .gitignore pattern"),  # a trailing backslash escapes nothing
    ("#services/a/", "a comment in .gitignore syntax"),
])
def test_paths_that_would_match_nothing_meant_are_config_errors(pattern: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_repo_config(f"services:\n  - name: a\n    image: r.example.com/a:{{sha}}\n    port: 80\n"
                          f"    paths: {json.dumps(['ok/', pattern])}\n")  # JSON is YAML: the exact string
    assert caught.value.field == "services[0].paths[1]"
    assert says in caught.value.reason


@pytest.mark.parametrize(("host", "full"), [("a.shop", "a.shop.svc.cluster.local"),
                                            ("a.shop.svc", "a.shop.svc.cluster.local")])
def test_a_kubernetes_short_name_is_not_a_mesh_host(host: str, full: str) -> None:
    """Istio reads a VirtualService host as written and expands only a name without dots: routes for
    `a.shop` never apply to the Service a.shop.svc.cluster.local (seen on istiod + Envoy: the preview said
    ready, its requests reached the real service)."""
    with pytest.raises(ConfigError) as raised:
        parse_repo_config(one_service(f"host: {host}"))
    assert str(raised.value) == (f".github/preview.yml: services[0].host: {host!r} is a Kubernetes short name, "
                                 "which Istio reads as written (it expands only a name without dots): write the "
                                 f"full name, e.g. {full}")


@pytest.mark.parametrize("host", ["a.shop.svc.cluster.local", "a.shop.svc.corp.example", "api.payments.internal",
                                  "api.stripe.com"])
def test_full_names_and_service_entry_hosts_are_mesh_hosts(host: str) -> None:
    assert parse_repo_config(one_service(f"host: {host}")).services[0].host == host


TWO_SERVICES = """
services:
  - name: a
    image: registry.example.com/acme/a:{{sha}}
    port: 8080
    {a}
  - name: b
    image: registry.example.com/acme/b:{{sha}}
    port: 9090
    {b}
"""


@pytest.mark.parametrize(("a", "b", "field", "host"), [
    ("host: x.shop.svc.cluster.local", "host: X.shop.svc.cluster.local", "services[1].host",
     "x.shop.svc.cluster.local"),
    ("host: b.shop.svc.cluster.local", "", "services[1].name", "b.shop.svc.cluster.local"),  # b's default host
    ("", "host: a.shop.svc.cluster.local", "services[1].host", "a.shop.svc.cluster.local"),
])
def test_two_services_never_share_a_mesh_host(a: str, b: str, field: str, host: str) -> None:
    """A preview's route for a host has one destination: the second service's would replace the first's
    (the PR said ready for both, one was unreachable through the mesh)."""
    config = parse_repo_config(TWO_SERVICES.format(a=a, b=b))
    with pytest.raises(ConfigError) as raised:
        check_hosts(config, "shop")
    assert str(raised.value) == (f".github/preview.yml: {field}: {host} is already the host of services[0]: "
                                 "each service needs its own host")


def test_services_on_their_own_hosts_pass() -> None:
    check_hosts(parse_repo_config(TWO_SERVICES.format(a="", b="")), "shop")
    check_hosts(parse_repo_config(TWO_SERVICES.format(a="host: b.other.svc.cluster.local", b="")), "shop")


@pytest.mark.parametrize("paths", [["!docs/"], ["!docs/", "!*.md"], ["!docs/", "services/a/"]])
def test_a_negation_before_any_pattern_is_refused(paths: list[str]) -> None:
    """.gitignore: `!p` only takes files back out of what earlier patterns matched; first, it excludes
    from nothing, and a list of negations alone matched no change at all (the service never deployed)."""
    with pytest.raises(ConfigError) as raised:
        parse_repo_config(one_service(f"paths: {json.dumps(paths)}"))
    assert str(raised.value).startswith(".github/preview.yml: services[0].paths[0]: '!docs/' excludes from what "
                                        "the patterns before it match, and none does")


def test_negations_after_a_pattern_exclude() -> None:
    service = parse_repo_config(one_service('paths: ["services/a/", "!services/a/docs/"]')).services[0]
    assert service.affected_by(["services/a/main.go"]) and not service.affected_by(["services/a/docs/x.md"])


@pytest.mark.parametrize(("text", "declared"), [
    ("trigger: label\nlabel: deploy-me\nservices: 3\n", ("label", "deploy-me")),
    ("services: []\n", ("auto", "preview")),
    ("trigger: command\nwait_timeout: forever\n", ("command", "preview")),
    ("trigger: labels\n", None),
    ("trigger: label\nlabel: ''\n", None),
    ("trigger: label\nservices: [\n", None),
    ("- trigger: label\n", None),
])
def test_a_broken_config_still_declares_its_trigger(text: str, declared: tuple[str, str] | None) -> None:
    assert declared_trigger(text) == declared
