"""Small in-memory stand-ins for the orchestration's ports (bot.ports), for fast decision tests.

They keep just enough state to answer what the domain reads back (comments, deployments and their
statuses, live previews, preview slots) and record every write. The real adapters are tested elsewhere:
bot.github.client against the schema-checked fake GitHub, bot.kube and bot.arbiter on the real
kube-apiserver; these fakes are checked against the Protocols by mypy (tests/unit/test_orchestration.py
passes them where the ports are expected).
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from bot import manifests, mesh_hosts, mesh_routes, naming, slots
from bot.github.client import ChangedFiles
from bot.kube import Conflict, LivePreview, NotFound
from bot.mesh_hosts import Ref
from bot.naming import PreviewKey
from bot.settings import ClusterSettings

_ids = itertools.count(1000)

APP_ID = 4242  # the App the fake's own comments come from (GitHub: `performed_via_github_app`)


class FakeRepo:
    """One repository on GitHub (bot.ports.GitHubRepo)."""

    def __init__(self, repo: str = "acme/shop", repo_id: int = 101, *, config: str | None = None) -> None:
        self.repo = repo
        self.repo_id = repo_id
        self.config = config
        self.pulls: dict[int, dict[str, Any]] = {}
        self.files: dict[int, list[str]] = {}
        self.comment_list: list[dict[str, Any]] = []
        self.deployment_list: list[dict[str, Any]] = []  # oldest first; GitHub lists newest first
        self.statuses: dict[int, list[dict[str, Any]]] = {}
        self.writes: list[str] = []  # one entry per write call, by name
        self.reads: list[str] = []
        self.collaborators: dict[str, str] = {}  # login -> admin/maintain/write/triage/read
        self.reactions: list[tuple[int, str]] = []  # (comment id, content)

    def add_pull(self, number: int, sha: str, *, fork: bool = False, state: str = "open",
                 labels: Iterable[str] = (), files: Iterable[str] = ()) -> dict[str, Any]:
        pull = {"number": number, "state": state, "labels": [{"name": n} for n in labels],
                "head": {"sha": sha, "repo": {"id": self.repo_id + 1 if fork else self.repo_id}},
                "base": {"repo": {"id": self.repo_id}},
                "changed_files": len(list(files))}
        self.pulls[number] = pull
        self.files[number] = list(files)
        return pull

    # -- reads --------------------------------------------------------------------------------

    async def pull(self, number: int) -> dict[str, Any]:
        self.reads.append("pull")
        return dict(self.pulls[number])

    async def open_pulls(self) -> list[dict[str, Any]]:
        self.reads.append("open_pulls")
        return [dict(p) for p in self.pulls.values() if p["state"] == "open"]

    async def file_text(self, path: str, ref: str | None = None) -> str | None:
        self.reads.append("file_text")
        return self.config if path == ".github/preview.yml" else None

    async def changed_files(self, number: int, pull: Any = None) -> ChangedFiles:
        self.reads.append("changed_files")
        return ChangedFiles(tuple(self.files.get(number, ())), complete=True)

    async def comments(self, number: int, *, since: str | None = None) -> AsyncIterator[dict[str, Any]]:
        self.reads.append("comments")
        for item in [c for c in self.comment_list if c["number"] == number]:
            if since is None or item.get("updated_at", since) >= since:  # ISO 8601 in UTC sorts as text
                yield item

    async def can_write(self, user: str) -> bool:
        self.reads.append("permission")
        return self.collaborators.get(user) in ("admin", "maintain", "write")

    async def check_runs(self, sha: str) -> list[dict[str, Any]]:
        self.reads.append("check_runs")
        return []

    async def commit_statuses(self, sha: str) -> list[dict[str, Any]]:
        self.reads.append("commit_statuses")
        return []

    async def deployments(self, environment: str) -> list[dict[str, Any]]:
        self.reads.append("deployments")
        return [dict(d) for d in reversed(self.deployment_list) if d["environment"] == environment]

    async def latest_status(self, deployment_id: int) -> dict[str, Any] | None:
        self.reads.append("latest_status")
        found = self.statuses.get(deployment_id) or []
        return dict(found[-1]) if found else None

    async def latest_state(self, deployment_id: int) -> str | None:
        status = await self.latest_status(deployment_id)
        return None if status is None else str(status["state"])

    # -- writes -------------------------------------------------------------------------------

    async def reply(self, number: int, body: str) -> None:
        await self.create_comment(number, body)

    async def react(self, comment_id: int, content: str) -> None:
        self.writes.append("react")
        self.reactions.append((comment_id, content))

    async def create_comment(self, number: int, body: str) -> int:
        self.writes.append("create_comment")
        comment_id = next(_ids)
        self.comment_list.append({"id": comment_id, "number": number, "body": body, "user": {"type": "Bot"},
                                  "performed_via_github_app": {"id": APP_ID},
                                  "created_at": _now(), "updated_at": _now()})
        return comment_id

    async def edit_comment(self, comment_id: int, body: str) -> bool:
        self.writes.append("edit_comment")
        for item in self.comment_list:
            if item["id"] == comment_id:
                item["body"] = body
                return True
        return False

    async def delete_comment(self, comment_id: int) -> None:
        self.writes.append("delete_comment")
        self.comment_list = [c for c in self.comment_list if c["id"] != comment_id]

    async def create_deployment(self, *, ref: str, environment: str, description: str,
                                payload: dict[str, Any]) -> int:
        self.writes.append("create_deployment")
        deployment_id = next(_ids)
        self.deployment_list.append({"id": deployment_id, "sha": ref, "environment": environment,
                                     "payload": payload, "created_at": _now()})
        return deployment_id

    async def deployment_status(self, deployment_id: int, state: str, *, description: str = "",
                                environment_url: str | None = None, log_url: str | None = None) -> None:
        self.writes.append("deployment_status")
        self.statuses.setdefault(deployment_id, []).append(
            {"state": state, "description": description, "created_at": _now()})

    async def delete_deployment(self, deployment_id: int) -> bool:
        self.writes.append("delete_deployment")
        before = len(self.deployment_list)
        self.deployment_list = [d for d in self.deployment_list if d["id"] != deployment_id]
        return len(self.deployment_list) < before

    async def delete_environment(self, environment: str) -> bool:
        self.writes.append("delete_environment")
        return False

    # -- for assertions -----------------------------------------------------------------------

    def sticky(self, number: int) -> str | None:
        bodies = [c["body"] for c in self.comment_list if c["number"] == number]
        return bodies[0] if bodies else None

    def states(self, environment: str) -> list[str | None]:
        """The latest state of each deployment of the environment, oldest first."""
        return [(self.statuses.get(d["id"]) or [{"state": None}])[-1]["state"]
                for d in self.deployment_list if d["environment"] == environment]


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class FakeCluster:
    """The cluster (bot.ports.Cluster): previews as LivePreview records; the mesh as preview routes by
    host (`routes`), with none of Istio's choices between VirtualServices."""

    settings: ClusterSettings
    previews: dict[str, LivePreview] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)  # service name -> why it never became ready
    refused_hosts: set[str] = field(default_factory=set)
    applied: list[str] = field(default_factory=list)  # preview keys, one per apply
    deleted: list[str] = field(default_factory=list)
    on_wait: Callable[[], None] | None = None  # runs while the deploy waits (e.g. another writer)
    routes: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # mesh host -> preview routes

    def add_preview(self, key: PreviewKey, sha: str, services: Iterable[str] = ("a",), *,
                    pushed_at: datetime | None = None, keep: bool = False) -> LivePreview:
        stamp = (pushed_at or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
        preview = LivePreview(key.value, key.repo, key.number, sha, tuple(services), stamp, stamp, keep,
                              repo_id=key.repo_id)
        self.previews[key.value] = preview
        for service in preview.services:  # deployed: its mesh routes too
            destination = naming.service_fqdn(key.object_name(service), self.settings.namespace)
            self.routes.setdefault(f"{service}.{self.settings.namespace}.svc.cluster.local", []).append(
                mesh_routes.preview_route(key.value, destination=destination, port=8080,
                                          header_name=self.settings.header_name, mode=self.settings.match_mode))
        return preview

    async def call(self, method: str, path: str, *, query: Iterable[tuple[str, str]] = (), body: Any = None,
                   content_type: str | None = None) -> Any:
        return None

    async def list_objects(self, api_version: str, plural: str, namespace: str | None,
                           selector: str | None = None) -> list[dict[str, Any]]:
        return []  # no linked previews, no TTL-warning records

    async def find_deployments(self, selector: str, *, routes: str = naming.MANAGED_SELECTOR) -> list[dict[str, Any]]:
        return []  # no linked previews

    async def live_previews(self, repo: tuple[int, str] | None = None) -> list[LivePreview]:
        return [p for p in self.previews.values() if repo is None or p.repo_id == repo[0]]

    async def recorded_shas(self, key: PreviewKey) -> dict[str, str]:
        preview = self.previews.get(key.value)
        return {} if preview is None else {key.object_name(s): preview.sha for s in preview.services}

    async def apply_preview(self, plan: manifests.PreviewPlan) -> None:
        self.applied.append(plan.key.value)
        old = self.previews.get(plan.key.value)
        services = {naming.dns_label(s.service.name) for s in plan.services} | set(old.services if old else ())
        now = _now()
        self.previews[plan.key.value] = LivePreview(
            plan.key.value, plan.key.repo, plan.key.number, plan.sha, tuple(sorted(services)),
            old.created if old else now, now, old.keep if old else False, repo_id=plan.key.repo_id)

    async def mark_rollout_failed(self, plan: manifests.PreviewPlan, names: Iterable[str]) -> int:
        preview = self.previews.get(plan.key.value)
        marked = len(set(names) & {s.name for s in plan.services})
        if preview is not None and marked:
            self.previews[plan.key.value] = replace(preview, rollout_failed=True, available=False)
        return marked

    async def adopt(self, key: str, repo_id: int) -> int:
        return 0

    async def delete_preview(self, key: PreviewKey, *, services: Iterable[str] | None = None) -> int:
        preview = self.previews.get(key.value)
        if preview is None:
            return 0
        self.deleted.append(key.value)
        if services is None:
            del self.previews[key.value]
            return len(preview.services)
        gone = set(services)
        rest = tuple(s for s in preview.services if s not in gone)
        self.previews[key.value] = LivePreview(preview.key, preview.repo, preview.number, preview.sha, rest,
                                               preview.created, preview.pushed_at, preview.keep,
                                               repo_id=preview.repo_id)
        return len(preview.services) - len(rest)

    async def wait_available(self, names: Iterable[str], timeout: float, *,
                             stop: Callable[[], bool] = lambda: False, pull_grace: float = 0.0,
                             on_image_wait: Callable[[str, str], Awaitable[None]] | None = None,
                             ) -> dict[str, str | None]:
        if self.on_wait is not None:
            self.on_wait()
        return {name: next((why for svc, why in self.failures.items() if name.endswith(svc)), None)
                for name in names}

    async def existing_destinations(self, destinations: Iterable[str]) -> tuple[set[str], dict[str, str]]:
        services = {naming.service_fqdn(naming.dns_label(f"{p.key}-{s}"), self.settings.namespace)
                    for p in self.previews.values() for s in p.services}
        return set(destinations) & services, {}

    async def check_mesh_hosts(self, hosts: Iterable[str]) -> None:
        from bot.errors import MeshRoutingError

        refused = sorted(set(hosts) & self.refused_hosts)
        if refused:
            raise MeshRoutingError(f"{refused[0]}: served by a team's VirtualService the bot may not change")

    async def update_mesh_routes(self, mesh_host: str, change: Callable[[dict[str, Any]], dict[str, Any]], *,
                                 attempts: int = 40) -> bool:
        return True

    async def add_mesh_route(self, mesh_host: str, route: dict[str, Any]) -> bool:
        routes = [r for r in self.routes.get(mesh_host, []) if r["name"] != route["name"]]
        self.routes[mesh_host] = [*routes, route]
        return True

    async def mesh_services(self) -> list[dict[str, Any]]:
        return [{"metadata": {"namespace": self.settings.routing_namespace, "name": f"mesh-{host}"},
                 "spec": {"hosts": [host], "http": list(routes)}} for host, routes in self.routes.items() if routes]

    async def remove_routes_where(self, drop: Callable[[dict[str, Any]], bool], *,
                                  host: str | None = None) -> int:
        changed = 0
        for mesh_host, routes in self.routes.items():
            kept = [r for r in routes if (host is not None and mesh_host != host) or not drop(r)]
            changed += len(kept) != len(routes)
            self.routes[mesh_host] = kept
        return changed

    async def remove_routes_of_key(self, key: str) -> int:
        return await self.remove_routes_where(lambda route: route.get("name") == key)

    async def remove_routes_elsewhere(self, key: str, hosts: Mapping[str, str]) -> int:
        changed = 0
        for host in self.routes:
            changed += await self.remove_routes_where(lambda r, h=host: r.get("name") == key and any(
                hosts.get(d, h) != h for d in mesh_routes.route_destinations({"http": [r]}).get(key, [])), host=host)
        return changed

    async def misplaced_mesh_routes(self) -> list[tuple[str, Ref, mesh_hosts.Decision]]:
        return []

    async def fold_mesh_routes(self, mesh_host: str) -> bool:
        return False


@dataclass
class FakeLock:
    superseded: bool = False
    lost: bool = False

    @property
    def held(self) -> bool:
        return not self.lost

    async def refresh(self) -> None:
        return None


@dataclass
class FakeLocks:
    """Per-PR locks (one process: nothing waits) and preview slots decided by bot.slots, as the Arbiter."""

    claims: dict[str, dict[str, str]] = field(default_factory=dict)  # repository id -> key -> claimed at
    line: dict[str, slots.Line] = field(default_factory=dict)  # repository id -> its line
    locked: list[str] = field(default_factory=list)
    lock: FakeLock = field(default_factory=FakeLock)

    @contextlib.asynccontextmanager
    async def pr_lock(self, key: PreviewKey, *, supersedes: bool, timeout: float) -> AsyncIterator[FakeLock]:
        self.locked.append(key.value)
        yield self.lock

    async def claim_slot(self, key: PreviewKey, live: set[str], cap: int) -> tuple[bool, int]:
        claim = await self.claim_or_wait(key, live, cap)
        return claim.granted, claim.used

    async def claim_or_wait(self, key: PreviewKey, live: set[str], cap: int, *,
                            waiter: slots.Waiter | None = None) -> slots.Claim:
        repo = str(key.repo_id)
        claims = self.claims.setdefault(repo, {})
        line = self.line[repo] if repo in self.line else slots.Line(key.repo_id, key.repo)
        if key.value in claims:
            self.line[repo] = slots.leave(line, key.value)
            return slots.Claim(True, slots.used_count(claims, live, key.value))
        now, stale = datetime.now(UTC), timedelta(minutes=10)
        ahead = slots.ahead_of(line, key.value, slots.holding(claims, live, now, stale))
        granted, updated = slots.decide(claims, live, key.value, cap, now, stale, ahead)
        if granted:
            self.claims[repo] = dict(updated)
            self.line[repo] = slots.leave(line, key.value)
            return slots.Claim(True, len(updated) - 1)
        used = slots.used_count(updated, live, key.value)
        if waiter is None:
            return slots.Claim(False, used, line.place(key.value), ahead=ahead)
        joined, place = slots.join(line, waiter)
        if place is None:
            return slots.Claim(False, used, line_full=True, ahead=ahead)
        self.line[repo] = joined
        return slots.Claim(False, used, place, ahead=ahead)

    async def release_slot(self, key: PreviewKey) -> slots.Line:
        self.claims.get(str(key.repo_id), {}).pop(key.value, None)
        return await self.leave_line(key)

    async def leave_line(self, key: PreviewKey) -> slots.Line:
        repo = str(key.repo_id)
        self.line[repo] = slots.leave(self.line.get(repo) or slots.Line(key.repo_id, key.repo), key.value)
        return self.line[repo]

    async def line_of(self, key: PreviewKey, live: set[str], cap: int) -> tuple[slots.Line, int]:
        repo = str(key.repo_id)
        line = self.line.get(repo) or slots.Line(key.repo_id, key.repo)
        return line, slots.free_slots(self.claims.get(repo, {}), live, cap, datetime.now(UTC), timedelta(minutes=10))

    async def lines(self) -> tuple[Any, list[tuple[int, str]]]:
        return None, [(int(repo), line.repo) for repo, line in self.line.items() if line.waiting]

    async def unindex(self, repo_id: int, index: Any) -> None:
        return None


class FakeLeases:
    """Leases by API path with the API server's optimistic concurrency (the part of bot.kube.Kube that
    bot.leader and bot.arbiter use): POST creates (409 if it exists), PUT and a DELETE with a precondition
    need the current resourceVersion (409 otherwise)."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self._versions = itertools.count(1)

    async def get(self, path: str) -> dict[str, Any] | None:
        found = self.objects.get(path)
        return copy.deepcopy(found) if found is not None else None

    async def call(self, method: str, path: str, *, query: Iterable[tuple[str, str]] = (), body: Any = None,
                   content_type: str | None = None) -> Any:
        if method == "POST":
            path = f"{path}/{body['metadata']['name']}"
            if path in self.objects:
                raise Conflict(409, "AlreadyExists", path)
        elif method == "PUT":
            current = self.objects.get(path)
            if current is None:
                raise NotFound(404, "NotFound", path)
            if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
                raise Conflict(409, "Conflict", path)
        else:
            raise AssertionError(f"unexpected {method} {path}")
        stored = copy.deepcopy(body)
        stored["metadata"] = {**stored["metadata"], "resourceVersion": str(next(self._versions))}
        stored["metadata"].setdefault("uid", str(uuid.uuid4()))
        self.objects[path] = stored
        return copy.deepcopy(stored)

    async def delete(self, path: str, *, resource_version: str | None = None) -> bool:
        current = self.objects.get(path)
        if current is None:
            return False
        if resource_version and resource_version != current["metadata"]["resourceVersion"]:
            raise Conflict(409, "Conflict", path)
        del self.objects[path]
        return True
