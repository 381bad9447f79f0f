"""The Kubernetes access the bot needs, and where deploy/ grants it (pure: `serve` asks, see bot.server).

Each verb is one the code sends (bot/kube, bot/leader.py, bot/arbiter.py, bot/links.py); the comments in
deploy/base/rbac-*.yaml say which call needs which. `serve` and `gc` (before its pass changes anything;
`gc --dry-run`: the reads alone) ask the API server about each with a
SelfSubjectAccessReview (authorization.k8s.io/v1; Kubernetes docs, "Authorization: Checking API access"),
which any authenticated user may create, so a missing Role stops start-up with one line instead of a 403
at the first pull request. A namespace that does not exist is found with a dry-run create (the API
server's NamespaceLifecycle admission answers 404 `namespaces "<name>" not found`).

Shapes: `needed(...)` -> [Need]; `reads_only([Need])` -> [Need]; `review(verb, need)` -> the
SelfSubjectAccessReview body; `refusal(need, verbs)` -> one sentence naming namespace, verbs, resource and
the RBAC object to apply; `namespace_probes(...)` -> [Probe] (one per distinct namespace).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from bot.manifests import VIRTUAL_SERVICE_API

ISTIO_GROUP = VIRTUAL_SERVICE_API.partition("/")[0]
REVIEW_PATH = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
PROBE_NAME = "preview-bot-access-check"  # only ever created with dryRun=All


@dataclass(frozen=True)
class Need:
    """`verbs` on `resource` (of API `group`, "" for the core group) in `namespace` ("" for every
    namespace, cluster-wide), which `setting` names and `grant` (an RBAC object in deploy/) gives."""

    setting: str
    namespace: str
    group: str
    resource: str
    verbs: tuple[str, ...]
    grant: str

    @property
    def what(self) -> str:
        return f"{self.resource}.{self.group}" if self.group else self.resource


def needed(*, preview_namespace: str, routing_namespace: str, lease_namespace: str) -> list[Need]:
    """What the bot's calls need, with deploy/'s RBAC object for each (the Gateway's `get` is checked by
    reading the Gateway itself, bot.server.check_gateway)."""
    previews = (f"the Role preview-bot-previews and its RoleBinding (deploy/base/rbac-previews.yaml) in "
                f"namespace {preview_namespace}")
    routing = (f"the Role preview-bot-routing and its RoleBinding (deploy/base/rbac-routing.yaml) in "
               f"namespace {routing_namespace}")
    write = ("get", "list", "create", "patch", "delete")
    return [
        Need("PREVIEW_NAMESPACE", preview_namespace, "apps", "deployments", write, previews),
        Need("PREVIEW_NAMESPACE", preview_namespace, "", "services", write, previews),
        Need("PREVIEW_NAMESPACE", preview_namespace, "", "pods", ("list",), previews),
        Need("PREVIEW_ROUTING_NAMESPACE", routing_namespace, ISTIO_GROUP, "virtualservices",
             ("get", "list", "create", "update", "patch", "delete"), routing),
        # Istio uses one mesh VirtualService per host wherever it lives (bot/mesh_hosts.py).
        Need("", "", ISTIO_GROUP, "virtualservices", ("get", "list"),
             "the ClusterRole preview-bot-virtualservices-read and its ClusterRoleBinding "
             "(deploy/base/rbac-virtualservices.yaml)"),
        Need("POD_NAMESPACE", lease_namespace, "coordination.k8s.io", "leases",
             ("create", "get", "update", "delete"),
             f"the Role preview-bot-leader and its RoleBinding (deploy/base/rbac-leader.yaml) in namespace "
             f"{lease_namespace}"),
    ]


READ_VERBS = frozenset({"get", "list"})


def reads_only(needs: list[Need]) -> list[Need]:
    """What a pass that changes nothing (`gc --dry-run`) needs of `needs`: their reads, and no Lease (it
    takes no PR's lock and claims no slot)."""
    return [replace(need, verbs=tuple(v for v in need.verbs if v in READ_VERBS)) for need in needs
            if need.setting != "POD_NAMESPACE" and any(v in READ_VERBS for v in need.verbs)]


def review(verb: str, need: Need) -> dict[str, Any]:
    """The SelfSubjectAccessReview asking whether `verb` on `need`'s resource is allowed."""
    attributes = {"verb": verb, "group": need.group, "resource": need.resource}
    if need.namespace:
        attributes["namespace"] = need.namespace
    return {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": attributes}}


def refusal(need: Need, verbs: list[str]) -> str:
    """One sentence: what is refused where, and what to apply."""
    where = f"in namespace {need.namespace} ({need.setting})" if need.namespace else "in all namespaces"
    fix = f"apply {need.grant}"
    if need.namespace:
        fix += " (create the namespace first if it does not exist)"
    return f"may not {', '.join(verbs)} {need.what} {where}: {fix}"


@dataclass(frozen=True)
class Probe:
    """A dry-run create of `body` into `namespace` (named by `setting`) at `path`."""

    setting: str
    namespace: str
    path: str
    body: dict[str, Any]


def _probe(setting: str, namespace: str, api_version: str, plural: str, kind: str,
           spec: dict[str, Any] | None) -> Probe:
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    body: dict[str, Any] = {"apiVersion": api_version, "kind": kind,
                            "metadata": {"name": PROBE_NAME, "namespace": namespace}}
    if spec is not None:
        body["spec"] = spec
    return Probe(setting, namespace, f"{prefix}/namespaces/{namespace}/{plural}", body)


def namespace_probes(*, preview_namespace: str, routing_namespace: str, lease_namespace: str) -> list[Probe]:
    """One dry-run create per distinct namespace, of a kind the bot may create there (and valid, so that
    only a missing namespace makes it fail with 404)."""
    host = f"{PROBE_NAME}.invalid"
    probes = [
        _probe("PREVIEW_NAMESPACE", preview_namespace, "v1", "services", "Service", {"ports": [{"port": 80}]}),
        _probe("PREVIEW_ROUTING_NAMESPACE", routing_namespace, VIRTUAL_SERVICE_API, "virtualservices",
               "VirtualService", {"hosts": [host], "http": [{"route": [{"destination": {"host": host}}]}]}),
        _probe("POD_NAMESPACE", lease_namespace, "coordination.k8s.io/v1", "leases", "Lease", None),
    ]
    seen: set[str] = set()
    distinct = []
    for probe in probes:
        if probe.namespace not in seen:
            seen.add(probe.namespace)
            distinct.append(probe)
    return distinct


def missing_namespace(probe: Probe, status: int, message: str) -> str | None:
    """The sentence for a probe the API server answered `status` `message`, when that says the namespace
    does not exist (NamespaceLifecycle admission); None for any other answer."""
    if status == 404 and f'namespaces "{probe.namespace}" not found' in message:
        return f"{probe.setting}: namespace {probe.namespace} does not exist; create it (or name an existing one)"
    return None
