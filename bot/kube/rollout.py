"""Whether a preview's Deployments rolled out: their state from the API server, and the wait for it.

A Deployment is Available when its current generation is fully rolled out (observedGeneration,
updated/available/total replicas all as wanted, condition Available=True: Kubernetes docs, "Deployment
status"). It is hopeless when its rollout exceeded its progress deadline or a pod waits for a reason
that waiting does not cure (_HOPELESS_WAITING); image pulls are hopeless only once the grace for CI to
push the image is over. Reads only; polls are bounded by the caller's timeout, or by the grace for a
Deployment waiting for its image (the two settings mean: PREVIEW_READY_TIMEOUT is how long a preview has
to become Available, PREVIEW_IMAGE_PULL_GRACE how long CI has to push its image; the wait honours both).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable

from bot import metrics
from bot.kube.transport import Transport, collection_path
from bot.manifests import rolled_out
from bot.settings import ClusterSettings

# Pod states that will not get better by waiting (image pulls: once the grace for CI to push is over).
_HOPELESS_WAITING = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CrashLoopBackOff",
                               "CreateContainerConfigError", "CreateContainerError"})
_IMAGE_PULL = frozenset({"ErrImagePull", "ImagePullBackOff"})


class Rollouts:
    """The rollout state of the Deployments in PREVIEW_NAMESPACE. The wait follows a deploy, which has just
    applied every Deployment it waits for there: a preview made before PREVIEW_NAMESPACE changed is moved
    by its redeploy before the wait (bot.kube.Kube.apply_preview; tests/e2e/test_links.py and test_gc.py
    redeploy one and see it reported ready), so no Deployment of an earlier namespace is waited for."""

    def __init__(self, transport: Transport, settings: ClusterSettings) -> None:
        self._t = transport
        self._settings = settings

    async def deployment_state(self, name: str) -> tuple[bool, str | None]:
        """(available, hopeless reason). Available means the current generation is fully rolled out."""
        available, reason, _waiting = await self._deployment_state(name)
        return available, reason

    async def _deployment_state(self, name: str) -> tuple[bool, str | None, str | None]:
        """(available, hopeless reason, the pod's waiting reason behind it, e.g. ErrImagePull)."""
        path = f"{collection_path('apps/v1', 'deployments', self._settings.namespace)}/{name}"
        deployment = await self._t.get(path)
        metrics.ROLLOUT_CHECKS.inc()
        if deployment is None:
            return False, "the Deployment disappeared", None
        spec, status = deployment.get("spec") or {}, deployment.get("status") or {}
        conditions = {c.get("type"): c for c in status.get("conditions") or []}
        progressing = conditions.get("Progressing") or {}
        if progressing.get("reason") == "ProgressDeadlineExceeded":
            return False, "the rollout exceeded its progress deadline", None
        if rolled_out(deployment):
            return True, None, None
        selector = ",".join(f"{k}={v}" for k, v in spec["selector"]["matchLabels"].items())
        pulling: tuple[bool, str | None, str | None] = (False, None, None)
        pods = await self._t.list_objects("v1", "pods", self._settings.namespace, selector)
        metrics.ROLLOUT_CHECKS.inc()
        for pod in pods:
            for container in (pod.get("status") or {}).get("containerStatuses") or []:
                waiting = (container.get("state") or {}).get("waiting") or {}
                if waiting.get("reason") in _HOPELESS_WAITING:
                    image = container.get("image") or ""
                    why = waiting.get("message") or (f"image {image}" if image else "")
                    found = (False, f"pod {pod['metadata']['name']}: {waiting['reason']}: {why}",
                             str(waiting["reason"]))
                    if waiting["reason"] not in _IMAGE_PULL:
                        return found  # a crash is hopeless whatever the images do
                    pulling = pulling if pulling[1] else found
        return pulling

    async def wait_available(self, names: Iterable[str], timeout: float, *,
                             stop: Callable[[], bool] = lambda: False, pull_grace: float = 0.0,
                             on_image_wait: Callable[[str, str], Awaitable[None]] | None = None,
                             ) -> dict[str, str | None]:
        """Poll until every Deployment is Available; returns name -> failure reason (None when ready).

        `stop` ends the wait early (a newer event for the same PR is queued). For `pull_grace` seconds
        ErrImagePull/ImagePullBackOff mean "the image is not pushed yet" (CI builds it after the push):
        the wait goes on, and `on_image_wait(name, reason)` is awaited once per Deployment. A Deployment
        seen waiting for its image is waited for up to max(`timeout`, `pull_grace`) seconds, the others
        up to `timeout`: an image CI pushes within the grace is never reported as a failure, whatever the
        timeout."""
        pending = set(names)
        results: dict[str, str | None] = {}
        started = time.monotonic()
        told: set[str] = set()
        image_waits: dict[str, str] = {}  # name -> the pull error seen last, while it waits for its image
        waited_for_image: set[str] = set()  # names given the grace (once seen waiting for their image)
        delay = 0.5
        while pending:
            for name in sorted(pending):
                available, reason, waiting = await self._deployment_state(name)
                image_waits.pop(name, None)
                if reason and waiting in _IMAGE_PULL and time.monotonic() - started < pull_grace:
                    image_waits[name] = reason
                    waited_for_image.add(name)
                    if on_image_wait is not None and name not in told:
                        told.add(name)
                        await on_image_wait(name, reason)
                    continue
                if reason and waiting in _IMAGE_PULL:
                    reason += f" (the image did not appear within {pull_grace:.0f} s)"
                if available or reason:
                    results[name] = reason
                    pending.discard(name)
            if not pending or stop():
                break
            elapsed = time.monotonic() - started
            for name in sorted(pending):
                limit = max(timeout, pull_grace) if name in waited_for_image else timeout
                if elapsed >= limit:
                    results[name] = f"not Available after {limit:.0f} s" + (
                        f"; still waiting for the image ({image_waits[name]})" if name in image_waits else "")
                    pending.discard(name)
            if not pending:
                break
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 5.0)
        return results
