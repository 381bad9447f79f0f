"""The GitHub side against the fake GitHub: App auth, token cache, retries, rate limits, pacing,
sticky comment and deployments."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from bot import comment
from bot.github.api import Pacer
from bot.github.auth import AppAuth
from bot.github.client import RepoClient
from bot.github.errors import GitHubUnavailable, InvalidAnswer, NotFound, Unauthorized
from bot.reporting import Reporter, StickyComments
from tests.fakegithub import FakeGitHub

REPO = "acme/shop"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def make_auth(fake: FakeGitHub, session: aiohttp.ClientSession, *, per_minute: int = 1000,
              window: float = 60.0, timeout: float = 20.0) -> AppAuth:
    return AppAuth(app_id=fake.app_id, private_key=fake.private_key_pem, api_url=fake.url, session=session,
                   pacer=Pacer(per_minute, window), timeout=timeout)


async def repo_client(fake: FakeGitHub, auth: AppAuth) -> RepoClient:
    installation = fake.repos[REPO].installation_id
    assert installation is not None
    return RepoClient(await auth.installation_api(installation), REPO, fake.repos[REPO].id)


def statuses_of(fake: FakeGitHub, operation: str) -> list[int]:
    return [c.status for c in fake.calls if c.operation_id == operation]


async def test_installation_token_is_cached_until_near_expiry(fake_github: FakeGitHub,
                                                              session: aiohttp.ClientSession) -> None:
    fake_github.add_repo(REPO)
    fake_github.token_lifetime = 2.0  # refreshed after half its life when it is that short
    auth = make_auth(fake_github, session)
    installation = fake_github.repos[REPO].installation_id
    assert installation is not None
    first, second = await asyncio.gather(auth.installation_token(installation),
                                         auth.installation_token(installation))
    assert first == second
    assert statuses_of(fake_github, "apps/create-installation-access-token") == [201]
    await asyncio.sleep(1.3)
    third = await auth.installation_token(installation)
    assert third != first
    assert statuses_of(fake_github, "apps/create-installation-access-token") == [201, 201]


async def test_a_foreign_key_is_refused(fake_github: FakeGitHub, session: aiohttp.ClientSession) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    fake_github.add_repo(REPO)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    auth = AppAuth(app_id=fake_github.app_id, private_key=other, api_url=fake_github.url, session=session,
                   pacer=Pacer(100))
    with pytest.raises(Unauthorized) as refused:
        await auth.installation_token(fake_github.repos[REPO].installation_id or 0)
    assert refused.value.status == 401


async def test_server_errors_are_retried(fake_github: FakeGitHub, session: aiohttp.ClientSession) -> None:
    fake_github.add_repo(REPO)
    fake_github.add_pull(REPO, 1)
    client = await repo_client(fake_github, make_auth(fake_github, session))
    fake_github.inject("POST", r"/issues/1/comments$", status=502, times=2)
    await StickyComments().upsert(client, 1, comment.MARKER + "\nhello")
    assert statuses_of(fake_github, "issues/create-comment") == [502, 502, 201]
    assert len(fake_github.comments(REPO, 1)) == 1


async def test_secondary_rate_limit_waits_for_retry_after(fake_github: FakeGitHub,
                                                          session: aiohttp.ClientSession) -> None:
    fake_github.add_repo(REPO)
    client = await repo_client(fake_github, make_auth(fake_github, session))
    fake_github.inject_secondary_limit("POST", r"/deployments$", times=1, retry_after=1)
    started = time.monotonic()
    deployment_id = await client.create_deployment(ref="main", environment="preview-1", description="d",
                                                   payload={})
    waited = time.monotonic() - started
    assert deployment_id > 0
    assert statuses_of(fake_github, "repos/create-deployment") == [403, 201]
    assert waited >= 1.0  # Retry-After was honoured, not hammered


async def test_timeouts_are_retried(fake_github: FakeGitHub, session: aiohttp.ClientSession) -> None:
    fake_github.add_repo(REPO)
    client = await repo_client(fake_github, make_auth(fake_github, session, timeout=0.5))
    fake_github.inject("GET", r"^/repos/acme/shop$", status=None, delay=2.0, times=1)
    assert await client.default_branch() == "main"
    seen = [r for r in fake_github.requests if r.method == "GET" and r.path == "/repos/acme/shop"]
    assert len(seen) == 2  # the one that timed out, then the retry


async def test_client_errors_are_not_retried(fake_github: FakeGitHub, session: aiohttp.ClientSession) -> None:
    fake_github.add_repo(REPO)
    client = await repo_client(fake_github, make_auth(fake_github, session))
    with pytest.raises(NotFound):
        await client.deployment_status(424242, "success")
    assert statuses_of(fake_github, "repos/create-deployment-status") == [404]


async def test_content_requests_are_paced(fake_github: FakeGitHub, session: aiohttp.ClientSession) -> None:
    """Scaled down in time: 5 per 1 s window stands for GitHub's ~80 per minute."""
    fake_github.add_repo(REPO)
    fake_github.add_pull(REPO, 1)
    client = await repo_client(fake_github, make_auth(fake_github, session, per_minute=5, window=1.0))
    await asyncio.gather(*(client.reply(1, f"note {i}") for i in range(15)))
    assert len(fake_github.comments(REPO, 1)) == 15
    assert fake_github.max_content_requests_in_window(seconds=1.0) <= 5


