"""deploy/ on a real API server: it applies cleanly, and its RBAC is exactly what the bot needs.

- `render_kustomization()` builds deploy/ (and its overlay) in pure Python: `resources` (files and
  folders), `namespace`, `images`, and `patches` (JSON 6902 ops or merge patches with a `target`);
  anything else in a kustomization.yaml fails loudly instead of being ignored. When kubectl is
  installed its `kubectl kustomize` output is compared with ours.
- Every document is applied with server-side apply and strict field validation, first as a dry run,
  then for real; the bot's Deployment must become Available in its `restricted` namespace (Pod
  Security admission accepts the pod).
- As the ServiceAccount (a TokenRequest token in a kubeconfig): what the bot does works, anything else
  is 403 — and the bot's own Kube adapter and LeaderElector run a whole preview life as that account.

The helpers `apply_documents()` and `service_account_token()` are meant for other cluster tests too
(e.g. the lifecycle test run as this ServiceAccount).
"""

from __future__ import annotations

import copy
import json
import secrets
import shutil
import subprocess
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes import config as k8s_config
from kubernetes.client.rest import ApiException

from tests.plugins.cluster import Cluster, wait_until

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
BOT_NAMESPACE = "preview-bot"
SERVICE_ACCOUNT = "preview-bot"
PREVIEW_NAMESPACE = "default"
ROUTING_NAMESPACE = "istio-system"
LEASE_NAME = "preview-bot-reconciler"
WAIT = 90.0
Doc = dict[str, Any]

CLUSTER_SCOPED = frozenset({"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                            "PersistentVolume", "StorageClass", "PriorityClass", "Node",
                            "ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"})
SUPPORTED_FIELDS = frozenset({"apiVersion", "kind", "resources", "namespace", "images", "patches"})


# -- a small kustomize ------------------------------------------------------------------------------------

def render_kustomization(root: Path) -> list[Doc]:
    """The documents `kubectl kustomize root` would print (for the features deploy/ uses)."""
    spec = yaml.safe_load((root / "kustomization.yaml").read_text(encoding="utf-8")) or {}
    unsupported = set(spec) - SUPPORTED_FIELDS
    assert not unsupported, f"{root}: the test renderer does not implement {sorted(unsupported)}"
    docs: list[Doc] = []
    for entry in spec.get("resources") or []:
        path = (root / entry).resolve()
        if path.is_dir():
            docs.extend(render_kustomization(path))
        else:
            docs.extend(d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d)
    docs = [copy.deepcopy(d) for d in docs]
    if spec.get("namespace"):
        for doc in docs:
            if doc["kind"] not in CLUSTER_SCOPED:
                doc["metadata"]["namespace"] = spec["namespace"]
    for image in spec.get("images") or []:
        _set_image(docs, image)
    for patch in spec.get("patches") or []:
        _patch(docs, patch, root)
    keys = [_key(d) for d in docs]
    assert len(keys) == len(set(keys)), f"{root}: duplicate objects {sorted(k for k in keys if keys.count(k) > 1)}"
    return docs


def _key(doc: Mapping[str, Any]) -> tuple[str, str, str]:
    return doc["kind"], doc["metadata"].get("namespace", ""), doc["metadata"]["name"]


def _pod_specs(doc: Doc) -> list[Doc]:
    if doc["kind"] == "Pod":
        return [doc["spec"]]
    template = (doc.get("spec") or {}).get("template")
    if template and "spec" in template:
        return [template["spec"]]
    job = ((doc.get("spec") or {}).get("jobTemplate") or {}).get("spec", {}).get("template")
    return [job["spec"]] if job else []


def _set_image(docs: list[Doc], image: Mapping[str, str]) -> None:
    for doc in docs:
        for pod in _pod_specs(doc):
            for container in pod.get("initContainers", []) + pod.get("containers", []):
                name, _, tag = container["image"].partition(":")
                if name != image["name"]:
                    continue
                container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}" \
                    if image.get("newTag", tag) else image.get("newName", name)
                if image.get("digest"):
                    container["image"] = f"{image.get('newName', name)}@{image['digest']}"


def _matches(doc: Mapping[str, Any], target: Mapping[str, str]) -> bool:
    group, _, version = doc["apiVersion"].rpartition("/")
    wanted = {"kind": doc["kind"], "name": doc["metadata"]["name"],
              "namespace": doc["metadata"].get("namespace", ""), "group": group, "version": version}
    return all(wanted[field] == value for field, value in target.items())


def _patch(docs: list[Doc], patch: Mapping[str, Any], root: Path) -> None:
    text = patch["patch"] if "patch" in patch else (root / patch["path"]).read_text(encoding="utf-8")
    body = yaml.safe_load(text)
    if isinstance(body, list):
        target = patch.get("target")
        assert target, f"{root}: a JSON 6902 patch needs a target"
        hits = [d for d in docs if _matches(d, target)]
        assert hits, f"{root}: patch target {target} matches nothing"
        for doc in hits:
            for op in body:
                _json6902(doc, op)
    else:
        target = patch.get("target") or {"kind": body["kind"], "name": body["metadata"]["name"]}
        hits = [d for d in docs if _matches(d, target)]
        assert hits, f"{root}: patch target {target} matches nothing"
        for doc in hits:
            _merge(doc, {k: v for k, v in body.items() if k not in ("apiVersion", "kind")})


def _merge(into: Doc, patch: Mapping[str, Any]) -> None:
    for key, value in patch.items():
        if value is None:
            into.pop(key, None)
        elif isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)


def _json6902(doc: Doc, op: Mapping[str, Any]) -> None:
    tokens = [t.replace("~1", "/").replace("~0", "~") for t in op["path"].lstrip("/").split("/")]
    parent: Any = doc
    for token in tokens[:-1]:
        parent = parent[int(token)] if isinstance(parent, list) else parent[token]
    last = tokens[-1]
    kind = op["op"]
    assert kind in ("add", "replace", "remove"), f"unsupported JSON patch op {kind}"
    if isinstance(parent, list):
        index = len(parent) if last == "-" else int(last)
        if kind == "add":
            parent.insert(index, copy.deepcopy(op["value"]))
        elif kind == "replace":
            parent[index] = copy.deepcopy(op["value"])
        else:
            del parent[index]
    else:
        if kind in ("replace", "remove"):
            assert last in parent, f"JSON patch {kind} of missing {op['path']}"
        if kind == "remove":
            del parent[last]
        else:
            parent[last] = copy.deepcopy(op["value"])


# -- applying and authenticating ---------------------------------------------------------------------------

