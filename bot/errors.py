"""Error kinds shared by the pure logic and the adapters.

The split follows kopf: a PermanentError will fail the same way on retry (bad config, policy),
a TemporaryError may succeed later (API unavailable, conflict storms).
"""


class PreviewError(Exception):
    """Base class for errors the bot reports to users."""


class PermanentError(PreviewError):
    """Retrying will not help: tell the user and stop."""


class TemporaryError(PreviewError):
    """A retry later may succeed."""


class ConfigError(PermanentError):
    """A configuration value is invalid; the message names where and why."""

    def __init__(self, source: str, field: str, reason: str) -> None:
        self.source = source
        self.field = field
        self.reason = reason
        location = f"{source}: {field}" if field else source
        super().__init__(f"{location}: {reason}")


class StartupError(PermanentError):
    """`serve` (or another command) cannot start; the message is the one line the CLI prints. It never
    contains a secret."""


class HostConflictError(PermanentError):
    """A preview host is already served by another repository's preview."""


class MeshRoutingError(PermanentError):
    """Istio would not use the preview's mesh routes (another VirtualService serves the host); the
    message names that VirtualService as `namespace/name` and what to change."""
