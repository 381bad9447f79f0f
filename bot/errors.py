"""Error kinds shared by the pure logic and the adapters.

Every error the bot reports to users is a PreviewError. There is no kopf-style Permanent/Temporary split
deciding retries: nothing ever branched on it, and nothing should. Retries belong to the adapters, which
see the status and headers (`bot.github.api`: 5xx, rate limits, dropped connections; `bot.kube`: an
unreachable API server, 409 conflicts); above them the bot is level-triggered (the PR's next event and
the reconciler's passes converge again), so an error that outlived the adapter's retries is reported,
not retried. TemporaryError is kept as one named kind for such an error; the adapters' own errors
(`bot.kube.KubeError`, `bot.github.errors.GitHubError`) are not PreviewErrors.
"""


class PreviewError(Exception):
    """Base class for errors the bot reports to users."""


class TemporaryError(PreviewError):
    """An adapter gave up after its own retries (API server unreachable, a conflict storm) or the PR is
    busy on another replica: the same request may succeed later, when the next event or the reconciler
    comes; nothing retries it at once."""


class ConfigError(PreviewError):
    """A configuration value is invalid; the message names where and why."""

    def __init__(self, source: str, field: str, reason: str) -> None:
        self.source = source
        self.field = field
        self.reason = reason
        location = f"{source}: {field}" if field else source
        super().__init__(f"{location}: {reason}")


class StartupError(PreviewError):
    """`serve` (or another command) cannot start; the message is the one line the CLI prints. It never
    contains a secret."""


class HostConflictError(PreviewError):
    """A preview host is already served by another repository's preview."""


class MeshRoutingError(PreviewError):
    """Istio would not use the preview's mesh routes (another VirtualService serves the host); the
    message names that VirtualService as `namespace/name` and what to change."""


class RoutesNotRemoved(PreviewError):
    """The API server refused to change one or more shared mesh VirtualServices (403: the bot may not
    update it any more; 422: an admission webhook said no), so the preview routes matched stay in them.
    Every other VirtualService was still done; `changed` counts those. A refusal is not retried at
    once: a teardown removes the preview's own objects anyway (the route left points at a removed
    Service, which the reconciler reports and removes once it may). The message names each
    VirtualService and what to grant, one clause each."""

    def __init__(self, failures: list[str], changed: int) -> None:
        self.failures = failures
        self.changed = changed
        super().__init__("; ".join(failures))


class ObjectsElsewhere(PreviewError):
    """Some of a preview's objects are in `namespace`, not PREVIEW_NAMESPACE (`preview_namespace`: the
    setting changed while the preview was live), where the bot may not list them (`status`, 403)."""

    def __init__(self, namespace: str, preview_namespace: str, status: int) -> None:
        self.namespace = namespace
        super().__init__(f"its objects are in namespace {namespace} (PREVIEW_NAMESPACE is {preview_namespace}), "
                         f"where preview-bot may not list them ({status}): left as they are; see deploy/README.md, "
                         "\"Changing a namespace\"")


def first_line(text: str | bytes, limit: int, *, preferring: str = "") -> str:
    """The first non-blank line of an answer that is not what was asked for (a proxy's HTML page, the
    API server's plain text, a TLS error), cut at `limit` characters, for a one-line message; with
    `preferring`, the first line containing it (case-insensitive) when there is one."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    lines = [line for line in (raw.strip() for raw in text.splitlines()) if line]
    chosen = next((line for line in lines if preferring.lower() in line.lower()), None) if preferring else None
    return (chosen or (lines[0] if lines else ""))[:limit]
