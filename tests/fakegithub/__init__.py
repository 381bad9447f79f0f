"""An honest fake of GitHub for the tests: REST API, App auth, webhook payloads."""

from .payloads import (
    check_run_event,
    issue_comment_event,
    ping_event,
    pull_request_event,
    sign,
    status_event,
    webhook_headers,
)
from .server import REQUIRED_PERMISSIONS, FakeGitHub

__all__ = [
    "REQUIRED_PERMISSIONS",
    "FakeGitHub",
    "check_run_event",
    "issue_comment_event",
    "ping_event",
    "pull_request_event",
    "sign",
    "status_event",
    "webhook_headers",
]
