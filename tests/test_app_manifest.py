"""app.yml (the GitHub App manifest) grants exactly what the code needs.

The GitHub endpoints are collected from bot/ itself (every `gh.getitem/getiter/post/patch/put/delete`
call with a literal path), so a new call without its permission in app.yml fails here:

(a) every endpoint the code calls is in ENDPOINTS, with the permission GitHub documents for it;
(b) app.yml grants each at least at that level (read < write), and nothing more (least privilege);
(c) default_events == the events bot.server.build_router() handles, and each event's permission is
    granted.

Permission facts (GitHub REST docs, "Permissions required for GitHub Apps" and each endpoint's
"Fine-grained access tokens" section):
  https://docs.github.com/en/rest/authentication/permissions-required-for-github-apps
  https://docs.github.com/en/rest/collaborators/collaborators#get-repository-permissions-for-a-user
      -> "Metadata" repository permissions (read)
  https://docs.github.com/en/rest/issues/comments  (list/create/update/delete an issue comment)
      -> "Issues" OR "Pull requests" repository permissions (read for GET, write otherwise)
  https://docs.github.com/en/rest/reactions/reactions#create-reaction-for-an-issue-comment
      -> "Issues" OR "Pull requests" repository permissions (write)
  https://docs.github.com/en/rest/deployments/deployments, .../deployments/statuses
      -> "Deployments" repository permissions (read for GET, write for POST and DELETE)
  https://docs.github.com/en/rest/deployments/environments#delete-an-environment
      -> "Administration" repository permissions (write): OPT-IN only (PREVIEW_DELETE_ENVIRONMENTS), so
         app.yml documents it and does not grant it (see OPT_IN below)
  https://docs.github.com/en/rest/repos/contents#get-repository-content -> "Contents" (read)
  https://docs.github.com/en/rest/pulls/pulls (get, list, list files) -> "Pull requests" (read)
  https://docs.github.com/en/rest/repos/repos#get-a-repository -> "Metadata" (read)
  https://docs.github.com/en/rest/apps/apps (GET /app, GET /app/installations,
      POST /app/installations/{id}/access_tokens, GET /repos/{owner}/{repo}/installation)
      -> authenticated with the App's JWT; no installation permission
  https://docs.github.com/en/rest/apps/installations#list-repositories-accessible-to-the-app-installation
      -> any installation token; no extra permission
  https://docs.github.com/en/rest/checks/runs#list-check-runs-for-a-git-reference -> "Checks" (read)
  https://docs.github.com/en/rest/commits/statuses#get-the-combined-status-for-a-specific-reference
      -> "Commit statuses" (read)
  https://docs.github.com/en/webhooks/webhook-events-and-payloads
      pull_request -> "Pull requests" (read); issue_comment -> "Issues" (read);
      check_run -> "Checks" (read), delivered for every App's check runs (GitHub Actions jobs too);
      status -> "Commit statuses" (read)
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BOT = REPO / "bot"
MANIFEST = REPO / "app.yml"
OPENAPI = REPO / "tests" / "fakegithub" / "node_modules" / "@octokit" / "openapi" / "generated" / \
    "api.github.com.json"

R, W = "read", "write"
LEVELS = {"none": 0, R: 1, W: 2}
JWT = "app-jwt"              # the App's own JWT: no installation permission involved
INSTALLATION = "any-token"   # any installation token, no specific permission
Alternatives = tuple[Mapping[str, str], ...]   # any ONE of these permission sets is enough

# (method, path template) -> who may call it. Path parameters are named as in GitHub's docs.
ENDPOINTS: dict[tuple[str, str], Alternatives | str] = {
    ("GET", "/app"): JWT,
    ("GET", "/app/installations"): JWT,
    ("POST", "/app/installations/{installation_id}/access_tokens"): JWT,
    ("GET", "/repos/{owner}/{repo}/installation"): JWT,
    ("GET", "/installation/repositories"): INSTALLATION,
    ("GET", "/repos/{owner}/{repo}"): ({"metadata": R},),
    ("GET", "/repos/{owner}/{repo}/contents/{path}"): ({"contents": R},),
    ("GET", "/repos/{owner}/{repo}/pulls"): ({"pull_requests": R},),
    ("GET", "/repos/{owner}/{repo}/pulls/{pull_number}"): ({"pull_requests": R},),
    ("GET", "/repos/{owner}/{repo}/pulls/{pull_number}/files"): ({"pull_requests": R},),
    ("GET", "/repos/{owner}/{repo}/collaborators/{username}/permission"): ({"metadata": R},),
    ("GET", "/repos/{owner}/{repo}/issues/{issue_number}/comments"): ({"issues": R}, {"pull_requests": R}),
    ("POST", "/repos/{owner}/{repo}/issues/{issue_number}/comments"): ({"issues": W}, {"pull_requests": W}),
    ("PATCH", "/repos/{owner}/{repo}/issues/comments/{comment_id}"): ({"issues": W}, {"pull_requests": W}),
    ("DELETE", "/repos/{owner}/{repo}/issues/comments/{comment_id}"): ({"issues": W}, {"pull_requests": W}),
    ("POST", "/repos/{owner}/{repo}/issues/comments/{comment_id}/reactions"):
        ({"issues": W}, {"pull_requests": W}),
    ("GET", "/repos/{owner}/{repo}/deployments"): ({"deployments": R},),
    ("POST", "/repos/{owner}/{repo}/deployments"): ({"deployments": W},),
    ("GET", "/repos/{owner}/{repo}/deployments/{deployment_id}/statuses"): ({"deployments": R},),
    ("POST", "/repos/{owner}/{repo}/deployments/{deployment_id}/statuses"): ({"deployments": W},),
    ("GET", "/repos/{owner}/{repo}/commits/{ref}/check-runs"): ({"checks": R},),
    ("GET", "/repos/{owner}/{repo}/commits/{ref}/status"): ({"statuses": R},),
    ("DELETE", "/repos/{owner}/{repo}/deployments/{deployment_id}"): ({"deployments": W},),
}

# Endpoints called only when an operator turns a setting on: (method, path) -> (setting, the attribute
# the code tests before calling, the bot/ function that calls it, the permission it needs). app.yml must
# not grant these by default (least privilege) but must document them next to the setting.
OPT_IN: dict[tuple[str, str], tuple[str, str, str, Mapping[str, str]]] = {
    ("DELETE", "/repos/{owner}/{repo}/environments/{environment_name}"):
        ("PREVIEW_DELETE_ENVIRONMENTS", "delete_environments", "delete_environment", {"administration": W}),
}

# Webhook event -> the permission an App needs to subscribe to it.
EVENTS: dict[str, Mapping[str, str]] = {
    "pull_request": {"pull_requests": R},
    "issue_comment": {"issues": R},
    "check_run": {"checks": R},
    "status": {"statuses": R},
}

# Repository/organization permission names GitHub accepts in a manifest (the ones we could plausibly use).
KNOWN_PERMISSIONS = frozenset({
    "actions", "administration", "checks", "contents", "deployments", "environments", "issues", "metadata",
    "packages", "pages", "pull_requests", "repository_hooks", "statuses", "workflows", "members",
    "organization_administration",
})
METHODS = {"getitem": "GET", "getiter": "GET", "post": "POST", "patch": "PATCH", "put": "PUT", "delete": "DELETE"}
API_PREFIXES = ("/repos", "/app", "/installation", "/orgs", "/user", "/search", "/graphql", "/enterprises")


# -- collecting the endpoints the code calls --------------------------------------------------------------

@dataclass(frozen=True)
class CallSite:
    method: str
    path: str           # with the code's own placeholders, query removed
    uses_jwt: bool
    where: str


def normalize(path: str) -> str:
    """Compare templates by shape: `{anything}` -> `{}`, query strings and `{?...}` dropped."""
    path = re.sub(r"\{\?[^}]*\}", "", path).split("?", 1)[0]
    return re.sub(r"\{[^}]*\}", "{}", path)


def _render(node: ast.expr, names: Mapping[str, str]) -> str | None:
    """The text of a str literal or f-string; `{x}` kept as a placeholder (known prefixes expanded)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Attribute | ast.Name) and ast.unparse(node) in names:
        return names[ast.unparse(node)]   # e.g. gh.getitem(self._base)
    if not isinstance(node, ast.JoinedStr):
        return None
    parts: list[str] = []
    for value in node.values:
        if isinstance(value, ast.Constant):
            parts.append(str(value.value))
        elif isinstance(value, ast.FormattedValue):
            expr = ast.unparse(value.value)
            if expr in names:
                parts.append(names[expr])
            elif expr == "repo" or expr.endswith((".repo", "full_name")):
                parts.append("{owner}/{repo}")   # by convention a `repo` holds "owner/name"
            else:
                parts.append("{" + expr + "}")
    return "".join(parts)


