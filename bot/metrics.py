"""Prometheus metrics (served on /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

WEBHOOKS = Counter("preview_bot_webhooks_total", "Webhook deliveries received",
                   ["event", "outcome"], registry=REGISTRY)
PROCESSING = Histogram("preview_bot_processing_seconds", "Time to process one event in the background",
                       ["event"], registry=REGISTRY,
                       buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600))
LIVE_PREVIEWS = Gauge("preview_bot_live_previews", "Previews live in the cluster (last reconciliation)",
                      registry=REGISTRY)
GITHUB_CALLS = Counter("preview_bot_github_requests_total", "GitHub API requests",
                       ["method", "outcome"], registry=REGISTRY)
GITHUB_RATE_REMAINING = Gauge("preview_bot_github_rate_limit_remaining",
                              "x-ratelimit-remaining of the last GitHub answer", registry=REGISTRY)
KUBE_CALLS = Counter("preview_bot_kubernetes_requests_total", "Kubernetes API requests",
                     ["method", "outcome"], registry=REGISTRY)
# The readiness wait polls for as long as a rollout takes: its requests are counted apart too, so that the
# requests an event costs besides that wait can be told (they must not grow with the number of previews).
ROLLOUT_CHECKS = Counter("preview_bot_kubernetes_rollout_requests_total",
                         "Kubernetes API requests made by the wait for Deployments to become Available",
                         registry=REGISTRY)
# Leases (leader election, the per-PR lock, per-repository slots) are renewed every few seconds while
# held: their requests follow time, not events, and are counted apart too.
LEASE_CALLS = Counter("preview_bot_kubernetes_lease_requests_total",
                      "Kubernetes API requests for Leases (leader election, PR locks, slots)", registry=REGISTRY)
KUBE_LATENCY = Histogram("preview_bot_kubernetes_request_seconds", "Kubernetes API request latency",
                         registry=REGISTRY)
MESH_CONFLICTS = Counter("preview_bot_mesh_update_conflicts_total",
                         "409 conflicts retried while updating shared mesh VirtualServices", registry=REGISTRY)
# Background jobs (an event's handling, a reconciler's resumed PR) by outcome: `ok`, or `failed` when the
# job raised what no handler turned into a PR comment or a retry (logged once, with its traceback).
JOBS = Counter("preview_bot_jobs_total", "Background jobs run by the work queue, by outcome", ["outcome"],
               registry=REGISTRY)
QUEUE_DEPTH = Gauge("preview_bot_queue_depth", "Events waiting or running in the work queue", registry=REGISTRY)
PREVIEW_OUTCOMES = Counter("preview_bot_previews_total", "Preview deploys and teardowns by result",
                           ["action", "outcome"], registry=REGISTRY)
