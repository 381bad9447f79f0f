"""Names, hosts and labels: the only place they are made (pure).

A preview is identified by its key, `preview-<number>-<repo hash>`. The 6-hex-digit hash of the
repository's full name keeps two repositories that both have a PR #7 apart in object names, in the
`x-preview` header value and in mesh routes. The full repository name is kept in an annotation,
and ownership is checked before anything is overwritten (see kube.py), so even a hash collision
cannot make one repository's preview replace another's.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from bot.settings import ClusterSettings

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "preview-bot"
KEY_LABEL = "preview-bot.dev/key"
REPO_LABEL = "preview-bot.dev/repo"
PR_LABEL = "preview-bot.dev/pr"
SERVICE_LABEL = "preview-bot.dev/service"
ROLE_LABEL = "preview-bot.dev/role"
REPO_ANNOTATION = "preview-bot.dev/repository"
SHA_ANNOTATION = "preview-bot.dev/sha"
HOST_ANNOTATION = "preview-bot.dev/host"
PUSHED_AT_ANNOTATION = "preview-bot.dev/pushed-at"
KEEP_ANNOTATION = "preview-bot.dev/keep"
FIELD_MANAGER = "preview-bot"

ROLE_WORKLOAD = "workload"
ROLE_GATEWAY = "gateway-route"
ROLE_MESH = "mesh-routes"

MAX_NAME = 63
_INVALID = re.compile(r"[^a-z0-9-]+")
_REPO = re.compile(r"^[A-Za-z0-9-]{1,39}/[A-Za-z0-9._-]{1,100}$")


def short_hash(text: str, length: int = 6) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def dns_label(text: str, max_length: int = MAX_NAME) -> str:
    """Any text -> a DNS-1123 label; a changed or shortened name gets a hash of the original."""
    cleaned = _INVALID.sub("-", text.lower()).strip("-")
    cleaned = re.sub(r"-{2,}", "-", cleaned) or "x"
    if cleaned == text and len(cleaned) <= max_length:
        return cleaned
    suffix = short_hash(text)
    head = cleaned[: max_length - len(suffix) - 1].rstrip("-")
    return f"{head}-{suffix}" if head else suffix


def valid_repo(full_name: str) -> bool:
    return bool(_REPO.match(full_name))


@dataclass(frozen=True)
class PreviewKey:
    """One pull request of one repository."""

    repo: str
    number: int

    def __post_init__(self) -> None:
        if not valid_repo(self.repo):
            raise ValueError(f"not an owner/name repository: {self.repo!r}")
        if self.number < 1:
            raise ValueError(f"not a pull request number: {self.number}")

    @property
    def repo_hash(self) -> str:
        return short_hash(self.repo.lower())

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
            REPO_LABEL: self.repo_hash,
            PR_LABEL: str(self.number),
            ROLE_LABEL: role,
        }
        if service is not None:
            labels[SERVICE_LABEL] = dns_label(service)
        return labels

    def selector(self) -> str:
        """Label selector matching every object of this preview."""
        return f"{MANAGED_BY_LABEL}={MANAGED_BY},{KEY_LABEL}={self.value}"


def repo_selector(repo: str) -> str:
    return f"{MANAGED_BY_LABEL}={MANAGED_BY},{REPO_LABEL}={short_hash(repo.lower())}"


MANAGED_SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY}"


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