async def test_sticky_comment_is_edited_in_place_and_unchanged_text_costs_nothing(
        fake_github: FakeGitHub, session: aiohttp.ClientSession) -> None:
    fake_github.add_repo(REPO)
    fake_github.add_pull(REPO, 3)
    fake_github.add_comment(REPO, 3, "a person's comment " + "x", user="alice")
    client = await repo_client(fake_github, make_auth(fake_github, session))
    sticky = StickyComments()
    first, _ = await sticky.upsert(client, 3, comment.MARKER + "\none")
    sticky = StickyComments()  # as after a restart: found again by its marker
    second, _ = await sticky.upsert(client, 3, comment.MARKER + "\ntwo")
    calls = len(fake_github.calls)
    third, _ = await sticky.upsert(client, 3, comment.MARKER + "\ntwo")
    assert first == second == third
    assert len(fake_github.calls) == calls
    bodies = [c["body"] for c in fake_github.comments(REPO, 3)]
    assert bodies == ["a person's comment x", comment.MARKER + "\ntwo"]


async def test_comments_since_lists_only_the_recent_ones(fake_github: FakeGitHub,
                                                          session: aiohttp.ClientSession) -> None:
    fake_github.add_repo(REPO)
    fake_github.add_pull(REPO, 5)
    old = fake_github.add_comment(REPO, 5, "old", user="alice")
    fake_github.add_comment(REPO, 5, "new", user="alice")
    fake_github.repos[REPO].comments[old["id"]].created_at -= 7200
    fake_github.repos[REPO].comments[old["id"]].updated_at -= 7200
    client = await repo_client(fake_github, make_auth(fake_github, session))
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 3600))
    assert [c["body"] async for c in client.comments(5, since=since)] == ["new"]
    assert [c["body"] async for c in client.comments(5)] == ["old", "new"]


async def test_concurrent_first_comments_end_as_one(fake_github: FakeGitHub,
                                                    session: aiohttp.ClientSession) -> None:
    """Two replicas both find no comment and both create one: the newer one is removed."""
    fake_github.add_repo(REPO)
    fake_github.add_pull(REPO, 4)
    auth = make_auth(fake_github, session)
    clients = [await repo_client(fake_github, auth) for _ in range(2)]
    # One StickyComments each: two replicas share no cache.
    await asyncio.gather(*(StickyComments().upsert(c, 4, comment.MARKER + f"\nfrom {i}")
                           for i, c in enumerate(clients)))
    stickies = [c for c in fake_github.comments(REPO, 4) if comment.MARKER in c["body"]]
    assert len(stickies) == 1