class Resources:
    """kind -> (plural, namespaced) for an apiVersion, from the server's discovery documents."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self._cache: dict[str, dict[str, tuple[str, bool]]] = {}

    def lookup(self, api_version: str, kind: str) -> tuple[str, bool]:
        if api_version not in self._cache:
            path = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
            data = raw(self.api, "GET", path)
            self._cache[api_version] = {r["kind"]: (r["name"], r["namespaced"])
                                        for r in data["resources"] if "/" not in r["name"]}
        return self._cache[api_version][kind]

    def path(self, doc: Mapping[str, Any]) -> str:
        plural, namespaced = self.lookup(doc["apiVersion"], doc["kind"])
        prefix = "/api/v1" if doc["apiVersion"] == "v1" else f"/apis/{doc['apiVersion']}"
        meta = doc["metadata"]
        if namespaced:
            return f"{prefix}/namespaces/{meta['namespace']}/{plural}/{meta['name']}"
        return f"{prefix}/{plural}/{meta['name']}"


def raw(api: client.ApiClient, method: str, path: str, body: Any = None, *,
        query: list[tuple[str, str]] | None = None, content_type: str = "application/json") -> Any:
    """One request; raises ApiException on >= 400 and returns the decoded JSON otherwise."""
    headers = {"Accept": "application/json"}
    if body is not None:
        headers["Content-Type"] = content_type
    params = api.param_serialize(method=method, resource_path=path, query_params=query or [],
                                 header_params=headers, body=body, auth_settings=["BearerToken"])
    response = api.call_api(*params, _request_timeout=30)
    response.read()
    if response.status >= 400:
        raise ApiException(status=response.status, reason=response.reason, http_resp=response)
    return json.loads(response.data) if response.data else None


def apply_documents(api: client.ApiClient, docs: list[Doc], *, dry_run: bool = False,
                    manager: str = "deploy-test") -> list[Doc]:
    """Server-side apply each document (strict field validation); Namespaces first."""
    resources = Resources(api)
    ordered = sorted(docs, key=lambda d: d["kind"] != "Namespace")
    query = [("fieldManager", manager), ("force", "true"), ("fieldValidation", "Strict")]
    if dry_run:
        query.append(("dryRun", "All"))
    return [raw(api, "PATCH", resources.path(doc), doc, query=query, content_type="application/apply-patch+yaml")
            for doc in ordered]


def team_setup(deployed: Deployed) -> tuple[str, str, client.CustomObjectsApi, client.RbacAuthorizationV1Api,
                                           Any, Any]:
    """A team's namespace of its own: (suffix, namespace, admin custom-objects API, admin RBAC API, the bot's
    ClusterSettings, a ServiceConfig named after the suffix)."""
    from bot.repo_config import ServiceConfig
    from bot.settings import ClusterSettings

    suffix = secrets.token_hex(3)
    team_ns = f"team-{suffix}"
    ensure_namespace(deployed.admin, team_ns)
    settings = ClusterSettings(domain="example.com", namespace=PREVIEW_NAMESPACE, routing_namespace=ROUTING_NAMESPACE)
    service = ServiceConfig(name=f"svc{suffix}", image="example.invalid/svc:{sha}", port=8080)
    return (suffix, team_ns, client.CustomObjectsApi(deployed.admin), client.RbacAuthorizationV1Api(deployed.admin),
            settings, service)


def ensure_namespace(api: client.ApiClient, name: str) -> None:
    try:
        client.CoreV1Api(api).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    except ApiException as exc:
        if exc.status != 409:
            raise


def service_account_token(api: client.ApiClient, namespace: str = BOT_NAMESPACE,
                          name: str = SERVICE_ACCOUNT, seconds: int = 3600) -> str:
    """A bound token for the ServiceAccount, from the TokenRequest API (what a pod would mount)."""
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"expirationSeconds": seconds}}
    answer = raw(api, "POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token", body)
    return str(answer["status"]["token"])


def client_from_kubeconfig(path: Path) -> client.ApiClient:
    configuration = client.Configuration()
    k8s_config.load_kube_config(config_file=str(path), client_configuration=configuration)
    return client.ApiClient(configuration)


def status_of(call: Callable[[], Any]) -> int:
    try:
        call()
    except ApiException as exc:
        return int(exc.status)
    return 200


# -- fixtures ----------------------------------------------------------------------------------------------

@dataclass
class Deployed:
    admin: client.ApiClient
    bot: client.ApiClient      # authenticated as system:serviceaccount:preview-bot:preview-bot
    kubeconfig: Path
    docs: list[Doc]


@pytest.fixture(scope="module")
def deployed(cluster: Cluster) -> Iterator[Deployed]:
    docs = render_kustomization(DEPLOY)
    gateway = render_kustomization(DEPLOY / "examples" / "gateway")
    with cluster.api_client() as admin:
        ensure_namespace(admin, ROUTING_NAMESPACE)
        # Namespaces for real first: a dry run of the objects inside them needs them to exist.
        apply_documents(admin, [d for d in docs if d["kind"] == "Namespace"])
        apply_documents(admin, docs + gateway, dry_run=True)
        apply_documents(admin, docs + gateway)
        token = service_account_token(admin)
        kubeconfig = cluster.kubeconfig_for_token(token)
        bot = client_from_kubeconfig(kubeconfig)
        try:
            yield Deployed(admin=admin, bot=bot, kubeconfig=kubeconfig, docs=docs)
        finally:
            bot.close()


def find(docs: list[Doc], kind: str, name: str) -> Doc:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def small_deployment(name: str) -> Doc:
    labels = {"app": name}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [{"name": "web", "image": "example.invalid/web:1"}]}}}}


# -- static: the rendering and the settings agree -------------------------------------------------------------

def _consistency(docs: list[Doc]) -> None:
    data = find(docs, "ConfigMap", "preview-bot")["data"]
    deployment = find(docs, "Deployment", "preview-bot")
    bot_namespace = deployment["metadata"]["namespace"]
    assert find(docs, "Role", "preview-bot-previews")["metadata"]["namespace"] == data["PREVIEW_NAMESPACE"]
    assert find(docs, "Role", "preview-bot-routing")["metadata"]["namespace"] == data["PREVIEW_ROUTING_NAMESPACE"]
    leader = find(docs, "Role", "preview-bot-leader")
    assert leader["metadata"]["namespace"] == bot_namespace
    assert {tuple(sorted(r["verbs"])) for r in leader["rules"]} == {("create", "delete", "get", "update")}
    account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    for binding in (d for d in docs if d["kind"] == "RoleBinding"):
        role = find(docs, "Role", binding["roleRef"]["name"])
        assert role["metadata"]["namespace"] == binding["metadata"]["namespace"]
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": bot_namespace}]
    assert not [d for d in docs if d["kind"] == "Secret"], "no Secret values in deploy/"
    # The only cluster-wide right: reading VirtualServices (Istio picks one per host from any namespace).
    cluster_roles = {d["metadata"]["name"]: d["rules"] for d in docs if d["kind"] == "ClusterRole"}
    virtual_services = {"apiGroups": ["networking.istio.io"], "resources": ["virtualservices"]}
    assert cluster_roles == {
        "preview-bot-virtualservices-read": [{**virtual_services, "verbs": ["get", "list"]}],
        "preview-bot-team-routes": [{**virtual_services, "verbs": ["update"]}],
    }
    bindings = [d for d in docs if d["kind"] == "ClusterRoleBinding"]
    assert [(b["roleRef"]["name"], b["subjects"]) for b in bindings] == [
        ("preview-bot-virtualservices-read", [{"kind": "ServiceAccount", "name": account, "namespace": bot_namespace}])
    ], "preview-bot-team-routes is bound per namespace by the operator, never cluster-wide"


def test_base_and_overlay_render_consistently() -> None:
    base = render_kustomization(DEPLOY)
    _consistency(base)
    overlay = render_kustomization(DEPLOY / "overlays" / "example")
    _consistency(overlay)
    assert find(overlay, "ConfigMap", "preview-bot")["data"]["PREVIEW_NAMESPACE"] == "previews"
    assert any(d["kind"] == "Namespace" and d["metadata"]["name"] == "previews" for d in overlay)
    image = find(overlay, "Deployment", "preview-bot")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == "registry.example.com/platform/preview-bot:0.1.0"


def test_deployment_settings_load(tmp_path: Path) -> None:
    """The ConfigMap + the Deployment's env (+ a Secret) are valid settings for bot.settings."""
    from bot.settings import load_settings

    docs = render_kustomization(DEPLOY)
    container = find(docs, "Deployment", "preview-bot")["spec"]["template"]["spec"]["containers"][0]
    env = dict(find(docs, "ConfigMap", "preview-bot")["data"])
    key_file = tmp_path / "private-key.pem"
    from tests.fakegithub.server import _app_key

    key_file.write_text(_app_key()[1])
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        elif "fieldRef" in item.get("valueFrom", {}):
            field = item["valueFrom"]["fieldRef"]["fieldPath"]
            env[item["name"]] = {"metadata.name": "preview-bot-abc12", "metadata.namespace": BOT_NAMESPACE}[field]
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            assert ref["name"] == "preview-bot-github"
            env[item["name"]] = "s" * 32
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert str(Path(env["GITHUB_PRIVATE_KEY_PATH"]).parent) in mounts
    env["GITHUB_PRIVATE_KEY_PATH"] = str(key_file)
    settings = load_settings(env)
    assert settings.leader_election and settings.lease_namespace == BOT_NAMESPACE
    assert settings.cluster.namespace == PREVIEW_NAMESPACE
    assert settings.cluster.routing_namespace == ROUTING_NAMESPACE
    assert settings.lease_name == LEASE_NAME
    assert container["args"] == ["serve", "--port", "8080"]
    assert {p["containerPort"] for p in container["ports"]} == {8080}


