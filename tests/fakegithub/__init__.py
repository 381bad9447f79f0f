"""An honest fake of GitHub for the tests: REST API, App auth, webhook payloads."""

from .payloads import issue_comment_event, ping_event, pull_request_event, sign, webhook_headers
from .server import REQUIRED_PERMISSIONS, FakeGitHub

__all__ = [
    "REQUIRED_PERMISSIONS",
    "FakeGitHub",
    "issue_comment_event",
    "ping_event",
    "pull_request_event",
    "sign",
    "webhook_headers",
]
