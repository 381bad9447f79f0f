"""The Kubernetes adapter: every call the bot makes to the API server goes through here.

The official client is blocking, so each call runs in a worker thread and never blocks the event
loop. Writes are server-side apply (field manager `preview-bot`), except the shared mesh
VirtualService, which is a read-modify-write guarded by resourceVersion and retried on 409 so that
concurrent previews never lose each other's routes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import urllib3
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from bot import manifests, mesh_routes, metrics, naming
from bot.errors import HostConflictError, TemporaryError
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
# Pod states that will not get better by waiting.
_HOPELESS_WAITING = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CrashLoopBackOff",
                               "CreateContainerConfigError", "CreateContainerError"})


class KubeError(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        self.status = status
        self.reason = reason
        super().__init__(f"Kubernetes API answered {status} {reason}: {message}")


class NotFound(KubeError):
    pass


class Conflict(KubeError):
    pass


def collection_path(api_version: str, kind_plural: str, namespace: str) -> str:
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    return f"{prefix}/namespaces/{namespace}/{kind_plural}"


def object_path(manifest: Mapping[str, Any]) -> str:
    plural = _PLURALS[(manifest["apiVersion"], manifest["kind"])]
    meta = manifest["metadata"]
    return f"{collection_path(manifest['apiVersion'], plural, meta['namespace'])}/{meta['name']}"


@dataclass(frozen=True)
class LivePreview:
    """A preview as the cluster sees it, from labels and annotations."""

    key: str
    repo: str
    number: int
    sha: str
    services: tuple[str, ...]
    created: str
    pushed_at: str | None
    keep: bool
    hosts: tuple[str, ...] = ()


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
        """In-cluster config when running in a pod, else KUBECONFIG / ~/.kube/config."""
        configuration = k8s_client.Configuration()
        try:
            if kubeconfig is None:
                k8s_config.load_incluster_config(client_configuration=configuration)
            else:
                raise k8s_config.ConfigException("explicit kubeconfig")
        except k8s_config.ConfigException:
            k8s_config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
        # Retries are ours (bounded, Retry-After capped); urllib3's would multiply them unseen.
        configuration.retries = False
        return cls(k8s_client.ApiClient(configuration), settings, request_timeout=timeout)

    def close(self) -> None:
        self._api.close()

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

    async def list_objects(self, api_version: str, plural: str, namespace: str,
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

    async def ensure_owned(self, manifest: Mapping[str, Any], repo: str) -> None:
        """Refuse to overwrite an object that belongs to another repository's preview."""
        existing = await self.get(object_path(manifest))
        if existing is None:
            return
        owner = ((existing.get("metadata") or {}).get("annotations") or {}).get(naming.REPO_ANNOTATION)
        if owner is not None and owner != repo:
            host = (manifest["metadata"].get("annotations") or {}).get(naming.HOST_ANNOTATION)
            what = f"host {host}" if host else f"{manifest['kind']} {manifest['metadata']['name']}"
            raise HostConflictError(f"{what} is already used by a preview of {owner}; "
                                    "include {repo} or {owner} in PREVIEW_HOST_TEMPLATE to separate them")
        if owner is None and manifest["kind"] == "VirtualService":
            raise HostConflictError(f"VirtualService {manifest['metadata']['name']} exists and is not managed "
                                    "by preview-bot; refusing to overwrite it")

    async def apply_preview(self, plan: manifests.PreviewPlan) -> None:
        for manifest in plan.manifests():
            await self.ensure_owned(manifest, plan.key.repo)
        for manifest in plan.manifests():
            await self.apply(manifest)

    async def delete_preview(self, key: PreviewKey, *, services: Iterable[str] | None = None) -> int:
        """Delete the preview's objects (optionally only some services'); returns how many went."""
        selector = key.selector()
        if services is not None:
            names = ",".join(sorted(naming.dns_label(s) for s in services))
            if not names:
                return 0
            selector += f",{naming.SERVICE_LABEL} in ({names})"
        deleted = 0
        kinds = [("apps/v1", "deployments", self.settings.namespace), ("v1", "services", self.settings.namespace),
                 (manifests.VIRTUAL_SERVICE_API, "virtualservices", self.settings.routing_namespace)]
        for api_version, plural, namespace in kinds:
            for item in await self.list_objects(api_version, plural, namespace, selector):
                path = f"{collection_path(api_version, plural, namespace)}/{item['metadata']['name']}"
                deleted += await self.delete(path)
        return deleted

    async def deployment_state(self, name: str) -> tuple[bool, str | None]:
        """(available, hopeless reason). Available means the current generation is fully rolled out."""
        path = f"{collection_path('apps/v1', 'deployments', self.settings.namespace)}/{name}"
        deployment = await self.get(path)
        if deployment is None:
            return False, "the Deployment disappeared"
        spec, status = deployment.get("spec") or {}, deployment.get("status") or {}
        wanted = int(spec.get("replicas", 1))
        conditions = {c.get("type"): c for c in status.get("conditions") or []}
        progressing = conditions.get("Progressing") or {}
        if progressing.get("reason") == "ProgressDeadlineExceeded":
            return False, "the rollout exceeded its progress deadline"
        rolled_out = (
            status.get("observedGeneration", 0) >= deployment["metadata"].get("generation", 0)
            and status.get("updatedReplicas", 0) == wanted
            and status.get("availableReplicas", 0) >= wanted
            and status.get("replicas", 0) == wanted
            and (conditions.get("Available") or {}).get("status") == "True"
        )
        if rolled_out:
            return True, None
        selector = ",".join(f"{k}={v}" for k, v in spec["selector"]["matchLabels"].items())
        for pod in await self.list_objects("v1", "pods", self.settings.namespace, selector):
            for container in (pod.get("status") or {}).get("containerStatuses") or []:
                waiting = (container.get("state") or {}).get("waiting") or {}
                if waiting.get("reason") in _HOPELESS_WAITING:
                    return False, f"pod {pod['metadata']['name']}: {waiting['reason']}: {waiting.get('message', '')}"
        return False, None

    async def wait_available(self, names: Iterable[str], timeout: float, *,
                             stop: Callable[[], bool] = lambda: False) -> dict[str, str | None]:
        """Poll until every Deployment is Available; returns name -> failure reason (None when ready).

        `stop` ends the wait early (a newer event for the same PR is queued)."""
        pending = set(names)
        results: dict[str, str | None] = {}
        deadline = time.monotonic() + timeout
        delay = 0.5
        while pending:
            for name in sorted(pending):
                available, reason = await self.deployment_state(name)
                if available or reason:
                    results[name] = reason
                    pending.discard(name)
            if not pending or stop():
                break
            if time.monotonic() >= deadline:
                for name in pending:
                    results[name] = f"not Available after {timeout:.0f} s"
                break
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 5.0)
        return results

    # -- the shared mesh VirtualService -------------------------------------------------------------

    async def virtual_services(self, selector: str | None = None) -> list[dict[str, Any]]:
        return await self.list_objects(manifests.VIRTUAL_SERVICE_API, "virtualservices",
                                       self.settings.routing_namespace, selector)

    def _vs_collection(self) -> str:
        return collection_path(manifests.VIRTUAL_SERVICE_API, "virtualservices", self.settings.routing_namespace)

    async def find_mesh_service(self, mesh_host: str) -> dict[str, Any] | None:
        """The mesh VirtualService for the host: ours by name, or one the team already has."""
        ours = await self.get(f"{self._vs_collection()}/{naming.mesh_route_name(mesh_host)}")
        if ours is not None:
            return ours
        for item in await self.virtual_services():
            spec = item.get("spec") or {}
            gateways = spec.get("gateways") or []
            if mesh_host in (spec.get("hosts") or []) and (not gateways or "mesh" in gateways):
                return item
        return None

    async def update_mesh_routes(self, mesh_host: str,
                                 change: Callable[[dict[str, Any]], dict[str, Any]], *,
                                 create: bool = True, attempts: int = 40) -> bool:
        """Read-modify-write of the host's mesh VirtualService, retried on 409; True if it changed.

        Writers in this process take turns per host (no self-inflicted conflicts); other replicas are
        kept apart by resourceVersion."""
        async with self._host_locks.setdefault(mesh_host, asyncio.Lock()):
            return await self._update_mesh_routes(mesh_host, change, create=create, attempts=attempts)

    async def _update_mesh_routes(self, mesh_host: str, change: Callable[[dict[str, Any]], dict[str, Any]], *,
                                  create: bool, attempts: int) -> bool:
        for attempt in range(attempts):
            current = await self.find_mesh_service(mesh_host)
            if current is None:
                if not create:
                    return False
                body = manifests.mesh_virtual_service(self.settings, mesh_host,
                                                      change(mesh_routes.new_spec(mesh_host)))
                try:
                    await self.call("POST", self._vs_collection(), body=body,
                                    query=[("fieldManager", naming.FIELD_MANAGER)])
                    return True
                except Conflict:
                    pass  # created meanwhile by another PR: read it and retry
            else:
                spec = current.get("spec") or {}
                updated = change(spec)
                meta = current["metadata"]
                path = f"{self._vs_collection()}/{meta['name']}"
                ours = (meta.get("labels") or {}).get(naming.ROLE_LABEL) == naming.ROLE_MESH
                try:
                    if ours and not mesh_routes.preview_keys(updated) and not create:
                        # No preview left: remove what the bot created, unless it changed meanwhile.
                        await self.delete(path, resource_version=meta["resourceVersion"])
                        return True
                    if updated == spec:
                        return False
                    await self.call("PUT", path, body={**current, "spec": updated},
                                    query=[("fieldManager", naming.FIELD_MANAGER)])
                    return True
                except (Conflict, NotFound):
                    pass  # someone else wrote (or deleted it) first: re-read, re-apply our change
            metrics.MESH_CONFLICTS.inc()
            await asyncio.sleep(random.uniform(0, min(0.05 * 2**attempt, 1.0)))  # noqa: S311
        raise TemporaryError(f"could not update the mesh routes of {mesh_host} after {attempts} conflicts")

    async def add_mesh_route(self, mesh_host: str, route: dict[str, Any]) -> bool:
        return await self.update_mesh_routes(mesh_host,
                                             lambda spec: mesh_routes.with_route_checked(spec, mesh_host, route))

    async def remove_mesh_route(self, mesh_host: str, key: str) -> bool:
        return await self.update_mesh_routes(
            mesh_host, lambda spec: mesh_routes.without_key(spec, mesh_host, key), create=False)

    async def mesh_services(self) -> list[dict[str, Any]]:
        """Every mesh VirtualService in the routing namespace that carries preview routes."""
        items = await self.virtual_services()
        return [item for item in items if mesh_routes.preview_keys(item.get("spec") or {})]

    async def remove_routes_where(self, drop: Callable[[dict[str, Any]], bool]) -> int:
        """Remove matching preview routes from every mesh VirtualService; returns how many objects changed."""
        changed = 0
        for item in await self.mesh_services():
            if not any(drop(r) for r in item["spec"]["http"] if mesh_routes.is_preview_route(r)):
                continue
            annotations = item.get("metadata", {}).get("annotations") or {}
            host = annotations.get(naming.HOST_ANNOTATION) or item["spec"]["hosts"][0]
            changed += await self._drop_routes(host, drop)
        return changed

    async def _drop_routes(self, host: str, drop: Callable[[dict[str, Any]], bool]) -> bool:
        return await self.update_mesh_routes(host, lambda spec: mesh_routes.without_routes(spec, host, drop),
                                             create=False)

    async def remove_routes_of_key(self, key: str) -> int:
        """Teardown needs no config: the routes are found by their name, the preview key."""
        return await self.remove_routes_where(lambda route: route.get("name") == key)

    # -- what is live ---------------------------------------------------------------------------

    async def live_previews(self, repo: str | None = None) -> list[LivePreview]:
        selector = naming.repo_selector(repo) if repo else naming.MANAGED_SELECTOR
        deployments = await self.list_objects("apps/v1", "deployments", self.settings.namespace, selector)
        routes = await self.virtual_services(f"{selector},{naming.ROLE_LABEL}={naming.ROLE_GATEWAY}")
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
            ))
        return previews

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

    async def ping(self) -> None:
        """Cheap call proving the API server answers and our credentials work."""
        await self.call("GET", "/version")

