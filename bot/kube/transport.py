"""Kubernetes transport: one API call, with its retries, errors and paths (no policy, no domain).

The official client is blocking, so each call runs in a worker thread and never blocks the event
loop. Invariants:
- Every request the bot makes to the API server goes through `Transport.call` (metrics, bounded
  retries on 429/5xx/network errors with Retry-After capped at MAX_RETRY_AFTER; urllib3's own
  retries are off). A status >= 400 that is not retried raises KubeError (NotFound for 404,
  Conflict for 409); a network error after the last attempt raises TemporaryError.
- A request the API server refuses for its size (413, or etcd's "too large" as a 500) is never retried.
- Writes of whole objects are server-side apply (field manager `preview-bot`, forced).
- This is the only module of the bot that imports the `kubernetes` package.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from typing import Any

import urllib3
import yaml
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.config import exec_provider as k8s_exec_provider

from bot import manifests, metrics, naming
from bot.errors import StartupError, TemporaryError, first_line
from bot.kube import kubeconfig

log = logging.getLogger(__name__)

_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_RETRY_AFTER = 10.0
_PLURALS = {
    ("apps/v1", "Deployment"): "deployments",
    ("v1", "Service"): "services",
    (manifests.VIRTUAL_SERVICE_API, "VirtualService"): "virtualservices",
    ("coordination.k8s.io/v1", "Lease"): "leases",
}


class KubeError(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        self.status = status
        self.reason = reason
        super().__init__(f"Kubernetes API answered {status} {reason}: {message}")


class NotFound(KubeError):
    pass


class Conflict(KubeError):
    pass


class _SwallowedErrors(logging.Filter):
    """The client logs an exec plugin's failure on the root logger and goes on without credentials (the
    API server then answers 401). On the root logger while the kubeconfig loads, this keeps each such
    record, and the exception the client was handling then, for one start-up line instead."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[tuple[str, BaseException | None]] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.module != "kube_config":
            return True
        message = record.getMessage()
        handling = sys.exc_info()[1]  # the client logs str(exc) inside its `except`
        self.records.append((message, handling if handling is not None and str(handling) == message else None))
        return False


EXEC_PLUGIN_TIMEOUT = 60.0  # seconds an exec credential plugin gets when no person is at a terminal


