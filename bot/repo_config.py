"""`.github/preview.yml` -> typed, validated config (pure).

Every error names the file, the field and the reason. The config is read from the repository's
default branch, so a pull request cannot rewrite its own policy; the bot's settings (Policy) cap
what any config may ask for.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import pathspec
import yaml

from bot import dns, images
from bot.errors import ConfigError
from bot.settings import Policy, parse_quantity

CONFIG_PATH = ".github/preview.yml"
Trigger = Literal["auto", "label", "command"]

# `\Z`, not `$`: Python's `$` also matches before a final line break, which would pass a value ending in one.
_SERVICE_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,38}[a-z0-9])?\Z")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*\Z")
_HOST = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)+\Z")
_IMAGE_PLACEHOLDERS = frozenset({"sha", "short_sha", "number"})
_TOP_KEYS = frozenset({"services", "trigger", "label", "wait_for", "wait_timeout"})
_SERVICE_KEYS = frozenset({"name", "image", "port", "protocol", "host", "env", "replicas", "resources", "paths",
                           "command", "args", "wait_for"})
DEFAULT_WAIT_TIMEOUT_MINUTES = 60
MAX_WAIT_TIMEOUT_MINUTES = 24 * 60
# GitHub caps a check run's name and a status context at 255 characters; control characters never appear.
_CHECK_NAME_MAX = 255
_DURATION = re.compile(r"^([0-9]+)\s*(m|min|h)\Z")
# Istio's explicit protocol selection (istio.io docs: ops/configuration/traffic-management/protocol-selection):
# the port name prefix or `appProtocol`. Previews are routed by a request header, so only the protocols whose
# requests Envoy parses as HTTP can be chosen; each other protocol Istio knows is refused with the reason.
ROUTABLE_PROTOCOLS = ("http", "http2", "grpc", "grpc-web")
_UNROUTABLE_PROTOCOLS = {
    "https": "TLS the sidecar does not decrypt",
    "tls": "TLS the sidecar does not decrypt",
    "tcp": "opaque TCP",
    "mongo": "opaque TCP to Envoy's routes",
    "mysql": "opaque TCP to Envoy's routes",
    "redis": "opaque TCP to Envoy's routes",
    "udp": "not proxied by Istio",
}
_RESOURCE_KEYS = frozenset({"cpu", "memory", "ephemeral-storage"})
# The longest values the placeholders take: a SHA-256 commit's 64 hex digits, a 10-digit pull request number.
_IMAGE_SAMPLES = {"sha": "0123456789abcdef" * 4, "short_sha": "0123456", "number": 2**31 - 1}


@dataclass(frozen=True)
class ServiceConfig:
    name: str
    image: str
    port: int
    host: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    protocol: str = "http"  # one of ROUTABLE_PROTOCOLS: the port name and appProtocol
    replicas: int = 1
    requests: Mapping[str, str] = field(default_factory=dict)
    limits: Mapping[str, str] = field(default_factory=dict)
    paths: tuple[str, ...] = ()
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    wait_for: tuple[str, ...] | None = None  # None: the config's top-level `wait_for`

    def mesh_host(self, namespace: str) -> str:
        return self.host or f"{self.name}.{namespace}.svc.cluster.local"

    def image_for(self, *, sha: str, number: int) -> str:
        return self.image.format(sha=sha, short_sha=sha[:7], number=number)

    def affected_by(self, changed_files: Sequence[str]) -> bool:
        """Whether a change of these repository paths concerns the service: `paths` are read as .gitignore
        patterns are (git-scm.com/docs/gitignore, via pathspec): `services/a/` or `services/a` is everything
        under it, `*.go` a Go file at any depth, `**` any number of folders, a later `!pattern` takes
        files back out. No `paths` means every change affects the service."""
        if not self.paths:
            return True
        spec = _path_spec(self.paths)
        return any(spec.match_file(path) for path in changed_files)


@dataclass(frozen=True)
class RepoConfig:
    services: tuple[ServiceConfig, ...]
    trigger: Trigger = "auto"
    label: str = "preview"
    wait_for: tuple[str, ...] = ()
    wait_timeout_minutes: int = DEFAULT_WAIT_TIMEOUT_MINUTES

    def service(self, name: str) -> ServiceConfig | None:
        return next((s for s in self.services if s.name == name), None)

    def checks_for(self, names: Sequence[str] | None = None) -> tuple[str, ...]:
        """The check names that must succeed before these services (default: all) deploy, sorted.

        A service's own `wait_for` replaces the top-level list (it waits only for its image's job)."""
        services = self.services if names is None else [s for s in self.services if s.name in names]
        wanted: set[str] = set()
        for service in services:
            wanted.update(self.wait_for if service.wait_for is None else service.wait_for)
        return tuple(sorted(wanted))

    def waits_for(self, check_name: str) -> bool:
        """True when some service waits for the check run or status context `check_name`."""
        return check_name in self.checks_for()


class _Reader:
    """Walks the YAML tree, turning every surprise into a ConfigError naming the field."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, field_path: str, reason: str) -> ConfigError:
        return ConfigError(self.source, field_path, reason)

    def mapping(self, value: Any, where: str, allowed: frozenset[str]) -> Mapping[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(where, f"must be a mapping, got {_kind(value)}")
        unknown = sorted(str(k) for k in value if k not in allowed)
        if unknown:
            raise self.fail(f"{where}.{unknown[0]}" if where else unknown[0],
                            f"unknown field (allowed: {', '.join(sorted(allowed))})")
        return value

    def string(self, value: Any, where: str) -> str:
        if not isinstance(value, str) or not value.strip():
            got = "an empty string" if isinstance(value, str) else _kind(value)
            raise self.fail(where, f"must be a non-empty string, got {got}")
        return value.strip()

    def integer(self, value: Any, where: str, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.fail(where, f"must be a whole number from {low} to {high}, got {_shown(value)}")
        return value

    def string_list(self, value: Any, where: str) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise self.fail(where, f"must be a list of strings, got {_kind(value)}")
        return tuple(self.string(item, f"{where}[{i}]") for i, item in enumerate(value))


@functools.lru_cache(maxsize=256)
def _path_spec(patterns: tuple[str, ...]) -> pathspec.GitIgnoreSpec:
    return pathspec.GitIgnoreSpec.from_lines(patterns)


def _kubernetes_short_form(host: str) -> str | None:
    """Why `a.shop` or `a.shop.svc` cannot be a service's mesh host, or None. Kubernetes DNS resolves
    them, but Istio reads a VirtualService host as written and expands only a name without dots
    (istio.io, VirtualService `hosts`; bot.mesh_hosts): routes for `a.shop` are never used for the
    Service a.shop.svc.cluster.local, and the preview would say ready while its requests reach the real
    service. A ServiceEntry host with two labels is refused with them: write it as Istio knows it."""
    labels = host.split(".")
    if labels[-1] == "svc" and len(labels) == 3:
        full = f"{host}.cluster.local"
    elif len(labels) == 2:
        full = f"{host}.svc.cluster.local"
    else:
        return None
    return (f"{_shown(host)} is a Kubernetes short name, which Istio reads as written (it expands only a name "
            f"without dots): write the full name, e.g. {full}")


def _path_pattern_problem(pattern: str) -> str | None:
    """Why a `paths` entry would match nothing a user meant, or None. Brace lists (`{a,b}`) are not
    .gitignore syntax: they would be matched as written, so never."""
    if not pattern.strip():
        return "is empty"
    if pattern.startswith("#"):
        return "starts with `#`, a comment in .gitignore syntax; write `\\#` for a file name starting with #"
    if re.search(r"{[^{}]*,[^{}]*}", pattern):
        return "uses braces, which .gitignore patterns do not expand: list each path on its own"
    try:
        pathspec.GitIgnoreSpec.from_lines([pattern])
    except (ValueError, re.error) as exc:  # GitWildMatchPatternError is a ValueError
        return f"is not a .gitignore pattern: {exc}"
    return None


def _shown(value: Any, limit: int = 60) -> str:
    """`value` as a message quotes it, cut at `limit` characters: a message never grows with the input."""
    text = repr(value) if not isinstance(value, (list, dict)) else f"{_kind(value)} of {len(value)}"
    return text if len(text) <= limit else text[:limit] + "..."


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", dt.date: "a date", dt.datetime: "a timestamp", bytes: "binary data",
            set: "a set"}.get(type(value), type(value).__name__)


MAX_YAML_VALUES = 10_000  # a real config has a few hundred; an alias counts once for every use
MAX_YAML_DEPTH = 20  # the schema nests 5 deep


def _load_yaml(text: str, source: str) -> Any:
    """safe_load, bounded: PyYAML expands no alias while composing, so the node graph is checked before
    anything is built from it. A few hundred bytes of nested aliases ("billion laughs") would otherwise
    stand for billions of values, and deep nesting exhausts Python's recursion; both raise ConfigError."""
    loader = yaml.SafeLoader(text)
    try:
        try:
            root = loader.get_single_node()
        except RecursionError:
            raise ConfigError(source, "", f"invalid YAML: nested more than {MAX_YAML_DEPTH} levels deep") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or "not valid YAML"
            raise ConfigError(source, where, f"invalid YAML: {problem}") from None
        if root is None:
            return None
        _check_size(root, source)
        return loader.construct_document(root)
    finally:
        loader.dispose()


def _check_size(root: yaml.Node, source: str) -> None:
    """Walk the node graph as the built value would be walked (an alias once per use): at most
    MAX_YAML_VALUES nodes, MAX_YAML_DEPTH levels, no key twice in one mapping. Stops at the first bound,
    so it is bounded itself."""
    stack: list[tuple[yaml.Node, int]] = [(root, 1)]
    count = 0
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_YAML_VALUES:
            raise ConfigError(source, "", f"more than {MAX_YAML_VALUES:,} values once its aliases are expanded; "
                              "write the values out")
        if depth > MAX_YAML_DEPTH:
            raise ConfigError(source, f"line {node.start_mark.line + 1}",
                              f"nested more than {MAX_YAML_DEPTH} levels deep")
        if isinstance(node, yaml.SequenceNode):
            stack.extend((child, depth + 1) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value != "<<":
                    if key.value in seen:  # PyYAML keeps the last silently; which one was meant?
                        raise ConfigError(source, f"line {key.start_mark.line + 1}",
                                          f"duplicate key {_shown(key.value)}")
                    seen.add(key.value)
                stack.append((key, depth + 1))
                stack.append((value, depth + 1))


def parse_repo_config(text: str, source: str = CONFIG_PATH) -> RepoConfig:
    """Parse and validate the YAML text; raises ConfigError."""
    reader = _Reader(source)
    data = _load_yaml(text, source)
    top = reader.mapping(data, "", _TOP_KEYS)
    trigger = top.get("trigger", "auto")
    if trigger not in ("auto", "label", "command"):
        raise reader.fail("trigger", f"must be auto, label or command, got {_shown(trigger)}")
    label = reader.string(top.get("label", "preview"), "label")
    raw_services = top.get("services")
    if not isinstance(raw_services, list) or not raw_services:
        raise reader.fail("services", "must be a non-empty list of services")
    services = tuple(_parse_service(reader, item, f"services[{i}]") for i, item in enumerate(raw_services))
    seen: set[str] = set()
    for i, service in enumerate(services):
        if service.name in seen:
            raise reader.fail(f"services[{i}].name", f"duplicate service name {_shown(service.name)}")
        seen.add(service.name)
    wait_for = _parse_check_names(reader, top["wait_for"], "wait_for") if top.get("wait_for") is not None else ()
    wait_timeout = _parse_minutes(reader, top.get("wait_timeout", DEFAULT_WAIT_TIMEOUT_MINUTES), "wait_timeout")
    return RepoConfig(services=services, trigger=trigger, label=label, wait_for=wait_for,
                      wait_timeout_minutes=wait_timeout)


def _parse_check_names(reader: _Reader, raw: Any, where: str) -> tuple[str, ...]:
    """A list of check-run names or commit-status contexts (GitHub: at most 255 characters each)."""
    if not isinstance(raw, list):
        raise reader.fail(where, f"must be a list of check names, got {_kind(raw)}")
    names: list[str] = []
    for i, item in enumerate(raw):
        if isinstance(item, bool) or not isinstance(item, str | int):
            raise reader.fail(f"{where}[{i}]", f"must be a check name (a string), got {_kind(item)}")
        name = str(item).strip()
        if not name:
            raise reader.fail(f"{where}[{i}]", "must be a non-empty check name")
        if len(name) > _CHECK_NAME_MAX:
            raise reader.fail(f"{where}[{i}]", f"must be at most {_CHECK_NAME_MAX} characters")
        if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
            raise reader.fail(f"{where}[{i}]", "must not contain control characters")
        if name in names:
            raise reader.fail(f"{where}[{i}]", f"duplicate check name {_shown(name)}")
        names.append(name)
    return tuple(names)


def _parse_minutes(reader: _Reader, raw: Any, where: str) -> int:
    """Whole minutes: `90`, `90m` or `2h`; from 1 minute to 24 hours."""
    minutes: int | None = None
    if isinstance(raw, int) and not isinstance(raw, bool):
        minutes = raw
    elif isinstance(raw, str) and (match := _DURATION.match(raw.strip())):
        minutes = int(match.group(1)) * (60 if match.group(2) == "h" else 1)
    if minutes is None or not 1 <= minutes <= MAX_WAIT_TIMEOUT_MINUTES:
        raise reader.fail(where, f"must be whole minutes from 1 to {MAX_WAIT_TIMEOUT_MINUTES} "
                                 f"(e.g. 60, 90m or 2h), got {_shown(raw)}")
    return minutes


def _parse_service(reader: _Reader, raw: Any, where: str) -> ServiceConfig:
    item = reader.mapping(raw, where, _SERVICE_KEYS)
    for required in ("name", "image", "port"):
        if required not in item:
            raise reader.fail(f"{where}.{required}", "is required")
    name = reader.string(item["name"], f"{where}.name")
    if not _SERVICE_NAME.match(name):
        raise reader.fail(f"{where}.name", f"must be lowercase letters, digits and '-', start with a letter, "
                          f"at most 40 characters, got {_shown(name)}")
    image = reader.string(item["image"], f"{where}.image")
    placeholders = set(re.findall(r"{([^{}]*)}", image))
    if placeholders - _IMAGE_PLACEHOLDERS:
        raise reader.fail(f"{where}.image", f"unknown placeholder(s) {sorted(placeholders - _IMAGE_PLACEHOLDERS)}; "
                          f"allowed: {{sha}}, {{short_sha}}, {{number}}")
    if any(ch.isspace() for ch in image):
        raise reader.fail(f"{where}.image", "must not contain white space")
    try:
        problem = image_problem(image)
    except (ValueError, IndexError, KeyError):
        raise reader.fail(f"{where}.image", "has unbalanced braces; placeholders look like {sha}") from None
    if problem:
        raise reader.fail(f"{where}.image", f"is not an image reference the kubelet can pull: {problem}")
    port = reader.integer(item["port"], f"{where}.port", 1, 65535)
    protocol = _parse_protocol(reader, item.get("protocol", "http"), f"{where}.protocol")
    host = None
    if item.get("host") is not None:
        host = reader.string(item["host"], f"{where}.host").lower()
        if not _HOST.match(host) or len(host) > 253:
            raise reader.fail(f"{where}.host",
                              f"must be a DNS name like a.default.svc.cluster.local, got {_shown(host)}")
        short = _kubernetes_short_form(host)
        if short:
            raise reader.fail(f"{where}.host", short)
        problem = dns.name_problem(host)
        if problem:
            raise reader.fail(f"{where}.host", f"{_shown(host)} {problem}")
    env: dict[str, str] = {}
    if item.get("env") is not None:
        raw_env = item["env"]
        if not isinstance(raw_env, dict):
            raise reader.fail(f"{where}.env", f"must be a mapping of NAME: value, got {_kind(raw_env)}")
        for key, value in raw_env.items():
            if not isinstance(key, str) or not _ENV_NAME.match(key):
                raise reader.fail(f"{where}.env", f"invalid variable name {_shown(key)}")
            # A number, true/false or a date is passed as its text (`8080`, `true`, `2024-06-01`); a timestamp,
            # !!binary or !!set would come out as Python's text of it, not the config's.
            if isinstance(value, dt.datetime) or not isinstance(value, str | int | float | dt.date):
                raise reader.fail(f"{where}.env.{key}", f"must be a string or number, got {_kind(value)}")
            env[key] = str(value).lower() if isinstance(value, bool) else str(value)
    replicas = reader.integer(item.get("replicas", 1), f"{where}.replicas", 1, 1000)
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if item.get("resources") is not None:
        resources = reader.mapping(item["resources"], f"{where}.resources", frozenset({"requests", "limits"}))
        requests = _parse_resources(reader, resources.get("requests"), f"{where}.resources.requests")
        limits = _parse_resources(reader, resources.get("limits"), f"{where}.resources.limits")
    paths = reader.string_list(item["paths"], f"{where}.paths") if item.get("paths") is not None else ()
    for i, pattern in enumerate(paths):
        problem = _path_pattern_problem(pattern)
        if problem:
            raise reader.fail(f"{where}.paths[{i}]", f"{_shown(pattern)} {problem}")
        if pattern.startswith("!") and all(earlier.startswith("!") for earlier in paths[:i]):
            # .gitignore: a negation only takes files back out of what the patterns before it matched.
            raise reader.fail(f"{where}.paths[{i}]", f"{_shown(pattern)} excludes from what the patterns before "
                              "it match, and none does: list what the service is made of first, e.g. "
                              "`services/a/`, then the exceptions")
    command = reader.string_list(item["command"], f"{where}.command") if item.get("command") is not None else ()
    args = reader.string_list(item["args"], f"{where}.args") if item.get("args") is not None else ()
    wait_for = _parse_check_names(reader, item["wait_for"], f"{where}.wait_for") \
        if item.get("wait_for") is not None else None
    return ServiceConfig(name=name, image=image, port=port, protocol=protocol, host=host, env=env, replicas=replicas,
                         requests=requests, limits=limits, paths=paths, command=command, args=args,
                         wait_for=wait_for)


def image_problem(image: str) -> str | None:
    """What in `image` (placeholders allowed) the kubelet's image reference parser refuses, or None.

    The placeholders are filled in with the longest values they take (_IMAGE_SAMPLES), so a tag that fits
    for one commit fits for all; the message quotes the config's own text. Raises ValueError, IndexError or
    KeyError when the braces do not format. The grammar: images.REFERENCE."""
    filled = image.format(**_IMAGE_SAMPLES)
    match = images.REFERENCE.fullmatch(filled)
    if match:
        if re.fullmatch(r"[a-f0-9]{64}", filled):
            return "64 hex digits are an image ID, not a name"
        registry, path = images.parts(match["name"])[:2]
        if registry == "docker.io" and "/" not in path:
            path = f"library/{path}"  # `nginx` is docker.io/library/nginx
        if len(path) > images.PATH_MAX:
            return f"the repository path can be {len(path)} characters long; at most {images.PATH_MAX}"
        return None
    # Placeholders hold no `/`, `:` or `@`, so the config's text splits into the same parts as the filled one.
    registry, path, tag, digest = images.parts(filled)
    shown_registry, shown_path, shown_tag, shown_digest = images.parts(image)
    if digest is not None and not re.fullmatch(images.DIGEST, digest):
        return f"digest {_shown(shown_digest)} must be sha256: and 64 lowercase hex digits (or sha384: 96, sha512: 128)"
    if tag is not None and not re.fullmatch(images.TAG, tag):
        if len(tag) > 128 and re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", tag):
            return f"tag {_shown(shown_tag)} can be {len(tag)} characters long; at most 128"
        return f"tag {_shown(shown_tag)} must be letters, digits, '_', '.' and '-', not starting with '.' or '-'"
    if not re.fullmatch(images.REGISTRY, registry):
        return f"registry {_shown(shown_registry)} must be a host name or [IPv6 address], with an optional :port"
    if path != path.lower():
        return f"repository path {_shown(shown_path)} must be lowercase"
    for component, shown in zip(path.split("/"), shown_path.split("/"), strict=True):
        if not re.fullmatch(images.COMPONENT, component):
            return f"path component {_shown(shown)} must be lowercase letters and digits joined by '.', '_' or '-'"
    return "it must look like registry.example.com/team/app:tag"


def _parse_protocol(reader: _Reader, raw: Any, where: str) -> str:
    allowed = ", ".join(ROUTABLE_PROTOCOLS)
    if not isinstance(raw, str):
        raise reader.fail(where, f"must be one of {allowed}, got {_kind(raw)}")
    protocol = raw.strip().lower()
    if protocol in ROUTABLE_PROTOCOLS:
        return protocol
    if protocol in _UNROUTABLE_PROTOCOLS:
        raise reader.fail(where, f"{protocol} cannot be routed by a request header "
                          f"({_UNROUTABLE_PROTOCOLS[protocol]}); use one of {allowed}")
    raise reader.fail(where, f"must be one of {allowed}, got {_shown(raw)}")


def _parse_resources(reader: _Reader, raw: Any, where: str) -> dict[str, str]:
    if raw is None:
        return {}
    values = reader.mapping(raw, where, _RESOURCE_KEYS)
    result: dict[str, str] = {}
    for name, value in values.items():
        text = str(value)
        try:
            parse_quantity(text)
        except ValueError as exc:
            raise reader.fail(f"{where}.{name}", str(exc)) from None
        result[name] = text
    return result


def declared_trigger(text: str, source: str = CONFIG_PATH) -> tuple[Trigger, str] | None:
    """The `trigger` and `label` a config declares, read alone: with the rest of the file invalid, they
    still say whether a label event asked for a preview (so the error is reported on it, as on a push).
    None when the text is no YAML mapping or either of the two is invalid itself."""
    try:
        data = _load_yaml(text, source)
    except ConfigError:
        return None
    if not isinstance(data, dict):
        return None
    trigger, label = data.get("trigger", "auto"), data.get("label", "preview")
    if trigger not in ("auto", "label", "command") or not isinstance(label, str) or not label.strip():
        return None
    return trigger, label


def parse_for_cluster(text: str, policy: Policy, namespace: str, source: str = CONFIG_PATH) -> RepoConfig:
    """parse_repo_config, then what depends on the cluster's settings: the operator's policy
    (check_policy) and the services' mesh hosts in `namespace` (check_hosts). Raises ConfigError."""
    config = parse_repo_config(text, source)
    check_policy(config, policy, source)
    check_hosts(config, namespace, source)
    return config


# A preview's mesh route for a host has one destination: two services on one host would replace each other's.
_HOST_TAKEN = "{host} is already the host of services[{other}]: each service needs its own host"


def check_hosts(config: RepoConfig, namespace: str, source: str = CONFIG_PATH) -> None:
    """Refuse two services with one mesh host once the defaults are known (`namespace`: where the real
    services run, PREVIEW_NAMESPACE): a `host` written as another service's default
    `<name>.<namespace>.svc.cluster.local`. Raises ConfigError naming the later service's field."""
    hosts: dict[str, int] = {}
    for i, service in enumerate(config.services):
        host = service.mesh_host(namespace)
        if host in hosts:
            field = "host" if service.host is not None else "name"
            raise ConfigError(source, f"services[{i}].{field}", _HOST_TAKEN.format(host=host, other=hosts[host]))
        hosts[host] = i


def check_policy(config: RepoConfig, policy: Policy, source: str = CONFIG_PATH) -> None:
    """Refuse what the operator's policy forbids; raises ConfigError naming the field."""
    for i, service in enumerate(config.services):
        where = f"services[{i}]"
        prefixes = policy.allowed_image_prefixes
        if prefixes and not any(service.image.startswith(prefix) for prefix in prefixes):
            raise ConfigError(source, f"{where}.image",
                              f"image {_shown(service.image)} is not allowed; it must start with one of: "
                              f"{', '.join(prefixes)}")
        if service.replicas > policy.max_replicas:
            raise ConfigError(source, f"{where}.replicas",
                              f"{service.replicas} is above the maximum of {policy.max_replicas}")
        for kind, values in (("requests", service.requests), ("limits", service.limits)):
            for name, value in values.items():
                cap = policy.max_resources.get(name)
                if cap is not None and parse_quantity(value) > parse_quantity(cap):
                    raise ConfigError(source, f"{where}.resources.{kind}.{name}",
                                      f"{value} is above the maximum of {cap}")
        for name in service.requests.keys() & service.limits.keys():
            if parse_quantity(service.requests[name]) > parse_quantity(service.limits[name]):
                raise ConfigError(source, f"{where}.resources.requests.{name}",
                                  f"request {service.requests[name]} is above its limit {service.limits[name]}")


def effective_resources(service: ServiceConfig, policy: Policy) -> dict[str, dict[str, str]]:
    """Config values over the operator's defaults; a default limit never falls below the request."""
    requests = {**policy.default_requests, **service.requests}
    limits = {**policy.default_limits, **service.limits}
    for name, value in requests.items():
        if name in limits and name not in service.limits and parse_quantity(limits[name]) < parse_quantity(value):
            limits[name] = value
        elif name in limits and name not in service.requests and parse_quantity(limits[name]) < parse_quantity(value):
            requests[name] = limits[name]
    return {"requests": requests, "limits": limits}
