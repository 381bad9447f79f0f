"""A warning comment some hours before the idle TTL removes a preview (PREVIEW_TTL_WARNING).

An idle period starts at the preview's last deploy (the `pushed-at` annotation; every push or `/preview`
redeploys and so starts a new one). The warning for a period is recorded on the preview's first Deployment
as the annotation `preview-bot.dev/ttl-warned-for: <period>` (`<pushed-at>@<sha>`), so it survives restarts
and is shared by replicas; a push gives another period, so it resets the warning without touching the
annotation.

At most once per period: the annotation is written first, with the Deployment's resourceVersion as a
precondition (two replicas cannot both claim it), and the comment is posted after; if posting fails the
claim is withdrawn so that the next pass tries again.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from bot import naming
from bot.kube import Conflict, LivePreview, collection_path
from bot.ports import Cluster, GitHubRepo
from bot.timestamps import parse_time

log = logging.getLogger(__name__)

WARNED_ANNOTATION = "preview-bot.dev/ttl-warned-for"
ClientFor = Callable[[int | None, str], Awaitable[GitHubRepo | None]]


def period_start(preview: LivePreview) -> str:
    """When the idle period began: the last deploy (or creation, for objects older than the annotation)."""
    return preview.pushed_at or preview.created


def period(preview: LivePreview) -> str:
    """The idle period's identity: its start and the commit (two deploys can share a second)."""
    return f"{period_start(preview)}@{preview.sha[:12]}"


def warning_due(preview: LivePreview, now: datetime, ttl: timedelta, before: timedelta,
                warned_for: str | None) -> bool:
    """True when the preview is within `before` of the TTL, not past it, and this period was not warned."""
    start = parse_time(period_start(preview))
    if start is None or preview.keep or before <= timedelta(0):
        return False
    idle = now - start
    return ttl - before < idle <= ttl and warned_for != period(preview)


def _hours(delta: timedelta) -> str:
    hours = delta.total_seconds() / 3600
    if hours >= 1.5:
        return f"about {round(hours)} hours"
    minutes = max(1, round(delta.total_seconds() / 60))
    return f"about {minutes} minute{'s' if minutes != 1 else ''}"


def warning_text(preview: LivePreview, now: datetime, ttl: timedelta) -> str:
    """The comment: when the preview goes, and the three ways to keep it."""
    start = parse_time(period_start(preview)) or now
    left = max(start + ttl - now, timedelta(0))
    days = ttl.total_seconds() / 86400
    return (f"⏰ This preview (`{preview.key}`) has had no push since {period_start(preview)} and will be removed "
            f"in {_hours(left)}, when it has been idle for {days:g} days.\n\n"
            "To keep it: comment `/preview keep` (it then stays until the pull request is closed or "
            "`/preview stop`), or push a commit, or comment `/preview` to redeploy (both start a new idle period).")


async def _carrier(kube: Cluster, preview: LivePreview) -> dict[str, Any] | None:
    """The preview's first Deployment by name: where the warning of a period is recorded."""
    selector = f"{naming.MANAGED_BY_LABEL}={naming.MANAGED_BY},{naming.KEY_LABEL}={preview.key}"
    # A preview made before PREVIEW_NAMESPACE changed is in its own namespace (bot.kube.inventory).
    items = await kube.list_objects("apps/v1", "deployments", preview.namespace or kube.settings.namespace, selector)
    return min(items, key=lambda i: str(i["metadata"]["name"])) if items else None


async def _annotate(kube: Cluster, deployment: dict[str, Any], value: str | None, *, guarded: bool) -> None:
    meta = deployment["metadata"]
    namespace = meta.get("namespace") or kube.settings.namespace
    path = f"{collection_path('apps/v1', 'deployments', namespace)}/{meta['name']}"
    patch: dict[str, Any] = {"metadata": {"annotations": {WARNED_ANNOTATION: value}}}
    if guarded:
        patch["metadata"]["resourceVersion"] = meta["resourceVersion"]
    await kube.call("PATCH", path, body=patch, content_type="application/merge-patch+json")


async def maybe_warn(kube: Cluster, client_for: ClientFor, preview: LivePreview, *, now: datetime, ttl: timedelta,
                     before: timedelta, dry_run: bool = False) -> bool:
    """Warn once for the preview's current idle period when it is due; True when a warning was (or, with
    `dry_run`, would be) posted."""
    if not warning_due(preview, now, ttl, before, None):
        return False
    deployment = await _carrier(kube, preview)
    if deployment is None:
        return False
    warned_for = ((deployment["metadata"].get("annotations") or {}).get(WARNED_ANNOTATION))
    if not warning_due(preview, now, ttl, before, warned_for):
        return False
    if dry_run:
        return True
    client = await client_for(preview.repo_id, preview.repo)
    if client is None:
        return False
    try:
        await _annotate(kube, deployment, period(preview), guarded=True)
    except Conflict:
        return False  # changed meanwhile (another replica's claim, or a deploy): the next pass decides
    try:
        await client.reply(preview.number, warning_text(preview, now, ttl))
    except Exception:
        log.warning("TTL warning not posted; claim withdrawn", extra={"repo": preview.repo, "pr": preview.number})
        await _annotate(kube, deployment, warned_for, guarded=False)
        raise
    return True
