"""The objects of one preview, as plain dicts (pure).

Pod labels carry only the bot's labels: labelling preview pods like the real service's pods
(`app: a`) would let the real Service send production-like traffic to PR code.

`to_yaml` prints them as `render` does, for kubectl: a string is never left plain where a YAML reader
could take it for something else.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from bot import mesh_routes, naming, sessions
from bot.naming import PreviewKey
from bot.repo_config import RepoConfig, ServiceConfig, effective_resources
from bot.settings import ClusterSettings

VIRTUAL_SERVICE_API = "networking.istio.io/v1"
Manifest = dict[str, Any]


@dataclass(frozen=True)
class ServicePlan:
    """Everything needed to deploy one service of one preview."""

    service: ServiceConfig
    name: str
    image: str
    preview_host: str
    mesh_host: str
    destination: str
    workload: tuple[Manifest, ...]
    gateway_route: Manifest
    mesh_route: dict[str, Any]

    @property
    def url(self) -> str:
        return f"https://{self.preview_host}"


@dataclass(frozen=True)
class PreviewPlan:
    key: PreviewKey
    sha: str
    services: tuple[ServicePlan, ...]
    session_routes: tuple[Manifest, ...] = ()  # browser sessions (bot.sessions), when enabled

    def manifests(self) -> list[Manifest]:
        """The preview's own objects (not the shared mesh VirtualServices)."""
        return [m for s in self.services for m in (*s.workload, s.gateway_route)] + list(self.session_routes)


def _metadata(name: str, namespace: str, labels: dict[str, str], annotations: dict[str, str]) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "labels": labels, "annotations": annotations}


def deployment(settings: ClusterSettings, key: PreviewKey, service: ServiceConfig, *,
               name: str, image: str, annotations: dict[str, str]) -> Manifest:
    selector = {naming.KEY_LABEL: key.value, naming.SERVICE_LABEL: naming.dns_label(service.name)}
    container: dict[str, Any] = {
        "name": naming.dns_label(service.name),
        "image": image,
        "ports": [{"name": service.protocol, "containerPort": service.port, "protocol": "TCP"}],
        "env": [{"name": k, "value": v} for k, v in sorted(service.env.items())],
        "resources": effective_resources(service, settings.policy),
    }
    if service.command:
        container["command"] = list(service.command)
    if service.args:
        container["args"] = list(service.args)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(name, settings.namespace, key.labels(service.name), annotations),
        "spec": {
            "replicas": service.replicas,
            "revisionHistoryLimit": 2,
            "selector": {"matchLabels": selector},
            "template": {
                # Only the SHA restarts pods: a redeploy of the same commit changes nothing.
                "metadata": {"labels": {**key.labels(service.name), **selector},
                             "annotations": {naming.SHA_ANNOTATION: annotations[naming.SHA_ANNOTATION]}},
                "spec": {"containers": [container], "automountServiceAccountToken": False},
            },
        },
    }


def service_object(settings: ClusterSettings, key: PreviewKey, service: ServiceConfig, *,
                   name: str, annotations: dict[str, str]) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(name, settings.namespace, key.labels(service.name), annotations),
        "spec": {
            "selector": {naming.KEY_LABEL: key.value, naming.SERVICE_LABEL: naming.dns_label(service.name)},
            # The port name prefix and appProtocol tell Istio the protocol (appProtocol wins when both are set).
            "ports": [{"name": service.protocol, "port": service.port, "targetPort": service.port,
                       "protocol": "TCP", "appProtocol": service.protocol}],
        },
    }


