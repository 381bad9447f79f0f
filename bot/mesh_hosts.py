"""Which mesh VirtualService really routes a service host, as Istio decides it (pure).

Istio never merges two mesh VirtualServices for one host: a sidecar uses one and reports the others
in istiod's `pilot_vservice_dup_domain` metric. Rules followed here (istio.io/istio, pilot/pkg/model:
`ResolveShortnameToFQDN`, `PushContext.initVirtualServices`, `SelectVirtualServices`,
`sortMergedVirtualServicesByCreationTime`; networking/v1alpha3/virtual_service.proto, `hosts`,
`gateways`, `exportTo`):

- A VirtualService applies to sidecars when `gateways` is empty or contains `mesh`; one bound only to
  gateways is not a mesh VirtualService and never competes.
- Hosts are resolved against the VirtualService's own namespace: a name without a dot `a` in namespace
  `shop` is `a.shop.svc.cluster.local`. Istio expands nothing else: `a.shop` and `a.shop.svc` stay as
  written, are not bound to the Service, and take those Host names away from it (its virtual host
  domains) on the port-80 listener (seen on istiod + Envoy; istiod reports no duplicate for it), so
  they are reported as aliases, never adopted.
- Visibility (`exportTo`): `*` anywhere -> every namespace; otherwise `~` -> nobody; otherwise the listed
  namespaces (`.` is the VirtualService's own). Unset -> the mesh's `defaultVirtualServiceExportTo`,
  which the bot cannot see. For a sidecar, VirtualServices exported to its namespace only (private or
  listed) come before those exported everywhere, so a restricted one wins where it is visible.
- Among equals the oldest wins: `creationTimestamp`, then name, then namespace.
- An exact host beats a wildcard (`*.shop.svc.cluster.local`) for the same Service
  (`computeWildcardHostVirtualServiceIndex`), so an exact VirtualService takes the host away from a
  wildcard one.

`choose()` turns this into one decision for the bot: add the preview routes to this VirtualService
(the team's, or the bot's own), fold the bot's other VirtualServices for the host into it, or refuse
with a reason that names the VirtualService in the way (`namespace/name`).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

CLUSTER_DOMAIN = "cluster.local"
MESH_GATEWAY = "mesh"
EVERYWHERE = "*"
NOWHERE = "~"
OWN_NAMESPACE = "."


class Visibility(enum.Enum):
    EVERYWHERE = "every namespace"
    RESTRICTED = "some namespaces"
    NOWHERE = "no namespace"
    MESH_DEFAULT = "the mesh default"


class Claim(enum.Enum):
    EXACT = "exact"        # names the host (FQDN, or a dotless short name Istio expands to it)
    ALIAS = "alias"        # `a.shop` / `a.shop.svc`: a Kubernetes short form Istio does not expand
    WILDCARD = "wildcard"  # `*.shop.svc.cluster.local` and the like


@dataclass(frozen=True, order=True)
class Ref:
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Claimant:
    """A mesh VirtualService whose hosts cover the service host."""

    ref: Ref
    created: str          # RFC 3339 creationTimestamp ("" when not persisted yet)
    claim: Claim
    written: str          # the host as the VirtualService writes it
    visibility: Visibility
    export_to: tuple[str, ...]
    ours: bool
    others: tuple[str, ...] = ()  # the other hosts it routes (resolved): its http routes apply to them too

    @property
    def order(self) -> tuple[str, str, str]:
        """Istio's order among VirtualServices of one visibility class: oldest first."""
        return self.created, self.ref.name, self.ref.namespace


@dataclass(frozen=True)
class Decision:
    """`target`: the VirtualService to hold the preview routes; `create`: it does not exist yet (the
    bot's own). `fold`: the bot's other VirtualServices for the host, whose preview routes move to the
    target and which are then deleted. `refusal`: why no VirtualService can carry them (nothing is
    written then). `shadowed`: the team's VirtualServices Istio already ignores (older one wins)."""

    target: Ref | None = None
    create: bool = False
    fold: tuple[Ref, ...] = ()
    refusal: str | None = None
    shadowed: tuple[Ref, ...] = ()