def _prefix_attributes(tree: ast.Module) -> dict[str, str]:
    """`self._base = f"/repos/{repo}"` -> {"self._base": "/repos/{owner}/{repo}"}."""
    found: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Attribute):
            text = _render(node.value, {})
            if text is not None and text.startswith(API_PREFIXES):
                found[ast.unparse(node.targets[0])] = text
    return found


def collect() -> tuple[list[CallSite], list[str]]:
    """(call sites with a literal API path, API-looking literals that are not at a call site)."""
    sites: list[CallSite] = []
    stray: list[str] = []
    for file in sorted(BOT.rglob("*.py")):
        tree = ast.parse(file.read_text(encoding="utf-8"), str(file))
        prefixes = _prefix_attributes(tree)
        inside_fstrings = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
        used: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and \
                    ast.unparse(node.targets[0]) in prefixes:
                used.add(id(node.value))
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in METHODS and node.args):
                continue
            path = _render(node.args[0], prefixes)
            if path is None or not path.startswith("/"):
                continue
            used.add(id(node.args[0]))
            sites.append(CallSite(METHODS[node.func.attr], path, any(k.arg == "jwt" for k in node.keywords),
                                  f"{file.relative_to(REPO)}:{node.lineno}"))
        for node in ast.walk(tree):
            if id(node) in used or id(node) in inside_fstrings:
                continue
            text = _render(node, prefixes) if isinstance(node, ast.Constant | ast.JoinedStr) else None
            if text and text.startswith(API_PREFIXES) and " " not in text:
                stray.append(f"{file.relative_to(REPO)}:{node.lineno}: {text}")
    return sites, stray


