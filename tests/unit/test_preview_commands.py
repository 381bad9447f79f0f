"""bot.handlers.preview_commands: what a person without write access can make the bot write, and which
commit a writer's `/preview` deploys (forks: only the commit the comment names in full)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from gidgethub import sansio

from bot import commands
from bot.context import answered_cache
from bot.gate import WaitRegistry
from bot.handlers import preview_commands
from tests.unit.fakes import APP_ID, FakeRepo

HEAD = "1" * 40
NEW_HEAD = "2" * 40
_ids = itertools.count(1)


class FakePreviewer:
    def __init__(self) -> None:
        self.deployed: list[tuple[int, str]] = []
        self.stopped: list[int] = []

    async def deploy(self, gh: Any, number: int, head_sha: str | None = None, **_: Any) -> None:
        assert head_sha is not None, "a command always deploys the commit it approved"
        self.deployed.append((number, head_sha))

    async def stop(self, gh: Any, number: int, reason: str, *, head_sha: str | None = None) -> int:
        self.stopped.append(number)
        return 0


def context() -> SimpleNamespace:
    """A fresh process: its own caches (bot.context.Context), nothing else in common with the last one."""
    return SimpleNamespace(answered=answered_cache(), previewer=FakePreviewer(), waits=WaitRegistry(),
                           superseded=lambda _repo_id, _number: False, settings=SimpleNamespace(app_id=APP_ID))


@pytest.fixture
def repo(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeRepo]:
    fake = FakeRepo()
    fake.collaborators = {"alice": "write", "tina": "triage"}
    fake.add_pull(7, HEAD)
    monkeypatch.setattr(preview_commands, "repo_client", lambda _event, _gh: fake)
    yield fake


def comment_event(body: str, user: str, number: int = 7) -> sansio.Event:
    comment = {"id": next(_ids), "body": body, "user": {"login": user, "type": "User"},
               "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
    return sansio.Event({"action": "created", "issue": {"number": number, "pull_request": {}}, "comment": comment,
                         "repository": {"id": 101, "full_name": "acme/shop"}},
                        event="issue_comment", delivery_id=str(comment["id"]))


async def say(ctx: SimpleNamespace, body: str, user: str, number: int = 7) -> None:
    await preview_commands.on_comment(comment_event(body, user, number), None, ctx)  # type: ignore[arg-type]


def replies(repo: FakeRepo, number: int = 7) -> list[str]:
    return [c["body"] for c in repo.comment_list if c["number"] == number]


# -- people without write access ------------------------------------------------------------------


async def test_a_flood_of_commands_from_strangers_costs_one_write_per_pull_request(repo: FakeRepo) -> None:
    ctx = context()
    bodies = ["/preview help"] * 50 + [f"/preview xyz{i}" for i in range(50)] + ["/preview stop", "/preview"] * 25
    for i, body in enumerate(bodies):
        await say(ctx, body, user=("mallory", "tina")[i % 2])  # triage is not write
    assert repo.writes == ["create_comment"], "one answer, no reaction"
    assert repo.reactions == []
    assert ctx.previewer.deployed == [] and ctx.previewer.stopped == []
    [answer] = replies(repo)
    assert answer.startswith(commands.ANSWER_MARKER) and commands.HELP_TEXT in answer
    assert commands.STRANGER_NOTE in answer
    # Reads: the permission of each commenter, and one listing of the PR's comments.
    assert repo.reads.count("comments") == 1 and repo.reads.count("permission") == len(bodies)

    # Another PR gets its own answer.
    repo.add_pull(8, HEAD)
    await say(ctx, "/preview stop", "mallory", number=8)
    assert repo.writes == ["create_comment"] * 2
    assert "@mallory `/preview stop` needs write access" in replies(repo, 8)[0]


async def test_the_answer_is_found_again_by_a_restarted_process_or_another_replica(repo: FakeRepo) -> None:
    await say(context(), "/preview frobnicate", "mallory")
    [answer] = replies(repo)
    assert "Unknown command `/preview frobnicate`" in answer
    for _ in range(3):  # each a new process: no cache, only what GitHub keeps
        await say(context(), "/preview help", "mallory")
    assert repo.writes == ["create_comment"]


async def test_the_next_answer_comes_a_period_later(repo: FakeRepo) -> None:
    await say(context(), "/preview help", "mallory")
    [answer] = repo.comment_list
    old = (datetime.now(UTC) - timedelta(hours=25)).strftime("%Y-%m-%dT%H:%M:%SZ")
    answer["created_at"] = answer["updated_at"] = old
    await say(context(), "/preview help", "mallory")
    assert repo.writes == ["create_comment"] * 2


async def test_only_the_bots_own_marker_counts(repo: FakeRepo) -> None:
    """A person pasting the marker into a comment does not silence the bot."""
    repo.comment_list.append({"id": 1, "number": 7, "body": commands.ANSWER_MARKER, "user": {"type": "User"},
                              "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                              "updated_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")})
    await say(context(), "/preview help", "mallory")
    assert repo.writes == ["create_comment"]


async def test_writers_keep_a_reaction_and_a_reply_each_time(repo: FakeRepo) -> None:
    ctx = context()
    for body in ("/preview help", "/preview help", "/preview frob"):
        await say(ctx, body, "alice")
    assert [content for _, content in repo.reactions] == ["eyes", "eyes", "confused"]
    assert len(replies(repo)) == 3 and not any(commands.ANSWER_MARKER in r for r in replies(repo))
    await say(ctx, "/preview stop", "alice")
    assert ctx.previewer.stopped == [7]


async def test_keep_says_so_when_there_is_no_live_preview_to_keep(repo: FakeRepo) -> None:
    class Kube:
        live = 0

        async def set_keep(self, _key: Any, _keep: bool) -> int:
            return self.live

    class Previewer(FakePreviewer):
        async def key_for(self, gh: Any, number: int) -> tuple[str, list[Any]]:
            return "preview-7-abcdef", []

    ctx = context()
    ctx.previewer, ctx.kube = Previewer(), Kube()
    await say(ctx, "/preview keep", "alice")
    assert [content for _, content in repo.reactions] == ["confused"]
    assert "no live preview to keep" in replies(repo)[-1]
    ctx.kube.live = 1
    await say(ctx, "/preview keep", "alice")
    assert [content for _, content in repo.reactions] == ["confused", "+1"] and len(replies(repo)) == 1


# -- which commit a writer's `/preview` deploys ---------------------------------------------------


async def test_a_pull_request_of_the_repository_deploys_its_head(repo: FakeRepo) -> None:
    ctx = context()
    await say(ctx, "/preview", "alice")
    await say(ctx, f"/preview {HEAD[:7]}", "alice")
    assert ctx.previewer.deployed == [(7, HEAD), (7, HEAD)]
    await say(ctx, "/preview abcdef1", "alice")  # not the head: nothing
    assert ctx.previewer.deployed == [(7, HEAD), (7, HEAD)]
    assert "`abcdef1` is not the head" in replies(repo)[-1] and f"`/preview {HEAD}`" in replies(repo)[-1]


async def test_a_forks_bare_preview_deploys_nothing_and_names_the_head(repo: FakeRepo) -> None:
    repo.add_pull(9, HEAD, fork=True)
    ctx = context()
    await say(ctx, "/preview", "alice", number=9)
    await say(ctx, f"/preview {HEAD[:12]}", "alice", number=9)  # a prefix can be ground out by the fork's author
    assert ctx.previewer.deployed == []
    assert [content for _, content in repo.reactions] == ["confused", "confused"]
    for reply in replies(repo, 9):
        assert "comes from a fork" in reply and f"comment `/preview {HEAD}`" in reply

    await say(ctx, f"/preview {HEAD}", "alice", number=9)
    assert ctx.previewer.deployed == [(9, HEAD)]
    assert repo.reactions[-1][1] == "+1"


async def test_a_push_between_the_comment_and_the_job_is_not_deployed(repo: FakeRepo) -> None:
    """The race: the maintainer reviewed and named HEAD; the fork's author pushes before the job runs."""
    repo.add_pull(9, HEAD, fork=True)
    ctx = context()
    event = comment_event(f"/preview {HEAD}", "alice", number=9)
    repo.pulls[9]["head"] = {**repo.pulls[9]["head"], "sha": NEW_HEAD}  # pushed while the job waited
    await preview_commands.on_comment(event, None, ctx)  # type: ignore[arg-type]
    assert ctx.previewer.deployed == []
    [reply] = replies(repo, 9)
    assert f"`{HEAD}` is not the head" in reply and f"`/preview {NEW_HEAD}`" in reply


