"""Why a request reaches the workload it reaches: Istio's VirtualService routing, replayed (pure).

`explain(routing, request)` takes the Gateway and the VirtualServices as plain dicts (as the Kubernetes
API returns them) and a request, and returns, hop by hop, which VirtualService and which http rule
(name and position) matches, its destination, and why every earlier rule did not match. It also reports
what makes Istio ignore routes (`findings`): a host served by two mesh VirtualServices, `exportTo`
hiding a VirtualService from the caller's namespace, a catch-all rule before other rules.

The rules follow Istio's documentation and its pilot sources (networking/core/route/route.go,
networking/core/gateway.go, model/push_context.go, model/virtualservice.go), which this module replays:

- A VirtualService applies to the gateways in `gateways` (`name` or `ns/name`, a short name meaning the
  VirtualService's namespace); none listed means the reserved gateway `mesh` (sidecars). A short host
  (`reviews`) means `reviews.<VirtualService namespace>.svc.cluster.local`.
- `exportTo` (`.` own namespace, `*` every namespace, a namespace name, `~` none; default the mesh's
  `defaultVirtualServiceExportTo`, itself `*` by default) decides which proxies see it. A proxy lists
  VirtualServices in three groups: exported only to its own namespace and living there, exported to its
  namespace by name, public; each group oldest first (creation time, then name, then namespace).
- Sidecars do not merge VirtualServices: per host the first VirtualService in that order wins and the
  others are ignored (`istioctl analyze` IST0109). Gateways merge the VirtualServices bound to them for a
  host, in the same order, and then move catch-all routes to the end (route.SortVHostRoutes).
- Rules are tried in order and the first match wins. Entries of `match` are ORed; the fields of one entry
  are ANDed. A rule without `match`, or an entry with no header, query, method, authority or scheme
  condition and a URI that is absent, prefix `/` or regex `.*`, catches everything: Istio drops the rules
  after it. `port`, `gateways`, `sourceLabels` and `sourceNamespace` decide whether an entry exists for
  this proxy at all (`gateways` in an entry replaces the source checks).
- StringMatch is `exact`, `prefix` or `regex` (RE2, whole value); `{}` (or regex `*`) only asks that the
  header is present. Header names are case-insensitive; values are case-sensitive. `withoutHeaders` is the
  negation, a missing header counting as an empty value. URI matches the path without the query;
  `ignoreUriCase` makes it case-insensitive.
- A host with no VirtualService is routed by Istio to the Service of that name (sidecars); at a gateway a
  host no VirtualService serves answers 404, as does a request no rule matches.

Python's `re` stands in for RE2 (the same syntax for the patterns VirtualServices use; `re` errors are
reported as an invalid regex). `sourceLabels` need the caller's labels: `Request.source_labels`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

MESH = "mesh"
DOMAIN_SUFFIX = "svc.cluster.local"
_PREVIEW_KEY = re.compile(r"preview-[0-9]+-[0-9a-f]{6}")

Obj = Mapping[str, Any]


@dataclass(frozen=True)
class Request:
    """One HTTP request. `headers` names are matched case-insensitively.

    `source_namespace` None: the request comes from outside, through the Gateway; a namespace: it is sent
    by a workload's sidecar in that namespace. `port` None: the Gateway's server port (from outside), or
    unknown (in the mesh; rules that need a port then do not match)."""

    host: str
    headers: Mapping[str, str] = field(default_factory=dict)
    path: str = "/"
    method: str = "GET"
    scheme: str = "http"
    port: int | None = None
    source_namespace: str | None = None
    source_labels: Mapping[str, str] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        for key, value in self.headers.items():
            if key.lower() == wanted:
                return value
        return None


@dataclass(frozen=True)
class Routing:
    """What Istio routes with: the Gateway (None when it could not be read), every VirtualService, and the
    mesh's `defaultVirtualServiceExportTo`."""

    gateway: Obj | None
    virtual_services: Sequence[Obj]
    gateway_name: str = "istio-system/preview-gateway"
    default_export_to: tuple[str, ...] = ("*",)


@dataclass(frozen=True)
class RuleCheck:
    """One http rule as tried: its position in `spec.http` (0-based), name, and why it did not match."""

    virtual_service: str
    position: int
    name: str | None
    matched: bool
    reasons: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        named = f" `{self.name}`" if self.name else ""
        return f"rule {self.position + 1}{named} (http[{self.position}] of {self.virtual_service})"