@pytest.mark.parametrize("folder", ["", "overlays/example", "examples/gateway"])
def test_renderer_agrees_with_kubectl_kustomize(folder: str) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is not installed: the comparison with `kubectl kustomize` needs it (CI installs it)")
    result = subprocess.run([kubectl, "kustomize", str(DEPLOY / folder)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    theirs = {_key(d): d for d in yaml.safe_load_all(result.stdout) if d}
    ours = {_key(d): d for d in render_kustomization(DEPLOY / folder)}
    assert theirs == ours


# -- on the API server ---------------------------------------------------------------------------------------

def test_the_bot_deployment_runs_under_restricted_pod_security(deployed: Deployed) -> None:
    apps = client.AppsV1Api(deployed.admin)
    template = find(deployed.docs, "Deployment", "preview-bot")["spec"]["template"]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "psa-check", "namespace": BOT_NAMESPACE},
           "spec": template["spec"]}
    # Pod Security admission (enforce=restricted on the namespace) judges the pod as the ReplicaSet would.
    raw(deployed.admin, "POST", f"/api/v1/namespaces/{BOT_NAMESPACE}/pods", pod,
        query=[("dryRun", "All"), ("fieldValidation", "Strict")])

    def available() -> bool:
        status = apps.read_namespaced_deployment("preview-bot", BOT_NAMESPACE).status
        return (status.available_replicas or 0) == 2

    wait_until("Deployment preview-bot/preview-bot Available with 2 replicas", available)
    service = client.CoreV1Api(deployed.admin).read_namespaced_service("preview-bot", BOT_NAMESPACE)
    assert [(p.port, p.target_port) for p in service.spec.ports] == [(80, "http")]


def test_service_account_can_do_what_the_bot_does(deployed: Deployed) -> None:
    name = "rbac-" + secrets.token_hex(3)
    bot = deployed.bot
    apps, core = client.AppsV1Api(bot), client.CoreV1Api(bot)
    custom = client.CustomObjectsApi(bot)
    try:
        apps.create_namespaced_deployment(PREVIEW_NAMESPACE, small_deployment(name))
        apps.patch_namespaced_deployment(name, PREVIEW_NAMESPACE, {"metadata": {"annotations": {"a": "b"}}})
        assert name in [d.metadata.name for d in apps.list_namespaced_deployment(PREVIEW_NAMESPACE).items]
        core.create_namespaced_service(PREVIEW_NAMESPACE, {
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"selector": {"app": name}, "ports": [{"port": 80, "name": "http"}]}})
        core.patch_namespaced_service(name, PREVIEW_NAMESPACE, {"metadata": {"labels": {"x": "y"}}})
        core.list_namespaced_pod(PREVIEW_NAMESPACE, label_selector=f"app={name}")
        vs = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": name},
              "spec": {"hosts": [f"{name}.example.com"], "http": [{"route": [{"destination": {"host": name}}]}]}}
        created = custom.create_namespaced_custom_object("networking.istio.io", "v1", ROUTING_NAMESPACE,
                                                         "virtualservices", vs)
        created["spec"]["hosts"].append(f"{name}-2.example.com")
        custom.replace_namespaced_custom_object("networking.istio.io", "v1", ROUTING_NAMESPACE,
                                                "virtualservices", name, created)
        custom.delete_namespaced_custom_object("networking.istio.io", "v1", ROUTING_NAMESPACE, "virtualservices",
                                               name)
        core.delete_namespaced_service(name, PREVIEW_NAMESPACE)
        apps.delete_namespaced_deployment(name, PREVIEW_NAMESPACE)
        version = raw(bot, "GET", "/version")   # the readiness ping
        assert version["major"] == "1"
        gateway = custom.get_namespaced_custom_object("networking.istio.io", "v1", ROUTING_NAMESPACE, "gateways",
                                                      "preview-gateway")   # the start-up Gateway check
        assert gateway["spec"]["servers"]
    finally:
        admin_apps = client.AppsV1Api(deployed.admin)
        for call in (lambda: admin_apps.delete_namespaced_deployment(name, PREVIEW_NAMESPACE),
                     lambda: client.CoreV1Api(deployed.admin).delete_namespaced_service(name, PREVIEW_NAMESPACE)):
            status_of(call)


def test_service_account_is_refused_everything_else(deployed: Deployed, namespace: str) -> None:
    bot, admin = deployed.bot, deployed.admin
    apps, core = client.AppsV1Api(bot), client.CoreV1Api(bot)
    rbac = client.RbacAuthorizationV1Api(bot)
    name = "victim"
    client.AppsV1Api(admin).create_namespaced_deployment(namespace, small_deployment(name))
    refused = {
        "list secrets (preview namespace)": lambda: core.list_namespaced_secret(PREVIEW_NAMESPACE),
        "list secrets (own namespace)": lambda: core.list_namespaced_secret(BOT_NAMESPACE),
        "get the bot's own Secret": lambda: core.read_namespaced_secret("preview-bot-github", BOT_NAMESPACE),
        "list secrets (all namespaces)": lambda: core.list_secret_for_all_namespaces(),
        "delete a Deployment elsewhere": lambda: apps.delete_namespaced_deployment(name, namespace),
        "delete a Deployment in kube-system": lambda: apps.delete_namespaced_deployment("x", "kube-system"),
        "create a Deployment elsewhere": lambda: apps.create_namespaced_deployment(namespace, small_deployment("y")),
        "list nodes": lambda: core.list_node(),
        "list namespaces": lambda: core.list_namespace(),
        "create a pod": lambda: core.create_namespaced_pod(PREVIEW_NAMESPACE, {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "example.invalid/c:1"}]}}),
        "read ConfigMaps": lambda: core.list_namespaced_config_map(BOT_NAMESPACE),
        "write a VirtualService outside the routing namespace": lambda: client.CustomObjectsApi(bot)
        .create_namespaced_custom_object("networking.istio.io", "v1", PREVIEW_NAMESPACE, "virtualservices", {
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "x"},
            "spec": {"hosts": ["x.example.com"], "http": [{"route": [{"destination": {"host": "x"}}]}]}}),
        "grant itself a ClusterRoleBinding": lambda: rbac.create_cluster_role_binding({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "escalate"}, "subjects": [
                {"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": BOT_NAMESPACE}],
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"}}),
        "edit its own Role": lambda: rbac.patch_namespaced_role("preview-bot-previews", PREVIEW_NAMESPACE,
                                                               {"rules": []}),
        "list Leases": lambda: client.CoordinationV1Api(bot).list_namespaced_lease(BOT_NAMESPACE),
        "read Leases elsewhere": lambda: client.CoordinationV1Api(bot).read_namespaced_lease("x", PREVIEW_NAMESPACE),
    }
    answers = {what: status_of(call) for what, call in refused.items()}
    assert answers == dict.fromkeys(refused, 403)
    assert client.AppsV1Api(admin).read_namespaced_deployment(name, namespace).metadata.name == name