async def test_deactivate_marks_only_active_deployments(fake_github: FakeGitHub,
                                                        session: aiohttp.ClientSession) -> None:
    fake_github.add_repo(REPO)
    client = await repo_client(fake_github, make_auth(fake_github, session))
    old = await client.create_deployment(ref="main", environment="preview-9", description="", payload={})
    await client.deployment_status(old, "success", environment_url="https://x.example.com")
    new = await client.create_deployment(ref="main", environment="preview-9", description="", payload={})
    await client.deployment_status(new, "in_progress")
    assert await Reporter.deactivate(client, "preview-9", keep=[new]) == 1
    assert [s["state"] for s in fake_github.statuses(REPO, old)] == ["success", "inactive"]
    assert [s["state"] for s in fake_github.statuses(REPO, new)] == ["in_progress"]
    assert await Reporter.deactivate(client, "preview-9") == 1
    assert await Reporter.deactivate(client, "preview-9") == 0


async def test_deactivate_older_than_leaves_newer_deployments_alone(fake_github: FakeGitHub,
                                                                    session: aiohttp.ClientSession) -> None:
    fake_github.add_repo(REPO)
    client = await repo_client(fake_github, make_auth(fake_github, session))
    ids = [await client.create_deployment(ref="main", environment="preview-8", description="", payload={})
           for _ in range(3)]
    for deployment_id in ids:
        await client.deployment_status(deployment_id, "success")
    assert await Reporter.deactivate(client, "preview-8", older_than=ids[1]) == 1
    assert [fake_github.statuses(REPO, i)[-1]["state"] for i in ids] == ["inactive", "success", "success"]


async def test_retire_marks_inactive_then_deletes_every_deployment(fake_github: FakeGitHub,
                                                                   session: aiohttp.ClientSession) -> None:
    fake_github.add_repo(REPO)
    client = await repo_client(fake_github, make_auth(fake_github, session))
    other = await client.create_deployment(ref="main", environment="preview-1", description="", payload={})
    ids = [await client.create_deployment(ref="main", environment="preview-2", description="", payload={})
           for _ in range(3)]
    await client.deployment_status(ids[0], "inactive")
    await client.deployment_status(ids[1], "failure")
    await client.deployment_status(ids[2], "success")
    assert await Reporter.retire_environment(client, "preview-2") == 3
    assert [d["id"] for d in fake_github.deployments(REPO)] == [other]  # another PR's deployment stays
    gone = {d["id"]: d for d in fake_github.deployments(REPO, deleted=True) if d.get("deleted")}
    assert sorted(gone) == ids and all(d["state"] == "inactive" for d in gone.values())
    # Only one status more than needed: the already inactive one was deleted as it was.
    assert [s["state"] for s in fake_github.statuses(REPO, ids[0])] == ["inactive"]
    assert await Reporter.retire_environment(client, "preview-2") == 0
    assert not fake_github.response_errors


async def test_deleting_an_environment_needs_administration_write(fake_github: FakeGitHub,
                                                                  session: aiohttp.ClientSession) -> None:
    fake_github.add_repo(REPO)
    client = await repo_client(fake_github, make_auth(fake_github, session))
    await client.create_deployment(ref="main", environment="preview-3", description="", payload={})
    assert await client.delete_environment("preview-3") is False  # the default permissions: refused, logged
    assert statuses_of(fake_github, "repos/delete-an-environment") == [403]
    assert fake_github.environments(REPO) == {"preview-3"}
    installation = fake_github.repos[REPO].installation_id
    assert installation is not None
    fake_github.installations[installation].permissions["administration"] = "write"
    client = await repo_client(fake_github, make_auth(fake_github, session))  # a token with the new grant
    assert await client.delete_environment("preview-3") is True
    assert fake_github.environments(REPO) == set()
    assert not fake_github.response_errors


