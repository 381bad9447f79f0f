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
_PREVIEW_ROUTE = re.compile(r"^preview-[0-9]+-[0-9a-f]{6}\Z")

Route = dict[str, Any]
Spec = dict[str, Any]

# The API server stores a custom resource whole, as one etcd value, and etcd refuses requests over
# 1.5 MiB (its --max-request-bytes default; etcd docs, "System limits"). The spec is kept under 1 MB so
# metadata and managedFields fit too. A route is ~0.2 kB (header match), ~0.6 kB (baggage: the regex of
# the W3C rule below) or ~0.7 kB (`both`): about 4,700, 1,500 or 1,400 previews of one service host;
# 1,000 routes take 207 KiB, 619 KiB or 686 KiB.
MAX_SPEC_BYTES = 1_000_000


class TooManyRoutes(PreviewError):
    """One more preview route would make the shared mesh VirtualService too large to store."""


# The rule for the W3C `baggage` header (https://www.w3.org/TR/baggage/, "Header Content" and "Mutating
# baggage"), the same in the mesh's regex and in the propagation helper (propagation/, parse_baggage):
# - list members are separated by `,`; a member is `key OWS "=" OWS value *(OWS ";" OWS property)`, and
#   the OWS (spaces, tabs) around key and value is trimmed; a member without `=` is not `preview`;
# - the value is URL-encoded: `preview%2D12-...` is `preview-12-...` (keys are not encoded);
# - keys may repeat; the spec lets consumers agree on which duplicate counts: the **last** `preview`
#   member wins, as OpenTelemetry's W3C propagators read them (a later entry overwrites an earlier one), so
#   a member appended by the gateway, or by the helper, beats a stale one sent by the client;
# - a request whose last `preview` member is not a preview key carries none.
# Envoy matches a header that appears on several lines line by line (a route matches when one line
# does; seen with Envoy 1.40), so this holds for one `baggage` line; the gateway and the helper each
# send one.
_OWS = r"[ \t]*"
_KEY_CHAR = "[^,;=]"  # what a member's key may hold as the helper reads it: anything up to `=`, `;` or `,`
# Istio refuses a regex longer than 1024 characters (pkg/config/validation: validateStringRegexp).
MAX_REGEX_CHARS = 1024


def _not_member_key(word: str) -> str:
    """RE2 for a member key (text without `,;=`) that, OWS-trimmed, is not `word`: a proper prefix of it,
    text that leaves it at some character, or `word` followed by more than OWS."""
    def after(i: int) -> str:  # having read word[:i]
        if i == len(word):
            return rf"{_OWS}[^,;= \t]{_KEY_CHAR}*"
        c = word[i]
        return rf"(?:{c}{after(i + 1)}|[^,;={c}]{_KEY_CHAR}*)?"
    return rf"{_OWS}(?:{word[0]}{after(1)}|[^,;= \t{word[0]}]{_KEY_CHAR}*)?"


def _encoded(key: str) -> str:
    """RE2 for `key` with any of its characters percent-encoded (either case of hex digit)."""
    parts = []
    for char in key:
        code = "".join(f"[{h}{h.lower()}]" if h.isalpha() else h for h in f"{ord(char):02X}")
        parts.append(f"(?:{char}|%{code})")
    return "".join(parts)


def baggage_regex(key: str) -> str:
    """RE2 regex (also Python `re`) matching one `baggage` header line whose **last** `preview` member
    carries `key` (the rule above): `preview=<key>`, with OWS around `=`, any character percent-encoded,
    properties after `;`, and after it only members with other keys (or no `=`).

    Raises ValueError for a key that is not a DNS-1123 label. Istio refuses a regex longer than
    MAX_REGEX_CHARS: the longest label takes 1016 characters, the bot's keys (`preview-<n>-<6 hex>`) under
    600. The propagation helper builds the same text (`baggage_match_regex`)."""
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", key):
        raise ValueError(f"not a preview key: {key!r}")
    other = rf"(?:[^,;=]*(?:;[^,]*)?|{_not_member_key(BAGGAGE_ENTRY)}=[^,]*)"
    return (rf"^(?:.*,)?{_OWS}{BAGGAGE_ENTRY}{_OWS}={_OWS}{_encoded(key)}{_OWS}(?:;[^,]*)?"
            rf"(?:,{other})*$")


def baggage_member(key: str) -> str:
    """The W3C baggage list member that carries `key`."""
    return f"{BAGGAGE_ENTRY}={key}"


# Istio HTTPRoute `headers.request.set` values may use Envoy's header variables
# (https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_conn_man/headers#custom-request-response-headers):
# `%REQ(baggage)%` is the client's first `baggage` line (seen with Envoy 1.40).
_CLIENT_BAGGAGE = "%REQ(baggage)%"


def entry_headers(key: str, *, header_name: str, mode: MatchMode) -> list[tuple[dict[str, Any] | None, dict[str, Any]]]:
    """How a gateway route that lets requests in to preview `key` marks them, as (extra match, Istio
    `headers.request`) pairs, one gateway HTTP route each, tried in order (the last has no extra match).

    header mode: set the routing header (overwriting what the client sent). baggage mode: make the
    `baggage` header one line whose last member is `preview=<key>`: the client's baggage first, when it
    sent one (its members are kept, and the appended member wins over a `preview` member of its own, by
    the rule above), else `preview=<key>` alone. One line, not Istio's `add` (a second line): OpenTelemetry's
    Go and Python propagators read only the first `baggage` line, and Envoy matches lines one by one.
    A client's second `baggage` line is dropped (Envoy's `%REQ()%` gives the first). both: both."""
    header = {header_name: key} if mode in ("header", "both") else {}
    if mode == "header":
        return [(None, {"set": header})]
    member = baggage_member(key)
    # `.+`: a present, non-empty header (an empty one would leave an empty first member).
    return [({"baggage": {"regex": ".+"}}, {"set": {**header, "baggage": f"{_CLIENT_BAGGAGE},{member}"}}),
            (None, {"set": {**header, "baggage": member}})]


def carrier_text(key: str, *, header_name: str, mode: MatchMode) -> str:
    """How requests carry preview `key`, for people (PR comments): `x-preview: <key>`, the baggage member, or
    either."""
    header = f"`{header_name}: {key}`"
    baggage = f"the W3C baggage member `{baggage_member(key)}` (`baggage: {baggage_member(key)}`)"
    return {"header": header, "baggage": baggage, "both": f"{header} or {baggage}"}[mode]


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
