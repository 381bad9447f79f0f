"""Linked previews across repositories: `/preview link owner/other#N`.

On pull request R#P (the *owner*, preview key K), `/preview link O#N` makes PR N of repository O (the
*linked* PR) join K: O#N is deployed as usual under its own key K2, and each of its mesh routes also
matches K as PREVIEW_MATCH does (`x-preview: K`, the baggage member, or both; Istio ORs the entries of
`match`). A request carrying K, e.g. through R#P's preview URL, whose gateway route puts it on, reaches
R#P's builds and O#N's builds; everything else is as before. Rules:

- The commenter needs write access to both repositories; the App must be installed on both.
- The owner must have a live preview; O#N must be an open PR whose repository has a preview config. Its
  head is deployed, approved as `/preview` approves one (bot.commands.approve): a commit named after the
  target (`/preview link O#N <sha>`) must be the head, and a fork's head must be named in full; later
  pushes follow O's own rules (a fork's pushes wait for a new approval). O's PREVIEW_MAX_PER_REPO applies
  to that deploy.
- One level: a PR is an owner or linked, not both; a PR is linked to one owner at a time; an owner has at
  most MAX_LINKS linked PRs; the two PRs may not both route the same in-mesh host.
- The link is recorded on O#N's Deployments (label `preview-bot.dev/linked-key: K`, annotation
  `preview-bot.dev/linked-to: R#P`), so it survives restarts and later deploys of O#N keep matching K.
- It ends with `/preview unlink` on either PR, or when either preview is removed (PR closed, `/preview
  stop`, idle TTL): the owner's removal strips K from the linked PR's routes (its own preview stays, with
  its own idle clock); the linked PR's removal takes its routes with it. Both sticky comments show the
  link while it lasts and are updated when it ends.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any

from bot import mesh_routes, naming
from bot.commands import approve
from bot.errors import ObjectsElsewhere
from bot.github.auth import AppAuth
from bot.github.client import RepoClient
from bot.github.errors import GitHubError, NotFound
from bot.kube import collection_path
from bot.manifests import PreviewPlan
from bot.naming import PreviewKey
from bot.ports import Cluster, GitHubRepo
from bot.reporting import Reporter
from bot.settings import ClusterSettings

log = logging.getLogger(__name__)

LINKED_KEY_LABEL = "preview-bot.dev/linked-key"
LINKED_TO_ANNOTATION = "preview-bot.dev/linked-to"
MAX_LINKS = 5
_TARGET = re.compile(r"^([A-Za-z0-9-]{1,39}/[A-Za-z0-9._-]{1,100})#([1-9][0-9]{0,8})\Z")

ClientFor = Callable[[str], Awaitable[RepoClient | None]]
# The server's: by repository id, or (None) by full name.
ClientForId = Callable[[int | None, str], Awaitable[GitHubRepo | None]]
Refresh = Callable[[str, int], Awaitable[None]]


class LinkRefused(Exception):
    """The link cannot be made; the message is the reply."""


def parse_target(text: str) -> tuple[str, int] | None:
    """`owner/repo#N` -> (owner/repo, N); None when malformed."""
    match = _TARGET.match(text.strip())
    return (match.group(1), int(match.group(2))) if match else None


def ref(repo: str, number: int) -> str:
    return f"{repo}#{number}"


# -- pure: routes -------------------------------------------------------------------------------------


def _owner_match(route: Mapping[str, Any], key: str, settings: ClusterSettings) -> list[dict[str, Any]]:
    # On the route's own port, as its own entries are (bot.mesh_routes.preview_route).
    destinations = route.get("route") or [{}]
    port = ((destinations[0].get("destination") or {}).get("port") or {}).get("number")
    return mesh_routes.preview_match(key, header_name=settings.header_name, mode=settings.match_mode,
                                     port=int(port) if port is not None else None)


def with_linked_key(route: Mapping[str, Any], key: str, settings: ClusterSettings) -> dict[str, Any]:
    """The linked PR's route, also matching the owner's key (entries are ORed)."""
    extra = [m for m in _owner_match(route, key, settings) if m not in (route.get("match") or [])]
    return {**route, "match": [*(route.get("match") or []), *extra]}


def without_linked_key(route: Mapping[str, Any], key: str, settings: ClusterSettings) -> dict[str, Any]:
    gone = _owner_match(route, key, settings)
    return {**route, "match": [m for m in route.get("match") or [] if m not in gone]}


def _carrier(key: str, settings: ClusterSettings) -> str:
    return mesh_routes.carrier_text(key, header_name=settings.header_name, mode=settings.match_mode)


def owner_lines(linked: list[tuple[str, int]], key: str, settings: ClusterSettings) -> list[str]:
    return [f"🔗 Linked: {ref(repo, number)} joins this preview: requests with {_carrier(key, settings)} (this "
            f"preview's URLs set it) also reach its build. `/preview unlink` ends the link."
            for repo, number in linked]


def linked_lines(owner: str, key: str, settings: ClusterSettings) -> list[str]:
    return [f"🔗 Linked to {owner}: this build also answers {_carrier(key, settings)}, so {owner}'s preview "
            "URLs reach it. `/preview unlink` ends the link."]


# -- the cluster record ---------------------------------------------------------------------------------


def _mesh_only(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mesh VirtualServices (no `gateways`, or `mesh` among them), not the preview hosts' gateway routes."""
    return [i for i in items if not (i.get("spec") or {}).get("gateways") or "mesh" in i["spec"]["gateways"]]


