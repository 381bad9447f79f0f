"""The Kubernetes adapter: every call the bot makes to the API server goes through this package.

Its parts, each over one Transport:
- transport.py: one API call (retries, errors, paths, server-side apply, delete, list); the only module
  of the bot that imports `kubernetes`. It loads the kubeconfig after kubeconfig.py's checks of the
  selected user and cluster (what the client would misreport: missing files, auth-providers, server URLs).
- placement.py: where the bot's objects are (its own gateway routes, the namespaces they send to: an
  earlier PREVIEW_NAMESPACE's too), for the parts below that read and write them.
- objects.py: one preview's own objects (write only over what is ours, label, mark, delete).
- inventory.py: what is live (previews, their Services, the routing objects), read from labels.
- rollout.py: whether a preview's Deployments rolled out, and the wait for it.
- mesh.py: the shared mesh VirtualServices (read-modify-write of preview routes).
The rule of whose an object is lives apart, pure: bot/ownership.py.

`Kube` is the one entry point callers hold: it builds the parts over one transport and offers their
methods under the names callers always used. New code may take the part it needs (`kube.mesh`, ...).
"""

from __future__ import annotations

import logging

from bot import mesh_routes, naming
from bot.errors import RoutesNotRemoved
from bot.kube.inventory import Inventory, LivePreview
from bot.kube.mesh import MeshStore
from bot.kube.objects import PreviewObjects
from bot.kube.rollout import Rollouts
from bot.kube.transport import (
    ApiClient,
    Conflict,
    KubeError,
    NotFound,
    Transport,
    api_client_from_environment,
    collection_path,
    object_path,
)
from bot.manifests import PreviewPlan
from bot.settings import ClusterSettings

log = logging.getLogger(__name__)

__all__ = ["Conflict", "Kube", "KubeError", "LivePreview", "NotFound", "collection_path", "object_path"]


class Kube:
    """The parts of the adapter over one API client, for `settings` (namespaces, gateway); `request_timeout`
    seconds a request, at most `attempts` requests a call (bot/kube/transport.py)."""

    def __init__(self, api_client: ApiClient, settings: ClusterSettings, *,
                 request_timeout: float = 30.0, attempts: int = 6) -> None:
        self._api = api_client
        self.settings = settings
        self.transport = t = Transport(api_client, request_timeout=request_timeout, attempts=attempts)
        self.objects = PreviewObjects(t, settings)
        self.inventory = Inventory(t, settings)
        self.rollouts = Rollouts(t, settings)
        self.mesh = MeshStore(t, settings)
        # The callers' names, each served by one part (the part's docstring says what it guarantees).
        self.call, self.get, self.list_objects = t.call, t.get, t.list_objects
        self.apply, self.delete, self.ping, self.close = t.apply, t.delete, t.ping, t.close
        objects = self.objects
        self.ensure_owned = objects.ensure_owned
        self.adopt, self.delete_preview, self.set_keep = objects.adopt, objects.delete_preview, objects.set_keep
        self.mark_rollout_failed = objects.mark_rollout_failed
        inventory = self.inventory
        self.live_previews, self.recorded_shas = inventory.live_previews, inventory.recorded_shas
        self.find_deployments = inventory.find_deployments
        self.gateway = inventory.gateway
        self.existing_destinations = inventory.existing_destinations
        self.routing_objects = inventory.routing_objects
        self.deployment_state, self.wait_available = self.rollouts.deployment_state, self.rollouts.wait_available
        mesh = self.mesh
        self.virtual_services, self.all_virtual_services = mesh.virtual_services, mesh.all_virtual_services
        self.find_mesh_service, self.mesh_services = mesh.find_mesh_service, mesh.mesh_services
        self.check_mesh_hosts, self.update_mesh_routes = mesh.check_mesh_hosts, mesh.update_mesh_routes
        self.add_mesh_route, self.remove_mesh_route = mesh.add_mesh_route, mesh.remove_mesh_route
        self.fold_mesh_routes, self.misplaced_mesh_routes = mesh.fold_mesh_routes, mesh.misplaced_mesh_routes
        self.remove_routes_where, self.remove_routes_of_key = mesh.remove_routes_where, mesh.remove_routes_of_key
        self.remove_routes_elsewhere = mesh.remove_routes_elsewhere

    async def apply_preview(self, plan: PreviewPlan) -> None:
        """PreviewObjects.apply_preview, then what it left of the deployed services in an earlier
        PREVIEW_NAMESPACE goes: their mesh routes first (a route never sends to a Service deleted under
        it), then the Deployments and Services. A route the API server refuses to change stays; the
        reconciler reports it, and removes it once it may."""
        moved = await self.objects.apply_preview(plan)
        if not moved:
            return
        gone = {naming.service_fqdn(item["metadata"]["name"], item["metadata"]["namespace"])
                for _, plural, item in moved if plural == "services"}
        key = plan.key.value
        try:
            await self.mesh.remove_routes_where(lambda route: route.get("name") == key and any(
                d in gone for d in mesh_routes.route_destinations({"http": [route]}).get(key, [])))
        except RoutesNotRemoved as exc:
            log.warning("preview %s: routes to its earlier namespace left: %s", key, exc)
        await self.objects.delete_objects(moved)

    @classmethod
    def from_environment(cls, settings: ClusterSettings, kubeconfig: str | None = None, *,
                         timeout: float = 30.0) -> Kube:
        """In-cluster config when running in a pod, else KUBECONFIG / ~/.kube/config (or `kubeconfig`).

        Raises StartupError with one line when there is no configuration or it cannot be loaded."""
        return cls(api_client_from_environment(kubeconfig), settings, request_timeout=timeout)

    @property
    def server(self) -> str:
        """The API server's URL (for messages; no credentials)."""
        return self.transport.server
