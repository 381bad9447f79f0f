"""The fake GitHub is honest: GitHub's auth rules, validation, state, pagination, faults and payloads."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import aiohttp
import gidgethub
import gidgethub.aiohttp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.fakegithub import FakeGitHub, issue_comment_event, ping_event, pull_request_event, webhook_headers
from tests.fakegithub.payloads import sign
from tests.fakegithub.spec import webhook_examples

REPO = "acme/shop"
PREVIEW_YML = "services:\n  - name: web\n"


@pytest.fixture
def repo(fake_github: FakeGitHub) -> str:
    fake_github.add_repo(REPO, files={".github/preview.yml": PREVIEW_YML},
                         collaborators={"alice": "write", "bob": "read", "carol": "maintain"})
    fake_github.add_pull(REPO, 7, user="alice", labels=["preview"], files={"web/app.py": "print('hi')\n"})
    return REPO


async def call(http: aiohttp.ClientSession, fake: FakeGitHub, method: str, path: str, auth: str | None = None,
               **kw: Any) -> tuple[int, Any, aiohttp.typedefs.LooseHeaders]:
    headers = {**kw.pop("headers", {}), **({"Authorization": auth} if auth else {})}
    async with http.request(method, fake.url + path, headers=headers, **kw) as r:
        body = await r.json() if r.content_type == "application/json" else None
        return r.status, body, r.headers


async def app_token(http: aiohttp.ClientSession, fake: FakeGitHub, repo: str) -> str:
    inst = fake.repos[repo].installation_id
    status, body, _ = await call(http, fake, "POST", f"/app/installations/{inst}/access_tokens",
                                 f"Bearer {fake.make_jwt()}")
    assert status == 201, body
    return f"token {body['token']}"


# -- App authentication -----------------------------------------------------------------------------------
async def test_valid_jwt_mints_a_token_that_reads_the_repo(fake_github, repo, http) -> None:
    inst = fake_github.repos[repo].installation_id
    jwt_int_iss = fake_github.make_jwt(iss=fake_github.app_id)  # GitHub accepts iss as int or str
    status, body, headers = await call(http, fake_github, "POST", f"/app/installations/{inst}/access_tokens",
                                       f"Bearer {jwt_int_iss}")
    assert status == 201
    assert body["token"].startswith("ghs_") and body["expires_at"].endswith("Z")
    assert body["permissions"]["deployments"] == "write"
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    for h in ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset", "x-ratelimit-used",
              "x-ratelimit-resource", "x-github-request-id"):
        assert h in headers
    status, body, _ = await call(http, fake_github, "GET", f"/repos/{repo}", f"Bearer {body['token']}")
    assert status == 200 and body["default_branch"] == "main" and body["full_name"] == repo
    status, body, _ = await call(http, fake_github, "GET", f"/repos/{repo}/installation",
                                 f"Bearer {fake_github.make_jwt()}")
    assert status == 200 and body["id"] == inst
    status, body, _ = await call(http, fake_github, "GET", "/app", f"Bearer {fake_github.make_jwt()}")
    assert status == 200 and body["id"] == fake_github.app_id


async def test_bad_jwts_get_401(fake_github, repo, http) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    now = time.time()
    bad = {
        "another key": fake_github.make_jwt(key_pem=other),
        "expired": fake_github.make_jwt(iat=now - 700, exp=now - 100),
        "iat in the future": fake_github.make_jwt(iat=now + 300, exp=now + 500),
        "lives > 10 min": fake_github.make_jwt(iat=now - 30, exp=now + 600),
        "wrong app": fake_github.make_jwt(iss=fake_github.app_id + 1),
        "not a JWT": "ghs_notajwt",
    }
    inst = fake_github.repos[repo].installation_id
    for why, token in bad.items():
        status, body, _ = await call(http, fake_github, "POST", f"/app/installations/{inst}/access_tokens",
                                     f"Bearer {token}")
        assert status == 401, why
        assert body["documentation_url"] and body["message"], why
    # 60 s of clock drift is tolerated
    ok = fake_github.make_jwt(iat=now + 30, exp=now + 500)
    status, _, _ = await call(http, fake_github, "POST", f"/app/installations/{inst}/access_tokens", f"Bearer {ok}")
    assert status == 201


async def test_token_scope_and_expiry(fake_github, repo, http) -> None:
    fake_github.add_repo("other/thing")  # another owner: another installation
    token = await app_token(http, fake_github, "other/thing")
    status, body, _ = await call(http, fake_github, "GET", f"/repos/{repo}/pulls/7", token)
    assert (status, body["message"]) == (404, "Not Found")  # GitHub hides what the token cannot see
    mine = await app_token(http, fake_github, repo)
    assert (await call(http, fake_github, "GET", f"/repos/{repo}/pulls/7", mine))[0] == 200
    fake_github.expire_tokens()
    status, body, _ = await call(http, fake_github, "GET", f"/repos/{repo}/pulls/7", mine)
    assert (status, body["message"]) == (401, "Bad credentials")
    status, _, _ = await call(http, fake_github, "GET", f"/repos/{repo}/pulls/7", "token ghs_madeup")
    assert status == 401


async def test_missing_installation_permission_is_403(fake_github, http) -> None:
    fake_github.add_installation(77, "ro", permissions={"metadata": "read", "pull_requests": "read"})
    fake_github.add_repo("ro/repo", installation_id=77)
    fake_github.add_pull("ro/repo", 1)
    token = f"token {fake_github.installation_token(77)}"
    status, body, headers = await call(http, fake_github, "POST", "/repos/ro/repo/deployments", token,
                                       json={"ref": "main"})
    assert (status, body["message"]) == (403, "Resource not accessible by integration")
    assert headers["x-accepted-github-permissions"] == "deployments=write"


# -- routing and OpenAPI validation ----------------------------------------------------------------------
async def test_unknown_paths_are_404(fake_github, repo, http) -> None:
    token = await app_token(http, fake_github, repo)
    for method, path in [("GET", "/nope"), ("GET", f"/repos/{repo}/pulls/abc"), ("PUT", f"/repos/{repo}/pulls/7"),
                         ("GET", f"/repos/{repo}/branches"), ("GET", "/repos/acme/missing")]:
        status, body, _ = await call(http, fake_github, method, path, token)
        assert (status, body["message"]) == (404, "Not Found"), path
    # a real GitHub endpoint the fake does not implement is recorded, so a test can tell
    assert ("GET", "/repos/{owner}/{repo}/branches") in fake_github.unimplemented


async def test_requests_the_description_rejects_get_422(fake_github, repo, http) -> None:
    token = await app_token(http, fake_github, repo)
    sha = fake_github.repos[repo].pulls[7].head_sha
    _, dep, _ = await call(http, fake_github, "POST", f"/repos/{repo}/deployments", token,
                           json={"ref": sha, "required_contexts": [], "environment": "pr-7"})
    status, body, _ = await call(http, fake_github, "POST", f"/repos/{repo}/deployments/{dep['id']}/statuses",
                                 token, json={"state": "bogus"})
    assert status == 422 and body["message"].startswith("Invalid request.\n\n") and "state" in body["message"]
    assert body["documentation_url"].startswith("https://docs.github.com/rest/deployments")
    status, body, _ = await call(http, fake_github, "POST", f"/repos/{repo}/issues/7/comments", token, json={})
    assert status == 422 and '"body" wasn\'t supplied' in body["message"]
    status, body, _ = await call(http, fake_github, "POST", f"/repos/{repo}/deployments", token,
                                 json={"ref": sha, "transient_environment": "yes"})
    assert status == 422 and "transient_environment" in body["message"]
    status, body, _ = await call(http, fake_github, "GET", f"/repos/{repo}/pulls?state=bogus", token)
    assert status == 422 and "state" in body["message"]
    status, body, _ = await call(http, fake_github, "POST", f"/repos/{repo}/issues/7/comments", token,
                                 data=b"{not json", headers={"Content-Type": "application/json"})
    assert (status, body["message"]) == (400, "Problems parsing JSON")
    assert ("POST", "/repos/{owner}/{repo}/deployments/{deployment_id}/statuses",
            "repos/create-deployment-status", 422) in fake_github.calls


# -- state ------------------------------------------------------------------------------------------------
async def test_comment_state_edit_delete_and_reactions(fake_github, repo, http) -> None:
    token = await app_token(http, fake_github, repo)
    status, created, headers = await call(http, fake_github, "POST", f"/repos/{repo}/issues/7/comments", token,
                                          json={"body": "Deploying…"})
    assert status == 201 and headers["Location"] == created["url"]
    assert created["user"]["login"] == f"{fake_github.app_slug}[bot]"
    status, _edited, _ = await call(http, fake_github, "PATCH", f"/repos/{repo}/issues/comments/{created['id']}",
                                   token, json={"body": "Preview ready"})
    assert status == 200
    assert [(c["id"], c["body"]) for c in fake_github.comments(repo, 7)] == [(created["id"], "Preview ready")]
    for expected in (201, 200):  # the same reaction again is 200 and not duplicated
        status, _, _ = await call(http, fake_github, "POST",
                                  f"/repos/{repo}/issues/comments/{created['id']}/reactions", token,
                                  json={"content": "rocket"})
        assert status == expected
    assert [r["content"] for r in fake_github.reactions(repo, comment_id=created["id"])] == ["rocket"]
    status, _, _ = await call(http, fake_github, "POST", f"/repos/{repo}/issues/7/reactions", token,
                              json={"content": "eyes"})
    assert status == 201 and fake_github.reactions(repo, number=7)[0]["content"] == "eyes"
    status, _, _ = await call(http, fake_github, "DELETE", f"/repos/{repo}/issues/comments/{created['id']}", token)
    assert status == 204 and fake_github.comments(repo, 7) == []


async def test_pagination_follows_link_headers(fake_github, repo, http) -> None:
    for i in range(65):
        fake_github.add_comment(repo, 7, f"comment {i}", "bob")
    token = await app_token(http, fake_github, repo)
    url: str | None = f"{fake_github.url}/repos/{repo}/issues/7/comments"
    bodies, pages = [], 0
    while url:
        async with http.get(url, headers={"Authorization": token}) as r:
            bodies += [c["body"] for c in await r.json()]
            url = r.links.get("next", {}).get("url")  # type: ignore[assignment]
            pages += 1
            if pages == 1:
                assert 'rel="last"' in r.headers["Link"] and "page=3" in r.headers["Link"]
    assert pages == 3 and bodies == [f"comment {i}" for i in range(65)]
    _, page, headers = await call(http, fake_github, "GET", f"/repos/{repo}/issues/7/comments?per_page=100", token)
    assert len(page) == 65 and "Link" not in headers
    for n in range(8, 13):
        fake_github.add_pull(repo, n)
    _, pulls, headers = await call(http, fake_github, "GET", f"/repos/{repo}/pulls?state=open&per_page=2", token)
    assert [p["number"] for p in pulls] == [12, 11] and 'rel="next"' in headers["Link"]


async def test_contents_and_pull_files(fake_github, repo, http) -> None:
    token = await app_token(http, fake_github, repo)
    _, body, _ = await call(http, fake_github, "GET", f"/repos/{repo}/contents/.github/preview.yml", token)
    assert body["encoding"] == "base64" and base64.b64decode(body["content"]).decode() == PREVIEW_YML
    pull = fake_github.repos[repo].pulls[7]
    _, body, _ = await call(http, fake_github, "GET", f"/repos/{repo}/contents/web/app.py?ref={pull.head_sha}", token)
    assert base64.b64decode(body["content"]).decode() == "print('hi')\n"
    status, _, _ = await call(http, fake_github, "GET", f"/repos/{repo}/contents/web/app.py", token)
    assert status == 404  # not on the default branch
    status, body, _ = await call(http, fake_github, "GET", f"/repos/{repo}/contents/x?ref=nosuchref", token)
    assert status == 404
    _, files, _ = await call(http, fake_github, "GET", f"/repos/{repo}/pulls/7/files", token)
    assert [(f["filename"], f["status"]) for f in files] == [("web/app.py", "added")]
    fake_github.push(repo, 7, "f" * 40, files={"web/app.py": "print('v2')\n"})
    _, pr, _ = await call(http, fake_github, "GET", f"/repos/{repo}/pulls/7", token)
    assert pr["head"]["sha"] == "f" * 40 and [x["name"] for x in pr["labels"]] == ["preview"]


async def test_collaborator_permissions(fake_github, repo, http) -> None:
    token = await app_token(http, fake_github, repo)
    got = {}
    for user in ("alice", "bob", "carol", "acme"):
        _, body, _ = await call(http, fake_github, "GET", f"/repos/{repo}/collaborators/{user}/permission", token)
        got[user] = (body["permission"], body["role_name"])
    assert got == {"alice": ("write", "write"), "bob": ("read", "read"), "carol": ("write", "maintain"),
                   "acme": ("admin", "admin")}
    status, _, _ = await call(http, fake_github, "GET", f"/repos/{repo}/collaborators/ghost/permission", token)
    assert status == 404  # no such account


async def test_deployments_follow_githubs_rules(fake_github, repo, http) -> None:
    token = await app_token(http, fake_github, repo)
    sha = fake_github.repos[repo].pulls[7].head_sha

    async def deploy(env: str, transient: bool) -> int:
        status, body, _ = await call(http, fake_github, "POST", f"/repos/{repo}/deployments", token, json={
            "ref": sha, "environment": env, "transient_environment": transient, "required_contexts": [],
            "auto_merge": False, "payload": {"pr": 7}, "description": "preview"})
        assert status == 201 and body["production_environment"] is False and body["payload"] == {"pr": 7}
        status, _, _ = await call(http, fake_github, "POST", f"/repos/{repo}/deployments/{body['id']}/statuses",
                                  token, json={"state": "success", "environment_url": "http://pr-7.example"})
        assert status == 201
        return int(body["id"])

    first, second = await deploy("staging", False), await deploy("staging", False)
    t1, t2 = await deploy("pr-7", True), await deploy("pr-7", True)
    state = {d["id"]: d["state"] for d in fake_github.deployments(repo)}
    assert state == {first: "inactive", second: "success", t1: "success", t2: "success"}  # transient: untouched
    assert [s["state"] for s in fake_github.statuses(repo, first)] == ["success", "inactive"]
    _, listed, _ = await call(http, fake_github, "GET", f"/repos/{repo}/deployments?environment=pr-7", token)
    assert [d["id"] for d in listed] == [t2, t1]  # newest first
    status, body, _ = await call(http, fake_github, "DELETE", f"/repos/{repo}/deployments/{t1}", token)
    assert status == 422  # not inactive
    await call(http, fake_github, "POST", f"/repos/{repo}/deployments/{t1}/statuses", token,
               json={"state": "inactive"})
    status, _, _ = await call(http, fake_github, "DELETE", f"/repos/{repo}/deployments/{t1}", token)
    assert status == 204
    status, body, _ = await call(http, fake_github, "POST", f"/repos/{repo}/deployments", token,
                                 json={"ref": sha, "required_contexts": ["ci"]})
    assert status == 409 and body["errors"][0]["contexts"] == [{"context": "ci", "state": "missing"}]
    fake_github.set_commit_status(repo, sha, "ci", "success")
    status, body, _ = await call(http, fake_github, "POST", f"/repos/{repo}/deployments", token,
                                 json={"ref": sha, "required_contexts": ["ci"]})
    assert status == 201 and body["environment"] == "production" and body["production_environment"] is True


# -- faults and rate limits -------------------------------------------------------------------------------
async def test_injected_faults(fake_github, repo, http) -> None:
    token = await app_token(http, fake_github, repo)
    fake_github.inject("GET", r"/pulls/7$", status=502, times=2)
    statuses = [(await call(http, fake_github, "GET", f"/repos/{repo}/pulls/7", token))[0] for _ in range(3)]
    assert statuses == [502, 502, 200]
    fake_github.inject_secondary_limit("POST", r"/comments$", retry_after=1)
    status, body, headers = await call(http, fake_github, "POST", f"/repos/{repo}/issues/7/comments", token,
                                       json={"body": "x"})
    assert status == 403 and headers["Retry-After"] == "1" and "secondary rate limit" in body["message"]
    fake_github.inject("*", r"/pulls/7$", status=None, delay=1.0)
    with pytest.raises(asyncio.TimeoutError):
        await call(http, fake_github, "GET", f"/repos/{repo}/pulls/7", token,
                   timeout=aiohttp.ClientTimeout(total=0.2))


async def test_secondary_rate_limit_window(fake_github, repo, http) -> None:
    token = await app_token(http, fake_github, repo)
    fake_github.secondary_limit(content_per_minute=3)
    statuses = [(await call(http, fake_github, "POST", f"/repos/{repo}/issues/7/comments", token,
                            json={"body": str(i)}))[0] for i in range(5)]
    assert statuses == [201, 201, 201, 403, 403]
    assert fake_github.max_content_requests_in_window(60) == 5
    assert len(fake_github.comments(repo, 7)) == 3
    assert (await call(http, fake_github, "GET", f"/repos/{repo}/pulls/7", token))[0] == 200  # reads pass


async def test_request_log_never_keeps_credentials(fake_github, repo, http) -> None:
    token = await app_token(http, fake_github, repo)
    await call(http, fake_github, "GET", f"/repos/{repo}", token)
    secret = token.split()[1]
    assert fake_github.requests[-1].headers["Authorization"] == "token [REDACTED]"
    assert secret not in repr(fake_github.requests)


# -- webhook payloads -------------------------------------------------------------------------------------
def _keys(d: dict[str, Any]) -> set[str]:
    return set(d)


def test_pull_request_payloads_come_from_real_examples(fake_github, repo) -> None:
    fake = fake_github
    inst = fake.repos[repo].installation_id
    opened = pull_request_event(fake, repo, 7, "opened")
    assert opened["action"] == "opened" and opened["number"] == 7 and opened["installation"]["id"] == inst
    assert opened["repository"]["full_name"] == repo
    assert opened["pull_request"]["head"]["sha"] == fake.repos[repo].pulls[7].head_sha
    assert opened["pull_request"]["user"]["login"] == "alice"
    # the real example's shape: every key it has (and only those), e.g. `_links` of the PR
    real = next(e for e in webhook_examples()["pull_request"] if e["action"] == "opened" and "installation" in e)
    assert _keys(opened["pull_request"]) == _keys(real["pull_request"])
    assert opened["pull_request"]["_links"]["html"]["href"].endswith(f"{repo}/pull/7")
    fake.push(repo, 7, "a" * 40)
    sync = pull_request_event(fake, repo, 7, "synchronize")
    assert sync["after"] == "a" * 40 and sync["before"] != sync["after"]
    labeled = pull_request_event(fake, repo, 7, "labeled", label="preview-keep")
    assert labeled["label"]["name"] == "preview-keep" and "preview-keep" in fake.labels(repo, 7)
    unlabeled = pull_request_event(fake, repo, 7, "unlabeled", label="preview-keep")
    assert "preview-keep" not in [x["name"] for x in unlabeled["pull_request"]["labels"]]
    closed = pull_request_event(fake, repo, 7, "closed", merged=True)
    assert closed["pull_request"]["state"] == "closed" and closed["pull_request"]["merged"] is True
    assert pull_request_event(fake, repo, 7, "reopened")["pull_request"]["state"] == "open"
    fake.add_pull(repo, 9, draft=True, fork=True, user="mallory")
    ready = pull_request_event(fake, repo, 9, "ready_for_review")
    assert ready["pull_request"]["draft"] is False
    assert ready["pull_request"]["head"]["repo"]["full_name"] == "mallory/shop"
    assert ready["pull_request"]["head"]["repo"]["fork"] is True


def test_issue_comment_payload_and_signature(fake_github, repo) -> None:
    payload = issue_comment_event(fake_github, repo, 7, "/preview", "bob")
    assert payload["issue"]["pull_request"]["url"].endswith(f"/repos/{repo}/pulls/7")
    assert payload["comment"]["body"] == "/preview" and payload["sender"]["login"] == "bob"
    assert payload["installation"]["id"] == fake_github.repos[repo].installation_id
    assert [c["body"] for c in fake_github.comments(repo, 7)] == ["/preview"]
    edited = issue_comment_event(fake_github, repo, 7, "/preview again", "bob", action="edited",
                                 comment_id=payload["comment"]["id"])
    assert edited["changes"] == {"body": {"from": "/preview"}}
    body = json.dumps(payload).encode()
    headers = webhook_headers("issue_comment", body, "s3cret")
    assert headers["X-GitHub-Event"] == "issue_comment" and headers["User-Agent"].startswith("GitHub-Hookshot/")
    assert headers["X-Hub-Signature-256"] == sign(body, "s3cret")
    # GitHub's documented test vector (docs: "Validating webhook deliveries")
    assert sign(b"Hello, World!", "It's a Secret to Everybody") == (
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17")
    assert "zen" in ping_event() and ping_event(fake_github)["hook"]["app_id"] == fake_github.app_id


def test_spec_index_loads_fast(fake_github) -> None:
    from tests.fakegithub.server import EXAMPLES, HANDLERS
    from tests.fakegithub.spec import load_spec

    load_spec.cache_clear()
    start = time.perf_counter()
    spec = load_spec(frozenset(HANDLERS), EXAMPLES)  # from the .cache index
    assert time.perf_counter() - start < 3.0
    assert spec.version == "23.0.2" and len(spec.operations) == len(HANDLERS)


async def test_installations_and_their_repositories(fake_github: FakeGitHub) -> None:
    fake_github.add_repo("acme/shop")
    fake_github.add_repo("acme/other")
    fake_github.add_repo("bob/x")
    async with aiohttp.ClientSession() as session:
        gh = gidgethub.aiohttp.GitHubAPI(session, "t", base_url=fake_github.url)
        installations = [i async for i in gh.getiter("/app/installations", jwt=fake_github.make_jwt())]
        assert len(installations) == 2
        acme = next(i for i in installations if i["account"]["login"] == "acme")
        token = fake_github.installation_token(acme["id"])
        repos = [r["full_name"] async for r in gh.getiter("/installation/repositories", oauth_token=token,
                                                           iterable_key="repositories")]
        assert repos == ["acme/other", "acme/shop"]
        with pytest.raises(gidgethub.BadRequest) as refused:
            await gh.getitem("/installation/repositories", jwt=fake_github.make_jwt())
        assert refused.value.status_code == 403


async def test_a_suspended_installation_is_listed_and_refuses_tokens(fake_github: FakeGitHub, http) -> None:
    """GitHub keeps listing a suspended installation (`suspended_at`, `suspended_by`); the App may not use it:
    a token request answers 403, and so does a request with a token minted before the suspension."""
    fake_github.add_repo("acme/shop")
    fake_github.add_repo("bob/x")
    acme, bob = fake_github.repos["acme/shop"].installation_id, fake_github.repos["bob/x"].installation_id
    assert acme is not None and bob is not None
    earlier = await app_token(http, fake_github, "bob/x")
    fake_github.suspend_installation(bob, by="bob")
    async with aiohttp.ClientSession() as session:
        gh = gidgethub.aiohttp.GitHubAPI(session, "t", base_url=fake_github.url)
        installations = {i["id"]: i async for i in gh.getiter("/app/installations", jwt=fake_github.make_jwt())}
    assert installations[acme]["suspended_at"] is None and installations[acme]["suspended_by"] is None
    assert installations[bob]["suspended_at"].endswith("Z") and installations[bob]["suspended_by"]["login"] == "bob"
    status, body, _ = await call(http, fake_github, "POST", f"/app/installations/{bob}/access_tokens",
                                 f"Bearer {fake_github.make_jwt()}")
    assert (status, body["message"]) == (403, "This installation has been suspended")
    status, body, _ = await call(http, fake_github, "GET", "/repos/bob/x", earlier)
    assert (status, body["message"]) == (403, "This installation has been suspended")
    status, _, _ = await call(http, fake_github, "POST", f"/app/installations/{acme}/access_tokens",
                              f"Bearer {fake_github.make_jwt()}")
    assert status == 201  # the other installations are not affected
    fake_github.unsuspend_installation(bob)
    status, _, _ = await call(http, fake_github, "GET", "/repos/bob/x", earlier)
    assert status == 200


async def test_rename_and_transfer_keep_the_id(fake_github: FakeGitHub, repo: str, http) -> None:
    """GitHub keeps `repository.id` through a rename or a transfer; names change everywhere."""
    fake = fake_github
    repo_id, inst = fake.repos[repo].id, fake.repos[repo].installation_id
    token = await app_token(http, fake, repo)
    fake.rename_repo(repo, "acme/storefront")
    status, body, _ = await call(http, fake, "GET", "/repos/acme/storefront", token)
    assert status == 200 and body["id"] == repo_id and body["full_name"] == "acme/storefront"
    assert (await call(http, fake, "GET", f"/repos/{repo}", token))[0] == 404  # the fake does not redirect
    event = pull_request_event(fake, "acme/storefront", 7, "synchronize")
    assert event["repository"]["id"] == repo_id and event["repository"]["full_name"] == "acme/storefront"
    assert event["pull_request"]["base"]["repo"]["full_name"] == "acme/storefront"
    assert event["installation"]["id"] == inst
    # A transfer to another account moves it to that account's installation of the App.
    fake.rename_repo("acme/storefront", "bigco/storefront")
    moved = fake.repos["bigco/storefront"]
    assert moved.id == repo_id and moved.installation_id != inst
    assert (await call(http, fake, "GET", "/repos/bigco/storefront", token))[0] == 404  # old installation's token
    status, body, _ = await call(http, fake, "GET", "/repos/bigco/storefront",
                                 await app_token(http, fake, "bigco/storefront"))
    assert status == 200 and body["id"] == repo_id and body["owner"]["login"] == "bigco"
    assert fake.response_errors == []