async def test_a_closed_pull_request_is_not_deployed(repo: FakeRepo) -> None:
    repo.add_pull(10, HEAD, state="closed")
    ctx = context()
    await say(ctx, "/preview", "alice", number=10)
    assert ctx.previewer.deployed == [] and "closed" in replies(repo, 10)[0]


@pytest.mark.parametrize(("pull", "named", "deployed"), [
    ({"head": {"sha": HEAD, "repo": {"id": 1}}, "base": {"repo": {"id": 1}}}, None, HEAD),
    ({"head": {"sha": HEAD, "repo": {"id": 1}}, "base": {"repo": {"id": 1}}}, HEAD[:7], HEAD),
    ({"head": {"sha": HEAD, "repo": {"id": 1}}, "base": {"repo": {"id": 1}}}, NEW_HEAD[:7], None),
    ({"head": {"sha": HEAD, "repo": {"id": 2}}, "base": {"repo": {"id": 1}}}, None, None),
    ({"head": {"sha": HEAD, "repo": {"id": 2}}, "base": {"repo": {"id": 1}}}, HEAD[:39], None),
    ({"head": {"sha": HEAD, "repo": {"id": 2}}, "base": {"repo": {"id": 1}}}, HEAD, HEAD),
    ({"head": {"sha": HEAD, "repo": {"id": 2}}, "base": {"repo": {"id": 1}}}, NEW_HEAD, None),
    ({"head": {"sha": HEAD, "repo": None}, "base": {"repo": {"id": 1}}}, None, None),  # a deleted fork
    ({"head": {"sha": HEAD, "repo": None}, "base": {"repo": {"id": 1}}}, HEAD, HEAD),
])
def test_approve(pull: dict[str, Any], named: str | None, deployed: str | None) -> None:
    approval = commands.approve(pull, named)
    assert approval.sha == deployed and approval.head == HEAD
    assert (approval.reason == "") == (deployed is not None)