class _BoundedPopen(subprocess.Popen[str]):
    """The client waits for an exec credential plugin with no time limit (ExecProvider.run), so a plugin
    that hangs (a token endpoint that never answers) would hold start-up, or later a request's worker
    thread at a token refresh, for ever and silently. When stdout is not a terminal (the client's own test
    of "interactive": nobody can answer a prompt), the plugin gets `timeout` seconds and is then killed;
    the client logs the failure as for any other, and start-up reports it in one line."""

    timeout = EXEC_PLUGIN_TIMEOUT

    def communicate(self, input: str | None = None, timeout: float | None = None) -> tuple[str, str]:
        if timeout is None and not (hasattr(sys.stdout, "isatty") and sys.stdout.isatty()):
            timeout = self.timeout
        try:
            return super().communicate(input, timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            super().communicate()
            # Not TimeoutExpired: its message quotes the plugin's arguments, which may hold a secret.
            raise kubeconfig.ExecPluginTimeout(self.timeout) from None


def _bound_exec_plugins(timeout: float) -> None:
    """Makes the client start exec credential plugins as _BoundedPopen with `timeout` seconds (the
    client's module keeps its own reference to `subprocess`; only its Popen is replaced)."""
    _BoundedPopen.timeout = timeout
    k8s_exec_provider.subprocess = _ExecSubprocess  # type: ignore[attr-defined,assignment]


class _ExecSubprocess:
    """What kubernetes.config.exec_provider uses of the `subprocess` module."""

    Popen = _BoundedPopen
    PIPE = subprocess.PIPE


def _entry(config: Any, kind: str, name: Any) -> kubeconfig.Entry | None:
    """The named user or cluster of the merged kubeconfig (`kind`: "user" or "cluster"), with its file."""
    node = config[f"{kind}s"].get_with_name(name, safe=True) if isinstance(name, str) else None
    body = node.value.get(kind) if node is not None else None
    if node is None or not isinstance(body, Mapping):
        return None  # the client says what is wrong with it, or uses no user
    return kubeconfig.Entry(kind, name, body, str(node.path))


def _checked_load(files: str, configuration: k8s_client.Configuration) -> None:
    """load_kube_config(files), less its persister (preview-bot never rewrites the user's kubeconfig: it
    refuses the expired tokens the client would refresh and save), with the selected user and cluster
    checked before the client uses them; raises StartupError."""
    merged = k8s_config.kube_config.KubeConfigMerger(files)
    if merged.config is None:
        raise k8s_config.ConfigException("Invalid kube-config file. No configuration found.")
    loader = k8s_config.kube_config.KubeConfigLoader(config_dict=merged.config, config_base_path=None)
    context = loader.current_context.get("context") or {}
    user = _entry(merged.config, "user", context.get("user"))
    cluster = _entry(merged.config, "cluster", context.get("cluster"))
    if cluster is not None:
        skew = k8s_config.kube_config.EXPIRY_SKEW_PREVENTION_DELAY.total_seconds()
        problem = (kubeconfig.server_problem(cluster) or kubeconfig.files_problem(user, cluster)
                   or (user and kubeconfig.auth_provider_problem(user, now=time.time(), skew=skew)))
        if problem:
            raise StartupError(f"Kubernetes: {problem}")
    swallowed = _SwallowedErrors()
    root = logging.getLogger()
    root.addFilter(swallowed)
    try:
        loader.load_and_set(configuration)
    finally:
        root.removeFilter(swallowed)
    if user is None or "exec" not in user.body:
        return
    plugin = f"Kubernetes: {user.label}: the exec credential plugin `{kubeconfig.exec_command(user)}`"
    if swallowed.records:
        raise StartupError(f"{plugin} failed: {kubeconfig.exec_failure(*swallowed.records[0])}")
    if not configuration.api_key.get("BearerToken") and not configuration.cert_file:
        raise StartupError(f"{plugin} gave no credentials")


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
        _checked_load(path or k8s_config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION, configuration)
    except OSError as exc:
        other = exc.filename and os.path.abspath(str(exc.filename)) != os.path.abspath(where)
        if other:  # a file the checks above did not cover (a temporary file for *-data)
            raise StartupError(f"Kubernetes: the kubeconfig {where}: {exc.filename}: {exc.strerror}") from None
        raise StartupError(f"Kubernetes: cannot read the kubeconfig {where}: {exc.strerror}") from None
    except k8s_config.ConfigException as exc:
        # The library's messages name fields and files, and quote an entry whole: redacted.
        reason = kubeconfig.redacted(str(exc).splitlines()[0]) if str(exc) else "invalid"
        raise StartupError(f"Kubernetes: the kubeconfig {where} cannot be used: {reason}") from None
    except (ValueError, TypeError, AttributeError, KeyError, yaml.YAMLError):
        raise StartupError(f"Kubernetes: the kubeconfig {where} is not a kubeconfig (a YAML mapping of "
                           "clusters, users and contexts)") from None


def _decoded(raw: bytes | None, status: int) -> Any:
    """The answer's JSON (None when empty). Not every answer is JSON: the API server says `404 page not
    found` in plain text for a path it does not serve (an API group whose CRDs are not installed), and a
    proxy in front of it may send an HTML error page. Such an error answer becomes a Status-like
    {"message": its first line}; a success answer that is not JSON raises KubeError (never retried)."""
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        first = first_line(raw, 200)
        if status >= 400:
            return {"message": first}
        raise KubeError(status, "NotJSON", f"the answer is not JSON: {first!r}") from None


def api_path(api_version: str) -> str:
    """The API server's path of a group version: `/api/v1` for the core group, else `/apis/<group>/<v>`."""
    return "/api/v1" if api_version == "v1" else f"/apis/{api_version}"


def collection_path(api_version: str, kind_plural: str, namespace: str | None) -> str:
    """The collection in `namespace`; None: the cluster-wide collection (every namespace)."""
    prefix = api_path(api_version)
    if namespace is None:
        return f"{prefix}/{kind_plural}"
    return f"{prefix}/namespaces/{namespace}/{kind_plural}"


def object_path(manifest: Mapping[str, Any]) -> str:
    plural = _PLURALS[(manifest["apiVersion"], manifest["kind"])]
    meta = manifest["metadata"]
    return f"{collection_path(manifest['apiVersion'], plural, meta['namespace'])}/{meta['name']}"



ApiClient = k8s_client.ApiClient  # for the type of Kube's constructor, without importing `kubernetes` there


def api_client_from_environment(kubeconfig: str | None = None, *,
                                exec_timeout: float = EXEC_PLUGIN_TIMEOUT) -> ApiClient:
    """In-cluster config when running in a pod, else KUBECONFIG / ~/.kube/config (or `kubeconfig`). An
    exec credential plugin gets `exec_timeout` seconds (unless a person is at the terminal), now and at
    each token refresh.

    Raises StartupError with one line when there is no configuration or it cannot be loaded."""
    _bound_exec_plugins(exec_timeout)
    configuration = k8s_client.Configuration()
    in_cluster = False
    if kubeconfig is None:
        try:
            k8s_config.load_incluster_config(client_configuration=configuration)
            in_cluster = True
        except k8s_config.ConfigException:
            pass
    if not in_cluster:  # outside the `except`: the kubeconfig's errors are not chained to it
        _load_kubeconfig(kubeconfig, configuration)
    # Retries are ours (bounded, Retry-After capped); urllib3's would multiply them unseen.
    configuration.retries = False
    return k8s_client.ApiClient(configuration)


class Transport:
    """Async calls to the API server over the blocking Kubernetes client: `request_timeout` seconds a
    request, at most `attempts` requests a call."""

    def __init__(self, api_client: ApiClient, *, request_timeout: float = 30.0, attempts: int = 6) -> None:
        self._api = api_client
        self._timeout = request_timeout
        self._attempts = attempts

    def close(self) -> None:
        self._api.close()

    @property
    def server(self) -> str:
        """The API server's URL (for messages; no credentials, so no userinfo)."""
        return kubeconfig.safe_url(str(self._api.configuration.host))

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
        status = int(response.status)
        return status, _decoded(response.data, status), float(header) if header.strip().isdigit() else None

    def _request(self, method: str, path: str, *, query: Iterable[tuple[str, str]] = (), body: Any = None,
                 content_type: str | None = None) -> Any:
        """One API call with retries on 429/5xx/timeouts; raises KubeError subclasses."""
        query_list = list(query)
        delay = 0.2
        for attempt in range(1, self._attempts + 1):
            started = time.monotonic()
            try:
                status, data, retry_after = self._request_once(method, path, query_list, body, content_type)
            except k8s_client.exceptions.ApiException as exc:
                # The client's own answer to a TLS failure (status 0): the certificate will not verify
                # on a second attempt either.
                metrics.KUBE_CALLS.labels(method=method, outcome="network-error").inc()
                detail = first_line(str(exc.reason or ""), 200, preferring="certificate")
                raise TemporaryError(f"Kubernetes API not usable over TLS: {detail} (check the "
                                     "kubeconfig's certificate-authority)") from None
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                metrics.KUBE_CALLS.labels(method=method, outcome="network-error").inc()
                if attempt == self._attempts:
                    raise TemporaryError(f"Kubernetes API unreachable: {type(exc).__name__}") from None
                log.warning("kubernetes call failed, retrying",
                            extra={"method": method, "path": path, "error": type(exc).__name__})
            else:
                metrics.KUBE_LATENCY.observe(time.monotonic() - started)
                metrics.KUBE_CALLS.labels(method=method, outcome=str(status)).inc()
                if "/leases" in path:
                    metrics.LEASE_CALLS.inc()
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
        """The decoded JSON answer (None when empty); raises KubeError subclasses or TemporaryError."""
        return await asyncio.to_thread(self._request, method, path, query=list(query), body=body,
                                       content_type=content_type)

    async def get(self, path: str) -> dict[str, Any] | None:
        """The object at `path`, or None when it does not exist (404)."""
        try:
            result: dict[str, Any] = await self.call("GET", path)
        except NotFound:
            return None
        return result

    async def list_objects(self, api_version: str, plural: str, namespace: str | None,
                           selector: str | None = None) -> list[dict[str, Any]]:
        """Every object of the collection matching the label `selector`, read in pages of 500."""
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

    async def list_everywhere_or(self, api_version: str, plural: str, namespace: str,
                                 selector: str | None = None) -> list[dict[str, Any]]:
        """list_objects in every namespace; in `namespace` alone when the credentials may not list
        cluster-wide (403)."""
        try:
            return await self.list_objects(api_version, plural, None, selector)
        except KubeError as exc:
            if exc.status != 403:
                raise
            return await self.list_objects(api_version, plural, namespace, selector)

    async def apply(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply; JSON is YAML, so the body is sent as the dict's JSON."""
        result: dict[str, Any] = await self.call(
            "PATCH", object_path(manifest), body=dict(manifest), content_type="application/apply-patch+yaml",
            query=[("fieldManager", naming.FIELD_MANAGER), ("force", "true")])
        return result

    async def delete(self, path: str, *, resource_version: str | None = None) -> bool:
        """Delete (background propagation), only if still at `resource_version` when given (else 409,
        Conflict); False when it was already gone."""
        body: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
        if resource_version:
            body["preconditions"] = {"resourceVersion": resource_version}
        try:
            await self.call("DELETE", path, body=body)
        except NotFound:
            return False
        return True

    async def ping(self) -> None:
        """Cheap call proving the API server answers and our credentials work."""
        await self.call("GET", "/version")

