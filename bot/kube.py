"""The Kubernetes adapter: every call the bot makes to the API server goes through here.

The official client is blocking, so each call runs in a worker thread and never blocks the event
loop. Writes are server-side apply (field manager `preview-bot`), except the shared mesh
VirtualService, which is a read-modify-write guarded by resourceVersion and retried on 409 so that
concurrent previews never lose each other's routes. Which VirtualService that is, is decided from every
VirtualService in the cluster (bot/mesh_hosts.py: the one Istio really uses for the host); preview
routes are removed object by object wherever they are.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import urllib3
import yaml
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from bot import manifests, mesh_hosts, mesh_routes, metrics, naming, sessions
from bot.errors import HostConflictError, MeshRoutingError, StartupError, TemporaryError
from bot.mesh_hosts import Ref
from bot.naming import PreviewKey
from bot.settings import ClusterSettings

log = logging.getLogger(__name__)

_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_RETRY_AFTER = 10.0
_PLURALS = {
    ("apps/v1", "Deployment"): "deployments",
    ("v1", "Service"): "services",
    (manifests.VIRTUAL_SERVICE_API, "VirtualService"): "virtualservices",
    ("coordination.k8s.io/v1", "Lease"): "leases",
}
# Pod states that will not get better by waiting (image pulls: once the grace for CI to push is over).
_HOPELESS_WAITING = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CrashLoopBackOff",
                               "CreateContainerConfigError", "CreateContainerError"})
_IMAGE_PULL = frozenset({"ErrImagePull", "ImagePullBackOff"})


class KubeError(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        self.status = status
        self.reason = reason
        super().__init__(f"Kubernetes API answered {status} {reason}: {message}")


class NotFound(KubeError):
    pass


class Conflict(KubeError):
    pass


def _load_kubeconfig(path: str | None, configuration: k8s_client.Configuration) -> None:
    """KUBECONFIG (or the given path, or ~/.kube/config) into `configuration`; one-line errors."""
    named = path or os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or None
    default = os.path.expanduser(k8s_config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION)
    if named is None and not os.path.exists(default):
        raise StartupError("Kubernetes: no configuration found: set KUBECONFIG or run in a pod")
    where = named or default
    if not os.path.exists(where):
        raise StartupError(f"Kubernetes: the kubeconfig {where} does not exist (KUBECONFIG)")
    try:
        k8s_config.load_kube_config(config_file=path, client_configuration=configuration)
    except OSError as exc:
        raise StartupError(f"Kubernetes: cannot read the kubeconfig {where}: {exc.strerror}") from None
    except k8s_config.ConfigException as exc:
        # The library's messages name fields and files, never credentials.
        reason = str(exc).splitlines()[0] if str(exc) else "invalid"
        raise StartupError(f"Kubernetes: the kubeconfig {where} cannot be used: {reason}") from None
    except (ValueError, TypeError, AttributeError, KeyError, yaml.YAMLError):
        raise StartupError(f"Kubernetes: the kubeconfig {where} is not a kubeconfig (a YAML mapping of "
                           "clusters, users and contexts)") from None


def collection_path(api_version: str, kind_plural: str, namespace: str | None) -> str:
    """The collection in `namespace`; None: the cluster-wide collection (every namespace)."""
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    if namespace is None:
        return f"{prefix}/{kind_plural}"
    return f"{prefix}/namespaces/{namespace}/{kind_plural}"


def object_path(manifest: Mapping[str, Any]) -> str:
    plural = _PLURALS[(manifest["apiVersion"], manifest["kind"])]
    meta = manifest["metadata"]
    return f"{collection_path(manifest['apiVersion'], plural, meta['namespace'])}/{meta['name']}"


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


class Kube:
    """Async facade over the blocking Kubernetes client."""

    def __init__(self, api_client: k8s_client.ApiClient, settings: ClusterSettings, *,
                 request_timeout: float = 30.0, attempts: int = 6) -> None:
        self._api = api_client
        self.settings = settings
        self._timeout = request_timeout
        self._attempts = attempts
        self._host_locks: dict[str, asyncio.Lock] = {}

    @classmethod
    def from_environment(cls, settings: ClusterSettings, kubeconfig: str | None = None, *,
                         timeout: float = 30.0) -> Kube:
        """In-cluster config when running in a pod, else KUBECONFIG / ~/.kube/config.

        Raises StartupError with one line when there is no configuration or it cannot be loaded."""
        configuration = k8s_client.Configuration()
        try:
            if kubeconfig is None:
                k8s_config.load_incluster_config(client_configuration=configuration)
            else:
                raise k8s_config.ConfigException("explicit kubeconfig")
        except k8s_config.ConfigException:
            _load_kubeconfig(kubeconfig, configuration)
        # Retries are ours (bounded, Retry-After capped); urllib3's would multiply them unseen.
        configuration.retries = False
        return cls(k8s_client.ApiClient(configuration), settings, request_timeout=timeout)

    def close(self) -> None:
        self._api.close()

    @property
    def server(self) -> str:
        """The API server's URL (for messages; no credentials)."""
        return str(self._api.configuration.host)

    # -- transport ---------------------------------------------------------------------------

    def _request_once(self, method: str, path: str, query: list[tuple[str, str]], body: Any,
                      content_type: str | None) -> tuple[int, Any, float | None]:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type or "application/json"
        params = self._api.param_serialize(method=method, resource_path=path, query_params=query,
                                           header_params=headers, body=body, auth_settings=["BearerToken"])
        response = self._api.call_api(*params, _request_timeout=self._timeout)
        response.read()
        header = (response.getheaders() or {}).get("Retry-After", "")
        data = json.loads(response.data) if response.data else None
        return int(response.status), data, float(header) if header.strip().isdigit() else None

    def _request(self, method: str, path: str, *, query: Iterable[tuple[str, str]] = (), body: Any = None,
                 content_type: str | None = None) -> Any:
        """One API call with retries on 429/5xx/timeouts; raises KubeError subclasses."""
        query_list = list(query)
        delay = 0.2
        for attempt in range(1, self._attempts + 1):
            started = time.monotonic()
            try:
                status, data, retry_after = self._request_once(method, path, query_list, body, content_type)
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                metrics.KUBE_CALLS.labels(method=method, outcome="network-error").inc()
                if attempt == self._attempts:
                    raise TemporaryError(f"Kubernetes API unreachable: {type(exc).__name__}") from None
                log.warning("kubernetes call failed, retrying",
                            extra={"method": method, "path": path, "error": type(exc).__name__})
            else:
                metrics.KUBE_LATENCY.observe(time.monotonic() - started)
                metrics.KUBE_CALLS.labels(method=method, outcome=str(status)).inc()
                if status < 400:
                    return data
                message = str((data or {}).get("message", "")) if isinstance(data, dict) else ""
                reason = str((data or {}).get("reason", "")) if isinstance(data, dict) else ""
                # etcd's "request is too large" comes back as a 500: it fails the same way every time.
                too_large = status == 413 or "too large" in message
                if status not in _RETRY_STATUSES or attempt == self._attempts or too_large:
                    error_type = {404: NotFound, 409: Conflict}.get(status, KubeError)
                    raise error_type(status, reason, message)
                log.warning("kubernetes call answered %s, retrying", status, extra={"method": method, "path": path})
                if retry_after is not None:
                    time.sleep(min(retry_after, MAX_RETRY_AFTER))
                    continue
            time.sleep(delay + random.uniform(0, delay))  # noqa: S311 - jitter, not crypto
            delay = min(delay * 2, 5.0)
        raise AssertionError("unreachable")

    async def call(self, method: str, path: str, *, query: Iterable[tuple[str, str]] = (), body: Any = None,
                   content_type: str | None = None) -> Any:
        return await asyncio.to_thread(self._request, method, path, query=list(query), body=body,
                                       content_type=content_type)

    async def get(self, path: str) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = await self.call("GET", path)
        except NotFound:
            return None
        return result

    async def list_objects(self, api_version: str, plural: str, namespace: str | None,
                           selector: str | None = None) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        token = ""
        while True:
            query = [("limit", "500")]
            if selector:
                query.append(("labelSelector", selector))
            if token:
                query.append(("continue", token))
            page = await self.call("GET", collection_path(api_version, plural, namespace), query=query)
            items.extend(page.get("items") or [])
            token = (page.get("metadata") or {}).get("continue") or ""
            if not token:
                return items

    async def apply(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply; JSON is YAML, so the body is sent as the dict's JSON."""
        result: dict[str, Any] = await self.call(
            "PATCH", object_path(manifest), body=dict(manifest), content_type="application/apply-patch+yaml",
            query=[("fieldManager", naming.FIELD_MANAGER), ("force", "true")])
        return result

    async def delete(self, path: str, *, resource_version: str | None = None) -> bool:
        body: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
        if resource_version:
            body["preconditions"] = {"resourceVersion": resource_version}
        try:
            await self.call("DELETE", path, body=body)
        except NotFound:
            return False
        return True

    # -- one preview's own objects ----------------------------------------------------------------

    async def ensure_owned(self, manifest: Mapping[str, Any], key: PreviewKey) -> bool:
        """Refuse to overwrite an object that belongs to another repository's preview; True if it exists.

        Ownership is the repository id label; an object from before ids (no id label) is ours when it
        carries this preview's key (adopted, see naming.resolve_key) or our current full name."""
        existing = await self.get(object_path(manifest))
        if existing is None:
            return False
        meta = existing.get("metadata") or {}
        labels, annotations = meta.get("labels") or {}, meta.get("annotations") or {}
        owner_name = annotations.get(naming.REPO_ANNOTATION)
        owner_id = labels.get(naming.REPO_ID_LABEL)
        if owner_id is not None:
            ours = owner_id == str(key.repo_id)
        elif owner_name is not None:
            ours = labels.get(naming.KEY_LABEL) == key.value or owner_name.lower() == key.repo.lower()
        else:
            ours = manifest["kind"] != "VirtualService"
            if not ours:
                raise HostConflictError(f"VirtualService {manifest['metadata']['name']} exists and is not "
                                        "managed by preview-bot; refusing to overwrite it")
        if not ours:
            host = (manifest["metadata"].get("annotations") or {}).get(naming.HOST_ANNOTATION)
            what = f"host {host}" if host else f"{manifest['kind']} {manifest['metadata']['name']}"
            raise HostConflictError(f"{what} is already used by a preview of {owner_name or 'another repository'}; "
                                    "include {repo} or {owner} in PREVIEW_HOST_TEMPLATE to separate them")
        return True

    async def apply_preview(self, plan: manifests.PreviewPlan) -> None:
        """Apply the preview's objects, then delete its gateway routes for hosts it no longer has (the
        host template uses {repo} or {owner} and the repository was renamed or transferred).

        A gateway VirtualService (named by its host, so another repository's preview may want the same
        one) that does not exist yet is created with POST first: the API server lets only one creator win
        (409 for the other), so the ownership check cannot be raced by two repositories at once, on one
        replica or several."""
        absent = [m for m in plan.manifests() if not await self.ensure_owned(m, plan.key)]
        for manifest in absent:
            if manifest["kind"] == "VirtualService":
                try:
                    await self.call("POST", collection_path(manifest["apiVersion"], "virtualservices",
                                                            manifest["metadata"]["namespace"]),
                                    body=dict(manifest), query=[("fieldManager", naming.FIELD_MANAGER)])
                except Conflict:
                    await self.ensure_owned(manifest, plan.key)  # created meanwhile: whose is it?
        for manifest in plan.manifests():
            await self.apply(manifest)
        wanted = {s.gateway_route["metadata"]["name"] for s in plan.services}
        services = {naming.dns_label(s.service.name) for s in plan.services}
        selector = f"{plan.key.selector()},{naming.ROLE_LABEL}={naming.ROLE_GATEWAY}"
        for item in await self.virtual_services(selector):
            meta = item["metadata"]
            if meta["name"] not in wanted and (meta.get("labels") or {}).get(naming.SERVICE_LABEL) in services:
                collection = collection_path(manifests.VIRTUAL_SERVICE_API, "virtualservices", meta["namespace"])
                await self.delete(f"{collection}/{meta['name']}")

    async def adopt(self, key: str, repo_id: int) -> int:
        """Add the repository id label to a legacy preview's objects (Deployments, Services, gateway routes);
        returns how many were labelled. Later renames then find the preview by its id."""
        selector = f"{naming.MANAGED_BY_LABEL}={naming.MANAGED_BY},{naming.KEY_LABEL}={key},!{naming.REPO_ID_LABEL}"
        patch = {"metadata": {"labels": {naming.REPO_ID_LABEL: str(repo_id)}}}
        changed = 0
        for api_version, plural, namespace in self._own_kinds():
            for item in await self.list_objects(api_version, plural, namespace, selector):
                path = f"{collection_path(api_version, plural, namespace)}/{item['metadata']['name']}"
                try:
                    await self.call("PATCH", path, body=patch, content_type="application/merge-patch+json")
                except NotFound:
                    continue
                changed += 1
        return changed

    def _own_kinds(self) -> list[tuple[str, str, str]]:
        return [("apps/v1", "deployments", self.settings.namespace), ("v1", "services", self.settings.namespace),
                (manifests.VIRTUAL_SERVICE_API, "virtualservices", self.settings.routing_namespace)]

    async def delete_preview(self, key: PreviewKey, *, services: Iterable[str] | None = None) -> int:
        """Delete the preview's objects (optionally only some services'); returns how many went."""
        selector = key.selector()
        if services is not None:
            names = ",".join(sorted(naming.dns_label(s) for s in services))
            if not names:
                return 0
            selector += f",{naming.SERVICE_LABEL} in ({names})"
        deleted = 0
        for api_version, plural, namespace in self._own_kinds():
            for item in await self.list_objects(api_version, plural, namespace, selector):
                path = f"{collection_path(api_version, plural, namespace)}/{item['metadata']['name']}"
                deleted += await self.delete(path)
        return deleted

    async def deployment_state(self, name: str) -> tuple[bool, str | None]:
        """(available, hopeless reason). Available means the current generation is fully rolled out."""
        available, reason, _waiting = await self._deployment_state(name)
        return available, reason

    async def _deployment_state(self, name: str) -> tuple[bool, str | None, str | None]:
        """(available, hopeless reason, the pod's waiting reason behind it, e.g. ErrImagePull)."""
        path = f"{collection_path('apps/v1', 'deployments', self.settings.namespace)}/{name}"
        deployment = await self.get(path)
        if deployment is None:
            return False, "the Deployment disappeared", None
        spec, status = deployment.get("spec") or {}, deployment.get("status") or {}
        wanted = int(spec.get("replicas", 1))
        conditions = {c.get("type"): c for c in status.get("conditions") or []}
        progressing = conditions.get("Progressing") or {}
        if progressing.get("reason") == "ProgressDeadlineExceeded":
            return False, "the rollout exceeded its progress deadline", None
        rolled_out = (
            status.get("observedGeneration", 0) >= deployment["metadata"].get("generation", 0)
            and status.get("updatedReplicas", 0) == wanted
            and status.get("availableReplicas", 0) >= wanted
            and status.get("replicas", 0) == wanted
            and (conditions.get("Available") or {}).get("status") == "True"
        )
        if rolled_out:
            return True, None, None
        selector = ",".join(f"{k}={v}" for k, v in spec["selector"]["matchLabels"].items())
        pulling: tuple[bool, str | None, str | None] = (False, None, None)
        for pod in await self.list_objects("v1", "pods", self.settings.namespace, selector):
            for container in (pod.get("status") or {}).get("containerStatuses") or []:
                waiting = (container.get("state") or {}).get("waiting") or {}
                if waiting.get("reason") in _HOPELESS_WAITING:
                    image = container.get("image") or ""
                    why = waiting.get("message") or (f"image {image}" if image else "")
                    found = (False, f"pod {pod['metadata']['name']}: {waiting['reason']}: {why}",
                             str(waiting["reason"]))
                    if waiting["reason"] not in _IMAGE_PULL:
                        return found  # a crash is hopeless whatever the images do
                    pulling = pulling if pulling[1] else found
        return pulling

    async def wait_available(self, names: Iterable[str], timeout: float, *,
                             stop: Callable[[], bool] = lambda: False, pull_grace: float = 0.0,
                             on_image_wait: Callable[[str, str], Awaitable[None]] | None = None,
                             ) -> dict[str, str | None]:
        """Poll until every Deployment is Available; returns name -> failure reason (None when ready).

        `stop` ends the wait early (a newer event for the same PR is queued). For `pull_grace` seconds
        ErrImagePull/ImagePullBackOff mean "the image is not pushed yet" (CI builds it after the push):
        the wait goes on, and `on_image_wait(name, reason)` is awaited once per Deployment."""
        pending = set(names)
        results: dict[str, str | None] = {}
        started = time.monotonic()
        deadline = started + timeout
        told: set[str] = set()
        image_waits: dict[str, str] = {}  # name -> the pull error seen last, while within the grace
        delay = 0.5
        while pending:
            for name in sorted(pending):
                available, reason, waiting = await self._deployment_state(name)
                if reason and waiting in _IMAGE_PULL and time.monotonic() - started < pull_grace:
                    image_waits[name] = reason
                    if on_image_wait is not None and name not in told:
                        told.add(name)
                        await on_image_wait(name, reason)
                    continue
                if reason and waiting in _IMAGE_PULL:
                    reason += f" (the image did not appear within {pull_grace:.0f} s)"
                if available or reason:
                    results[name] = reason
                    pending.discard(name)
            if not pending or stop():
                break
            if time.monotonic() >= deadline:
                for name in pending:
                    results[name] = f"not Available after {timeout:.0f} s" + (
                        f"; still waiting for the image ({image_waits[name]})" if name in image_waits else "")
                break
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 5.0)
        return results

    # -- the shared mesh VirtualService -------------------------------------------------------------

    async def virtual_services(self, selector: str | None = None) -> list[dict[str, Any]]:
        """The VirtualServices of the routing namespace."""
        return await self.list_objects(manifests.VIRTUAL_SERVICE_API, "virtualservices",
                                       self.settings.routing_namespace, selector)

    async def all_virtual_services(self) -> list[dict[str, Any]]:
        """Every VirtualService in the cluster that may route a host in the mesh: a team's may serve it from
        any namespace (list on the ClusterRole `preview-bot-virtualservices-read`). The bot's per-preview
        gateway and session VirtualServices are left out on the server: they are bound to the Gateway only,
        and without them the list does not grow with the number of previews."""
        excluded = f"{naming.ROLE_GATEWAY},{sessions.ROLE_SESSION}"
        return await self.list_objects(manifests.VIRTUAL_SERVICE_API, "virtualservices", None,
                                       f"{naming.ROLE_LABEL} notin ({excluded})")

    def _vs_path(self, ref: Ref) -> str:
        return f"{collection_path(manifests.VIRTUAL_SERVICE_API, 'virtualservices', ref.namespace)}/{ref.name}"

    def _own_ref(self, mesh_host: str) -> Ref:
        return Ref(self.settings.routing_namespace, naming.mesh_route_name(mesh_host))

    def _decide(self, items: list[dict[str, Any]], mesh_host: str) -> mesh_hosts.Decision:
        found = mesh_hosts.claimants(items, mesh_host, managed_by=(naming.MANAGED_BY_LABEL, naming.MANAGED_BY),
                                     role=(naming.ROLE_LABEL, naming.ROLE_MESH),
                                     own_namespace=self.settings.routing_namespace)
        return mesh_hosts.choose(found, mesh_host, self._own_ref(mesh_host))

    @staticmethod
    def _ref(item: Mapping[str, Any]) -> Ref:
        return Ref(str(item["metadata"]["namespace"]), str(item["metadata"]["name"]))

    def _is_ours(self, item: Mapping[str, Any]) -> bool:
        """A mesh VirtualService this bot created: its labels, in its routing namespace."""
        here = (item.get("metadata") or {}).get("namespace") == self.settings.routing_namespace
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
                    await self.call("PUT", self._vs_path(self._ref(target)), body=target,
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
                    spec = mesh_routes.new_spec(mesh_host)
                    for item in folded:
                        spec = mesh_routes.with_routes_of(spec, mesh_host, item.get("spec") or {})
                    body = manifests.mesh_virtual_service(self.settings, mesh_host, change(spec))
                    await self.call("POST", collection_path(manifests.VIRTUAL_SERVICE_API, "virtualservices",
                                                            self.settings.routing_namespace),
                                    body=body, query=[("fieldManager", naming.FIELD_MANAGER)])
                    changed = True
                else:
                    spec = current.get("spec") or {}
                    updated = spec
                    for item in folded:
                        updated = mesh_routes.with_routes_of(updated, mesh_host, item.get("spec") or {})
                    updated = change(updated)
                    if self._is_ours(current):
                        updated = mesh_routes.exported_everywhere(updated)
                    if updated != spec:
                        try:
                            await self.call("PUT", self._vs_path(decision.target), body={**current, "spec": updated},
                                            query=[("fieldManager", naming.FIELD_MANAGER)])
                        except KubeError as exc:
                            if exc.status == 403:
                                raise self._not_editable(decision.target, mesh_host) from None
                            raise
                        changed = True
                for item in folded:
                    # Its routes now live in the target; gone unless it changed since it was read.
                    changed |= await self.delete(self._vs_path(self._ref(item)),
                                                 resource_version=item["metadata"]["resourceVersion"])
                return changed
            except (Conflict, NotFound):
                pass  # someone else wrote (or deleted) first: re-read, re-apply our change
            metrics.MESH_CONFLICTS.inc()
            await asyncio.sleep(random.uniform(0, min(0.05 * 2**attempt, 1.0)))  # noqa: S311
        raise TemporaryError(f"could not update the mesh routes of {mesh_host} after {attempts} conflicts")

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
        VirtualServices changed. Works object by object: a teardown never depends on which one serves."""
        changed = 0
        for item in await self.mesh_services():
            if host is not None and self._host_of(item) != host:
                continue
            if not any(drop(r) for r in item["spec"]["http"] if mesh_routes.is_preview_route(r)):
                continue
            changed += await self._drop_routes(self._ref(item), self._host_of(item), drop)
        return changed

    async def _drop_routes(self, ref: Ref, host: str, drop: Callable[[dict[str, Any]], bool], *,
                           attempts: int = 40) -> bool:
        async with self._host_locks.setdefault(host, asyncio.Lock()):
            for attempt in range(attempts):
                current = await self.get(self._vs_path(ref))
                if current is None:
                    return False
                spec = current.get("spec") or {}
                updated = mesh_routes.without_routes(spec, host, drop)
                meta = current["metadata"]
                try:
                    if self._is_ours(current) and not mesh_routes.preview_keys(updated):
                        # No preview left: remove what the bot created, unless it changed meanwhile.
                        return await self.delete(self._vs_path(ref), resource_version=meta["resourceVersion"])
                    if updated == spec:
                        return False
                    await self.call("PUT", self._vs_path(ref), body={**current, "spec": updated},
                                    query=[("fieldManager", naming.FIELD_MANAGER)])
                    return True
                except (Conflict, NotFound):
                    pass
                metrics.MESH_CONFLICTS.inc()
                await asyncio.sleep(random.uniform(0, min(0.05 * 2**attempt, 1.0)))  # noqa: S311
        raise TemporaryError(f"could not remove preview routes from VirtualService {ref} after {attempts} conflicts")

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

    # -- what is live ---------------------------------------------------------------------------

    async def live_previews(self, repo: tuple[int, str] | None = None) -> list[LivePreview]:
        """Every live preview, or those of one repository `(id, current full name)`: found by its id, and
        legacy ones (no id label) by the hash of its name."""
        selectors = naming.repo_selectors(*repo) if repo else (naming.MANAGED_SELECTOR,)
        deployments: list[dict[str, Any]] = []
        routes: list[dict[str, Any]] = []
        for selector in selectors:
            deployments += await self.list_objects("apps/v1", "deployments", self.settings.namespace, selector)
            routes += await self.virtual_services(f"{selector},{naming.ROLE_LABEL}={naming.ROLE_GATEWAY}")
        hosts: dict[str, list[str]] = {}
        for route in routes:
            meta = route["metadata"]
            hosts.setdefault(meta["labels"][naming.KEY_LABEL], []).append(
                (meta.get("annotations") or {}).get(naming.HOST_ANNOTATION, ""))
        grouped: dict[str, list[dict[str, Any]]] = {}
        for item in deployments:
            grouped.setdefault(item["metadata"]["labels"].get(naming.KEY_LABEL, ""), []).append(item)
        previews = []
        for key, items in sorted(grouped.items()):
            metas = [i["metadata"] for i in items]
            annotations = [m.get("annotations") or {} for m in metas]
            pushed = [a[naming.PUSHED_AT_ANNOTATION] for a in annotations if a.get(naming.PUSHED_AT_ANNOTATION)]
            ids = {m["labels"].get(naming.REPO_ID_LABEL, "") for m in metas}
            raw_id = ids.pop() if len(ids) == 1 else ""
            previews.append(LivePreview(
                key=key,
                repo=annotations[0].get(naming.REPO_ANNOTATION, ""),
                number=int(metas[0]["labels"].get(naming.PR_LABEL, "0")),
                sha=annotations[0].get(naming.SHA_ANNOTATION, ""),
                services=tuple(sorted(m["labels"].get(naming.SERVICE_LABEL, "") for m in metas)),
                created=min(m.get("creationTimestamp", "") for m in metas),
                pushed_at=max(pushed) if pushed else None,
                keep=any(a.get(naming.KEEP_ANNOTATION) == "true" for a in annotations),
                hosts=tuple(sorted(hosts.get(key, []))),
                repo_id=int(raw_id) if raw_id.isdigit() and int(raw_id) > 0 else None,
            ))
        return previews

    async def recorded_shas(self, key: PreviewKey) -> dict[str, str]:
        """Deployment name -> the commit it runs (its SHA annotation), for one preview."""
        items = await self.list_objects("apps/v1", "deployments", self.settings.namespace, key.selector())
        return {i["metadata"]["name"]: str((i["metadata"].get("annotations") or {}).get(naming.SHA_ANNOTATION, ""))
                for i in items}

    async def set_keep(self, key: PreviewKey, keep: bool) -> int:
        """Mark (or unmark) a preview's Deployments so idle clean-up leaves them alone."""
        changed = 0
        for item in await self.list_objects("apps/v1", "deployments", self.settings.namespace, key.selector()):
            path = f"{collection_path('apps/v1', 'deployments', self.settings.namespace)}/{item['metadata']['name']}"
            patch = {"metadata": {"annotations": {naming.KEEP_ANNOTATION: "true" if keep else None}}}
            await self.call("PATCH", path, body=patch, content_type="application/merge-patch+json")
            changed += 1
        return changed

    async def service_names(self) -> set[str]:
        items = await self.list_objects("v1", "services", self.settings.namespace, naming.MANAGED_SELECTOR)
        return {naming.service_fqdn(i["metadata"]["name"], self.settings.namespace) for i in items}

    async def gateway(self, name: str) -> dict[str, Any] | None:
        """The Istio Gateway `<namespace>/<name>` (PREVIEW_GATEWAY), or None when it does not exist."""
        namespace, _, gateway = name.partition("/")
        return await self.get(f"{collection_path(manifests.VIRTUAL_SERVICE_API, 'gateways', namespace)}/{gateway}")

    async def routing_objects(self) -> tuple[dict[str, Any] | None, list[dict[str, Any]], list[str]]:
        """(the Gateway PREVIEW_GATEWAY or None, VirtualServices, notes) for `explain`: every namespace's
        VirtualServices when the credentials may list them cluster-wide, else the routing namespace's
        (the bot's own RBAC); the notes say what could not be read."""
        notes: list[str] = []
        gw_namespace, _, gw_name = self.settings.gateway.partition("/")
        gateway_path = f"{collection_path(manifests.VIRTUAL_SERVICE_API, 'gateways', gw_namespace)}/{gw_name}"
        try:
            gateway = await self.get(gateway_path)
            if gateway is None:
                notes.append(f"the Gateway {self.settings.gateway} does not exist")
        except KubeError as exc:
            gateway = None
            notes.append(f"the Gateway {self.settings.gateway} could not be read ({exc.status})")
        try:
            items: list[dict[str, Any]] = []
            token = ""
            while True:
                query = [("limit", "500")] + ([("continue", token)] if token else [])
                page = await self.call("GET", f"/apis/{manifests.VIRTUAL_SERVICE_API}/virtualservices", query=query)
                items.extend(page.get("items") or [])
                token = (page.get("metadata") or {}).get("continue") or ""
                if not token:
                    break
        except KubeError as exc:
            if exc.status != 403:
                raise
            items = await self.virtual_services()
            notes.append(f"VirtualServices read in namespace {self.settings.routing_namespace} only "
                         "(no right to list them cluster-wide)")
        return gateway, items, notes

    async def ping(self) -> None:
        """Cheap call proving the API server answers and our credentials work."""
        await self.call("GET", "/version")