@dataclass(frozen=True)
class Destination:
    host: str
    port: int | None = None
    subset: str | None = None
    weight: int | None = None

    def __str__(self) -> str:
        text = self.host + (f":{self.port}" if self.port else "")
        if self.subset:
            text += f" subset {self.subset}"
        if self.weight is not None:
            text += f" ({self.weight}%)"
        return text


@dataclass(frozen=True)
class Hop:
    """One proxy's decision. `outcome`: routed | default (no VirtualService: the Service itself) |
    not-found (404) | redirect | direct-response | delegate."""

    proxy: str
    host: str
    outcome: str
    virtual_service: str | None = None
    rules: tuple[RuleCheck, ...] = ()
    destinations: tuple[Destination, ...] = ()
    request_headers: Mapping[str, str] = field(default_factory=dict)  # after the rule's header changes
    header_changes: tuple[str, ...] = ()
    response_changes: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def matched(self) -> RuleCheck | None:
        return next((r for r in self.rules if r.matched), None)


@dataclass(frozen=True)
class Finding:
    """Something that makes Istio ignore routes. kind: duplicate-host | hidden-by-export-to | shadowed |
    not-bound | prefix-key."""

    kind: str
    message: str


@dataclass(frozen=True)
class Explanation:
    request: Request
    hops: tuple[Hop, ...]
    findings: tuple[Finding, ...]

    @property
    def final(self) -> Hop:
        return self.hops[-1]

    def reached(self) -> str | None:
        """The host the last hop sends to (the single or first destination), or None (404, redirect...)."""
        last = self.final
        if last.outcome == "default":
            return last.host
        if last.outcome == "routed" and last.destinations:
            return last.destinations[0].host
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "request": {"host": self.request.host, "headers": dict(self.request.headers), "path": self.request.path,
                        "method": self.request.method, "port": self.request.port,
                        "from": self.request.source_namespace},
            "hops": [{
                "proxy": h.proxy, "host": h.host, "outcome": h.outcome, "virtual_service": h.virtual_service,
                "rules": [{"position": r.position, "name": r.name, "virtual_service": r.virtual_service,
                           "matched": r.matched, "reasons": list(r.reasons)} for r in h.rules],
                "destinations": [{"host": d.host, "port": d.port, "subset": d.subset, "weight": d.weight}
                                 for d in h.destinations],
                "headers_after": dict(h.request_headers), "notes": list(h.notes),
            } for h in self.hops],
            "reached": self.reached(),
            "findings": [{"kind": f.kind, "message": f.message} for f in self.findings],
        }


# -- names and hosts --------------------------------------------------------------------------------


def namespace_of(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("namespace") or "default")


def name_of(obj: Obj) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace') or 'default'}/{meta.get('name', '?')}"


def resolve_host(host: str, namespace: str) -> str:
    """A VirtualService host as Istio reads it: a short name is in the VirtualService's namespace."""
    host = host.lower()
    if host == "*" or "." in host:
        return host
    return f"{host}.{namespace}.{DOMAIN_SUFFIX}"


def resolve_gateway(name: str, namespace: str) -> str:
    """`gw` -> `<namespace>/gw`; `./gw` -> `<namespace>/gw`; `gw.ns.svc.cluster.local` -> `ns/gw`."""
    if name == MESH:
        return name
    if "/" in name:
        first, _, rest = name.partition("/")
        return f"{namespace}/{rest}" if first == "." else name
    if "." in name:
        short, _, domain = name.partition(".")
        return f"{domain.split('.')[0]}/{short}"
    return f"{namespace}/{name}"


def host_matches(pattern: str, name: str) -> bool:
    """Istio host semantics: `*` matches all, `*.x.com` any name ending in `.x.com`."""
    if pattern == "*":
        return True
    if pattern.startswith("*"):
        suffix = pattern[1:]
        return name.endswith(suffix) or (name.startswith("*") and name[1:].endswith(suffix))
    return pattern == name


def _specificity(pattern: str) -> tuple[int, int]:
    """Exact names beat wildcards; a longer wildcard beats a shorter one (Envoy's virtual host choice)."""
    return (0, len(pattern)) if not pattern.startswith("*") else (1, -len(pattern))


def split_host_port(raw: str) -> tuple[str, int | None]:
    host = raw.strip().lower().rstrip(".")
    if ":" in host:
        host, _, port = host.rpartition(":")
        return host.rstrip("."), int(port) if port.isdigit() else None
    return host, None


def expand_mesh_host(host: str, namespace: str) -> str:
    """How a sidecar reads a short Kubernetes name: `b` (same namespace), `b.ns`, `b.ns.svc`."""
    parts = host.split(".")
    if len(parts) == 1:
        return f"{host}.{namespace}.{DOMAIN_SUFFIX}"
    if len(parts) == 2 or (len(parts) == 3 and parts[2] == "svc"):
        return f"{parts[0]}.{parts[1]}.{DOMAIN_SUFFIX}"
    return host


