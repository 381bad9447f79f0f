"""One preview's own objects in the cluster: write them (only over what is ours), label, mark, delete.

A preview's objects are its Deployments and Services (PREVIEW_NAMESPACE) and its gateway
VirtualServices (the routing namespace), all labelled with the preview key (bot/naming.py) and found by
label selectors, so teardown needs no configuration. A preview made before PREVIEW_NAMESPACE or
PREVIEW_ROUTING_NAMESPACE changed is found where it is: its gateway VirtualServices in any namespace
(the cluster-wide read of VirtualServices), its Deployments and Services in the namespaces their
destinations name. Invariants:
- Nothing is written over an object of another repository's preview (bot/ownership.py), checked
  before any write; a gateway VirtualService that does not exist yet is created with POST, so of two
  repositories wanting one host only one creator wins (409 for the other).
- Writes are server-side apply; deletes are by label, so a partly made preview is removed whole.
Mesh routes (the shared VirtualServices) are not here: bot/kube/mesh.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from bot import manifests, naming, ownership
from bot.kube.placement import Listed, Placement
from bot.kube.transport import Conflict, NotFound, Transport, collection_path, object_path
from bot.naming import PreviewKey
from bot.settings import ClusterSettings


class PreviewObjects:
    """Writes of previews' own objects, over one transport."""

    def __init__(self, transport: Transport, settings: ClusterSettings) -> None:
        self._t = transport
        self._settings = settings
        self._where = Placement(transport, settings)

    async def ensure_owned(self, manifest: Mapping[str, Any], key: PreviewKey) -> bool:
        """Refuse to overwrite an object that belongs to another repository's preview (HostConflictError,
        bot/ownership.py); True if it exists."""
        existing = await self._t.get(object_path(manifest))
        if existing is None:
            return False
        ownership.check_owner(existing, manifest, key)
        return True

    async def apply_preview(self, plan: manifests.PreviewPlan) -> list[Listed]:
        """Apply the preview's objects, then delete its gateway routes for hosts it no longer has (the
        host template uses {repo} or {owner} and the repository was renamed or transferred) or in an
        earlier PREVIEW_ROUTING_NAMESPACE. Returns the deployed services' Deployments and Services left
        where an earlier PREVIEW_NAMESPACE put them, for the caller to delete (delete_objects) once their
        mesh routes are gone: a redeploy moves a preview (bot.kube.Kube.apply_preview). Raises
        ObjectsElsewhere, before writing anything, when those may not be listed: they would be left with
        nothing to find them.

        A gateway VirtualService (named by its host, so another repository's preview may want the same
        one) that does not exist yet is created with POST first: the API server lets only one creator win
        (409 for the other), so the ownership check cannot be raced by two repositories at once, on one
        replica or several."""
        routes = await self._where.own_routes(f"{plan.key.selector()},{naming.ROLE_LABEL}={naming.ROLE_GATEWAY}")
        services = {naming.dns_label(s.service.name) for s in plan.services}
        elsewhere = [(api, plural, item) for api, plural, item in await self._where.listed(
            self._where.namespaces(routes) - {self._settings.namespace}, plan.key.selector())
            if (item["metadata"].get("labels") or {}).get(naming.SERVICE_LABEL) in services]
        absent = [m for m in plan.manifests() if not await self.ensure_owned(m, plan.key)]
        for manifest in absent:
            if manifest["kind"] == "VirtualService":
                try:
                    await self._t.call("POST", collection_path(manifest["apiVersion"], "virtualservices",
                                                               manifest["metadata"]["namespace"]),
                                       body=dict(manifest), query=[("fieldManager", naming.FIELD_MANAGER)])
                except Conflict:
                    await self.ensure_owned(manifest, plan.key)  # created meanwhile: whose is it?
        for manifest in plan.manifests():
            await self._t.apply(manifest)
        wanted = {s.gateway_route["metadata"]["name"] for s in plan.services}
        for item in routes:
            meta = item["metadata"]
            if (meta.get("labels") or {}).get(naming.SERVICE_LABEL) not in services:
                continue  # another service's: not part of this deploy
            if meta["name"] not in wanted or meta["namespace"] != self._settings.routing_namespace:
                await self.delete_objects([(manifests.VIRTUAL_SERVICE_API, "virtualservices", item)])
        return elsewhere

    async def delete_objects(self, objects: Iterable[Listed]) -> int:
        """Delete these listed objects; returns how many went."""
        deleted = 0
        for api_version, plural, item in objects:
            meta = item["metadata"]
            deleted += await self._t.delete(f"{collection_path(api_version, plural, meta['namespace'])}/{meta['name']}")
        return deleted

    async def mark_rollout_failed(self, plan: manifests.PreviewPlan, names: Iterable[str]) -> int:
        """Mark the Deployments `names` of `plan` (object names) as reported failed at `plan.sha`
        (naming.ROLLOUT_FAILED_ANNOTATION), so a reconciliation pass can tell, from its listing alone, a
        preview reported failed that became Available since (an image pushed late, a crash loop that
        ended). Applied with the Deployment's own manifest under the bot's field manager: the next
        deploy's apply, which does not carry the annotation, removes it, at no cost. Returns how many."""
        wanted = set(names)
        marked = 0
        for service in plan.services:
            if service.name not in wanted:
                continue
            for manifest in service.workload:
                if manifest["kind"] != "Deployment":
                    continue
                meta = manifest["metadata"]
                annotations = {**meta.get("annotations", {}), naming.ROLLOUT_FAILED_ANNOTATION: plan.sha}
                await self._t.apply({**manifest, "metadata": {**meta, "annotations": annotations}})
                marked += 1
        return marked

    async def adopt(self, key: str, repo_id: int) -> int:
        """Add the repository id label to a legacy preview's objects (Deployments, Services, gateway routes);
        returns how many were labelled. Later renames then find the preview by its id."""
        selector = f"{naming.MANAGED_BY_LABEL}={naming.MANAGED_BY},{naming.KEY_LABEL}={key},!{naming.REPO_ID_LABEL}"
        patch = {"metadata": {"labels": {naming.REPO_ID_LABEL: str(repo_id)}}}
        changed = 0
        for api_version, plural, item in await self._own_objects(selector):
            meta = item["metadata"]
            path = f"{collection_path(api_version, plural, meta['namespace'])}/{meta['name']}"
            try:
                await self._t.call("PATCH", path, body=patch, content_type="application/merge-patch+json")
            except NotFound:
                continue
            changed += 1
        return changed

    async def _own_objects(self, selector: str) -> list[Listed]:
        """(apiVersion, plural, object) of every object of the bot's matching `selector`, wherever the bot
        put it: gateway VirtualServices in every namespace, Deployments and Services in PREVIEW_NAMESPACE
        and in those the VirtualServices' destinations name (an earlier PREVIEW_NAMESPACE). Raises
        ObjectsElsewhere, having changed nothing, when one of those may not be listed."""
        routes = await self._where.own_routes(selector)
        found: list[Listed] = [(manifests.VIRTUAL_SERVICE_API, "virtualservices", item) for item in routes]
        return found + await self._where.listed(self._where.namespaces(routes), selector)

    async def delete_preview(self, key: PreviewKey, *, services: Iterable[str] | None = None) -> int:
        """Delete the preview's objects (optionally only some services'), wherever they are (_own_objects);
        returns how many went. Raises ObjectsElsewhere, having deleted nothing, when some are in a namespace
        the bot may not list: deleting the rest would remove the routes that still lead to them."""
        selector = key.selector()
        if services is not None:
            names = ",".join(sorted(naming.dns_label(s) for s in services))
            if not names:
                return 0
            selector += f",{naming.SERVICE_LABEL} in ({names})"
        return await self.delete_objects(await self._own_objects(selector))

    async def set_keep(self, key: PreviewKey, keep: bool) -> int:
        """Mark (or unmark) a preview's Deployments, wherever they are (_own_objects), so idle clean-up
        leaves them alone."""
        changed = 0
        for _, plural, item in await self._own_objects(key.selector()):
            if plural != "deployments":
                continue
            meta = item["metadata"]
            path = f"{collection_path('apps/v1', 'deployments', meta['namespace'])}/{meta['name']}"
            patch = {"metadata": {"annotations": {naming.KEEP_ANNOTATION: "true" if keep else None}}}
            await self._t.call("PATCH", path, body=patch, content_type="application/merge-patch+json")
            changed += 1
        return changed
