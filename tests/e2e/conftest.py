"""Fixtures shared by the end-to-end tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import CONFIG, REPO, ClusterView
from tests.e2e.procs import BotProcesses
from tests.fakegithub import FakeGitHub
from tests.plugins.cluster import Cluster


@pytest.fixture
def view(cluster: Cluster, namespace: str) -> Iterator[ClusterView]:
    v = ClusterView(cluster, namespace)
    yield v
    v.close()


@pytest.fixture
async def shop(fake_github: FakeGitHub) -> FakeGitHub:
    """`acme/shop` with one service `a`; alice may write, mallory may read, tina may triage."""
    fake_github.add_repo(REPO, files={".github/preview.yml": CONFIG},
                         collaborators={"alice": "write", "mallory": "read", "tina": "triage"})
    return fake_github


@pytest.fixture
async def procs(shop: FakeGitHub, cluster: Cluster, namespace: str,
                tmp_path: Path) -> AsyncIterator[BotProcesses]:
    async with BotProcesses(shop, cluster, namespace, tmp_path) as processes:
        yield processes
