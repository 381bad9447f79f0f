"""What is live in the cluster, read from labels and annotations: previews, their Services, the routing.

Reads only. A preview is the set of Deployments labelled with one preview key (bot/naming.py); its
hosts are its gateway VirtualServices' host annotations. Repository identity is the id label; legacy
previews (made before ids, no id label) are found by the hash of their repository's name
(naming.repo_selectors). The cluster is the record: nothing here is cached. A preview made before
PREVIEW_NAMESPACE or PREVIEW_ROUTING_NAMESPACE changed is found where it is (manifests.own_routes: its
gateway VirtualServices, then its Deployments in the namespace they send to); one the bot may not read
there carries the reason (`unreadable`) instead of being missed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from bot import manifests, naming
from bot.errors import ObjectsElsewhere
from bot.kube.placement import DEPLOYMENTS, Placement
from bot.kube.transport import KubeError, Transport, api_path, collection_path
from bot.naming import PreviewKey
from bot.settings import ClusterSettings


@dataclass(frozen=True)
class LivePreview:
    """A preview as the cluster sees it, from labels and annotations."""

    key: str
    repo: str  # full name when last deployed: for people
    number: int
    sha: str
    services: tuple[str, ...]
    created: str
    pushed_at: str | None
    keep: bool
    hosts: tuple[str, ...] = ()
    repo_id: int | None = None  # None: a legacy preview, made before ids (found by its name's hash)
    namespace: str = ""  # where its Deployments are ("": PREVIEW_NAMESPACE)
    # Why its Deployments cannot be read ("": they can): its gateway routes send to a namespace other than
    # PREVIEW_NAMESPACE (the setting changed while it was live) where the bot may not list them.
    unreadable: str = ""
    # Some Deployment's rollout was reported failed at the commit it runs (naming.ROLLOUT_FAILED_ANNOTATION)...
    rollout_failed: bool = False
    # ...and every Deployment of the preview is Available now (bot.manifests.rolled_out).
    available: bool = False


class Inventory:
    """Reads of what is live, over one transport."""

    def __init__(self, transport: Transport, settings: ClusterSettings) -> None:
        self._t = transport
        self._settings = settings
        self._where = Placement(transport, settings)

    async def _routing_virtual_services(self, selector: str | None = None) -> list[dict[str, Any]]:
        return await self._t.list_objects(manifests.VIRTUAL_SERVICE_API, "virtualservices",
                                          self._settings.routing_namespace, selector)

    async def live_previews(self, repo: tuple[int, str] | None = None) -> list[LivePreview]:
        """Every live preview, or those of one repository `(id, current full name)`: found by its id, and
        legacy ones (no id label) by the hash of its name."""
        selectors = naming.repo_selectors(*repo) if repo else (naming.MANAGED_SELECTOR,)
        deployments: list[dict[str, Any]] = []
        routes: list[dict[str, Any]] = []
        for selector in selectors:
            routes += await self._where.own_routes(f"{selector},{naming.ROLE_LABEL}={naming.ROLE_GATEWAY}")
        if repo is None:
            self._where.remember_every(routes)
        # Previews made before PREVIEW_NAMESPACE changed are where their gateway routes send.
        unreadable: dict[str, str] = {}
        for namespace in sorted(self._where.namespaces(routes)):
            for selector in selectors:
                try:
                    deployments += [item for _, _, item in
                                    await self._where.listed([namespace], selector, DEPLOYMENTS)]
                except ObjectsElsewhere as exc:
                    unreadable[namespace] = str(exc)
        hosts: dict[str, list[str]] = {}
        for route in routes:
            meta = route["metadata"]
            hosts.setdefault(meta["labels"][naming.KEY_LABEL], []).append(
                (meta.get("annotations") or {}).get(naming.HOST_ANNOTATION, ""))
        grouped: dict[str, list[dict[str, Any]]] = {}
        workloads_of: dict[str, list[dict[str, Any]]] = {}
        for item in deployments:
            key_label = item["metadata"]["labels"].get(naming.KEY_LABEL, "")
            grouped.setdefault(key_label, []).append(item["metadata"])
            workloads_of.setdefault(key_label, []).append(item)
        # A preview whose Deployments were never made (refused by admission after its gateway route was
        # claimed) is still live by its gateway routes, with no services: else a missed close would leave
        # them forever.
        routes_only: dict[str, list[dict[str, Any]]] = {}
        for route in routes:
            key_label = route["metadata"]["labels"].get(naming.KEY_LABEL, "")
            if key_label not in grouped:
                routes_only.setdefault(key_label, []).append(route["metadata"])
        previews = []
        for key, metas in sorted({**grouped, **routes_only}.items()):
            workloads = [] if key in routes_only else metas
            blocked = sorted({unreadable[n] for n in manifests.route_namespaces([r for r in routes if
                              r["metadata"]["labels"].get(naming.KEY_LABEL, "") == key]) if n in unreadable})
            annotations = [m.get("annotations") or {} for m in metas]
            pushed = [a[naming.PUSHED_AT_ANNOTATION] for a in annotations if a.get(naming.PUSHED_AT_ANNOTATION)]
            ids = {m["labels"].get(naming.REPO_ID_LABEL, "") for m in metas}
            failed = any(a.get(naming.ROLLOUT_FAILED_ANNOTATION) and
                         a.get(naming.ROLLOUT_FAILED_ANNOTATION) == a.get(naming.SHA_ANNOTATION)
                         for a in annotations[:len(workloads)])
            raw_id = ids.pop() if len(ids) == 1 else ""
            previews.append(LivePreview(
                key=key,
                repo=annotations[0].get(naming.REPO_ANNOTATION, ""),
                number=int(metas[0]["labels"].get(naming.PR_LABEL, "0")),
                sha=annotations[0].get(naming.SHA_ANNOTATION, ""),
                services=tuple(sorted(m["labels"].get(naming.SERVICE_LABEL, "") for m in workloads)),
                created=min(m.get("creationTimestamp", "") for m in metas),
                pushed_at=max(pushed) if pushed else None,
                keep=any(a.get(naming.KEEP_ANNOTATION) == "true" for a in annotations),
                hosts=tuple(sorted(hosts.get(key, []))),
                repo_id=int(raw_id) if raw_id.isdigit() and int(raw_id) > 0 else None,
                namespace=str(workloads[0].get("namespace", "")) if workloads else "",
                unreadable="; ".join(blocked),
                rollout_failed=failed,
                available=bool(workloads) and all(manifests.rolled_out(d) for d in workloads_of.get(key, [])),
            ))
        return previews

    async def find_deployments(self, selector: str, *, routes: str = naming.MANAGED_SELECTOR) -> list[dict[str, Any]]:
        """The bot's Deployments matching `selector`, wherever they are: in PREVIEW_NAMESPACE and in the
        namespaces that the bot's gateway routes matching `routes` (a label selector: one preview's, or
        every preview's by default: then as of the last read of every route, Placement.every_namespace)
        send to, where a preview made before PREVIEW_NAMESPACE changed lives.
        Raises ObjectsElsewhere when one of those may not be listed: a preview there is never taken for
        absent."""
        if routes == naming.MANAGED_SELECTOR:  # every preview's: not a list of every route per call
            namespaces = await self._where.every_namespace()
        else:
            own = await self._where.own_routes(f"{routes},{naming.ROLE_LABEL}={naming.ROLE_GATEWAY}")
            namespaces = self._where.namespaces(own)
        return [item for _, _, item in await self._where.listed(namespaces, selector, DEPLOYMENTS)]

    async def recorded_shas(self, key: PreviewKey) -> dict[str, str]:
        """Deployment name -> the commit it runs (its SHA annotation), for one preview, wherever its
        Deployments are (find_deployments; ObjectsElsewhere when they may not be listed)."""
        items = await self.find_deployments(key.selector(), routes=key.selector())
        return {i["metadata"]["name"]: str((i["metadata"].get("annotations") or {}).get(naming.SHA_ANNOTATION, ""))
                for i in items}

    async def existing_destinations(self, destinations: Iterable[str]) -> tuple[set[str], dict[str, str]]:
        """Of route `destinations` (Service FQDNs): (those whose Service exists, destination -> why it cannot
        be told). Each is looked for in the namespace it names, not only PREVIEW_NAMESPACE: a route of a
        preview made before that setting changed sends to its old namespace. A namespace where the bot
        may not list Services (403), or a host not of the form `<service>.<namespace>.svc.cluster.local`,
        leaves its destinations unknown: never called missing."""
        by_namespace: dict[str, set[str]] = {}
        unknown: dict[str, str] = {}
        for destination in set(destinations):
            namespace = naming.destination_namespace(destination)
            if namespace is None:
                unknown[destination] = "not a Service name of the form <service>.<namespace>.svc.cluster.local"
            else:
                by_namespace.setdefault(namespace, set()).add(destination)
        found: set[str] = set()
        for namespace, wanted in sorted(by_namespace.items()):
            try:
                items = await self._t.list_objects("v1", "services", namespace, naming.MANAGED_SELECTOR)
            except KubeError as exc:
                if exc.status != 403 or namespace == self._settings.namespace:
                    raise
                unknown |= {d: f"preview-bot may not list Services in namespace {namespace} ({exc.status}); "
                               f"PREVIEW_NAMESPACE is {self._settings.namespace}" for d in wanted}
                continue
            found |= wanted & {naming.service_fqdn(i["metadata"]["name"], namespace) for i in items}
        return found, unknown

    async def gateway(self, name: str) -> dict[str, Any] | None:
        """The Istio Gateway `<namespace>/<name>` (PREVIEW_GATEWAY), or None when it does not exist."""
        namespace, _, gateway = name.partition("/")
        return await self._t.get(f"{collection_path(manifests.VIRTUAL_SERVICE_API, 'gateways', namespace)}/{gateway}")

    async def served_resources(self, api_version: str) -> frozenset[str] | None:
        """The resource names (plurals: `gateways`, ...) the API server serves in `api_version`, from its
        discovery document (GET /apis/<group>/<version>); None when it serves no such group version (for
        Istio's: its CRDs are not installed)."""
        found = await self._t.get(api_path(api_version))
        if found is None:
            return None
        return frozenset(str(r.get("name", "")) for r in found.get("resources") or [])

    async def routing_objects(self) -> tuple[dict[str, Any] | None, list[dict[str, Any]], list[str]]:
        """(the Gateway PREVIEW_GATEWAY or None, VirtualServices, notes) for `explain`: every namespace's
        VirtualServices when the credentials may list them cluster-wide, else the routing namespace's
        (the bot's own RBAC); the notes say what could not be read."""
        notes: list[str] = []
        try:
            gateway = await self.gateway(self._settings.gateway)
            if gateway is None:
                served = await self.served_resources(manifests.VIRTUAL_SERVICE_API)
                if served is None or "virtualservices" not in served:
                    notes.append(f"the API server does not serve {manifests.VIRTUAL_SERVICE_API} VirtualServices "
                                 "(Istio's CRDs are not installed): no routing to explain")
                    return None, [], notes
                notes.append(f"the Gateway {self._settings.gateway} does not exist")
        except KubeError as exc:
            gateway = None
            notes.append(f"the Gateway {self._settings.gateway} could not be read ({exc.status})")
        try:
            items = await self._t.list_objects(manifests.VIRTUAL_SERVICE_API, "virtualservices", None)
        except KubeError as exc:
            if exc.status != 403:
                raise
            items = await self._routing_virtual_services()
            notes.append(f"VirtualServices read in namespace {self._settings.routing_namespace} only "
                         "(no right to list them cluster-wide)")
        return gateway, items, notes
