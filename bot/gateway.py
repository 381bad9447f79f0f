"""Does the Istio Gateway named by PREVIEW_GATEWAY serve every host the host template produces? (pure)

Rules from Istio's Gateway reference (istio.io docs: reference/config/networking/gateway, `Server.hosts`):
a server host is `[namespace/]dnsName`; the namespace part says which namespaces' VirtualServices may
bind to it (`*` any, `.` the Gateway's own, else that namespace; none means any); the dnsName may be `*`
(every host) or carry a wildcard in its left-most label. A wildcard is taken to cover exactly one
label, as a wildcard TLS certificate (RFC 6125 section 6.4.3) and a wildcard DNS record do:
`*.example.com` serves `payments.example.com`, not `payments.pr-12.example.com`. Only servers that
terminate HTTP (protocol HTTP, HTTPS, HTTP2, GRPC; not TLS passthrough) use the VirtualServices' `http`
routes, so only those count.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bot import dns
from bot.settings import ClusterSettings

HTTP_PROTOCOLS = frozenset({"HTTP", "HTTPS", "HTTP2", "GRPC"})
PASSTHROUGH = frozenset({"PASSTHROUGH", "AUTO_PASSTHROUGH"})


@dataclass(frozen=True)
class HostShape:
    """The hosts a template produces: each label fixed text, or None where a placeholder varies."""

    labels: tuple[str | None, ...]
    text: str  # for people, e.g. `<service>.pr-<number>.example.com`


def host_shape(template: str, domain: str) -> HostShape:
    filled = template.replace("{domain}", domain).lower()
    labels = tuple(None if "{" in label else dns.short_labels(label) for label in filled.split("."))
    return HostShape(labels, re.sub(r"{(\w+)}", r"<\1>", filled))


def _namespace_allows(prefix: str | None, gateway_namespace: str, routing_namespace: str) -> bool:
    if prefix is None or prefix == "*":
        return True
    return (gateway_namespace if prefix == "." else prefix) == routing_namespace


def covers(server_host: str, shape: HostShape, *, gateway_namespace: str, routing_namespace: str) -> bool:
    """True when `server_host` (a Gateway server's host entry) serves every host of `shape` for
    VirtualServices in `routing_namespace`."""
    prefix, slash, name = server_host.strip().lower().rpartition("/")
    if not _namespace_allows(prefix if slash else None, gateway_namespace, routing_namespace):
        return False
    if name == "*":
        return True
    wanted = name.split(".")
    if len(wanted) != len(shape.labels):
        return False
    for i, (pattern, label) in enumerate(zip(wanted, shape.labels, strict=True)):
        if i == 0 and pattern == "*":
            continue  # the wildcard stands for exactly this one label, whatever it is
        if label is None or label != pattern:
            return False
    return True


def _serving_hosts(gateway: Mapping[str, Any]) -> list[str]:
    hosts: list[str] = []
    for server in (gateway.get("spec") or {}).get("servers") or []:
        protocol = str((server.get("port") or {}).get("protocol", "")).upper()
        mode = str((server.get("tls") or {}).get("mode", "")).upper()
        if protocol in HTTP_PROTOCOLS and mode not in PASSTHROUGH:
            hosts += [str(h) for h in server.get("hosts") or []]
    return hosts


def gateway_problem(gateway: Mapping[str, Any] | None, settings: ClusterSettings) -> str | None:
    """Why the preview hosts cannot work through the Gateway (None when they can): it is missing, or
    none of its HTTP servers' hosts covers the template's host shape. The message names both."""
    if gateway is None:
        return (f"PREVIEW_GATEWAY: Gateway {settings.gateway} does not exist; create it (deploy/examples/gateway) "
                "or name an existing one as <namespace>/<name>")
    shape = host_shape(settings.host_template, settings.domain)
    namespace = settings.gateway.partition("/")[0]
    hosts = _serving_hosts(gateway)
    if any(covers(h, shape, gateway_namespace=namespace, routing_namespace=settings.routing_namespace)
           for h in hosts):
        return None
    return (f"PREVIEW_GATEWAY: Gateway {settings.gateway} does not serve the preview hosts {shape.text} "
            f"(PREVIEW_HOST_TEMPLATE {settings.host_template!r}) for VirtualServices in "
            f"{settings.routing_namespace}: its HTTP server hosts are {_listing(hosts)}; a wildcard covers "
            "exactly one label")


def _listing(hosts: Sequence[str]) -> str:
    return ", ".join(repr(h) for h in hosts) if hosts else "none"


ISTIO_RESOURCES = ("gateways", "virtualservices")


def istio_api_problem(api_version: str, served: frozenset[str] | None, server: str) -> str | None:
    """Why the cluster cannot hold previews' routing (None when it can): the API server at `server` does
    not serve Istio's `api_version` (networking.istio.io/v1: Istio 1.22 or later), or serves it without
    the Gateway or VirtualService resource. `served`: the discovery document's resource names, None when
    the group version is not served at all."""
    missing = [r for r in ISTIO_RESOURCES if served is None or r not in served]
    if not missing:
        return None
    return (f"Kubernetes: {server} does not serve {api_version} {' or '.join(missing)}: Istio's CRDs are not "
            f"installed (preview-bot needs Istio 1.22 or later, which serves {api_version})")
