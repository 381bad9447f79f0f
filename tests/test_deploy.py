"""The base Deployment (deploy/base) and `serve`'s shutdown agree."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from bot.settings import Settings

DEPLOYMENT = Path(__file__).resolve().parent.parent / "deploy" / "base" / "deployment.yaml"


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load(DEPLOYMENT.read_text())["spec"]["template"]["spec"]
    return spec


def test_the_grace_period_covers_the_shutdown_delay_and_the_drain() -> None:
    """Kubernetes SIGKILLs the container terminationGracePeriodSeconds after SIGTERM: serve must have
    lingered (PREVIEW_SHUTDOWN_DELAY), drained (PREVIEW_DRAIN_TIMEOUT) and released its Lease by then."""
    spec = pod_spec()
    env = {e["name"]: e.get("value") for e in spec["containers"][0].get("env", [])}
    delay = float(env.get("PREVIEW_SHUTDOWN_DELAY") or Settings.shutdown_delay)
    drain = float(env.get("PREVIEW_DRAIN_TIMEOUT") or Settings.drain_timeout)
    assert spec["terminationGracePeriodSeconds"] >= delay + drain + 5
