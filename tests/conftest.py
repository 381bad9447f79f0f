"""Shared pytest set-up: the control-plane and fake-GitHub plugins."""

pytest_plugins = ["tests.plugins.cluster", "tests.plugins.github", "tests.plugins.kubeproxy", "tests.plugins.mesh"]