def gateway_route(settings: ClusterSettings, key: PreviewKey, service: ServiceConfig, *,
                  host: str, destination: str, annotations: dict[str, str]) -> Manifest:
    return {
        "apiVersion": VIRTUAL_SERVICE_API,
        "kind": "VirtualService",
        "metadata": _metadata(naming.gateway_route_name(host), settings.routing_namespace,
                              key.labels(service.name, role=naming.ROLE_GATEWAY),
                              {**annotations, naming.HOST_ANNOTATION: host}),
        "spec": {
            "hosts": [host],
            "gateways": [settings.gateway],
            # The gateway's proxy may run in another namespace than its Gateway object and this
            # VirtualService; without exportTo the mesh's defaultVirtualServiceExportTo decides.
            "exportTo": ["*"],
            # The key is put on the request here, as PREVIEW_MATCH needs it (header, baggage or both), so
            # that every hop behind the gateway is routed to the preview; baggage takes two routes (with and
            # without the client's own baggage: mesh_routes.entry_headers).
            "http": [{
                "name": key.value,
                **({"match": [{"headers": extra}]} if extra else {}),
                "headers": {"request": request,
                            **({"response": response} if (response := sessions.response_headers(settings, key))
                               else {})},
                "route": [{"destination": {"host": destination, "port": {"number": service.port}}}],
            } for extra, request in mesh_routes.entry_headers(key.value, header_name=settings.header_name,
                                                                mode=settings.match_mode)],
        },
    }


def mesh_virtual_service(settings: ClusterSettings, mesh_host: str, spec: dict[str, Any]) -> Manifest:
    return {
        "apiVersion": VIRTUAL_SERVICE_API,
        "kind": "VirtualService",
        "metadata": {
            "name": naming.mesh_route_name(mesh_host),
            "namespace": settings.routing_namespace,
            "labels": {naming.MANAGED_BY_LABEL: naming.MANAGED_BY, naming.ROLE_LABEL: naming.ROLE_MESH},
            "annotations": {naming.HOST_ANNOTATION: mesh_host},
        },
        "spec": spec,
    }


def plan_preview(settings: ClusterSettings, config: RepoConfig, key: PreviewKey, sha: str, *,
                 only: Sequence[str] | None = None, pushed_at: str | None = None) -> PreviewPlan:
    """Compute the whole desired state of one preview; `only` limits it to some services."""
    annotations = {naming.REPO_ANNOTATION: key.repo, naming.SHA_ANNOTATION: sha}
    if pushed_at:
        annotations[naming.PUSHED_AT_ANNOTATION] = pushed_at
    plans = []
    for service in config.services:
        if only is not None and service.name not in only:
            continue
        name = key.object_name(service.name)
        image = service.image_for(sha=sha, number=key.number)
        host = naming.preview_host(settings, key, service.name)
        destination = naming.service_fqdn(name, settings.namespace)
        mesh_host = service.mesh_host(settings.namespace)
        plans.append(ServicePlan(
            service=service, name=name, image=image, preview_host=host, mesh_host=mesh_host,
            destination=destination,
            workload=(
                deployment(settings, key, service, name=name, image=image, annotations=annotations),
                service_object(settings, key, service, name=name, annotations=annotations),
            ),
            gateway_route=gateway_route(settings, key, service, host=host, destination=destination,
                                        annotations=annotations),
            mesh_route=mesh_routes.preview_route(key.value, destination=destination, port=service.port,
                                                 header_name=settings.header_name, mode=settings.match_mode),
        ))
    previews = {p.mesh_host: (p.destination, p.service.port) for p in plans}
    return PreviewPlan(key=key, sha=sha, services=tuple(plans),
                       session_routes=tuple(sessions.session_routes(settings, key, previews, annotations)))


def render(settings: ClusterSettings, config: RepoConfig, key: PreviewKey, sha: str) -> list[Manifest]:
    """All documents `apply` would produce for this preview alone, mesh routes included."""
    plan = plan_preview(settings, config, key, sha)
    documents = plan.manifests()
    for service in plan.services:
        spec = mesh_routes.with_route(mesh_routes.new_spec(service.mesh_host), service.mesh_host, service.mesh_route)
        documents.append(mesh_virtual_service(settings, service.mesh_host, spec))
    return documents