# Verbs the code never sends are not granted either (SelfSubjectAccessReview as the ServiceAccount).
NOT_GRANTED = [
    ("update", "apps", "deployments", PREVIEW_NAMESPACE),
    ("watch", "apps", "deployments", PREVIEW_NAMESPACE),
    ("deletecollection", "apps", "deployments", PREVIEW_NAMESPACE),
    ("update", "", "services", PREVIEW_NAMESPACE),
    ("get", "", "pods", PREVIEW_NAMESPACE),
    ("delete", "", "pods", PREVIEW_NAMESPACE),
    ("create", "", "pods/exec", PREVIEW_NAMESPACE),
    ("get", "", "pods/log", PREVIEW_NAMESPACE),
    ("deletecollection", "networking.istio.io", "virtualservices", ROUTING_NAMESPACE),
    ("create", "networking.istio.io", "gateways", ROUTING_NAMESPACE),
    ("list", "networking.istio.io", "gateways", ROUTING_NAMESPACE),
    ("get", "networking.istio.io", "gateways", PREVIEW_NAMESPACE),
    ("create", "networking.istio.io", "virtualservices", PREVIEW_NAMESPACE),
    # Reading every namespace's VirtualServices, yes; writing outside the routing namespace, only where an
    # operator binds preview-bot-team-routes (nowhere by default).
    *[(verb, "networking.istio.io", "virtualservices", ns) for verb in ("update", "patch", "delete", "watch")
      for ns in (PREVIEW_NAMESPACE, "kube-system", "shop")],
    ("create", "networking.istio.io", "destinationrules", PREVIEW_NAMESPACE),
    ("list", "networking.istio.io", "gateways", PREVIEW_NAMESPACE),
    ("list", "coordination.k8s.io", "leases", BOT_NAMESPACE),
    ("watch", "coordination.k8s.io", "leases", BOT_NAMESPACE),
    ("create", "coordination.k8s.io", "leases", PREVIEW_NAMESPACE),
    ("create", "apps", "deployments", BOT_NAMESPACE),
    ("impersonate", "", "serviceaccounts", BOT_NAMESPACE),
]
GRANTED = [
    *[(verb, "apps", "deployments", PREVIEW_NAMESPACE) for verb in ("get", "list", "create", "patch", "delete")],
    *[(verb, "", "services", PREVIEW_NAMESPACE) for verb in ("get", "list", "create", "patch", "delete")],
    ("list", "", "pods", PREVIEW_NAMESPACE),
    *[(verb, "networking.istio.io", "virtualservices", ROUTING_NAMESPACE)
      for verb in ("get", "list", "create", "update", "patch", "delete")],
    *[(verb, "coordination.k8s.io", "leases", BOT_NAMESPACE) for verb in ("create", "get", "update", "delete")],
    # Istio uses one mesh VirtualService per host, wherever it lives: the bot reads them all.
    *[(verb, "networking.istio.io", "virtualservices", ns) for verb in ("get", "list")
      for ns in (PREVIEW_NAMESPACE, "kube-system", "shop", "")],
]


def _allowed(api: client.ApiClient, verb: str, group: str, resource: str, namespace: str,
             name: str | None = None) -> bool:
    resource, _, sub = resource.partition("/")
    attributes = {"verb": verb, "group": group, "resource": resource, "namespace": namespace}
    if sub:
        attributes["subresource"] = sub
    if name:
        attributes["name"] = name
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
              "spec": {"resourceAttributes": attributes}}
    answer = raw(api, "POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", review)
    return bool(answer["status"]["allowed"])


def test_granted_verbs_are_exactly_the_needed_ones(deployed: Deployed) -> None:
    wrong = [r for r in GRANTED if not _allowed(deployed.bot, *r)]
    wrong += [("NOT", *r) for r in NOT_GRANTED if _allowed(deployed.bot, *r)]
    # The Gateway PREVIEW_GATEWAY names can be read (the start-up check), no other one.
    if not _allowed(deployed.bot, "get", "networking.istio.io", "gateways", ROUTING_NAMESPACE, "preview-gateway"):
        wrong.append(("get", "gateway", "preview-gateway"))
    if _allowed(deployed.bot, "get", "networking.istio.io", "gateways", ROUTING_NAMESPACE, "another-gateway"):
        wrong.append(("NOT", "get", "gateway", "another-gateway"))
    assert not wrong, wrong


