"""Names, hosts and labels: the only place they are made (pure).

A preview is identified by its key, `preview-<number>-<repo hash>`. The 6-hex-digit hash of the
repository's numeric id (GitHub's `repository.id`, which survives a rename or a transfer, unlike
`full_name`) keeps two repositories that both have a PR #7 apart in object names, in the `x-preview`
header value and in mesh routes. The id is also a label, and ownership is checked by it before
anything is overwritten (see ownership.py), so even a hash collision cannot make one repository's preview
replace another's. The full name is kept in an annotation for people only.

Previews made before ids were used ("legacy": key hash of the lower-cased full name, a
`preview-bot.dev/repo` label with that hash, no id label) keep their key: `resolve_key` adopts the key
of a live preview of the same PR, and the next apply adds the id label to its objects.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from bot.dns import dns_label, short_hash
from bot.settings import ClusterSettings

__all__ = ["dns_label", "short_hash"]  # re-exported: object names are made here

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "preview-bot"
KEY_LABEL = "preview-bot.dev/key"
REPO_LABEL = "preview-bot.dev/repo"  # legacy: hash of the full name; read to find old previews
REPO_ID_LABEL = "preview-bot.dev/repo-id"  # GitHub's numeric repository.id
PR_LABEL = "preview-bot.dev/pr"
SERVICE_LABEL = "preview-bot.dev/service"
ROLE_LABEL = "preview-bot.dev/role"
REPO_ANNOTATION = "preview-bot.dev/repository"
SHA_ANNOTATION = "preview-bot.dev/sha"
HOST_ANNOTATION = "preview-bot.dev/host"
PUSHED_AT_ANNOTATION = "preview-bot.dev/pushed-at"
KEEP_ANNOTATION = "preview-bot.dev/keep"
# On a Deployment whose rollout was reported failed: the commit of that deploy. Written with the bot's own
# field manager, so the next deploy's server-side apply (without it) removes it (bot/kube/objects.py).
ROLLOUT_FAILED_ANNOTATION = "preview-bot.dev/rollout-failed"
FIELD_MANAGER = "preview-bot"

ROLE_WORKLOAD = "workload"
ROLE_GATEWAY = "gateway-route"
ROLE_MESH = "mesh-routes"

MAX_NAME = 63
# `\Z`, not `$`: Python's `$` also matches before a final line break, which would pass a value ending in one.
_REPO = re.compile(r"^[A-Za-z0-9-]{1,39}/[A-Za-z0-9._-]{1,100}\Z")


def valid_repo(full_name: str) -> bool:
    return bool(_REPO.match(full_name))


@dataclass(frozen=True)
class PreviewKey:
    """One pull request of one repository.

    `repo` is the full name at the time (for people: annotations, comments); `repo_id` is the identity.
    `repo_id=None` describes a legacy preview (keyed by the name's hash). `legacy_hash` keeps the key of
    a legacy preview adopted by its repository id, so its objects, header value and routes stay the same.
    """

    repo: str = field(compare=False)  # a name, for people: two keys of one repository are equal
    number: int
    repo_id: int | None
    legacy_hash: str | None = None

    def __post_init__(self) -> None:
        if not valid_repo(self.repo):
            raise ValueError(f"not an owner/name repository: {self.repo!r}")
        if self.number < 1:
            raise ValueError(f"not a pull request number: {self.number}")
        if self.repo_id is not None and self.repo_id < 1:
            raise ValueError(f"not a repository id: {self.repo_id}")
        if self.legacy_hash is not None and not re.fullmatch(r"[0-9a-f]{6}", self.legacy_hash):
            raise ValueError(f"not a key hash: {self.legacy_hash!r}")

    @property
    def repo_hash(self) -> str:
        if self.legacy_hash is not None:
            return self.legacy_hash
        if self.repo_id is None:
            return legacy_repo_hash(self.repo)
        return short_hash(f"repository-id:{self.repo_id}")

    @property
    def value(self) -> str:
        """The preview key: object-name prefix and the `x-preview` header value."""
        return f"preview-{self.number}-{self.repo_hash}"

    @property
    def environment(self) -> str:
        """The GitHub Deployment environment name."""
        return f"preview-{self.number}"

    def object_name(self, service: str) -> str:
        """Deployment and Service name; starts with a letter, so also a valid DNS-1035 label."""
        return dns_label(f"{self.value}-{service}")

    def labels(self, service: str | None = None, role: str = ROLE_WORKLOAD) -> dict[str, str]:
        labels = {
            MANAGED_BY_LABEL: MANAGED_BY,
            KEY_LABEL: self.value,
            PR_LABEL: str(self.number),
            ROLE_LABEL: role,
        }
        if self.repo_id is None:
            labels[REPO_LABEL] = legacy_repo_hash(self.repo)  # what versions before ids wrote
        else:
            labels[REPO_ID_LABEL] = str(self.repo_id)
        if service is not None:
            labels[SERVICE_LABEL] = dns_label(service)
        return labels

    def selector(self) -> str:
        """Label selector matching every object of this preview."""
        return f"{MANAGED_BY_LABEL}={MANAGED_BY},{KEY_LABEL}={self.value}"


def legacy_repo_hash(repo: str) -> str:
    """The key hash versions before ids used: of the lower-cased full name."""
    return short_hash(repo.lower())


def repo_selectors(repo_id: int, repo: str) -> tuple[str, str]:
    """Label selectors for a repository's previews: by id, and legacy ones by the hash of its current name
    (those carry no id label yet)."""
    return (f"{MANAGED_BY_LABEL}={MANAGED_BY},{REPO_ID_LABEL}={repo_id}",
            f"{MANAGED_BY_LABEL}={MANAGED_BY},{REPO_LABEL}={legacy_repo_hash(repo)},!{REPO_ID_LABEL}")


def resolve_key(repo: str, repo_id: int, number: int, live_keys: Iterable[str]) -> PreviewKey:
    """The key of PR `number`: an existing preview's (found by the repository's id or, for a legacy one,
    by its name) is kept, so an upgrade never orphans a preview; otherwise the id's key.

    `live_keys` are the keys of the repository's live previews (see `repo_selectors`)."""
    key = PreviewKey(repo, number, repo_id)
    prefix = f"preview-{number}-"
    for live in sorted(set(live_keys)):
        tail = live[len(prefix):] if live.startswith(prefix) else ""
        if live != key.value and re.fullmatch(r"[0-9a-f]{6}", tail):
            return PreviewKey(repo, number, repo_id, legacy_hash=tail)
    return key