def namespace_of_service_host(host: str) -> str | None:
    parts = host.split(".")
    if len(parts) == 5 and host.endswith("." + DOMAIN_SUFFIX):
        return parts[1]
    return None


# -- visibility and order -------------------------------------------------------------------------


def export_set(vs: Obj, default: Sequence[str]) -> frozenset[str]:
    own = namespace_of(vs)
    raw = (vs.get("spec") or {}).get("exportTo") or list(default)
    return frozenset(own if entry == "." else str(entry) for entry in raw)


def visible_to(vs: Obj, namespace: str, default: Sequence[str]) -> bool:
    exported = export_set(vs, default)
    return "*" in exported or (namespace in exported and "~" not in exported)


def gateways_of(vs: Obj) -> list[str]:
    names = (vs.get("spec") or {}).get("gateways") or [MESH]
    return [resolve_gateway(str(g), namespace_of(vs)) for g in names]


def _created(vs: Obj) -> tuple[str, str, str]:
    meta = vs.get("metadata") or {}
    return (str(meta.get("creationTimestamp") or ""), str(meta.get("name") or ""), str(meta.get("namespace") or ""))


def proxy_order(virtual_services: Iterable[Obj], namespace: str, default: Sequence[str]) -> list[Obj]:
    """VirtualServices a proxy in `namespace` sees, in Istio's order (push_context.go, VirtualServicesForGateway
    and SelectVirtualServices): private in its namespace, exported to it by name, public; each oldest first."""
    private, exported, public = [], [], []
    for vs in sorted(virtual_services, key=_created):
        names = export_set(vs, default)
        if "*" in names:
            public.append(vs)
        elif "~" in names or namespace not in names:
            continue
        elif namespace_of(vs) == namespace:
            private.append(vs)
        else:
            exported.append(vs)
    return private + exported + public


# -- matching one request against one match entry -----------------------------------------------


def _presence_only(match: Mapping[str, Any] | None) -> bool:
    if not match:
        return True
    return not any(k in match for k in ("exact", "prefix", "regex")) or match.get("regex") == "*"


def _describe(match: Mapping[str, Any]) -> str:
    for kind in ("exact", "prefix", "regex"):
        if kind in match:
            return {"exact": "`{}`", "prefix": "starting with `{}`", "regex": "matching regex `{}`"}[kind].format(
                match[kind])
    return "present"


def string_match(match: Mapping[str, Any] | None, value: str, *, ignore_case: bool = False) -> bool | None:
    """True/False; None for an invalid regex (Istio would reject the VirtualService)."""
    match = match or {}
    if ignore_case:
        value = value.lower()
    if "exact" in match:
        expected = str(match["exact"])
        return value == (expected.lower() if ignore_case else expected)
    if "prefix" in match:
        expected = str(match["prefix"])
        return value.startswith(expected.lower() if ignore_case else expected)
    if "regex" in match:
        try:
            return re.fullmatch(str(match["regex"]), value, re.IGNORECASE if ignore_case else 0) is not None
        except re.error:
            return None
    return True


def _why_not(label: str, match: Mapping[str, Any], value: str) -> str:
    if "exact" in match:
        return f"{label} `{value}` is not `{match['exact']}`"
    if "prefix" in match:
        return f"{label} `{value}` does not start with `{match['prefix']}`"
    return f"{label} `{value}` does not match regex `{match.get('regex')}`"


@dataclass(frozen=True)
class Proxy:
    """The proxy deciding: a gateway (`gateway` = ns/name) or a sidecar (`gateway` = mesh)."""

    gateway: str
    namespace: str
    labels: Mapping[str, str]
    listen_port: int | None

    @property
    def label(self) -> str:
        return f"gateway {self.gateway}" if self.gateway != MESH else f"sidecar in namespace {self.namespace}"


def entry_exists(match: Mapping[str, Any] | None, proxy: Proxy, vs_namespace: str) -> str | None:
    """None when Istio builds this match entry for the proxy; else why not (route.go TranslateRoute,
    sourceMatchHTTP)."""
    if not match:
        return None
    port = match.get("port")
    if port:
        if proxy.listen_port is None:
            return f"only for port {port} (request port unknown: pass --port)"
        if int(port) != proxy.listen_port:
            return f"only for port {port}, the request is on port {proxy.listen_port}"
    gateways = match.get("gateways")
    if gateways:
        if proxy.gateway not in [resolve_gateway(str(g), vs_namespace) for g in gateways]:
            return f"only on gateways {', '.join(map(str, gateways))}, this is {proxy.label}"
        return None
    labels = match.get("sourceLabels") or {}
    missing = {k: v for k, v in labels.items() if proxy.labels.get(k) != v}
    if missing:
        return "only for callers labelled " + ", ".join(f"{k}={v}" for k, v in missing.items())
    source_ns = match.get("sourceNamespace")
    if source_ns and source_ns != proxy.namespace:
        return f"only for callers in namespace `{source_ns}`, the caller is in `{proxy.namespace}`"
    return None