async def _mesh_hosts(kube: Cluster, key: str) -> set[str]:
    """In-mesh hosts where `key` has a route."""
    return {str(h) for item in _mesh_only(await kube.mesh_services())
            if key in mesh_routes.preview_keys(item["spec"]) for h in item["spec"].get("hosts") or []}


async def owner_of(kube: Cluster, key: PreviewKey) -> tuple[str, str] | None:
    """(owner `repo#N`, owner key) when `key`'s preview is linked, from its Deployments wherever they are
    (an earlier PREVIEW_NAMESPACE's too: bot.kube.inventory.Inventory.find_deployments); ObjectsElsewhere
    when they may not be listed."""
    for item in await kube.find_deployments(key.selector(), routes=key.selector()):
        meta = item["metadata"]
        owner_key = (meta.get("labels") or {}).get(LINKED_KEY_LABEL)
        owner = (meta.get("annotations") or {}).get(LINKED_TO_ANNOTATION)
        if owner_key and owner:
            return owner, owner_key
    return None


async def linked_to(kube: Cluster, owner_key: str) -> list[tuple[str, int, str]]:
    """(repo, number, key) of the PRs linked to `owner_key`, their Deployments wherever they are (as
    owner_of); ObjectsElsewhere when some may not be listed."""
    found: dict[str, tuple[str, int, str]] = {}
    selector = f"{naming.MANAGED_SELECTOR},{LINKED_KEY_LABEL}={owner_key}"
    for item in await kube.find_deployments(selector):
        meta = item["metadata"]
        labels, annotations = meta.get("labels") or {}, meta.get("annotations") or {}
        repo = annotations.get(naming.REPO_ANNOTATION, "")
        if naming.valid_repo(repo) and labels.get(naming.PR_LABEL, "").isdigit():
            found[labels[naming.KEY_LABEL]] = (repo, int(labels[naming.PR_LABEL]), labels[naming.KEY_LABEL])
    return sorted(found.values())


async def _mark(kube: Cluster, key: PreviewKey, owner: str | None, owner_key: str | None) -> None:
    """Record (or, with None, erase) the link on every Deployment of the linked preview, where it is."""
    for item in await kube.find_deployments(key.selector(), routes=key.selector()):
        meta = item["metadata"]
        path = f"{collection_path('apps/v1', 'deployments', meta['namespace'])}/{meta['name']}"
        patch = {"metadata": {"labels": {LINKED_KEY_LABEL: owner_key},
                              "annotations": {LINKED_TO_ANNOTATION: owner}}}
        await kube.call("PATCH", path, body=patch, content_type="application/merge-patch+json")


async def _reroute(kube: Cluster, key: PreviewKey, owner_key: str, *, add: bool) -> int:
    """Add (or remove) the owner's key to every mesh route of the linked preview."""
    settings = kube.settings
    changed = 0
    for item in _mesh_only(await kube.mesh_services()):
        if key.value not in mesh_routes.preview_keys(item.get("spec") or {}):
            continue
        host = ((item.get("metadata") or {}).get("annotations") or {}).get(naming.HOST_ANNOTATION) \
            or item["spec"]["hosts"][0]

        def change(spec: dict[str, Any], host: str = host) -> dict[str, Any]:
            [route] = [r for r in spec.get("http") or [] if r.get("name") == key.value] or [None]
            if route is None:
                return spec
            new = with_linked_key(route, owner_key, settings) if add else without_linked_key(route, owner_key, settings)
            return mesh_routes.with_route(spec, host, new)

        # The VirtualService holding the key's route exists: update_mesh_routes finds it (cluster-wide).
        changed += await kube.update_mesh_routes(host, change)
    return changed


