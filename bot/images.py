"""Image references as the kubelet reads them (pure): the grammar, and the checks of config and settings.

Whatever the kubelet cannot parse fails as InvalidImageName only after the Deployment was created, so the
bot would wait for a rollout that never comes; this module lets the config (bot.repo_config) and the
operator's PREVIEW_ALLOWED_IMAGES (bot.settings) be refused up front instead.
"""

from __future__ import annotations

import re

# An image reference as the kubelet parses it (github.com/distribution/reference: regexp.go, and
# ParseNormalizedNamed in normalize.go): [registry/]path[:tag][@digest]. A registry is DNS labels or an [IPv6]
# address, with an optional :port; the path is `/`-separated lowercase components of letters and digits joined
# by `.`, `_`, `__` or dashes; a tag is at most 128 of [A-Za-z0-9_.-], not starting with `.` or `-`. The digest
# is what the kubelet's go-digest accepts (sha256, sha384, sha512 in lowercase hex of exact length), not the
# grammar's any-algorithm-and-32-hex.
REGISTRY = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*" \
           r"|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
DIGEST = r"sha256:[0-9a-f]{64}|sha384:[0-9a-f]{96}|sha512:[0-9a-f]{128}"
REFERENCE = re.compile(rf"(?P<name>(?:{REGISTRY}/)?{COMPONENT}(?:/{COMPONENT})*)"
                       rf"(?::{TAG})?(?:@(?:{DIGEST}))?")
PATH_MAX = 255  # distribution/reference RepositoryNameTotalLengthMax


def parts(reference: str) -> tuple[str, str, str | None, str | None]:
    """(registry, repository path, tag, digest) as the kubelet splits them (distribution/reference
    splitDockerDomain): the first component is the registry when it is `localhost` or has a `.`, a `:` or an
    uppercase letter; otherwise the image is on Docker Hub."""
    rest, at, digest = reference.partition("@")
    head, slash, last = rest.rpartition("/")
    last, colon, tag = last.partition(":")
    first, _, remainder = (head + slash + last).partition("/")
    if slash and (first == "localhost" or any(c in first for c in ".:") or first != first.lower()):
        registry, path = ("docker.io" if first == "index.docker.io" else first), remainder
    else:
        registry, path = "docker.io", head + slash + last
    return registry, path, tag if colon else None, digest if at else None


def prefix_problem(prefix: str) -> str | None:
    """Why `prefix` (an entry of PREVIEW_ALLOWED_IMAGES, ending in `/`) can start no image reference, or None:
    without its final `/` it must be a registry or a repository path (`registry.example.com/acme`, `acme`)."""
    if not prefix.endswith("/"):
        return "must end with `/`"
    if not re.fullmatch(rf"(?:{REGISTRY}|{COMPONENT})(?:/{COMPONENT})*", prefix[:-1]):
        return "must be a registry, optionally with a repository path, like registry.example.com/acme/"
    return None
