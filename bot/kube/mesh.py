"""The shared mesh VirtualServices: preview routes added, removed and folded by read-modify-write.

A service host's preview routes (bot/mesh_routes.py) live in the one mesh VirtualService that Istio
really uses for the host, chosen from every VirtualService in the cluster (bot/mesh_hosts.py): a team's
if it serves the host, else the bot's own in the routing namespace, exported everywhere. Invariants:
- Writes are read-modify-write guarded by resourceVersion and retried on 409/404 (bounded, with
  jittered back-off), so concurrent previews, on one replica or several, never lose each other's routes.
  Writers in one process take turns per host (no self-inflicted conflicts).
- Only routes named by a preview key are added or dropped; a team's own routes are left as they are.
- The bot's own VirtualService for a host is deleted once it holds no preview route, and folded into
  the team's when one appears; deletes carry the resourceVersion read, so a change made meanwhile wins.
- Routes are removed object by object wherever they are: a teardown never depends on which one serves,
  and one VirtualService the API server refuses to change (403, 422) never keeps the others' routes
  (RoutesNotRemoved names it and what to grant).
- When Istio would ignore the routes (another VirtualService in the way) or the bot may not edit the
  team's VirtualService, MeshRoutingError says so and nothing is written.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from bot import manifests, mesh_hosts, mesh_routes, metrics, naming, sessions
from bot.errors import MeshRoutingError, RoutesNotRemoved, TemporaryError
from bot.kube.transport import Conflict, KubeError, NotFound, Transport, collection_path
from bot.mesh_hosts import Ref
from bot.settings import ClusterSettings


class MeshStore:
    """The mesh VirtualServices of the cluster, over one transport."""

    def __init__(self, transport: Transport, settings: ClusterSettings) -> None:
        self._t = transport
        self._settings = settings
        self._host_locks: dict[str, asyncio.Lock] = {}

    async def virtual_services(self, selector: str | None = None) -> list[dict[str, Any]]:
        """The VirtualServices of the routing namespace."""
        return await self._t.list_objects(manifests.VIRTUAL_SERVICE_API, "virtualservices",
                                          self._settings.routing_namespace, selector)

    async def all_virtual_services(self) -> list[dict[str, Any]]:
        """Every VirtualService in the cluster that may route a host in the mesh: a team's may serve it from
        any namespace (list on the ClusterRole `preview-bot-virtualservices-read`). The bot's per-preview
        gateway and session VirtualServices are left out on the server: they are bound to the Gateway only,
        and without them the list does not grow with the number of previews."""
        excluded = f"{naming.ROLE_GATEWAY},{sessions.ROLE_SESSION}"
        return await self._t.list_objects(manifests.VIRTUAL_SERVICE_API, "virtualservices", None,
                                          f"{naming.ROLE_LABEL} notin ({excluded})")

    def _vs_path(self, ref: Ref) -> str:
        return f"{collection_path(manifests.VIRTUAL_SERVICE_API, 'virtualservices', ref.namespace)}/{ref.name}"

    def _own_ref(self, mesh_host: str) -> Ref:
        return Ref(self._settings.routing_namespace, naming.mesh_route_name(mesh_host))

    def _decide(self, items: list[dict[str, Any]], mesh_host: str) -> mesh_hosts.Decision:
        found = mesh_hosts.claimants(items, mesh_host, managed_by=(naming.MANAGED_BY_LABEL, naming.MANAGED_BY),
                                     role=(naming.ROLE_LABEL, naming.ROLE_MESH),
                                     own_namespace=self._settings.routing_namespace)
        return mesh_hosts.choose(found, mesh_host, self._own_ref(mesh_host))

    @staticmethod
    def _ref(item: Mapping[str, Any]) -> Ref:
        return Ref(str(item["metadata"]["namespace"]), str(item["metadata"]["name"]))

    def _is_ours(self, item: Mapping[str, Any]) -> bool:
        """A mesh VirtualService this bot created: its labels, in its routing namespace."""
        here = (item.get("metadata") or {}).get("namespace") == self._settings.routing_namespace
        return here and mesh_hosts.is_ours(item, (naming.MANAGED_BY_LABEL, naming.MANAGED_BY),
                                           (naming.ROLE_LABEL, naming.ROLE_MESH))

    @staticmethod
    def _host_of(item: Mapping[str, Any]) -> str:
        """The service host a mesh VirtualService routes: the bot's annotation, else its first host."""
        meta, spec = item.get("metadata") or {}, item.get("spec") or {}
        annotated = (meta.get("annotations") or {}).get(naming.HOST_ANNOTATION)
        return str(annotated) if annotated else mesh_hosts.fqdn(str((spec.get("hosts") or [""])[0]),
                                                                   str(meta.get("namespace", "")))

    def _not_editable(self, ref: Ref, mesh_host: str) -> MeshRoutingError:
        return MeshRoutingError(
            f"VirtualService {ref} routes {mesh_host} for the mesh, and preview-bot may not edit it: bind the "
            f"ClusterRole preview-bot-team-routes to preview-bot's ServiceAccount in namespace {ref.namespace} "
            f"(deploy/README.md), then comment `/preview`.")

    async def check_mesh_hosts(self, hosts: Iterable[str]) -> None:
        """Raise MeshRoutingError when preview routes for one of `hosts` could not be made to count:
        another VirtualService serves it in a way the bot must not change, or the bot may not edit the
        team's VirtualService it would add them to (a server-side dry run of the write). Writes nothing."""
        items = await self.all_virtual_services()
        by_ref = {self._ref(i): i for i in items}
        for host in dict.fromkeys(hosts):
            decision = self._decide(items, host)
            if decision.refusal:
                raise MeshRoutingError(decision.refusal)
            target = by_ref.get(decision.target) if decision.target else None
            if target is not None and not self._is_ours(target):
                try:
                    await self._t.call("PUT", self._vs_path(self._ref(target)), body=target,
                                       query=[("dryRun", "All"), ("fieldManager", naming.FIELD_MANAGER)])
                except KubeError as exc:
                    if exc.status == 403:
                        raise self._not_editable(self._ref(target), host) from None
                    if not isinstance(exc, Conflict | NotFound):
                        raise

    async def update_mesh_routes(self, mesh_host: str, change: Callable[[dict[str, Any]], dict[str, Any]], *,
                                 attempts: int = 40) -> bool:
        """Read-modify-write of the VirtualService that serves the host in the mesh, retried on 409; True
        if anything was written. Raises MeshRoutingError when Istio would ignore the routes.

        The target is chosen cluster-wide by mesh_hosts.choose(): the team's VirtualService if it serves
        the host (the bot's own ones are folded into it and deleted), else the bot's own, created in the
        routing namespace and exported everywhere. Writers in this process take turns per host (no
        self-inflicted conflicts); other replicas are kept apart by resourceVersion."""
        async with self._host_locks.setdefault(mesh_host, asyncio.Lock()):
            return await self._update_mesh_routes(mesh_host, change, attempts=attempts)

    async def _update_mesh_routes(self, mesh_host: str, change: Callable[[dict[str, Any]], dict[str, Any]], *,
                                  attempts: int) -> bool:
        changed = False
        for attempt in range(attempts):
            items = await self.all_virtual_services()
            by_ref = {self._ref(i): i for i in items}
            decision = self._decide(items, mesh_host)
            if decision.refusal or decision.target is None:
                raise MeshRoutingError(decision.refusal or f"no VirtualService can route {mesh_host}")
            folded = [by_ref[r] for r in decision.fold if r in by_ref]
            current = None if decision.create else by_ref.get(decision.target)
            try:
                if current is None:
                    await self._create(mesh_host, change(_with_folded(mesh_routes.new_spec(mesh_host), folded,
                                                                      mesh_host)))
                    changed = True
                else:
                    spec = current.get("spec") or {}
                    updated = change(_with_folded(spec, folded, mesh_host))
                    if self._is_ours(current):
                        updated = mesh_routes.exported_everywhere(updated)
                    if updated != spec:
                        await self._replace(decision.target, current, updated, mesh_host)
                        changed = True
                for item in folded:
                    # Its routes now live in the target; gone unless it changed since it was read.
                    changed |= await self._t.delete(self._vs_path(self._ref(item)),
                                                    resource_version=item["metadata"]["resourceVersion"])
                return changed
            except (Conflict, NotFound):
                pass  # someone else wrote (or deleted) first: re-read, re-apply our change
            metrics.MESH_CONFLICTS.inc()
            await asyncio.sleep(random.uniform(0, min(0.05 * 2**attempt, 1.0)))  # noqa: S311
        raise TemporaryError(f"could not update the mesh routes of {mesh_host} after {attempts} conflicts")

    async def _create(self, mesh_host: str, spec: dict[str, Any]) -> None:
        """POST the bot's own VirtualService for the host (409 Conflict when another writer was first)."""
        await self._t.call("POST", collection_path(manifests.VIRTUAL_SERVICE_API, "virtualservices",
                                                   self._settings.routing_namespace),
                           body=manifests.mesh_virtual_service(self._settings, mesh_host, spec),
                           query=[("fieldManager", naming.FIELD_MANAGER)])

    async def _replace(self, ref: Ref, current: dict[str, Any], spec: dict[str, Any], mesh_host: str) -> None:
        """PUT `current` with `spec` (its resourceVersion guards it: 409 when it changed since read)."""
        try:
            await self._t.call("PUT", self._vs_path(ref), body={**current, "spec": spec},
                               query=[("fieldManager", naming.FIELD_MANAGER)])
        except KubeError as exc:
            if exc.status == 403:
                raise self._not_editable(ref, mesh_host) from None
            raise

    async def add_mesh_route(self, mesh_host: str, route: dict[str, Any]) -> bool:
        return await self.update_mesh_routes(mesh_host,
                                             lambda spec: mesh_routes.with_route_checked(spec, mesh_host, route))

    async def remove_mesh_route(self, mesh_host: str, key: str) -> bool:
        return bool(await self.remove_routes_where(lambda route: route.get("name") == key, host=mesh_host))

    async def mesh_services(self) -> list[dict[str, Any]]:
        """Every mesh VirtualService in the cluster that carries preview routes (the bot's or a team's);
        gateway-bound ones (the previews' gateway routes, also named by key) are not mesh routes."""
        items = await self.all_virtual_services()
        return [item for item in items if mesh_hosts.applies_to_sidecars(item.get("spec") or {})
                and mesh_routes.preview_keys(item.get("spec") or {})]

    async def remove_routes_where(self, drop: Callable[[dict[str, Any]], bool], *, host: str | None = None) -> int:
        """Remove matching preview routes wherever they are (optionally only for one host); returns how many
        VirtualServices changed. Works object by object: a teardown never depends on which one serves, and
        one VirtualService the API server refuses to change (403, 422: retrying will not help) does not
        keep the routes in the others; RoutesNotRemoved names it once the others are done."""
        changed = 0
        refused: list[str] = []
        for item in await self.mesh_services():
            if host is not None and self._host_of(item) != host:
                continue
            keys = sorted({str(r["name"]) for r in item["spec"]["http"] if mesh_routes.is_preview_route(r) and drop(r)})
            if not keys:
                continue
            try:
                changed += await self._drop_routes(self._ref(item), self._host_of(item), drop)
            except KubeError as exc:
                if not _refused(exc):
                    raise  # the API server is in trouble: the whole removal fails, and is tried again whole
                refused.append(self._routes_left(item, keys, exc))
        if refused:
            raise RoutesNotRemoved(refused, changed)
        return changed

    def _routes_left(self, item: Mapping[str, Any], keys: list[str], exc: KubeError) -> str:
        """One clause: which VirtualService keeps which preview routes, and what would let the bot remove them."""
        ref = self._ref(item)
        left = f"VirtualService {ref} keeps the preview route{'s' if len(keys) > 1 else ''} {', '.join(keys)}"
        if exc.status != 403:
            return f"{left}: {exc}"
        if self._is_ours(item):
            return (f"{left}: preview-bot may not update or delete it (403 {exc.reason}): check the Role "
                    f"preview-bot-routing and its RoleBinding in namespace {ref.namespace} (deploy/README.md)")
        return (f"{left}: preview-bot may not update it (403 {exc.reason}): bind the ClusterRole "
                f"preview-bot-team-routes to preview-bot's ServiceAccount in namespace {ref.namespace} "
                f"(deploy/README.md)")

    async def _drop_routes(self, ref: Ref, host: str, drop: Callable[[dict[str, Any]], bool], *,
                           attempts: int = 40) -> bool:
        async with self._host_locks.setdefault(host, asyncio.Lock()):
            for attempt in range(attempts):
                current = await self._t.get(self._vs_path(ref))
                if current is None:
                    return False
                spec = current.get("spec") or {}
                updated = mesh_routes.without_routes(spec, host, drop)
                meta = current["metadata"]
                try:
                    if self._is_ours(current) and not mesh_routes.preview_keys(updated):
                        # No preview left: remove what the bot created, unless it changed meanwhile.
                        return await self._t.delete(self._vs_path(ref), resource_version=meta["resourceVersion"])
                    if updated == spec:
                        return False
                    await self._t.call("PUT", self._vs_path(ref), body={**current, "spec": updated},
                                       query=[("fieldManager", naming.FIELD_MANAGER)])
                    return True
                except (Conflict, NotFound):
                    pass
                metrics.MESH_CONFLICTS.inc()
                await asyncio.sleep(random.uniform(0, min(0.05 * 2**attempt, 1.0)))  # noqa: S311
        raise TemporaryError(f"could not remove preview routes from VirtualService {ref} after {attempts} conflicts")

    async def find_mesh_service(self, mesh_host: str) -> dict[str, Any] | None:
        """The VirtualService whose preview routes Istio uses for the host (mesh_hosts.choose): the team's
        or the bot's own; None when it does not exist yet or the host is refused. Writes nothing."""
        items = await self.all_virtual_services()
        decision = self._decide(items, mesh_host)
        if decision.refusal or decision.target is None:
            return None
        return next((item for item in items if self._ref(item) == decision.target), None)

    async def misplaced_mesh_routes(self) -> list[tuple[str, Ref, mesh_hosts.Decision]]:
        """(host, the bot's VirtualService, decision) for each of the bot's mesh VirtualServices that is not
        where the host's preview routes must live: a team's VirtualService for the host appeared (older or
        newer), or the host is refused now. A redeploy or `fold_mesh_routes` puts them right."""
        items = await self.all_virtual_services()
        found = []
        for item in items:
            if not self._is_ours(item):
                continue
            host = self._host_of(item)
            decision = self._decide(items, host)
            if decision.refusal or decision.target != self._ref(item) or decision.fold:
                found.append((host, self._ref(item), decision))
        return found

    async def fold_mesh_routes(self, mesh_host: str) -> bool:
        """Move the host's preview routes to the VirtualService that serves it (no route added or dropped)."""
        return await self.update_mesh_routes(mesh_host, lambda spec: spec)

    async def remove_routes_of_key(self, key: str) -> int:
        """Teardown needs no config: the routes are found by their name, the preview key."""
        return await self.remove_routes_where(lambda route: route.get("name") == key)

    async def remove_routes_elsewhere(self, key: str, hosts: Mapping[str, str]) -> int:
        """Remove `key`'s routes to a destination of `hosts` (destination -> the service host it now
        serves) from the VirtualServices of other hosts: left there when a service's `host` changed in
        the config. Routes to other destinations (a linked PR's) stay. Returns how many changed."""
        def misplaced(host: str) -> Callable[[dict[str, Any]], bool]:
            return lambda route: route.get("name") == key and any(
                hosts.get(d, host) != host for d in mesh_routes.route_destinations({"http": [route]}).get(key, []))
        changed = 0
        for item in await self.mesh_services():
            host = self._host_of(item)
            drop = misplaced(host)
            if any(drop(r) for r in item["spec"]["http"] if mesh_routes.is_preview_route(r)):
                changed += await self._drop_routes(self._ref(item), host, drop)
        return changed


def _refused(exc: KubeError) -> bool:
    """The API server refused the change itself (403, 422, ...): the same request fails again until someone
    changes RBAC or the object. 404 and 409 are retried in place; 429 and 5xx, already retried by the
    transport, mean the server is in trouble."""
    return 400 <= exc.status < 500 and exc.status not in (404, 409, 429)


def _with_folded(spec: dict[str, Any], folded: Iterable[Mapping[str, Any]], mesh_host: str) -> dict[str, Any]:
    """`spec` with the preview routes of the VirtualServices being folded into it."""
    for item in folded:
        spec = mesh_routes.with_routes_of(spec, mesh_host, item.get("spec") or {})
    return spec
