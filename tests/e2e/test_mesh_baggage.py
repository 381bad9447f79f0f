"""PREVIEW_MATCH=baggage on a real Istio data plane: the bot's `baggage` regex routes each line of the
shared table of W3C baggage inputs (propagation/tests/baggage_cases.json) to the preview whose key the
propagation helper reads from it (tests/test_contracts.py and propagation/tests check the two off the mesh)."""

from __future__ import annotations

import pytest

from tests.baggage_cases import cases
from tests.e2e.harness import REPO, key_of, running_bot
from tests.e2e.test_mesh_routing import open_pr, preview_of
from tests.fakegithub import FakeGitHub
from tests.plugins.cluster import Cluster
from tests.plugins.mesh import Mesh

pytestmark = [pytest.mark.cluster, pytest.mark.mesh]


async def test_envoy_routes_every_table_line_to_the_key_the_helper_reads(shop: FakeGitHub, cluster: Cluster,
                                                                         namespace: str, mesh: Mesh) -> None:
    real = mesh.real_service(namespace, "a").host
    # PR 5's route comes first in the shared VirtualService (routes are sorted by key): a regex that took
    # any `preview` member, not the last, would send `preview=<6's>,preview=<5's>`... to PR 5 both ways.
    key, other = key_of(shop, REPO, 6).value, key_of(shop, REPO, 5).value
    assert other < key
    builds = {key: preview_of(shop, 6, "a", namespace), other: preview_of(shop, 5, "a", namespace)}
    async with running_bot(shop, cluster, namespace, PREVIEW_MATCH="baggage", **mesh.bot_env) as bot:
        await open_pr(bot, 5)
        await open_pr(bot, 6)
        await bot.settle()
        await mesh.wait_for(mesh.client, real, builds[key], {"baggage": f"preview={key}"})
        await mesh.wait_for(mesh.client, real, builds[other], {"baggage": f"preview={other}"})
        wrong = []
        for header, expected, why in cases(key, other):
            answer = await mesh.request(mesh.client, real, {"baggage": header})
            wanted = builds.get(expected or "", real)
            if answer.workload != wanted:
                wrong.append(f"{header!r} ({why}): {answer.workload}, expected {wanted}")
        assert not wrong, "\n".join(wrong)
