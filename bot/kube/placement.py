"""Where the bot's objects are: its per-preview gateway VirtualServices, and the namespaces they send to.

A preview made before PREVIEW_NAMESPACE or PREVIEW_ROUTING_NAMESPACE changed stays where it was made:
its gateway VirtualServices in the old routing namespace (found by the cluster-wide read of
VirtualServices), its Deployments and Services in the namespace those routes send to. Which routes are
this configuration's is a pure rule (bot.manifests.own_routes); this part does the reads it needs, for
the parts that read (inventory.py) and write (objects.py) a preview's objects. Reads only.

Shapes: `own_routes(selector)` -> VirtualService objects; `namespaces(routes)` -> namespace names;
`listed(namespaces, selector, kinds)` -> [(apiVersion, plural, object)]. Errors: KubeError from the
transport; ObjectsElsewhere when a namespace other than PREVIEW_NAMESPACE may not be listed (403).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from bot import manifests, naming
from bot.errors import ObjectsElsewhere
from bot.kube.transport import KubeError, Transport
from bot.settings import ClusterSettings

# (apiVersion, plural, object) of one of the bot's objects, as listed.
Listed = tuple[str, str, dict[str, Any]]
DEPLOYMENTS = (("apps/v1", "deployments"),)
WORKLOADS = (("apps/v1", "deployments"), ("v1", "services"))


class Placement:
    """Reads of where the bot's objects are, over one transport."""

    def __init__(self, transport: Transport, settings: ClusterSettings) -> None:
        self._t = transport
        self._settings = settings
        # Namespaces other than PREVIEW_NAMESPACE that the bot's gateway routes send to, as of the last
        # read of every route (None: not read yet). New routes only ever send to PREVIEW_NAMESPACE, so
        # this set can only shrink between reads; each reconciliation pass reads every route and renews
        # it (remember_every). So a lookup across every preview costs no O(previews) list per event.
        self._elsewhere: set[str] | None = None

    async def own_routes(self, selector: str) -> list[dict[str, Any]]:
        """The bot's per-preview VirtualServices matching `selector` of this configuration, wherever they
        are (manifests.own_routes; cluster-wide list on the ClusterRole `preview-bot-virtualservices-read`,
        else the routing namespace's)."""
        items = await self._t.list_everywhere_or(manifests.VIRTUAL_SERVICE_API, "virtualservices",
                                                 self._settings.routing_namespace, selector)
        return [dict(item) for item in manifests.own_routes(items, self._settings)]

    def namespaces(self, routes: Iterable[dict[str, Any]]) -> set[str]:
        """PREVIEW_NAMESPACE and the namespaces the destinations of `routes` name (an earlier one)."""
        return manifests.route_namespaces(routes) | {self._settings.namespace}

    def remember_every(self, routes: Iterable[dict[str, Any]]) -> None:
        """Renew the namespaces every preview lives in from `routes`: every gateway route of the bot."""
        self._elsewhere = manifests.route_namespaces(routes) - {self._settings.namespace}

    async def every_namespace(self) -> set[str]:
        """PREVIEW_NAMESPACE and every namespace the bot's gateway routes send to (an earlier one), read
        once and then renewed by each pass (remember_every), not per call."""
        if self._elsewhere is None:
            self.remember_every(await self.own_routes(f"{naming.MANAGED_SELECTOR},{naming.ROLE_LABEL}="
                                                      f"{naming.ROLE_GATEWAY}"))
        assert self._elsewhere is not None
        return self._elsewhere | {self._settings.namespace}

    async def listed(self, namespaces: Iterable[str], selector: str,
                     kinds: Iterable[tuple[str, str]] = WORKLOADS) -> list[Listed]:
        """(apiVersion, plural, object) of the bot's objects of `kinds` ((apiVersion, plural) pairs)
        matching `selector` in `namespaces`; ObjectsElsewhere, naming the first one, when one other than
        PREVIEW_NAMESPACE may not be listed (403): the caller then changes nothing, or says so."""
        found: list[Listed] = []
        for namespace in sorted(set(namespaces)):
            for api_version, plural in kinds:
                try:
                    items = await self._t.list_objects(api_version, plural, namespace, selector)
                except KubeError as exc:
                    if exc.status != 403 or namespace == self._settings.namespace:
                        raise
                    raise ObjectsElsewhere(namespace, self._settings.namespace, exc.status) from None
                found += [(api_version, plural, item) for item in items]
        return found