MANAGED_SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY}"


def existing_key(repo: str, number: int, repo_id: int | None, value: str) -> PreviewKey:
    """The key of a live preview whose labels say `value` (raises ValueError when it is damaged)."""
    prefix = f"preview-{number}-"
    if not value.startswith(prefix):
        raise ValueError(f"not a key of pull request {number}: {value!r}")
    key = PreviewKey(repo, number, repo_id)
    tail = value[len(prefix):]
    return key if tail == key.repo_hash else PreviewKey(repo, number, repo_id, legacy_hash=tail)


def preview_host(settings: ClusterSettings, key: PreviewKey, service: str) -> str:
    owner, _, repo = key.repo.partition("/")
    return settings.host_for(number=key.number, service=dns_label(service), key=key.value,
                             repo=dns_label(repo), owner=dns_label(owner))


def gateway_route_name(host: str) -> str:
    """One gateway VirtualService per preview host: a second repository claiming it collides by name."""
    return dns_label(f"preview-gw-{host.replace('.', '-')}")


def mesh_route_name(mesh_host: str) -> str:
    """Name of the shared mesh VirtualService the bot creates when none exists for the host."""
    return dns_label(f"preview-mesh-{mesh_host.replace('.', '-')}")


def service_fqdn(name: str, namespace: str) -> str:
    return f"{name}.{namespace}.svc.cluster.local"


def destination_namespace(destination: str) -> str | None:
    """The namespace a route destination `<service>.<namespace>.svc.cluster.local` (service_fqdn) names;
    None for a host of another form (Kubernetes DNS for Services: `<service>.<namespace>.svc.<domain>`)."""
    parts = destination.split(".")
    return parts[1] if len(parts) == 5 and parts[2:] == ["svc", "cluster", "local"] else None