def fqdn(host: str, namespace: str, domain: str = CLUSTER_DOMAIN) -> str:
    """Istio's `ResolveShortnameToFQDN`: a name without a dot is a Service in the VirtualService's
    namespace; anything else (FQDN, `*`, IP address, `a.shop`) is returned lower-cased as written."""
    name = host.strip().lower()
    if name and name != "*" and "." not in name and ":" not in name:
        return f"{name}.{namespace}.svc.{domain}"
    return name


def kubernetes_aliases(service_host: str, domain: str = CLUSTER_DOMAIN) -> frozenset[str]:
    """`a.shop` and `a.shop.svc` for `a.shop.svc.cluster.local` (the DNS search-path forms); empty
    for a host that is not `<name>.<namespace>.svc.<domain>`."""
    suffix = f".svc.{domain}"
    if not service_host.endswith(suffix):
        return frozenset()
    short = service_host[: -len(suffix)]
    if short.count(".") != 1:
        return frozenset()
    return frozenset({short, f"{short}.svc"})


def wildcard_covers(pattern: str, host: str) -> bool:
    """Istio's wildcard host match: `*` covers every host, `*.b.c` covers `a.b.c` and `x.a.b.c`."""
    if pattern == "*":
        return True
    return pattern.startswith("*.") and host.endswith(pattern[1:])


def applies_to_sidecars(spec: Mapping[str, Any]) -> bool:
    gateways = spec.get("gateways") or []
    return not gateways or MESH_GATEWAY in gateways


def visibility(spec: Mapping[str, Any]) -> Visibility:
    export_to = [str(e) for e in spec.get("exportTo") or []]
    if not export_to:
        return Visibility.MESH_DEFAULT
    if EVERYWHERE in export_to:
        return Visibility.EVERYWHERE
    if NOWHERE in export_to:
        return Visibility.NOWHERE
    return Visibility.RESTRICTED


def is_ours(item: Mapping[str, Any], managed_by: tuple[str, str], role: tuple[str, str]) -> bool:
    labels = (item.get("metadata") or {}).get("labels") or {}
    return labels.get(managed_by[0]) == managed_by[1] and labels.get(role[0]) == role[1]


def claimants(items: Iterable[Mapping[str, Any]], service_host: str, *, managed_by: tuple[str, str],
              role: tuple[str, str], own_namespace: str, domain: str = CLUSTER_DOMAIN) -> list[Claimant]:
    """The mesh VirtualServices (cluster-wide list items) that cover `service_host`, oldest first.

    One bound only to gateways, or exported to nobody (`~`), covers nothing. Each claims the host by its
    strongest host entry: exact, then alias, then wildcard. `ours` only for the bot's labels in the bot's
    routing namespace `own_namespace`: another installation's VirtualService is treated like a team's."""
    host = service_host.lower()
    aliases = kubernetes_aliases(host, domain)
    found = []
    for item in items:
        spec, meta = item.get("spec") or {}, item.get("metadata") or {}
        if not applies_to_sidecars(spec) or visibility(spec) is Visibility.NOWHERE:
            continue
        namespace = str(meta.get("namespace", ""))
        best: tuple[Claim, str] | None = None
        for written in spec.get("hosts") or []:
            resolved = fqdn(str(written), namespace, domain)
            if resolved == host:
                claim = Claim.EXACT
            elif resolved in aliases:
                claim = Claim.ALIAS
            elif wildcard_covers(resolved, host):
                claim = Claim.WILDCARD
            else:
                continue
            rank = list(Claim).index(claim)
            if best is None or rank < list(Claim).index(best[0]):
                best = (claim, str(written))
        if best is None:
            continue
        resolved_hosts = dict.fromkeys(fqdn(str(w), namespace, domain) for w in spec.get("hosts") or [])
        found.append(Claimant(
            others=tuple(h for h in resolved_hosts if h != host and h not in aliases),
            ref=Ref(namespace, str(meta.get("name", ""))), created=str(meta.get("creationTimestamp") or ""),
            claim=best[0], written=best[1], visibility=visibility(spec),
            export_to=tuple(str(e) for e in spec.get("exportTo") or []),
            ours=namespace == own_namespace and is_ours(item, managed_by, role)))
    return sorted(found, key=lambda c: c.order)