def is_catch_all(match: Mapping[str, Any] | None) -> bool:
    """route.IsCatchAllRoute: no header, query, method, authority or scheme condition; any URI."""
    if not match:
        return True
    if any(match.get(k) for k in ("headers", "withoutHeaders", "queryParams", "method", "authority", "scheme")):
        return False
    uri = match.get("uri") or {}
    return not uri or uri.get("prefix") == "/" or uri.get("regex") == ".*"


def match_reasons(match: Mapping[str, Any] | None, request: Request, authority: str) -> list[str]:
    """Why the request fails one match entry (all failing fields; empty when it matches)."""
    if not match:
        return []
    reasons: list[str] = []
    path = request.path.split("?", 1)[0] or "/"
    uri = match.get("uri")
    if uri:
        ok = string_match(uri, path, ignore_case=bool(match.get("ignoreUriCase")))
        if ok is None:
            reasons.append(f"invalid uri regex `{uri.get('regex')}`")
        elif not ok:
            reasons.append(_why_not("path", uri, path))
    for field_name, label, value in (("scheme", "scheme", request.scheme), ("method", "method", request.method),
                                     ("authority", "authority", authority)):
        condition = match.get(field_name)
        if condition:
            ok = string_match(condition, value)
            if not ok:
                reasons.append(_why_not(label, condition, value) if ok is not None
                               else f"invalid {field_name} regex `{condition.get('regex')}`")
    for name, condition in (match.get("headers") or {}).items():
        header = request.header(str(name))
        if header is None:
            reasons.append(f"no `{str(name).lower()}` header")
        elif not _presence_only(condition):
            ok = string_match(condition, header)
            if ok is None:
                reasons.append(f"invalid regex `{condition.get('regex')}` for `{name}`")
            elif not ok:
                reasons.append(_why_not(f"`{str(name).lower()}:`", condition, header))
    for name, condition in (match.get("withoutHeaders") or {}).items():
        header = request.header(str(name))
        if _presence_only(condition):
            if header is not None:
                reasons.append(f"has a `{str(name).lower()}` header (withoutHeaders)")
        elif string_match(condition, header or ""):  # a missing header counts as empty
            reasons.append(f"`{str(name).lower()}` is {_describe(condition)} (withoutHeaders)")
    query = _query(request.path)
    for name, condition in (match.get("queryParams") or {}).items():
        param = query.get(str(name))
        if param is None:
            reasons.append(f"no `{name}` query parameter")
        elif not _presence_only(condition) and not string_match(condition, param):
            reasons.append(_why_not(f"query `{name}=`", condition, param))
    return reasons


def _query(path: str) -> dict[str, str]:
    _, _, query = path.partition("?")
    result: dict[str, str] = {}
    for part in filter(None, query.split("&")):
        key, _, value = part.partition("=")
        result.setdefault(key, value)
    return result


# -- one proxy's decision ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    vs: Obj
    position: int
    rule: Mapping[str, Any]
    match: Mapping[str, Any] | None


def _entries(vs: Obj, proxy: Proxy) -> tuple[list[_Entry], list[tuple[int, Mapping[str, Any], str]]]:
    """Istio's routes for one VirtualService and proxy, in order, cut after the first catch-all; and the
    (position, rule, reason) of rules that have no entry for this proxy."""
    entries: list[_Entry] = []
    absent: list[tuple[int, Mapping[str, Any], str]] = []
    for position, rule in enumerate((vs.get("spec") or {}).get("http") or []):
        matches = rule.get("match") or [None]
        built = False
        why: list[str] = []
        for match in matches:
            reason = entry_exists(match, proxy, namespace_of(vs))
            if reason is not None:
                why.append(reason)
                continue
            built = True
            entries.append(_Entry(vs, position, rule, match))
            if is_catch_all(match):
                return entries, absent
        if not built:
            absent.append((position, rule, "; ".join(why)))
    return entries, absent


_REQ_VARIABLE = re.compile(r"%%|%REQ\(([^)%]+)\)%")