async def test_the_bots_own_adapter_runs_a_preview_as_the_service_account(deployed: Deployed) -> None:
    """apply_preview / add_mesh_route / wait_available / keep / list / teardown / leader election."""
    from bot import metrics, naming, slots
    from bot.arbiter import Arbiter, lock_name, slots_name
    from bot.kube import Kube, KubeError
    from bot.leader import LeaderElector
    from bot.manifests import plan_preview
    from bot.naming import PreviewKey
    from bot.repo_config import RepoConfig, ServiceConfig
    from bot.settings import ClusterSettings

    suffix = secrets.token_hex(3)
    settings = ClusterSettings(domain="example.com", namespace=PREVIEW_NAMESPACE,
                               routing_namespace=ROUTING_NAMESPACE)
    kube = Kube(client_from_kubeconfig(deployed.kubeconfig), settings, request_timeout=20, attempts=2)
    key = PreviewKey(f"rbac-{suffix}/shop", 7, 1296269)
    service = ServiceConfig(name=f"web{suffix}", image="example.invalid/web:{sha}", port=8080)
    plan = plan_preview(settings, RepoConfig(services=(service,)), key, "0123456789abcdef0123456789abcdef01234567")
    admin_custom = client.CustomObjectsApi(deployed.admin)
    try:
        await kube.ping()
        await kube.apply_preview(plan)                     # SSA create
        await kube.apply_preview(plan)                     # SSA patch of existing objects
        for s in plan.services:
            assert await kube.add_mesh_route(s.mesh_host, s.mesh_route)      # POST
        other = PreviewKey(f"rbac-{suffix}/shop", 8, 1296269)
        other_plan = plan_preview(settings, RepoConfig(services=(service,)), other, "1" * 40)
        assert await kube.add_mesh_route(other_plan.services[0].mesh_host,
                                         other_plan.services[0].mesh_route)  # PUT on the same VirtualService
        results = await kube.wait_available([s.name for s in plan.services], WAIT)
        assert results == {s.name: None for s in plan.services}
        # A preview that cannot roll out (no node has 1000 CPUs): the wait lists its pods for a hopeless
        # reason on every poll, so `list pods` is exercised whatever the timing of the fast one above.
        stuck = ServiceConfig(name=f"stuck{suffix}", image="example.invalid/stuck:{sha}", port=8080,
                              requests={"cpu": "1000"})
        stuck_plan = plan_preview(settings, RepoConfig(services=(stuck,)), key, plan.sha)
        await kube.apply_preview(stuck_plan)
        stuck_name = stuck_plan.services[0].name
        checks = metrics.REGISTRY.get_sample_value("preview_bot_kubernetes_rollout_requests_total") or 0.0
        assert await kube.wait_available([stuck_name], 2) == {stuck_name: "not Available after 2 s"}
        # Each poll is a GET of the Deployment and a list of its pods, counted apart from other requests.
        polls = (metrics.REGISTRY.get_sample_value("preview_bot_kubernetes_rollout_requests_total") or 0.0) - checks
        assert polls >= 4 and polls % 2 == 0, polls
        assert await kube.delete_preview(key, services=[stuck.name]) == 3
        live = await kube.live_previews((1296269, key.repo))
        assert [p.key for p in live] == [key.value]
        assert await kube.set_keep(key, True) == 1
        found, unknown = await kube.existing_destinations([plan.services[0].destination])
        assert found == {plan.services[0].destination} and unknown == {}

        leader = LeaderElector(kube, namespace=BOT_NAMESPACE, name=LEASE_NAME, identity=f"pod-{suffix}",
                               lease_seconds=5)
        assert await leader.try_acquire_or_renew()         # create (or take over an expired lease)
        assert await leader.try_acquire_or_renew()         # renew: get + update
        await leader.release()
        # The per-PR lock and the per-repository slots (bot/arbiter.py): create, get, update, delete.
        arbiter = Arbiter(kube, namespace=BOT_NAMESPACE, identity=f"pod-{suffix}")
        async with arbiter.pr_lock(key, supersedes=True, timeout=WAIT) as lock:
            await lock.renew()
            assert lock.held and not lock.superseded
        assert client.CoordinationV1Api(deployed.admin).list_namespaced_lease(
            BOT_NAMESPACE, field_selector=f"metadata.name={lock_name(key)}").items == []
        assert await arbiter.claim_slot(key, set(), 1) == (True, 0)
        assert await arbiter.claim_slot(other, set(), 1) == (False, 1)
        # The line for a slot (in the slots Lease) and its index: get, create, update; no list.
        assert (await arbiter.lines())[1] == []
        waiter = slots.Waiter(other.value, other.number, "a" * 40, slots.EVENT, "2026-01-01T00:00:00Z")
        assert (await arbiter.claim_or_wait(other, set(), 1, waiter=waiter)).place == 1
        index, waiting = await arbiter.lines()
        assert waiting == [(other.repo_id, other.repo)]
        await arbiter.release_slot(key)
        assert await arbiter.claim_slot(other, set(), 1) == (True, 0)
        await arbiter.unindex(other.repo_id, index)  # its line is empty now
        assert (await arbiter.lines())[1] == []
        await arbiter.release_slot(other)
        elsewhere = Arbiter(kube, namespace=PREVIEW_NAMESPACE, identity="x")
        with pytest.raises(KubeError) as refused:
            await elsewhere.claim_slot(key, set(), 1)
        assert refused.value.status == 403

        assert await kube.remove_routes_of_key(other.value) == 1          # PUT
        assert await kube.remove_routes_of_key(key.value) == 1            # last route: DELETE with precondition
        assert await kube.delete_preview(key) == 3                        # Deployment, Service, gateway route
        assert await kube.live_previews((1296269, key.repo)) == []
        mesh = admin_custom.list_namespaced_custom_object(
            "networking.istio.io", "v1", ROUTING_NAMESPACE, "virtualservices",
            label_selector=f"{naming.ROLE_LABEL}={naming.ROLE_MESH}")["items"]
        assert not [m for m in mesh if plan.services[0].mesh_host in m["spec"].get("hosts", [])]
    finally:
        kube.close()
        status_of(lambda: client.CoordinationV1Api(deployed.admin).delete_namespaced_lease(LEASE_NAME,
                                                                                          BOT_NAMESPACE))
        status_of(lambda: client.CoordinationV1Api(deployed.admin).delete_namespaced_lease(slots_name(key),
                                                                                          BOT_NAMESPACE))
        for item in admin_custom.list_namespaced_custom_object(
                "networking.istio.io", "v1", ROUTING_NAMESPACE, "virtualservices")["items"]:
            if suffix in json.dumps(item):
                status_of(lambda item=item: admin_custom.delete_namespaced_custom_object(
                    "networking.istio.io", "v1", ROUTING_NAMESPACE, "virtualservices", item["metadata"]["name"]))
        selector = f"{naming.KEY_LABEL} in ({key.value},{PreviewKey(key.repo, 8, 1296269).value})"
        admin_apps, admin_core = client.AppsV1Api(deployed.admin), client.CoreV1Api(deployed.admin)
        for d in admin_apps.list_namespaced_deployment(PREVIEW_NAMESPACE, label_selector=selector).items:
            status_of(lambda d=d: admin_apps.delete_namespaced_deployment(d.metadata.name, PREVIEW_NAMESPACE))
        for s in admin_core.list_namespaced_service(PREVIEW_NAMESPACE, label_selector=selector).items:
            status_of(lambda s=s: admin_core.delete_namespaced_service(s.metadata.name, PREVIEW_NAMESPACE))


async def test_full_lifecycle_as_the_service_account(deployed: Deployed, fake_github: Any, cluster: Cluster) -> None:
    """The whole bot (webhooks, GitHub, reconciler with leader election) on the ServiceAccount's token."""
    from bot.naming import PreviewKey
    from tests.e2e.harness import running_bot
    from tests.fakegithub import issue_comment_event, pull_request_event

    suffix = secrets.token_hex(3)
    repo, service = f"sa-{suffix}/shop", f"svc{suffix}"
    config = f"services:\n  - name: {service}\n    image: registry.example.com/{service}:{{sha}}\n    port: 8080\n"
    fake_github.add_repo(repo, files={".github/preview.yml": config}, collaborators={"alice": "write"})
    key = PreviewKey(repo, 1, fake_github.repos[repo].id)
    mesh_host = f"{service}.{PREVIEW_NAMESPACE}.svc.cluster.local"
    apps, custom = client.AppsV1Api(deployed.admin), client.CustomObjectsApi(deployed.admin)

    def mesh_route_names() -> list[str]:
        items = custom.list_namespaced_custom_object("networking.istio.io", "v1", ROUTING_NAMESPACE,
                                                     "virtualservices")["items"]
        return [r["name"] for i in items if mesh_host in i["spec"].get("hosts", []) and not i["spec"].get("gateways")
                for r in i["spec"]["http"]]

    async with running_bot(fake_github, cluster, PREVIEW_NAMESPACE, kubeconfig=str(deployed.kubeconfig),
                           PREVIEW_ROUTING_NAMESPACE=ROUTING_NAMESPACE, POD_NAMESPACE=BOT_NAMESPACE,
                           PREVIEW_GATEWAY=f"{ROUTING_NAMESPACE}/preview-gateway",
                           PREVIEW_LEADER_ELECTION="true", POD_NAME=f"bot-{suffix}") as bot:
        fake_github.add_pull(repo, 1)
        assert await bot.send("pull_request", pull_request_event(fake_github, repo, 1, "opened")) == 202
        await bot.settle()
        deployment = apps.read_namespaced_deployment(key.object_name(service), PREVIEW_NAMESPACE)
        assert deployment.status.available_replicas == 1
        assert mesh_route_names() == [key.value, "default"]
        [record] = fake_github.deployments(repo)
        assert [s["state"] for s in fake_github.statuses(repo, record["id"])] == ["in_progress", "success"]

        fake_github.push(repo, 1, "e" * 40)
        await bot.send("pull_request", pull_request_event(fake_github, repo, 1, "synchronize"))
        await bot.settle()
        image = apps.read_namespaced_deployment(key.object_name(service), PREVIEW_NAMESPACE) \
            .spec.template.spec.containers[0].image
        assert image.endswith("e" * 40)

        await bot.send("issue_comment", issue_comment_event(fake_github, repo, 1, "/preview stop", user="alice"))
        await bot.settle()
        assert apps.list_namespaced_deployment(PREVIEW_NAMESPACE, label_selector=key.selector()).items == []
        assert mesh_route_names() == []
        assert bot.bot.elector is not None and bot.bot.elector.is_leader