TABLE = {(method, normalize(path)): (path, need) for (method, path), need in ENDPOINTS.items()}
OPT_IN_TABLE = {(method, normalize(path)): entry for (method, path), entry in OPT_IN.items()}


@pytest.fixture(scope="module")
def call_sites() -> list[CallSite]:
    sites, stray = collect()
    assert not stray, "GitHub paths built outside a gh call (cannot be checked here):\n" + "\n".join(stray)
    return sites


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    data = yaml.safe_load(MANIFEST.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def granted(manifest: Mapping[str, Any]) -> dict[str, str]:
    return dict(manifest.get("default_permissions") or {})


def satisfies(grants: Mapping[str, str], need: Mapping[str, str]) -> bool:
    return all(LEVELS[grants.get(name, "none")] >= LEVELS[level] for name, level in need.items())


def endpoint_ok(grants: Mapping[str, str], need: Alternatives | str) -> bool:
    if isinstance(need, str):
        return True   # JWT or any installation token
    return any(satisfies(grants, option) for option in need)


def unmet(grants: Mapping[str, str], sites: list[CallSite], events: list[str]) -> Iterator[str]:
    for site in sites:
        if (site.method, normalize(site.path)) in OPT_IN_TABLE:
            continue   # off by default; documented, not granted (test_opt_in_permissions_are_documented)
        _, need = TABLE[(site.method, normalize(site.path))]
        if not endpoint_ok(grants, need):
            yield f"{site.method} {site.path} ({site.where}) needs one of {need}"
    for event in events:
        if not satisfies(grants, EVENTS[event]):
            yield f"event {event} needs {EVENTS[event]}"


# -- (a) every endpoint is known ------------------------------------------------------------------------------

def test_collector_finds_the_known_calls(call_sites: list[CallSite]) -> None:
    """Guards the collector itself: these calls exist in bot/ today."""
    found = {(s.method, normalize(s.path)) for s in call_sites}
    for method, path in [("GET", "/repos/{owner}/{repo}"),
                         ("GET", "/repos/{owner}/{repo}/contents/{path}"),
                         ("GET", "/repos/{owner}/{repo}/collaborators/{username}/permission"),
                         ("POST", "/repos/{owner}/{repo}/deployments"),
                         ("POST", "/app/installations/{installation_id}/access_tokens")]:
        assert (method, normalize(path)) in found, (method, path)


def test_every_called_endpoint_is_in_the_table(call_sites: list[CallSite]) -> None:
    unknown = sorted({f"{s.method} {s.path}  ({s.where})" for s in call_sites
                      if (s.method, normalize(s.path)) not in TABLE | OPT_IN_TABLE})
    assert not unknown, ("GitHub endpoints called in bot/ without a documented permission in ENDPOINTS "
                         "(add them, with the permission from GitHub's docs, and to app.yml):\n"
                         + "\n".join(unknown))


def test_jwt_endpoints_are_called_with_the_app_jwt(call_sites: list[CallSite]) -> None:
    for site in call_sites:
        if (site.method, normalize(site.path)) in OPT_IN_TABLE:
            assert not site.uses_jwt, site
            continue
        _, need = TABLE[(site.method, normalize(site.path))]
        assert site.uses_jwt == (need == JWT), \
            f"{site.where}: {site.method} {site.path} {'needs' if need == JWT else 'must not use'} the App JWT"


def test_table_endpoints_exist_in_githubs_openapi_description() -> None:
    if not OPENAPI.exists():
        pytest.fail("GitHub's OpenAPI description is not installed: run `make npm`")
    paths = json.loads(OPENAPI.read_text(encoding="utf-8"))["paths"]
    shapes = {(method.upper(), normalize(path)) for path, ops in paths.items() for method in ops
              if method in ("get", "post", "patch", "put", "delete")}
    missing = [f"{m} {p}" for (m, p) in [*ENDPOINTS, *OPT_IN] if (m, normalize(p)) not in shapes]
    assert not missing, missing


# -- (b) app.yml grants what is needed, and no more --------------------------------------------------------

def test_manifest_shape(manifest: dict[str, Any]) -> None:
    assert isinstance(manifest["name"], str) and 0 < len(manifest["name"]) <= 34   # GitHub's limit
    assert str(manifest["url"]).startswith("https://")
    hook = manifest["hook_attributes"]
    assert str(hook["url"]).startswith("https://") and str(hook["url"]).endswith("/webhook"), \
        "the bot receives webhooks on /webhook (bot/webhook.py)"
    assert hook.get("active", True) is True
    assert manifest["public"] is False
    grants = granted(manifest)
    assert set(grants) <= KNOWN_PERMISSIONS, set(grants) - KNOWN_PERMISSIONS
    assert set(grants.values()) <= {R, W}, grants
    assert grants.get("metadata") == R, "GitHub grants metadata: read to every App; say so"


def test_every_needed_permission_is_granted(manifest: dict[str, Any], call_sites: list[CallSite]) -> None:
    problems = list(unmet(granted(manifest), call_sites, list(manifest["default_events"])))
    assert not problems, "\n".join(problems)


def test_no_permission_is_more_than_needed(manifest: dict[str, Any], call_sites: list[CallSite]) -> None:
    """Lowering any grant one step (write -> read -> none) must break some call or event."""
    grants = granted(manifest)
    events = list(manifest["default_events"])
    for name, level in grants.items():
        if name == "metadata":
            continue   # always read for Apps
        lower = {**grants, name: R if level == W else "none"}
        assert list(unmet(lower, call_sites, events)), f"{name}: {level} is more than the code needs"


def _functions_calling(attr: str) -> dict[str, list[tuple[ast.AST, list[ast.AST]]]]:
    """file:function -> (call node, its enclosing nodes) for every `x.<attr>(...)` call in bot/."""
    found: dict[str, list[tuple[ast.AST, list[ast.AST]]]] = {}

    def walk(node: ast.AST, parents: list[ast.AST], where: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = where
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{where.split(':')[0]}:{child.name}"
            if isinstance(child, ast.Call) and isinstance(child.func, ast.Attribute) and child.func.attr == attr:
                found.setdefault(name, []).append((child, [*parents, node]))
            walk(child, [*parents, node], name)

    for file in sorted(BOT.rglob("*.py")):
        walk(ast.parse(file.read_text(encoding="utf-8")), [], str(file.relative_to(REPO)))
    return found


def test_opt_in_endpoints_are_called_only_behind_their_setting(call_sites: list[CallSite]) -> None:
    """An opt-in endpoint is called from one function, and that function only under `if <setting>`."""
    for key, (setting, attribute, function, _need) in OPT_IN_TABLE.items():
        sites = [s for s in call_sites if (s.method, normalize(s.path)) == key]
        assert sites, f"{key}: no call site any more; drop it from OPT_IN"
        callers = _functions_calling(function)
        assert callers, f"{function} is never called"
        for where, calls in callers.items():
            for _call, parents in calls:
                guarded = any(isinstance(p, ast.If) and attribute in ast.unparse(p.test) for p in parents)
                assert guarded, f"{where}: {function}() is called without checking {attribute} ({setting})"


def test_opt_in_permissions_are_documented_not_granted(manifest: dict[str, Any]) -> None:
    text = MANIFEST.read_text(encoding="utf-8")
    comments = "\n".join(line for line in text.splitlines() if line.lstrip().startswith("#"))
    grants = granted(manifest)
    for (setting, _attribute, _function, need) in OPT_IN.values():
        for name, level in need.items():
            assert LEVELS[grants.get(name, "none")] < LEVELS[level], \
                f"{name}: {level} is granted by default, but only {setting} needs it"
            assert f"{name}: {level}" in comments and setting in comments, \
                f"app.yml must say (in a comment) that {setting} needs {name}: {level}"
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for (setting, _attribute, _function, need) in OPT_IN.values():
        assert setting in readme and all(name in readme.lower() for name in need), \
            f"README.md must document {setting} and the permission it needs"


# -- (c) events ----------------------------------------------------------------------------------------------

def handled_events() -> set[str]:
    from bot.server import build_router

    router = build_router()
    return set(router._shallow_routes) | set(router._deep_routes)


def test_subscribed_events_are_exactly_the_handled_ones(manifest: dict[str, Any]) -> None:
    subscribed = set(manifest["default_events"])
    handled = handled_events()
    assert subscribed - handled == set(), f"subscribed but never handled: {subscribed - handled}"
    assert handled - subscribed == set(), f"handled but not subscribed (GitHub would never send): " \
                                          f"{handled - subscribed}"
    assert subscribed <= set(EVENTS), f"add the permission of {subscribed - set(EVENTS)} to EVENTS"


def test_deep_routes_only_dispatch_on_action() -> None:
    """The handlers key on `action`; the manifest cannot narrow that, so every action is delivered."""
    from bot.server import build_router

    for event, details in build_router()._deep_routes.items():
        assert set(details) == {"action"}, (event, set(details))