async def extend_plan(kube: Cluster, plan: PreviewPlan) -> PreviewPlan:
    """A deploy of a linked PR keeps the link: its routes also match the owner's key, and new Deployments
    carry the record."""
    found = await owner_of(kube, plan.key)
    if found is None:
        return plan
    owner, owner_key = found
    services = []
    for service in plan.services:
        workload = tuple({**m, "metadata": {**m["metadata"],
                                            "labels": {**m["metadata"]["labels"], LINKED_KEY_LABEL: owner_key},
                                            "annotations": {**m["metadata"]["annotations"],
                                                            LINKED_TO_ANNOTATION: owner}}}
                         if m["kind"] == "Deployment" else m for m in service.workload)
        services.append(replace(service, workload=workload,
                                mesh_route=with_linked_key(service.mesh_route, owner_key, kube.settings)))
    return replace(plan, services=tuple(services))


async def report_lines(kube: Cluster, repo: str, repo_id: int, number: int) -> tuple[str, ...]:
    """The sticky comment's link lines for one PR; when a preview's link records may not be read (its
    objects in an earlier PREVIEW_NAMESPACE the bot may not list), a line saying so: the comment's report
    (e.g. that very failure) still goes out, and no link is said to be absent."""
    key = PreviewKey(repo, number, repo_id)
    try:
        return await _report_lines(kube, key)
    except ObjectsElsewhere as exc:
        return (f"🔗 The links of this preview cannot be read: a preview involved: {exc}.",)


async def _report_lines(kube: Cluster, key: PreviewKey) -> tuple[str, ...]:
    lines = owner_lines([(r, n) for r, n, _ in await linked_to(kube, key.value)], key.value, kube.settings)
    found = await owner_of(kube, key)
    if found is not None:
        lines += linked_lines(found[0], found[1], kube.settings)
    return tuple(lines)


async def refresh_sticky(reporter: Reporter, client_for: ClientForId, repo: str, number: int) -> None:
    """Rewrite the links section of a PR's sticky comment from the cluster (no-op without a comment)."""
    client = await client_for(None, repo)
    if client is None:
        return
    await reporter.refresh_links(client, number)


# -- commands and teardown -----------------------------------------------------------------------------


async def client_for_repo(auth: AppAuth, repo: str) -> RepoClient | None:
    """A client on the App's installation for `repo`; None when the App is not installed there."""
    try:
        data = await auth.api().getitem(f"/repos/{repo}/installation", jwt=auth.app_jwt())
    except NotFound:
        return None
    gh = await auth.installation_api(int(data["id"]))
    found = await gh.getitem(f"/repos/{repo}")  # its id: previews are keyed by it (bot.naming)
    return RepoClient(gh, str(found["full_name"]), int(found["id"]))