def _header_value(template: str, incoming: Mapping[str, str]) -> str:
    """An Istio/Envoy header value with `%REQ(name)%` replaced by the request's header (empty when it has
    none; Envoy takes the first of several lines, a request here has one) and `%%` by `%`
    (Envoy: custom request/response headers). Other variables are left as written."""
    return _REQ_VARIABLE.sub(lambda m: "%" if m.group(0) == "%%" else incoming.get(m.group(1).lower(), ""), template)


def _headers_after(headers: Mapping[str, str], operations: Mapping[str, Any] | None) -> tuple[dict[str, str],
                                                                                                 list[str]]:
    result = {k.lower(): v for k, v in headers.items()}
    incoming = dict(result)
    changes: list[str] = []
    request_ops = (operations or {}).get("request") or {}
    for name, value in (request_ops.get("set") or {}).items():
        result[str(name).lower()] = _header_value(str(value), incoming)
        changes.append(f"sets request header `{str(name).lower()}: {value}`")
    for name, value in (request_ops.get("add") or {}).items():
        key = str(name).lower()
        added = _header_value(str(value), incoming)
        result[key] = f"{result[key]},{added}" if key in result else added
        changes.append(f"adds request header `{key}: {value}`")
    for name in request_ops.get("remove") or []:
        result.pop(str(name).lower(), None)
        changes.append(f"removes request header `{str(name).lower()}`")
    return result, changes


def _response_changes(operations: Mapping[str, Any] | None) -> list[str]:
    response_ops = (operations or {}).get("response") or {}
    changes = [f"sets response header `{str(k).lower()}: {v}`" for k, v in (response_ops.get("set") or {}).items()]
    changes += [f"adds response header `{str(k).lower()}: {v}`" for k, v in (response_ops.get("add") or {}).items()]
    return changes


def _destinations(rule: Mapping[str, Any], vs_namespace: str) -> tuple[Destination, ...]:
    found = []
    for item in rule.get("route") or []:
        dest = item.get("destination") or {}
        port = (dest.get("port") or {}).get("number")
        found.append(Destination(resolve_host(str(dest.get("host", "")), vs_namespace), int(port) if port else None,
                                 dest.get("subset"), item.get("weight") if len(rule["route"]) > 1 else None))
    return tuple(found)


def _decide(proxy: Proxy, host: str, entries: list[_Entry], request: Request, authority: str,
            absent: Sequence[tuple[str, int, Mapping[str, Any], str]]) -> Hop:
    """Try the entries in order; the first whose fields all match wins. Rules that have no entry for this
    proxy are listed where they stand in their VirtualService."""
    checks: dict[tuple[str, int], list[str]] = {}
    order: list[tuple[str, int, Mapping[str, Any]]] = []
    winner: _Entry | None = None
    for entry in entries:
        key = (name_of(entry.vs), entry.position)
        if key not in checks:
            checks[key] = []
            order.append((key[0], key[1], entry.rule))
        reasons = match_reasons(entry.match, request, authority)
        if not reasons:
            winner = entry
            break
        checks[key].append(" and ".join(reasons))
    for vs_name, position, rule, reason in absent:
        if winner is not None and (vs_name, position) > (name_of(winner.vs), winner.position) \
                and vs_name == name_of(winner.vs):
            continue
        checks[(vs_name, position)] = [reason]
        later = [i for i, (n, p, _) in enumerate(order) if n == vs_name and p > position]
        order.insert(later[0] if later else len(order) - (1 if winner and order else 0), (vs_name, position, rule))
    rules = []
    for vs_name, position, rule in order:
        matched = winner is not None and (name_of(winner.vs), winner.position) == (vs_name, position)
        rule_reasons = () if matched else tuple(dict.fromkeys(r for r in checks[(vs_name, position)] if r))
        rules.append(RuleCheck(vs_name, position, rule.get("name"), matched, rule_reasons))
    vs_label = ", ".join(dict.fromkeys(name_of(e.vs) for e in entries)) or None
    if winner is None:
        return Hop(proxy.label, host, "not-found", vs_label, tuple(rules), request_headers=dict(request.headers),
                   notes=("no rule matches: Envoy answers 404",))
    rule = winner.rule
    headers, changes = _headers_after(request.headers, rule.get("headers"))
    response = _response_changes(rule.get("headers"))
    destinations = _destinations(rule, namespace_of(winner.vs))
    if len(destinations) == 1:
        headers, more = _headers_after(headers, (rule.get("route") or [{}])[0].get("headers"))
        changes += more
        response += _response_changes((rule.get("route") or [{}])[0].get("headers"))
    outcome = "routed"
    notes: list[str] = []
    if rule.get("redirect"):
        outcome = "redirect"
        notes.append(f"redirect {rule['redirect']}")
    elif rule.get("directResponse"):
        outcome = "direct-response"
        notes.append(f"direct response {rule['directResponse'].get('status')}")
    elif rule.get("delegate"):
        outcome = "delegate"
        notes.append(f"delegated to {rule['delegate']} (not followed)")
    return Hop(proxy.label, host, outcome, name_of(winner.vs), tuple(rules), destinations, headers,
               tuple(changes), tuple(response), tuple(notes))


