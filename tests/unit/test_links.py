"""bot.links (pure parts) and the sticky comment's links section."""

from __future__ import annotations

import pytest

from bot import comment, explain, links, mesh_routes
from bot.comment import Report, State
from bot.naming import PreviewKey
from bot.reporting import Reporter
from bot.settings import ClusterSettings
from tests.unit.fakes import FakeCluster, FakeRepo
from tests.unit.test_explain import GATEWAY

OWNER, LINKED = PreviewKey("acme/web", 12, 1296271), PreviewKey("acme/api", 7, 1296272)
HOST = "api.shop.svc.cluster.local"


@pytest.mark.parametrize(("text", "expected"), [
    ("acme/api#7", ("acme/api", 7)),
    (" acme/api.v2#123 ", ("acme/api.v2", 123)),
    ("acme/api", None), ("acme/api#0", None), ("acme/api#x", None), ("#7", None), ("a/b#7`", None),
    ("https://github.com/acme/api/pull/7", None), ("acme/api#1234567890", None),
])
def test_parse_target(text: str, expected: tuple[str, int] | None) -> None:
    assert links.parse_target(text) == expected


@pytest.mark.parametrize("mode", ["header", "baggage", "both"])
def test_linked_route_matches_both_keys_and_unlinking_restores_it(mode: str) -> None:
    settings = ClusterSettings(domain="example.com", match_mode=mode)  # type: ignore[arg-type]
    route = mesh_routes.preview_route(LINKED.value, destination=f"{LINKED.value}-api.shop.svc.cluster.local",
                                      port=8080, header_name="x-preview", mode=mode)  # type: ignore[arg-type]
    joined = links.with_linked_key(route, OWNER.value, settings)
    assert links.with_linked_key(joined, OWNER.value, settings) == joined  # idempotent
    assert joined["name"] == LINKED.value and len(joined["match"]) == 2 * len(route["match"])
    assert links.without_linked_key(joined, OWNER.value, settings) == route
    spec = mesh_routes.with_route(mesh_routes.new_spec(HOST), HOST, joined)
    routing = explain.Routing(GATEWAY, [{"metadata": {"name": "m", "namespace": "istio-system"}, "spec": spec}])
    for key in (OWNER, LINKED):
        headers = {"x-preview": key.value} if mode != "baggage" else {"baggage": f"preview={key.value}"}
        request = explain.Request(host=f"{HOST}:8080", headers=headers, source_namespace="shop")
        result = explain.explain(routing, request)
        assert result.reached() == f"{LINKED.value}-api.shop.svc.cluster.local"
    assert explain.explain(routing, explain.Request(host=HOST, source_namespace="shop")).reached() == HOST


@pytest.mark.parametrize(("mode", "carrier"), [
    ("header", "`x-pr: {key}`"),
    ("baggage", "the W3C baggage member `preview={key}` (`baggage: preview={key}`)"),
    ("both", "`x-pr: {key}` or the W3C baggage member `preview={key}` (`baggage: preview={key}`)"),
])
def test_link_lines_name_what_the_mesh_matches(mode: str, carrier: str) -> None:
    settings = ClusterSettings(domain="example.com", header_name="x-pr", match_mode=mode)  # type: ignore[arg-type]
    wanted = carrier.format(key=OWNER.value)
    assert f"requests with {wanted} (this preview's URLs set it)" in links.owner_lines([("acme/api", 7)], OWNER.value,
                                                                                       settings)[0]
    assert f"this build also answers {wanted}, so" in links.linked_lines("acme/web#12", OWNER.value, settings)[0]


def test_sticky_links_section_is_rendered_and_replaced_in_place() -> None:
    lines = links.owner_lines([("acme/api", 7)], OWNER.value, ClusterSettings(domain="example.com"))
    body = comment.render(Report(State.READY, links=lines))
    assert comment.LINKS_START in body and "🔗 Linked: acme/api#7 joins this preview" in body
    plain = comment.render(Report(State.READY))
    assert comment.LINKS_START not in plain
    added = comment.with_links(plain, lines)
    assert added == body
    removed = comment.with_links(body, [])
    assert [line for line in removed.splitlines() if line] == [line for line in plain.splitlines() if line]
    other = links.linked_lines("acme/web#12", OWNER.value, ClusterSettings(domain="example.com"))
    replaced = comment.with_links(body, other)
    assert "Linked to acme/web#12" in replaced and "joins this preview" not in replaced
    assert replaced.endswith("updated in place.</sub>") and replaced.count(comment.LINKS_START) == 1
    assert comment.with_links(plain, []) == plain


@pytest.mark.parametrize(("named", "pushed", "linked"), [
    (None, False, False),  # a fork's head must be named
    ("e" * 12, False, False),  # in full: a prefix can be ground out by the fork's author
    ("e" * 40, False, True),
    ("e" * 40, True, False),  # the race: pushed between the comment and the job
])
async def test_linking_a_fork_deploys_only_the_commit_the_comment_names(named: str | None, pushed: bool,
                                                                        linked: bool) -> None:
    kube = FakeCluster(ClusterSettings(domain="example.com"))
    web, api = FakeRepo("acme/web", OWNER.repo_id), FakeRepo("acme/api", LINKED.repo_id)
    api.collaborators = {"alice": "write"}
    api.add_pull(7, "e" * 40, fork=True)
    kube.add_preview(OWNER, "a" * 40, ["web"])
    if pushed:
        api.pulls[7]["head"] = {**api.pulls[7]["head"], "sha": "f" * 40}
    deployed: list[str] = []

    async def client_for(repo: str) -> FakeRepo | None:
        return api if repo == "acme/api" else web

    async def deploy(_client: object, _number: int, sha: str) -> str | None:
        deployed.append(sha)
        return None

    if linked:
        reply = await links.link(kube, Reporter(identity="test"), client_for, deploy,  # type: ignore[arg-type]
                                 web, 12, "alice", ("acme/api", 7), sha=named)  # type: ignore[arg-type]
        assert reply.startswith("🔗 Linked acme/api#7 (commit `eeeeeeeeeeee`)")
        assert deployed == ["e" * 40]
        return
    with pytest.raises(links.LinkRefused) as refused:
        await links.link(kube, Reporter(identity="test"), client_for, deploy,  # type: ignore[arg-type]
                         web, 12, "alice", ("acme/api", 7), sha=named)  # type: ignore[arg-type]
    head = "f" * 40 if pushed else "e" * 40
    assert str(refused.value).startswith("acme/api#7: Nothing was deployed: ")
    assert f"comment `/preview link acme/api#7 {head}`" in str(refused.value)
    assert deployed == []