async def test_link_and_unlink_react_after_saying_whether_anything_was_done(
        repo: FakeRepo, monkeypatch: pytest.MonkeyPatch) -> None:
    """`confused` when nothing was done (a usage reply, nothing to unlink), `+1` when it was: the reaction
    comes after the work, as it depends on it."""
    from bot import links

    ended: list[str] = []

    async def unlink(_kube: Any, _refresh: Any, _key: Any) -> list[str]:
        return ended

    class Previewer(FakePreviewer):
        link_refresh = None

        async def key_for(self, gh: Any, number: int) -> tuple[str, list[Any]]:
            return "preview-7-abcdef", []

    monkeypatch.setattr(links, "unlink", unlink)
    ctx = context()
    ctx.previewer, ctx.kube = Previewer(), object()
    await say(ctx, "/preview link", "alice")
    await say(ctx, "/preview unlink", "alice")
    ended.append("acme/api#3")
    await say(ctx, "/preview unlink", "alice")
    assert [content for _, content in repo.reactions] == ["confused", "confused", "+1"]
    assert [r.split(" ")[0] for r in replies(repo)] == ["Usage:", "This", "🔗"]


async def test_link_and_unlink_say_when_a_link_record_cannot_be_read(repo: FakeRepo,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A preview involved lives in an earlier PREVIEW_NAMESPACE the bot may not list: the reply says so
    (namespace, setting, what to read), instead of a crash with no reply or "no links"."""
    from bot import links
    from bot.errors import ObjectsElsewhere

    async def unreadable(*_args: Any, **_kw: Any) -> Any:
        raise ObjectsElsewhere("old", "new", 403)

    class Previewer(FakePreviewer):
        link_refresh = None

        async def key_for(self, gh: Any, number: int) -> tuple[str, list[Any]]:
            return "preview-7-abcdef", []

    monkeypatch.setattr(links, "unlink", unreadable)
    monkeypatch.setattr(links, "link", unreadable)
    ctx = context()
    ctx.previewer, ctx.kube, ctx.reporter, ctx.auth = Previewer(), object(), object(), object()
    await say(ctx, "/preview link acme/api#3", "alice")
    await say(ctx, "/preview unlink", "alice")
    assert [content for _, content in repo.reactions] == ["confused", "confused"]
    linked, unlinked = replies(repo)
    assert linked.startswith("Not linked: the link records cannot all be read: a preview involved: its objects are "
                             "in namespace old (PREVIEW_NAMESPACE is new), where preview-bot may not list them (403)")
    assert unlinked.startswith("Not unlinked: the link records cannot all be read: a preview involved: its objects")