def _export_fix(c: Claimant) -> str:
    shown = "unset" if not c.export_to else "[" + ", ".join(f'"{e}"' for e in c.export_to) + "]"
    return f"its exportTo is {shown}"


def choose(found: Iterable[Claimant], service_host: str, own: Ref) -> Decision:
    """Where the preview routes of `service_host` must live so that every sidecar uses them.

    - No VirtualService but the bot's: the bot's own, `own` (created when missing, exported everywhere).
    - The team's VirtualServices for the exact host, all exported everywhere (`exportTo: ["*"]`): the
      oldest of them, which is the one Istio uses; the bot's own ones are folded into it and deleted,
      so the team's routes apply again if the bot's was older.
    - Refused, naming the VirtualService: one that is exported to some namespaces only (there it wins
      over any other) or relies on the mesh default (`exportTo` unset: under
      `defaultVirtualServiceExportTo: ["."]` other namespaces never see it); one naming the host as
      `a.shop` or `a.shop.svc` (Istio does not bind those to the Service); a wildcard VirtualService
      when no team VirtualService names the host exactly (an exact one would take the host from it,
      dropping the team's routes for it); the team's VirtualService for the host when it lists other
      hosts too (Istio applies its http routes to each of them)."""
    found = list(found)
    team = [c for c in found if not c.ours]
    exact = [c for c in team if c.claim is Claim.EXACT]
    ours = tuple(c.ref for c in found if c.ours)
    for c in exact:
        if c.visibility is not Visibility.EVERYWHERE:
            return Decision(refusal=(
                f"VirtualService {c.ref} routes {service_host} for the mesh but {_export_fix(c)}, so the "
                f"preview routes would not reach every namespace's callers (exportTo unset follows the "
                f"mesh's defaultVirtualServiceExportTo). Add `exportTo: [\"*\"]` to it, then comment "
                f"`/preview`."))
    for c in team:
        if c.claim is Claim.ALIAS:
            return Decision(refusal=(
                f"VirtualService {c.ref} names `{c.written}`, a short form of {service_host} that Istio "
                f"does not expand (only names without a dot are): on port 80, requests with that Host "
                f"follow it and not the preview routes. Write `{service_host}` in its hosts, then comment "
                f"`/preview`."))
    if exact and exact[0].others:
        c = exact[0]
        return Decision(refusal=(
            f"VirtualService {c.ref} routes {service_host} together with {', '.join(c.others)}: its routes "
            f"apply to every host it lists, so a preview route of {service_host} would also take those hosts' "
            f"requests that carry the preview's header (and the default route the bot adds would send them "
            f"to {service_host}). Give {service_host} a VirtualService of its own (exportTo: [\"*\"]), then "
            f"comment `/preview`."))
    if exact:
        # Istio already ignores the team's others for this host: newer exact ones, and wildcards.
        return Decision(target=exact[0].ref, fold=ours, shadowed=tuple(c.ref for c in team if c is not exact[0]))
    wildcards = [c for c in team if c.claim is Claim.WILDCARD]
    if wildcards:
        c = wildcards[0]
        return Decision(refusal=(
            f"VirtualService {c.ref} routes {service_host} through the wildcard `{c.written}`; a "
            f"VirtualService for {service_host} itself would replace its routes for this host. Give "
            f"{service_host} a VirtualService of its own (exportTo: [\"*\"]), then comment `/preview`."))
    # Only the bot's own: the one by the bot's name; others of its own for the host fold into it.
    return Decision(target=own, create=own not in ours, fold=tuple(r for r in ours if r != own))