async def test_team_virtual_service_elsewhere_needs_the_team_routes_binding(deployed: Deployed) -> None:
    """Reading every namespace's VirtualServices is granted; editing a team's only where an operator binds
    preview-bot-team-routes. Without it the bot refuses before writing anything, naming the binding."""
    from bot import mesh_routes
    from bot.errors import MeshRoutingError
    from bot.kube import Kube
    from bot.manifests import plan_preview
    from bot.naming import PreviewKey
    from bot.repo_config import RepoConfig

    suffix, team_ns, admin_custom, admin_rbac, settings, service = team_setup(deployed)
    key = PreviewKey(f"team-{suffix}/shop", 3, int(suffix, 16) + 1)
    plan = plan_preview(settings, RepoConfig(services=(service,)), key, "2" * 40)
    host, route = plan.services[0].mesh_host, plan.services[0].mesh_route
    team = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "team-vs"},
            "spec": {"hosts": [host], "exportTo": ["*"],
                     "http": [{"name": "main", "route": [{"destination": {"host": host}}]}]}}
    admin_custom.create_namespaced_custom_object("networking.istio.io", "v1", team_ns, "virtualservices", team)
    kube = Kube(client_from_kubeconfig(deployed.kubeconfig), settings, request_timeout=20, attempts=2)
    try:
        assert len(await kube.all_virtual_services()) >= 1          # cluster-wide list as the ServiceAccount
        with pytest.raises(MeshRoutingError) as refused:
            await kube.check_mesh_hosts([host])
        assert f"VirtualService {team_ns}/team-vs" in str(refused.value)
        assert f"preview-bot-team-routes to preview-bot's ServiceAccount in namespace {team_ns}" in str(refused.value)

        admin_rbac.create_namespaced_role_binding(team_ns, {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "preview-bot-team-routes"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": "preview-bot-team-routes"},
            "subjects": [{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": BOT_NAMESPACE}]})
        wait_until("the RoleBinding takes effect",
                   lambda: _allowed(deployed.bot, "update", "networking.istio.io", "virtualservices", team_ns))
        assert not _allowed(deployed.bot, "delete", "networking.istio.io", "virtualservices", team_ns)
        assert not _allowed(deployed.bot, "create", "networking.istio.io", "virtualservices", team_ns)
        await kube.check_mesh_hosts([host])
        assert await kube.add_mesh_route(host, route)                  # PUT on the team's VirtualService
        adopted = admin_custom.get_namespaced_custom_object("networking.istio.io", "v1", team_ns, "virtualservices",
                                                            "team-vs")
        assert mesh_routes.preview_keys(adopted["spec"]) == [route["name"]]
        assert await kube.remove_routes_of_key(route["name"]) == 1     # GET + PUT, never DELETE of the team's
        given_back = admin_custom.get_namespaced_custom_object("networking.istio.io", "v1", team_ns,
                                                               "virtualservices", "team-vs")
        assert given_back["spec"] == team["spec"]
    finally:
        kube.close()
        status_of(lambda: client.CoreV1Api(deployed.admin).delete_namespace(team_ns))


async def test_a_team_virtual_service_the_bot_may_no_longer_update_keeps_no_preview_alive(
        deployed: Deployed, caplog: pytest.LogCaptureFixture) -> None:
    """The team unbound preview-bot-team-routes while a preview had its route in their VirtualService. The
    teardown still removes the preview's own objects, its route in the bot's own VirtualService and its
    slot, and a warning names the VirtualService, the route and what to bind. The route left, to a
    removed Service, is a dangling route: the reconciler's removal of it is refused the same way
    (reported, not raised), and succeeds once the binding is back."""
    import logging

    from bot import mesh_routes
    from bot.arbiter import Arbiter, slots_name
    from bot.errors import RoutesNotRemoved
    from bot.kube import Kube
    from bot.manifests import plan_preview
    from bot.naming import PreviewKey
    from bot.previews import Previewer
    from bot.repo_config import RepoConfig, ServiceConfig
    from bot.reporting import Reporter

    suffix, team_ns, admin_custom, admin_rbac, settings, service = team_setup(deployed)
    own = ServiceConfig(name=f"own{suffix}", image="example.invalid/own:{sha}", port=8080)  # the bot's own VS
    key = PreviewKey(f"team-{suffix}/shop", 5, int(suffix, 16) + 2)
    plan = plan_preview(settings, RepoConfig(services=(service, own)), key, "5" * 40)
    host = plan.services[0].mesh_host
    team = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "team-vs"},
            "spec": {"hosts": [host], "exportTo": ["*"],
                     "http": [{"name": "main", "route": [{"destination": {"host": host}}]}]}}
    admin_custom.create_namespaced_custom_object("networking.istio.io", "v1", team_ns, "virtualservices", team)
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": "preview-bot-team-routes"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                           "name": "preview-bot-team-routes"},
               "subjects": [{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": BOT_NAMESPACE}]}

    def may_update() -> bool:
        return _allowed(deployed.bot, "update", "networking.istio.io", "virtualservices", team_ns)

    def team_routes() -> list[str]:
        item = admin_custom.get_namespaced_custom_object("networking.istio.io", "v1", team_ns, "virtualservices",
                                                         "team-vs")
        return mesh_routes.preview_keys(item["spec"])

    admin_rbac.create_namespaced_role_binding(team_ns, binding)
    wait_until("the RoleBinding takes effect", may_update)
    kube = Kube(client_from_kubeconfig(deployed.kubeconfig), settings, request_timeout=20, attempts=2)
    arbiter = Arbiter(kube, namespace=BOT_NAMESPACE, identity=f"pod-{suffix}")
    previewer = Previewer(settings, kube, ready_timeout=5, arbiter=arbiter, reporter=Reporter())
    try:
        await kube.apply_preview(plan)
        for planned in plan.services:
            assert await kube.add_mesh_route(planned.mesh_host, planned.mesh_route)
        assert await arbiter.claim_slot(key, set(), 1) == (True, 0)
        admin_rbac.delete_namespaced_role_binding("preview-bot-team-routes", team_ns)
        wait_until("the RoleBinding is gone", lambda: not may_update())

        with caplog.at_level(logging.WARNING, logger="bot.previews"):
            # The bot's own VirtualService (its last route gone), and a Deployment, Service, gateway route each.
            assert await previewer.stop(None, key.number, "closed", key=key) == 1 + 2 * 3
        assert await kube.live_previews((key.repo_id, key.repo)) == []
        assert await arbiter.claim_slot(PreviewKey(key.repo, 6, key.repo_id), set(), 1) == (True, 0)  # freed
        [warning] = [r.getMessage() for r in caplog.records if r.name == "bot.previews"]
        assert f"VirtualService {team_ns}/team-vs keeps the preview route {key.value}: preview-bot may not update " \
               f"it (403 Forbidden): bind the ClusterRole preview-bot-team-routes to preview-bot's ServiceAccount " \
               f"in namespace {team_ns}" in warning
        assert team_routes() == [key.value]
        assert await kube.find_mesh_service(plan.services[1].mesh_host) is None

        services, _ = await kube.existing_destinations(s.destination for s in plan.services)

        def dangling(r: dict[str, Any]) -> bool:
            return any(d not in services for d in mesh_routes.route_destinations({"http": [r]}).get(r["name"], []))

        with pytest.raises(RoutesNotRemoved) as refused:
            await kube.remove_routes_where(dangling, host=host)
        assert [f.split(":")[0] for f in refused.value.failures] == [
            f"VirtualService {team_ns}/team-vs keeps the preview route {key.value}"]
        admin_rbac.create_namespaced_role_binding(team_ns, binding)
        wait_until("the RoleBinding takes effect again", may_update)
        assert await kube.remove_routes_where(dangling, host=host) == 1
        assert team_routes() == []
    finally:
        kube.close()
        status_of(lambda: client.CoreV1Api(deployed.admin).delete_namespace(team_ns))
        status_of(lambda: client.CoordinationV1Api(deployed.admin).delete_namespaced_lease(slots_name(key),
                                                                                          BOT_NAMESPACE))


async def test_previews_of_an_earlier_preview_namespace_the_bot_may_not_read_are_left_and_reported(
        deployed: Deployed, cluster: Cluster, namespace: str) -> None:
    """PREVIEW_NAMESPACE changed while a preview was live in `namespace`, where the ServiceAccount has no
    Role: its mesh route is not called dangling, the inventory and the link records say why they cannot see
    the preview, and a teardown deletes nothing rather than the routes that still lead to its objects."""
    from bot import links
    from bot.errors import ObjectsElsewhere
    from bot.kube import Kube
    from bot.manifests import plan_preview
    from bot.naming import PreviewKey
    from bot.reconcile import GcReport, _clean_mesh
    from bot.repo_config import RepoConfig, ServiceConfig
    from bot.settings import ClusterSettings

    suffix = secrets.token_hex(3)
    before = ClusterSettings(domain="example.com", namespace=namespace, routing_namespace=ROUTING_NAMESPACE)
    now = ClusterSettings(domain="example.com", namespace=PREVIEW_NAMESPACE, routing_namespace=ROUTING_NAMESPACE)
    key = PreviewKey(f"moved-{suffix}/shop", 3, 4242)
    config = RepoConfig(services=(ServiceConfig(name=f"web{suffix}", image="example.invalid/w:{sha}", port=8080),))
    plan = plan_preview(before, config, key, "2" * 40)
    made_before = Kube(cluster.api_client(), before, request_timeout=20, attempts=2)
    kube = Kube(client_from_kubeconfig(deployed.kubeconfig), now, request_timeout=20, attempts=2)
    admin_custom = client.CustomObjectsApi(deployed.admin)
    service = plan.services[0]
    try:
        await made_before.apply_preview(plan)
        await made_before.add_mesh_route(service.mesh_host, service.mesh_route)

        found, unknown = await kube.existing_destinations([service.destination])
        assert found == set() and f"may not list Services in namespace {namespace}" in unknown[service.destination]
        report = GcReport()
        await _clean_mesh(kube, report, dry_run=False)
        assert not [a for a in report.actions if a.target == key.value]
        assert [e for e in report.errors if e.startswith(f"{key.value}: route to {service.destination} left alone")]
        assert key.value in {r["name"] for vs in await kube.mesh_services() for r in vs["spec"]["http"]}

        [live] = [p for p in await kube.live_previews() if p.key == key.value]
        assert f"its objects are in namespace {namespace} (PREVIEW_NAMESPACE is {PREVIEW_NAMESPACE})" in live.unreadable
        assert "deploy/README.md" in live.unreadable
        with pytest.raises(ObjectsElsewhere, match=f"namespace {namespace}"):
            await kube.delete_preview(key)
        # Its link record and the commits it runs cannot be read there: said, never taken for "none".
        with pytest.raises(ObjectsElsewhere, match=f"namespace {namespace}"):
            await links.owner_of(kube, key)
        with pytest.raises(ObjectsElsewhere, match=f"namespace {namespace}"):
            await links.linked_to(kube, key.value)
        with pytest.raises(ObjectsElsewhere, match=f"namespace {namespace}"):
            await kube.recorded_shas(key)
        [line] = await links.report_lines(kube, key.repo, key.repo_id, key.number)
        assert f"cannot be read: a preview involved: its objects are in namespace {namespace}" in line
        # A redeploy would move it, and cannot remove the old objects: refused before anything is written.
        with pytest.raises(ObjectsElsewhere, match=f"namespace {namespace}"):
            await kube.apply_preview(plan_preview(now, config, key, "3" * 40))
        assert client.AppsV1Api(deployed.admin).list_namespaced_deployment(
            PREVIEW_NAMESPACE, label_selector=key.selector()).items == []
        assert client.AppsV1Api(deployed.admin).read_namespaced_deployment(service.name, namespace)
        assert client.CoreV1Api(deployed.admin).read_namespaced_service(service.name, namespace)
        assert admin_custom.get_namespaced_custom_object("networking.istio.io", "v1", ROUTING_NAMESPACE,
                                                         "virtualservices", service.gateway_route["metadata"]["name"])
        # With the rights there (the admin's, or the old Role kept bound), it is read where it is...
        may_read = Kube(cluster.api_client(), now, request_timeout=20, attempts=2)
        try:
            assert await may_read.recorded_shas(key) == {service.name: "2" * 40}
        finally:
            may_read.close()
        # ...and goes whole.
        await made_before.remove_routes_of_key(key.value)
        assert await made_before.delete_preview(key) == 3
    finally:
        kube.close()
        made_before.close()
        for item in admin_custom.list_namespaced_custom_object(
                "networking.istio.io", "v1", ROUTING_NAMESPACE, "virtualservices")["items"]:
            if suffix in json.dumps(item):
                status_of(lambda item=item: admin_custom.delete_namespaced_custom_object(
                    "networking.istio.io", "v1", ROUTING_NAMESPACE, "virtualservices", item["metadata"]["name"]))


# -- the start-up access check (bot.server.check_access) ------------------------------------------------------

async def _check_access(api: client.ApiClient, **settings: str) -> None:
    from bot.kube import Kube
    from bot.server import check_access
    from bot.settings import ClusterSettings, Settings

    cluster = ClusterSettings(domain="example.com", namespace=settings.get("preview", PREVIEW_NAMESPACE),
                              routing_namespace=settings.get("routing", ROUTING_NAMESPACE))
    bot_settings = Settings(cluster=cluster, app_id=1, private_key="", webhook_secret="",
                            lease_namespace=settings.get("lease", BOT_NAMESPACE))
    kube = Kube(api, cluster, request_timeout=20, attempts=2)
    try:
        await check_access(kube, bot_settings)
    finally:
        kube.close()


async def test_deploy_rbac_passes_the_start_up_access_check(deployed: Deployed) -> None:
    await _check_access(client_from_kubeconfig(deployed.kubeconfig))


@pytest.mark.parametrize(("where", "expected"), [
    ({"lease": "kube-system"},
     "the bot may not create, get, update, delete leases.coordination.k8s.io in namespace kube-system "
     "(POD_NAMESPACE): apply the Role preview-bot-leader and its RoleBinding (deploy/base/rbac-leader.yaml) in "
     "namespace kube-system"),
    ({"preview": "kube-public"},
     "the bot may not get, list, create, patch, delete deployments.apps in namespace kube-public "
     "(PREVIEW_NAMESPACE): apply the Role preview-bot-previews and its RoleBinding (deploy/base/rbac-previews.yaml) "
     "in namespace kube-public"),
    ({"routing": "routing"},
     "the bot may not create, update, patch, delete virtualservices.networking.istio.io in namespace routing "
     "(PREVIEW_ROUTING_NAMESPACE): apply the Role preview-bot-routing and its RoleBinding "
     "(deploy/base/rbac-routing.yaml) in namespace routing (create the namespace first if it does not exist)"),
])
async def test_missing_rbac_stops_start_up_naming_what_to_apply(deployed: Deployed, where: dict[str, str],
                                                                expected: str) -> None:
    from bot.errors import StartupError

    with pytest.raises(StartupError) as refused:
        await _check_access(client_from_kubeconfig(deployed.kubeconfig), **where)
    assert expected in str(refused.value)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("setting", ["preview", "routing", "lease"])
async def test_a_missing_namespace_stops_start_up(deployed: Deployed, cluster: Cluster, setting: str) -> None:
    """With rights everywhere (an admin's kubeconfig), the namespace itself is named."""
    from bot.errors import StartupError

    missing = f"absent-{secrets.token_hex(3)}"
    names = {"preview": "PREVIEW_NAMESPACE", "routing": "PREVIEW_ROUTING_NAMESPACE", "lease": "POD_NAMESPACE"}
    with cluster.api_client() as admin, pytest.raises(StartupError) as refused:
        await _check_access(admin, **{setting: missing})
    assert str(refused.value) == f"{names[setting]}: namespace {missing} does not exist; create it (or name an " \
                                 "existing one)"


async def test_serve_as_the_service_account_without_a_lease_role_stops(deployed: Deployed, fake_github: Any,
                                                                        cluster: Cluster) -> None:
    """The real `preview-bot serve` on the ServiceAccount's token, POD_NAMESPACE without the Lease Role: one
    line and exit status 2, instead of a ready bot whose every PR fails with 403."""
    from tests.e2e.test_startup import assert_one_line, serve

    code, _, err = await serve(fake_github, cluster, PREVIEW_NAMESPACE, "--port", "0",
                               KUBECONFIG=str(deployed.kubeconfig), POD_NAMESPACE="kube-system",
                               PREVIEW_ROUTING_NAMESPACE=ROUTING_NAMESPACE,
                               PREVIEW_GATEWAY=f"{ROUTING_NAMESPACE}/preview-gateway")
    assert_one_line(code, err, "leases.coordination.k8s.io in namespace kube-system (POD_NAMESPACE)",
                    "deploy/base/rbac-leader.yaml")


async def _gc_as_the_service_account(deployed: Deployed, fake_github: Any, *args: str,
                                     **where: str) -> tuple[int, str, str]:
    """`preview-bot gc` (a real process) on the ServiceAccount's token, the settings of deploy/ but `where`."""
    import asyncio
    import os
    import sys

    from tests.e2e.harness import bot_env

    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/"),
           "KUBECONFIG": str(deployed.kubeconfig),
           **bot_env(fake_github, PREVIEW_NAMESPACE, **{"PREVIEW_ROUTING_NAMESPACE": ROUTING_NAMESPACE,
                                                         "POD_NAMESPACE": BOT_NAMESPACE, **where})}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.cli", "gc", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(process.communicate(), 120)
    finally:
        if process.returncode is None:
            process.kill()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.mark.parametrize(("where", "expected"), [
    ({"POD_NAMESPACE": "kube-system"},
     ("may not create, get, update, delete leases.coordination.k8s.io in namespace kube-system (POD_NAMESPACE)",
      "apply the Role preview-bot-leader and its RoleBinding (deploy/base/rbac-leader.yaml)")),
    ({"PREVIEW_NAMESPACE": "kube-public"},
     ("may not get, list, create, patch, delete deployments.apps in namespace kube-public (PREVIEW_NAMESPACE)",
      "apply the Role preview-bot-previews and its RoleBinding (deploy/base/rbac-previews.yaml)")),
])
async def test_gc_as_the_service_account_without_a_role_stops_before_changing_anything(
        deployed: Deployed, fake_github: Any, cluster: Cluster, where: dict[str, str],
        expected: tuple[str, ...]) -> None:
    """`preview-bot gc` asks for the access its calls need first, as `serve` does: with a Role missing it
    stops with one line naming namespace, verbs and the Role to apply (exit 2, no traceback), and the closed
    PR's preview it would have torn down is left whole, not half-removed. `--dry-run`, which changes nothing,
    needs only the reads (no Lease)."""
    from bot.kube import Kube, object_path
    from bot.manifests import plan_preview
    from bot.naming import PreviewKey
    from bot.repo_config import RepoConfig, ServiceConfig
    from bot.settings import ClusterSettings
    from tests.e2e.test_startup import assert_one_line

    suffix = secrets.token_hex(3)
    repo = f"gc-{suffix}/shop"
    fake_github.add_repo(repo, files={}, collaborators={"alice": "write"})
    fake_github.add_pull(repo, 1)
    fake_github.repos[repo].pulls[1].state = "closed"  # its `closed` event was missed: gc tears it down
    key = PreviewKey(repo, 1, fake_github.repos[repo].id)
    settings = ClusterSettings(domain="example.com", namespace=PREVIEW_NAMESPACE, routing_namespace=ROUTING_NAMESPACE)
    config = RepoConfig(services=(ServiceConfig(name=f"gc{suffix}", image="example.invalid/gc:{sha}", port=8080),))
    plan = plan_preview(settings, config, key, "7" * 40)
    admin = Kube(cluster.api_client(), settings, request_timeout=20, attempts=2)
    try:
        await admin.apply_preview(plan)
        code, _, err = await _gc_as_the_service_account(deployed, fake_github, **where)
        assert_one_line(code, err, *expected)
        assert [p.key for p in await admin.live_previews((key.repo_id, repo))] == [key.value]
        assert len(await admin.find_deployments(key.selector(), routes=key.selector())) == 1
        assert await admin.get(object_path(plan.services[0].gateway_route)) is not None
        if "POD_NAMESPACE" in where:
            code, out, err = await _gc_as_the_service_account(deployed, fake_github, "--dry-run", **where)
            assert f"would teardown-closed: {repo}#1 (pull request is closed)" in out, (out, err)
            assert "Traceback" not in err
    finally:
        await admin.delete_preview(key)
        admin.close()


async def test_a_refused_lease_renewal_names_status_and_namespace_and_is_retried_soon(
        deployed: Deployed, caplog: pytest.LogCaptureFixture) -> None:
    """The ServiceAccount has no Lease Role in kube-system: the warning names the API server's answer and
    the Lease, and the next try comes within RETRY_SECONDS, not a third of a long lease (up to days)."""
    import logging

    from bot.kube import Kube
    from bot.leader import RETRY_SECONDS, LeaderElector
    from bot.settings import MAX_DURATION, ClusterSettings

    kube = Kube(client_from_kubeconfig(deployed.kubeconfig), ClusterSettings(domain="example.com"),
                request_timeout=20, attempts=2)
    elector = LeaderElector(kube, namespace="kube-system", name=LEASE_NAME, identity="pod-x",
                            lease_seconds=MAX_DURATION)
    try:
        with caplog.at_level(logging.WARNING, logger="bot.leader"):
            assert await elector.round() == RETRY_SECONDS
        [warning] = [r.getMessage() for r in caplog.records if r.name == "bot.leader"]
        assert warning.startswith(f"lease renewal failed for Lease kube-system/{LEASE_NAME}: Kubernetes API "
                                  "answered 403 Forbidden: "), warning
        assert not elector.is_leader
    finally:
        kube.close()