async def link(kube: Cluster, reporter: Reporter, client_for: ClientFor,
               deploy: Callable[[RepoClient, int, str], Awaitable[str | None]],
               owner: RepoClient, number: int, user: str, target: tuple[str, int], *, sha: str | None = None) -> str:
    """Link `target` to the owner PR; returns the reply. `sha`: the target's commit the command names.
    `deploy(client, number, sha)` deploys the target and returns why it failed (None: it runs). Raises
    LinkRefused with the reason."""
    repo, other = target
    owner_key = PreviewKey(owner.repo, number, owner.repo_id)
    if (repo.lower(), other) == (owner.repo.lower(), number):
        raise LinkRefused("A pull request cannot be linked to itself.")
    live = {p.key: p for p in await kube.live_previews((owner.repo_id, owner.repo))}
    if owner_key.value not in live:
        raise LinkRefused("This pull request has no live preview to join: deploy it with `/preview` first.")
    if await owner_of(kube, owner_key) is not None:
        raise LinkRefused("This pull request is itself linked to another one: links are one level deep.")
    current = await linked_to(kube, owner_key.value)
    if len(current) >= MAX_LINKS:
        raise LinkRefused(f"This preview already has {len(current)} linked pull requests (the limit is {MAX_LINKS}).")
    client = await client_for(repo)
    if client is None:
        raise LinkRefused(f"The App is not installed on {repo}, or it does not exist.")
    if not await client.can_write(user):
        raise LinkRefused(f"@{user} needs write access to {repo} too; nothing was changed.")
    linked_key = PreviewKey(client.repo, other, client.repo_id)
    if await linked_to(kube, linked_key.value):
        raise LinkRefused(f"{ref(client.repo, other)} has pull requests linked to it: links are one level deep.")
    already = await owner_of(kube, linked_key)
    if already is not None and already[1] != owner_key.value:
        raise LinkRefused(f"{ref(client.repo, other)} is already linked to {already[0]}; `/preview unlink` it first.")
    try:
        pull = await client.pull(other)
    except NotFound:
        raise LinkRefused(f"{ref(client.repo, other)} is not a pull request.") from None
    if pull.get("state") != "open":
        raise LinkRefused(f"{ref(client.repo, other)} is closed.")
    # Its head as of now, as `/preview` approves one there: a fork's must be named in full.
    approval = approve(pull, sha)
    if approval.sha is None:
        raise LinkRefused(f"{ref(client.repo, other)}: " + approval.refusal(f"/preview link {ref(client.repo, other)}"))
    # The two builds may not both route one in-mesh host: the route sorted first would win.
    ours = await _mesh_hosts(kube, owner_key.value)
    failure = await deploy(client, other, approval.sha)
    if failure is not None:
        raise LinkRefused(f"{ref(client.repo, other)} could not be deployed: {failure}")
    theirs = await _mesh_hosts(kube, linked_key.value)
    if ours & theirs:
        raise LinkRefused(f"Both pull requests change the service of {', '.join(sorted(ours & theirs))}; a "
                          f"request could reach only one of the builds. {ref(client.repo, other)} now has its own "
                          "preview, not linked.")
    await _mark(kube, linked_key, ref(owner.repo, number), owner_key.value)
    await _reroute(kube, linked_key, owner_key.value, add=True)
    async def by_name(_repo_id: int | None, name: str) -> RepoClient | None:
        return await client_for(name)

    await refresh_sticky(reporter, by_name, owner.repo, number)
    await refresh_sticky(reporter, by_name, client.repo, other)
    urls = ", ".join(f"https://{h}" for h in live[owner_key.value].hosts)
    return (f"🔗 Linked {ref(client.repo, other)} (commit `{approval.sha[:12]}`) to this preview: "
            f"requests with {_carrier(owner_key.value, kube.settings)} reach both builds ({urls}).")


async def unlink_key(kube: Cluster, refresh: Refresh | None, linked: PreviewKey, owner: str, owner_key: str) -> None:
    await _reroute(kube, linked, owner_key, add=False)
    await _mark(kube, linked, None, None)
    if refresh is not None:
        owner_repo, _, owner_number = owner.rpartition("#")
        for repo, number in ((linked.repo, linked.number), (owner_repo, int(owner_number))):
            try:
                await refresh(repo, number)
            except (GitHubError, OSError) as exc:
                log.warning("link: sticky comment not refreshed: %s", type(exc).__name__,
                            extra={"repo": repo, "pr": number})


async def unlink(kube: Cluster, refresh: Refresh | None, key: PreviewKey) -> list[str]:
    """End every link of this PR, as owner or as linked PR; returns the other PRs' references."""
    ended = []
    for repo, number, linked_key in await linked_to(kube, key.value):
        linked = naming.existing_key(repo, number, None, linked_key)
        await unlink_key(kube, refresh, linked, ref(key.repo, key.number), key.value)
        ended.append(ref(repo, number))
    found = await owner_of(kube, key)
    if found is not None:
        await unlink_key(kube, refresh, key, found[0], found[1])
        ended.append(found[0])
    return ended


async def release(kube: Cluster, key: PreviewKey, refresh: Refresh | None) -> None:
    """Before a preview is removed: its links end (see the module docstring)."""
    try:
        await unlink(kube, refresh, key)
    except Exception:
        # Removing the preview matters more than tidy links; a stale linked route only matches a key
        # nobody sets any more.
        log.exception("link: could not end the links of %s", key.value)