async def test_changed_files_knows_when_github_stops_listing(fake_github: FakeGitHub,
                                                              session: aiohttp.ClientSession) -> None:
    """GitHub lists at most 3000 files of a PR, however far it is paginated; `changed_files` is the truth."""
    fake_github.add_repo(REPO)
    files: dict[str, str | None] = {f"docs/{i:04}.md": "x\n" for i in range(3000)}
    files["services/b/main.go"] = "package main\n"
    fake_github.add_pull(REPO, 5, files=files)
    fake_github.add_pull(REPO, 6, files={"services/a/x.go": "package a\n"})
    client = await repo_client(fake_github, make_auth(fake_github, session))
    pull = await client.pull(5)
    assert pull["changed_files"] == 3001
    listed = await client.changed_files(5)  # no count at hand: a listing that reaches the cap is cut short
    assert len(listed.names) == 3000 and "services/b/main.go" not in listed.names and not listed.complete
    before = len(fake_github.calls)
    assert not (await client.changed_files(5, pull)).complete
    assert len(fake_github.calls) == before  # above the cap the listing is not even fetched
    small = await client.changed_files(6, await client.pull(6))
    assert small.names == ("services/a/x.go",) and small.complete
    assert not fake_github.response_errors


async def test_the_hourly_window_is_paced_too(fake_github: FakeGitHub, session: aiohttp.ClientSession) -> None:
    """Two windows at once: 50 per minute but only 4 per hour means the 5th request waits."""
    fake_github.add_repo(REPO)
    fake_github.add_pull(REPO, 1)
    pacer = Pacer(50, per_hour=4)
    auth = AppAuth(app_id=fake_github.app_id, private_key=fake_github.private_key_pem, api_url=fake_github.url,
                   session=session, pacer=pacer)
    client = await repo_client(fake_github, auth)
    for i in range(4):
        await client.reply(1, f"note {i}")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(client.reply(1, "one too many"), 0.5)
    assert len(fake_github.comments(REPO, 1)) == 4


SIGN_IN_PAGE = b"<!DOCTYPE html>\n<html><head><title>Sign in to continue</title></head><body></body></html>\n"
UNICORN_PAGE = b"<html><head><title>Unicorn! &middot; GitHub</title></head></html>\n"


async def test_a_success_answer_that_is_not_json_is_named_not_retried(fake_github: FakeGitHub,
                                                                      session: aiohttp.ClientSession) -> None:
    """A proxy in front of GitHub (a sign-in page with 200) where the REST API always answers JSON."""
    fake_github.add_repo(REPO)
    fake_github.add_pull(REPO, 3)
    client = await repo_client(fake_github, make_auth(fake_github, session))
    fake_github.inject("GET", r"/pulls/3$", status=200, body=SIGN_IN_PAGE,
                       headers={"Content-Type": "text/html; charset=utf-8"})
    with pytest.raises(InvalidAnswer) as caught:
        await client.pull(3)
    assert caught.value.status == 200
    assert str(caught.value) == ("GitHub's answer is text/html, not JSON (a proxy between the bot and GitHub?): "
                                 "'<!DOCTYPE html>'")
    assert statuses_of(fake_github, "pulls/get") == [200]


async def test_a_body_that_says_json_and_is_not_is_named(fake_github: FakeGitHub,
                                                         session: aiohttp.ClientSession) -> None:
    fake_github.add_repo(REPO)
    fake_github.add_pull(REPO, 4)
    client = await repo_client(fake_github, make_auth(fake_github, session))
    fake_github.inject("GET", r"/pulls/4$", status=200, body=b'{"number": 4, "head": {"sha"',
                       headers={"Content-Type": "application/json; charset=utf-8"})
    with pytest.raises(InvalidAnswer) as caught:
        await client.pull(4)
    assert caught.value.status == 200 and "not valid JSON" in str(caught.value)


async def test_githubs_html_outage_page_is_retried_as_a_5xx(fake_github: FakeGitHub,
                                                            session: aiohttp.ClientSession) -> None:
    fake_github.add_repo(REPO)
    fake_github.add_pull(REPO, 5)
    client = await repo_client(fake_github, make_auth(fake_github, session))
    fake_github.inject("GET", r"/pulls/5$", status=503, body=UNICORN_PAGE, times=2,
                       headers={"Content-Type": "text/html"})
    pull = await client.pull(5)
    assert pull["number"] == 5
    assert statuses_of(fake_github, "pulls/get") == [503, 503, 200]
    fake_github.inject("GET", r"/pulls/5$", status=503, body=UNICORN_PAGE, times=10,
                       headers={"Content-Type": "text/html"})
    with pytest.raises(GitHubUnavailable) as caught:
        await client.pull(5)
    assert caught.value.status == 503
