"""The shared in-mesh VirtualService of one service host, as a value (pure).

Istio does not merge mesh VirtualServices for one host, so every open preview's route lives in this
one object (which one: bot/mesh_hosts.py). Invariants kept by every function here, whatever the input:
- each preview has at most one route, named by its key, matching its header value exactly;
- a preview route matches only the port the preview serves (`match[].port`, Istio's
  HTTPMatchRequest.port: "the ports on the host that is being addressed") and sends to that same port
  of the preview; a request with the key to another port of the real service matches no preview route
  and stays on the real service (without `port`, Envoy would send it to the preview's one port);
- preview routes come first (sorted by key, so the result does not depend on arrival order);
- routes that are not the bot's keep their order after them (a team's catch-all stays where the team
  put it; the bot's own default is last);
- there is always a route that catches all, so requests without the header reach the real service;
  the bot's default route names no port, so each port of the real service keeps going to itself;
- a VirtualService the bot creates is exported to every namespace (`exportTo: ["*"]`), so sidecars
  everywhere use it whatever the mesh's `defaultVirtualServiceExportTo` is.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from bot.errors import PreviewError
from bot.settings import MatchMode

DEFAULT_ROUTE_NAME = "default"
BAGGAGE_ENTRY = "preview"
_PREVIEW_ROUTE = re.compile(r"^preview-[0-9]+-[0-9a-f]{6}$")

Route = dict[str, Any]
Spec = dict[str, Any]

# The API server stores a custom resource whole, as one etcd value, and etcd refuses requests over
# 1.5 MiB (its --max-request-bytes default; etcd docs, "System limits"). The spec is kept under 1 MB so
# metadata and managedFields fit too. A route is ~0.2 kB (header match) to ~0.3 kB (`both`): about
# 5,000 (3,400) previews of one service host; 1,000 routes take 195 KiB (285 KiB).
MAX_SPEC_BYTES = 1_000_000


class TooManyRoutes(PreviewError):
    """One more preview route would make the shared mesh VirtualService too large to store."""


def baggage_regex(key: str) -> str:
    """RE2 regex matching a W3C `baggage` header that carries `preview=<key>` as a whole entry.

    Keys are DNS-1123 labels, so they need no escaping; the propagation helper builds the same text."""
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", key):
        raise ValueError(f"not a preview key: {key!r}")
    return rf"^(.*,)?\s*{BAGGAGE_ENTRY}={key}\s*(;[^,]*)?(,.*)?$"


def preview_match(key: str, *, header_name: str, mode: MatchMode, port: int | None = None) -> list[dict[str, Any]]:
    """Match conditions for one preview; several entries in `match` are ORed by Istio, so each entry
    carries the `port` (when given) itself."""
    matches: list[dict[str, Any]] = []
    if mode in ("header", "both"):
        # Exact, never prefix: `preview-12` must not catch `preview-123`.
        matches.append({"headers": {header_name: {"exact": key}}})
    if mode in ("baggage", "both"):
        matches.append({"headers": {"baggage": {"regex": baggage_regex(key)}}})
    if port is not None:
        matches = [{**m, "port": port} for m in matches]
    return matches


def preview_route(key: str, *, destination: str, port: int, header_name: str, mode: MatchMode) -> Route:
    """The preview's route: requests with its key to `port` of the real service go to `port` of the
    preview Service `destination`; other ports of the real service are left to the default route."""
    if not 1 <= port <= 65535:
        raise ValueError(f"not a port: {port!r}")
    return {
        "name": key,
        "match": preview_match(key, header_name=header_name, mode=mode, port=port),
        "route": [{"destination": {"host": destination, "port": {"number": port}}}],
    }


def default_route(mesh_host: str) -> Route:
    return {"name": DEFAULT_ROUTE_NAME, "route": [{"destination": {"host": mesh_host}}]}


def is_preview_route(route: Mapping[str, Any]) -> bool:
    return bool(_PREVIEW_ROUTE.match(str(route.get("name", ""))))


def preview_keys(spec: Mapping[str, Any]) -> list[str]:
    return [str(r["name"]) for r in spec.get("http") or [] if is_preview_route(r)]


def route_destinations(spec: Mapping[str, Any]) -> dict[str, list[str]]:
    """Preview key -> the destination hosts its route sends to."""
    return {
        str(r["name"]): [str(d.get("destination", {}).get("host", "")) for d in r.get("route") or []]
        for r in spec.get("http") or [] if is_preview_route(r)
    }


def _normalise(spec: Mapping[str, Any], mesh_host: str, previews: Iterable[Route]) -> Spec:
    # The team's own routes keep their order exactly; a default is added only when none catches all.
    others = [r for r in spec.get("http") or [] if not is_preview_route(r)]
    if not any(not r.get("match") for r in others):
        others.append(default_route(mesh_host))
    # Shallow copies: no function here mutates a route, so routes may be shared between values.
    result: Spec = dict(spec)
    result["hosts"] = list(spec.get("hosts") or [mesh_host])
    result["http"] = sorted(previews, key=lambda r: str(r["name"])) + others
    return result


def with_route(spec: Mapping[str, Any], mesh_host: str, route: Route) -> Spec:
    """Add or replace one preview's route, keeping every other preview's."""
    kept = [r for r in spec.get("http") or [] if is_preview_route(r) and r.get("name") != route["name"]]
    return _normalise(spec, mesh_host, [*kept, route])


def spec_bytes(spec: Mapping[str, Any]) -> int:
    """Size of the spec as the API server receives it (compact JSON), in bytes."""
    return len(json.dumps(spec, separators=(",", ":")))


def with_route_checked(spec: Mapping[str, Any], mesh_host: str, route: Route) -> Spec:
    """`with_route`, refusing a *new* preview route that would take the spec over MAX_SPEC_BYTES (an
    existing preview's route is always replaced: its redeploy must not fail). Raises TooManyRoutes."""
    result = with_route(spec, mesh_host, route)
    size = spec_bytes(result)
    if size > MAX_SPEC_BYTES and route["name"] not in preview_keys(spec):
        raise TooManyRoutes(
            f"the shared mesh VirtualService of {mesh_host} would hold {len(preview_keys(result))} preview routes "
            f"({size // 1024} KiB), more than the {MAX_SPEC_BYTES // 1024} KiB it is kept under (Kubernetes stores "
            "it as one etcd value of at most 1.5 MiB); stop previews that are no longer needed with `/preview stop`")
    return result


def without_routes(spec: Mapping[str, Any], mesh_host: str, drop: Callable[[Route], bool]) -> Spec:
    """Remove the preview routes for which `drop` is true; others' routes stay."""
    kept = [r for r in spec.get("http") or [] if is_preview_route(r) and not drop(r)]
    return _normalise(spec, mesh_host, kept)


def without_key(spec: Mapping[str, Any], mesh_host: str, key: str) -> Spec:
    return without_routes(spec, mesh_host, lambda r: r.get("name") == key)


def with_routes_of(spec: Mapping[str, Any], mesh_host: str, other: Mapping[str, Any]) -> Spec:
    """Add the preview routes of `other` (another VirtualService for the host) that `spec` lacks;
    a key `spec` already routes keeps its route."""
    have = set(preview_keys(spec))
    carried = [r for r in other.get("http") or [] if is_preview_route(r) and r.get("name") not in have]
    kept = [r for r in spec.get("http") or [] if is_preview_route(r)]
    return _normalise(spec, mesh_host, [*kept, *carried])


def exported_everywhere(spec: Mapping[str, Any]) -> Spec:
    """The spec with `exportTo: ["*"]` (only for VirtualServices the bot owns)."""
    return {**spec, "exportTo": ["*"]}


def new_spec(mesh_host: str) -> Spec:
    """A mesh VirtualService spec for a host that has none: default route only, exported everywhere."""
    return exported_everywhere(_normalise({"hosts": [mesh_host]}, mesh_host, []))