def _shadowed(vs: Obj) -> list[Finding]:
    """A catch-all rule before other rules: Istio drops the later ones (for every proxy)."""
    rules = (vs.get("spec") or {}).get("http") or []
    for position, rule in enumerate(rules[:-1]):
        matches = rule.get("match") or [None]
        if any(is_catch_all(m) and not (m or {}).get("port") and not (m or {}).get("gateways")
               and not (m or {}).get("sourceLabels") and not (m or {}).get("sourceNamespace") for m in matches):
            later = rules[position + 1:]
            header_routes = [r for r in later if any((m or {}).get("headers") for m in r.get("match") or [])]
            what = "header routes" if header_routes else "rules"
            names = ", ".join(f"{position + 2 + i}" + (f" `{r['name']}`" if r.get("name") else "")
                              for i, r in enumerate(later))
            name = f" `{rule['name']}`" if rule.get("name") else ""
            return [Finding("shadowed", f"{name_of(vs)}: rule {position + 1}{name} catches every request, so the "
                                        f"{what} after it are never used (rules {names})")]
    return []


def _prefix_keys(vs: Obj) -> list[Finding]:
    found = []
    for position, rule in enumerate((vs.get("spec") or {}).get("http") or []):
        for match in rule.get("match") or []:
            for name, condition in ((match or {}).get("headers") or {}).items():
                prefix = (condition or {}).get("prefix")
                if prefix and str(prefix).startswith("preview-"):
                    found.append(Finding("prefix-key", f"{name_of(vs)}: rule {position + 1} matches `{name}` by prefix "
                                                       f"`{prefix}`, which also catches longer keys "
                                                       f"(`{prefix}3...`); use exact"))
    return found


def _gateway_hop(routing: Routing, request: Request, findings: list[Finding]) -> Hop:
    gateway = routing.gateway
    gw_name = routing.gateway_name
    gw_namespace = gw_name.split("/")[0]
    host, host_port = split_host_port(request.host)
    port = request.port or host_port
    notes: list[str] = []
    server_hosts: list[str] = ["*/*"]
    listen_port = port
    labels: Mapping[str, str] = {}
    if gateway is None:
        notes.append(f"the Gateway {gw_name} could not be read: assumed to serve every host")
        listen_port = port or 80
    else:
        labels = (gateway.get("spec") or {}).get("selector") or {}
        servers = [s for s in (gateway.get("spec") or {}).get("servers") or []
                   if any(host_matches(h.split("/")[-1].lower(), host) for h in s.get("hosts") or [])]
        if port is not None:
            servers = [s for s in servers if int((s.get("port") or {}).get("number", 0)) == port]
        if not servers:
            where = f" on port {port}" if port else ""
            return Hop(f"gateway {gw_name}", host, "not-found", notes=(
                f"the Gateway {gw_name} has no server for host {host}{where}: 404",))
        server = servers[0]
        listen_port = int((server.get("port") or {}).get("number", 80))
        server_hosts = [h if "/" in h else f"*/{h}" for h in server.get("hosts") or []]
        if (server.get("tls") or {}).get("httpsRedirect"):
            notes.append(f"port {listen_port} answers 301 to https first; the routes below apply to the https request")
    proxy = Proxy(gw_name, gw_namespace, labels, listen_port)
    # Per VirtualService: the hosts it serves on this server (intersection with the server's hosts).
    domains: dict[str, list[Obj]] = {}
    candidates = proxy_order(routing.virtual_services, gw_namespace, routing.default_export_to)
    for vs in candidates:
        if gw_name not in gateways_of(vs):
            continue
        vs_ns = namespace_of(vs)
        for raw in (vs.get("spec") or {}).get("hosts") or []:
            vs_host = resolve_host(str(raw), vs_ns)
            for server_host in server_hosts:
                ns, _, pattern = server_host.partition("/")
                if ns not in ("*", vs_ns) and not (ns == "." and vs_ns == gw_namespace):
                    continue
                pattern = pattern.lower()
                common = vs_host if host_matches(pattern, vs_host) else pattern if host_matches(vs_host, pattern) \
                    else None
                if common is not None and vs not in domains.setdefault(common, []):
                    domains[common].append(vs)
    matching = sorted((d for d in domains if host_matches(d, host)), key=_specificity)
    _export_findings(routing, host, gw_namespace, gw_name, findings)
    if not matching:
        _not_bound_findings(routing, host, gw_name, findings)
        unserved = f"no VirtualService bound to {gw_name} serves {host}: 404"
        return Hop(proxy.label, host, "not-found", notes=(*notes, unserved))
    chosen = domains[matching[0]]
    entries: list[_Entry] = []
    absent: list[tuple[str, int, Mapping[str, Any], str]] = []
    for vs in chosen:
        built, missing = _entries(vs, proxy)
        entries += built
        absent += [(name_of(vs), p, r, why) for p, r, why in missing]
        findings.extend(_shadowed(vs))
    # Gateways merge VirtualServices for one host and then move catch-all routes to the end.
    merged = [e for e in entries if not is_catch_all(e.match)] + [e for e in entries if is_catch_all(e.match)]
    if len(chosen) > 1:
        notes.append("merged for this host (gateways merge VirtualServices): " + ", ".join(map(name_of, chosen))
                     + "; catch-all rules moved last")
    hop = _decide(proxy, host, merged, request, request.host.lower(), absent)
    return replace(hop, notes=(*notes, *hop.notes))