# PyYAML leaves a string plain when its own YAML 1.1 resolver reads it back as a string, but kubectl and the
# kube-apiserver read YAML with go-yaml v2 (sigs.k8s.io/yaml), whose resolve.go takes `y`/`Y`/`n`/`N` for booleans
# and, once every `_` is deleted, whatever Go's strconv.ParseInt (base 0) or ParseFloat accepts for a number:
# 1e3, 1.0e3, .5e3, +.5, -.5, 09, 0o17, 0X1F, 0B101, 0b+1, +_1. go-yaml v3 also reads 2001-1-2 as a timestamp,
# and YAML 1.2's core schema 1e400 as a float. A string any of them could read otherwise is single-quoted.
_YAML_WORDS = frozenset({"", "~", "null", "y", "n", "yes", "no", "true", "false", "on", "off"})
_YAML_NUMBER = re.compile(
    r"[-+]?(?:0b[-+]?[01]+|0o[-+]?[0-7]+|0x[0-9a-f]+|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:e[-+]?[0-9]+)?|\.inf|\.nan)",
    re.IGNORECASE)
_YAML_DATE = re.compile(r"[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}")  # a prefix: go-yaml tries time layouts from here


def _misread(text: str) -> bool:
    """True when go-yaml or YAML 1.2 could read the plain scalar `text` as something other than a string."""
    if text.lower() in _YAML_WORDS or _YAML_DATE.match(text):
        return True
    # go-yaml deletes the `_`s only of a scalar that starts with a digit or a sign.
    number = text.replace("_", "") if text[:1].isdigit() or text[:1] in ("+", "-") else text
    return _YAML_NUMBER.fullmatch(number) is not None


def _represent_str(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    if _misread(text):
        return dumper.represent_scalar("tag:yaml.org,2002:str", text, style="'")
    return dumper.represent_str(text)


class _Dumper(yaml.SafeDumper):
    """SafeDumper whose strings read back as strings in go-yaml v2 and v3 and in YAML 1.2 too."""


_Dumper.add_representer(str, _represent_str)


def to_yaml(documents: Sequence[Manifest]) -> str:
    """`documents` as one YAML stream (`---` between documents, keys in their order) that kubectl and the
    API server read back as the same values: strings such as `1e3`, `y`, `0o17` or `09` are quoted."""
    return yaml.dump_all(documents, Dumper=_Dumper, sort_keys=False)


def route_namespaces(items: Iterable[Mapping[str, Any]]) -> set[str]:
    """The namespaces the destinations of these VirtualServices' HTTP routes name (naming.destination_namespace)."""
    found: set[str] = set()
    for item in items:
        for http in (item.get("spec") or {}).get("http") or []:
            for route in http.get("route") or []:
                namespace = naming.destination_namespace(str((route.get("destination") or {}).get("host", "")))
                if namespace:
                    found.add(namespace)
    return found


def own_routes(items: Iterable[Mapping[str, Any]], settings: ClusterSettings) -> list[Mapping[str, Any]]:
    """Of the bot's per-preview VirtualServices listed in every namespace, this configuration's: those in
    PREVIEW_ROUTING_NAMESPACE, and those elsewhere that route to PREVIEW_NAMESPACE (left in an earlier
    routing namespace). One elsewhere routing to another namespace is not taken: nothing ties it to this
    configuration (another installation's, or made before both namespaces changed)."""
    return [item for item in items if (item.get("metadata") or {}).get("namespace") == settings.routing_namespace
            or settings.namespace in route_namespaces([item])]


def rolled_out(deployment: Mapping[str, Any]) -> bool:
    """A Deployment object (as the API server gives it) whose current generation is fully rolled out and
    Available (Kubernetes docs, "Deployment status"). Used on listed objects (bot.kube.inventory) and
    in the rollout wait (bot.kube.rollout)."""
    spec, status = deployment.get("spec") or {}, deployment.get("status") or {}
    wanted = int(spec.get("replicas", 1))
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    return bool(
        status.get("observedGeneration", 0) >= (deployment.get("metadata") or {}).get("generation", 0)
        and status.get("updatedReplicas", 0) == wanted
        and status.get("availableReplicas", 0) >= wanted
        and status.get("replicas", 0) == wanted
        and (conditions.get("Available") or {}).get("status") == "True"
    )
