"""preview-bot: per-pull-request previews inside one shared Kubernetes + Istio cluster."""

__version__ = "0.1.0"