def _export_findings(routing: Routing, host: str, namespace: str, binding: str, findings: list[Finding]) -> None:
    for vs in routing.virtual_services:
        if binding not in gateways_of(vs) or visible_to(vs, namespace, routing.default_export_to):
            continue
        if any(host_matches(resolve_host(str(h), namespace_of(vs)), host) for h in (vs.get("spec") or {}).get("hosts")
               or []):
            exported = sorted(export_set(vs, routing.default_export_to))
            origin = "" if (vs.get("spec") or {}).get("exportTo") else " (the mesh default)"
            findings.append(Finding("hidden-by-export-to", f"{name_of(vs)} serves {host} but is not exported to "
                                    f"namespace {namespace} (exportTo {exported}{origin}): its routes do not "
                                    f"apply to {'callers there' if binding == MESH else 'the gateway'}"))


def _not_bound_findings(routing: Routing, host: str, binding: str, findings: list[Finding]) -> None:
    for vs in routing.virtual_services:
        hosts = [resolve_host(str(h), namespace_of(vs)) for h in (vs.get("spec") or {}).get("hosts") or []]
        if binding not in gateways_of(vs) and any(host_matches(h, host) for h in hosts):
            findings.append(Finding("not-bound", f"{name_of(vs)} serves {host} but is bound to "
                                                 f"{', '.join(gateways_of(vs))}, not {binding}"))


def _why_first(vs: Obj, namespace: str, default: Sequence[str]) -> str:
    if "*" not in export_set(vs, default):
        return f"exported to namespace {namespace} by name, so listed before public ones"
    created = _created(vs)[0]
    return f"the oldest, created {created}" if created else "the first by name"


def _mesh_hop(routing: Routing, request: Request, namespace: str, findings: list[Finding]) -> Hop:
    raw_host, host_port = split_host_port(request.host)
    port = request.port or host_port
    proxy = Proxy(MESH, namespace, request.source_labels, port)
    visible = [vs for vs in proxy_order(routing.virtual_services, namespace, routing.default_export_to)
               if MESH in gateways_of(vs)]

    def serving(name: str) -> list[tuple[tuple[int, int], int, Obj]]:
        found = []
        for index, vs in enumerate(visible):
            hosts = [resolve_host(str(h), namespace_of(vs)) for h in (vs.get("spec") or {}).get("hosts") or []]
            best = sorted((h for h in hosts if host_matches(h, name)), key=_specificity)
            if best:
                found.append((_specificity(best[0]), index, vs))
        return sorted(found, key=lambda item: (item[0], item[1]))

    host = raw_host
    candidates = serving(host)
    if not candidates:
        host = expand_mesh_host(raw_host, namespace)
        candidates = serving(host)
    _export_findings(routing, host, namespace, MESH, findings)
    if not candidates:
        _not_bound_findings(routing, host, MESH, findings)
        return Hop(proxy.label, host, "default", request_headers=dict(request.headers), notes=(
            f"no VirtualService for {host} is visible here: Istio sends the request to that Service itself",))
    vs = candidates[0][2]
    ignored = [c[2] for c in candidates[1:] if c[0] == candidates[0][0]]
    if ignored:
        findings.append(Finding("duplicate-host", f"{host} is served in the mesh by {len(ignored) + 1} VirtualServices "
                                f"({', '.join(name_of(v) for v in [vs, *ignored])}); Istio does not merge them: "
                                f"{name_of(vs)} wins ({_why_first(vs, namespace, routing.default_export_to)}) "
                                f"and the routes of {', '.join(map(name_of, ignored))} are ignored (IST0109)"))
    findings.extend(_shadowed(vs))
    findings.extend(_prefix_keys(vs))
    notes: tuple[str, ...] = ()
    if port is None:
        ports = sorted({int(m["port"]) for rule in (vs.get("spec") or {}).get("http") or []
                        for m in rule.get("match") or [] if m and m.get("port")})
        if len(ports) == 1:  # the one port the rules know: the request cannot reach another route
            proxy = replace(proxy, listen_port=ports[0])
            notes = (f"request port not given: assumed {ports[0]}, the only port {name_of(vs)} routes by",)
        elif ports:
            notes = (f"request port not given: {name_of(vs)} routes ports {', '.join(map(str, ports))} "
                     "differently (pass --port)",)
    entries, missing = _entries(vs, proxy)
    absent = [(name_of(vs), p, r, why) for p, r, why in missing]
    hop = _decide(proxy, host, entries, request, request.host.lower(), absent)
    return replace(hop, notes=(*notes, *hop.notes))


def explain(routing: Routing, request: Request, *, then: Sequence[str] = (),
            forward: Sequence[str] = ("x-preview", "baggage")) -> Explanation:
    """Hop by hop: the gateway (no `source_namespace`) or the caller's sidecar decides first; each host in
    `then` is then called by the workload reached, from its namespace, carrying only the `forward` headers
    (what the propagation helpers copy from inbound to outbound requests)."""
    findings: list[Finding] = []
    if request.source_namespace is None:
        hop = _gateway_hop(routing, request, findings)
    else:
        hop = _mesh_hop(routing, request, request.source_namespace, findings)
    hops = [hop]
    current = request
    for next_host in then:
        last = hops[-1]
        if last.outcome not in ("routed", "default"):
            break
        target = last.destinations[0].host if last.destinations else last.host
        namespace = namespace_of_service_host(target) or current.source_namespace or "default"
        wanted = {name.lower() for name in forward}
        headers = {k: v for k, v in last.request_headers.items() if k.lower() in wanted}
        current = Request(host=next_host, headers=headers, source_namespace=namespace)
        hops.append(_mesh_hop(routing, current, namespace, findings))
    return Explanation(request, tuple(hops), tuple(dict.fromkeys(findings)))


# -- text ---------------------------------------------------------------------------------------------


def render(explanation: Explanation, *, markdown: bool = False) -> str:
    """A readable report: one block per hop, then the findings."""

    def code(text: str) -> str:
        return text if markdown else text.replace("`", "")

    request = explanation.request
    origin = "from outside, through the gateway" if request.source_namespace is None else \
        f"from namespace {request.source_namespace}"
    lines = [code(f"Request: {request.method} {request.host}{request.path} ({origin})")]
    for name, value in sorted(request.headers.items()):
        lines.append(code(f"  header `{name.lower()}: {value}`"))
    if not request.headers:
        lines.append("  no headers")
    for number, hop in enumerate(explanation.hops, 1):
        lines += ["", f"Hop {number}: {hop.proxy}, host {hop.host}"]
        for check in hop.rules:
            mark = "matches" if check.matched else "no: " + "; or ".join(check.reasons or ("not reached",))
            lines.append(code(f"  {'✓' if check.matched else '✗'} {check.label}: {mark}"))
        for change in (*hop.header_changes, *hop.response_changes):
            lines.append(code(f"    {change}"))
        for note in hop.notes:
            lines.append(code(f"  {note}"))
        if hop.outcome == "routed":
            lines.append(f"  -> {', '.join(map(str, hop.destinations))}")
        elif hop.outcome == "default":
            lines.append(f"  -> {hop.host} (the Service itself)")
        else:
            lines.append(f"  -> {hop.outcome}")
    if explanation.findings:
        lines += ["", "Warnings (routes Istio ignores):"]
        lines += [code(f"  ! {f.message}") for f in explanation.findings]
    return "\n".join(lines)


def redact_other_keys(text: str, repo_hash: str) -> str:
    """Hide other repositories' preview keys (route names, header values) from a PR comment."""
    return _PREVIEW_KEY.sub(lambda m: m.group(0) if m.group(0).endswith(repo_hash) else "preview-…", text)
