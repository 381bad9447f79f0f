"""The fake GitHub's check runs, check suites and commit statuses: GitHub's rules, OpenAPI-validated answers
and webhook payloads from @octokit/webhooks-examples."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from tests.fakegithub import FakeGitHub, check_run_event, status_event
from tests.fakegithub.payloads import _example
from tests.fakegithub.spec import webhook_examples

REPO = "acme/shop"
SHA = "c" * 40


@pytest.fixture
def repo(fake_github: FakeGitHub) -> str:
    fake_github.add_repo(REPO, files={".github/preview.yml": "services: []\n"})
    fake_github.add_pull(REPO, 7, head_sha=SHA)
    return REPO


async def get(http: aiohttp.ClientSession, fake: FakeGitHub, path: str, token: str) -> tuple[int, Any]:
    async with http.get(fake.url + path, headers={"Authorization": f"token {token}"}) as r:
        return r.status, await r.json()


def _keys(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _keys(v) for k, v in node.items() if k not in ("pull_requests",)}
    return None


async def test_check_runs_latest_per_name_and_suites(fake_github: FakeGitHub, repo: str,
                                                     http: aiohttp.ClientSession) -> None:
    fake = fake_github
    token = fake.installation_token(fake.repos[repo].installation_id)
    first = fake.add_check_run(repo, SHA, "build-images", status="completed", conclusion="failure")
    rerun = fake.add_check_run(repo, SHA, "build-images", status="in_progress")
    fake.add_check_run(repo, SHA, "lint", status="completed", conclusion="success", app="other-ci")
    status, body = await get(http, fake, f"/repos/{repo}/commits/{SHA}/check-runs", token)
    assert status == 200
    names = {(r["name"], r["id"], r["status"], r["app"]["slug"]) for r in body["check_runs"]}
    assert names == {("build-images", rerun.id, "in_progress", "github-actions"), ("lint", names and
                     next(r["id"] for r in body["check_runs"] if r["name"] == "lint"), "completed", "other-ci")}
    status, body = await get(http, fake, f"/repos/{repo}/commits/{SHA}/check-runs?filter=all", token)
    assert {r["id"] for r in body["check_runs"]} >= {first.id, rerun.id}
    assert body["check_runs"][0]["pull_requests"][0]["number"] == 7
    status, body = await get(http, fake, f"/repos/{repo}/commits/{SHA}/check-suites", token)
    assert status == 200 and body["total_count"] == 2
    actions = next(s for s in body["check_suites"] if s["app"]["slug"] == "github-actions")
    assert (actions["status"], actions["conclusion"]) == ("in_progress", None)
    fake.update_check_run(repo, rerun, status="completed", conclusion="success")
    status, suite = await get(http, fake, f"/repos/{repo}/check-suites/{actions['id']}", token)
    # the highest-priority conclusion of its runs: the first run failed
    assert (suite["status"], suite["conclusion"]) == ("completed", "failure")
    assert (await get(http, fake, f"/repos/{repo}/commits/{'0' * 40}/check-runs", token))[0] == 422


async def test_commit_statuses_combine_like_github(fake_github: FakeGitHub, repo: str,
                                                   http: aiohttp.ClientSession) -> None:
    fake = fake_github
    token = fake.installation_token(fake.repos[repo].installation_id)
    status, body = await get(http, fake, f"/repos/{repo}/commits/{SHA}/status", token)
    assert (status, body["state"], body["statuses"]) == (200, "pending", [])  # no statuses: pending
    fake.set_commit_status(repo, SHA, "ci/build", "pending")
    fake.set_commit_status(repo, SHA, "ci/build", "success", target_url="https://ci.example.com/1")
    fake.set_commit_status(repo, SHA, "ci/lint", "success")
    status, body = await get(http, fake, f"/repos/{repo}/commits/{SHA}/status", token)
    assert body["state"] == "success" and body["total_count"] == 2
    assert {s["context"]: s["state"] for s in body["statuses"]} == {"ci/build": "success", "ci/lint": "success"}
    fake.set_commit_status(repo, SHA, "ci/lint", "error")
    assert (await get(http, fake, f"/repos/{repo}/commits/{SHA}/status", token))[1]["state"] == "failure"
    status, body = await get(http, fake, f"/repos/{repo}/commits/{SHA}/statuses", token)
    assert [s["state"] for s in body] == ["error", "success", "success", "pending"]  # newest first
    with pytest.raises(ValueError):
        fake.set_commit_status(repo, SHA, "ci/x", "green")


async def test_checks_need_their_permissions(fake_github: FakeGitHub, http: aiohttp.ClientSession) -> None:
    fake = fake_github
    fake.add_installation(88, "lean", permissions={"metadata": "read", "pull_requests": "read"})
    fake.add_repo("lean/repo", installation_id=88)
    fake.add_pull("lean/repo", 1, head_sha=SHA)
    token = fake.installation_token(88)
    for path, wanted in ((f"/repos/lean/repo/commits/{SHA}/check-runs", "checks=read"),
                         (f"/repos/lean/repo/commits/{SHA}/status", "statuses=read")):
        async with http.get(fake.url + path, headers={"Authorization": f"token {token}"}) as r:
            assert r.status == 403 and r.headers["x-accepted-github-permissions"] == wanted


async def test_own_check_runs_through_the_api(fake_github: FakeGitHub, repo: str,
                                              http: aiohttp.ClientSession) -> None:
    fake = fake_github
    fake.installations[fake.repos[repo].installation_id].permissions["checks"] = "write"
    token = fake.installation_token(fake.repos[repo].installation_id)
    headers = {"Authorization": f"token {token}"}
    async with http.post(f"{fake.url}/repos/{repo}/check-runs", headers=headers,
                         json={"name": "preview", "head_sha": SHA, "status": "in_progress"}) as r:
        assert r.status == 201
        run = await r.json()
    assert run["app"]["slug"] == fake.app_slug
    async with http.patch(f"{fake.url}/repos/{repo}/check-runs/{run['id']}", headers=headers,
                          json={"conclusion": "success"}) as r:
        assert (r.status, (await r.json())["status"]) == (200, "completed")
    async with http.post(f"{fake.url}/repos/{repo}/check-runs", headers=headers,
                         json={"name": "x", "head_sha": SHA, "status": "sideways"}) as r:
        assert r.status == 422  # the description's enum
    other = fake.add_check_run(repo, SHA, "build-images")
    async with http.patch(f"{fake.url}/repos/{repo}/check-runs/{other.id}", headers=headers,
                          json={"conclusion": "success"}) as r:
        assert r.status == 403  # only the App that made a run may change it


def test_check_run_and_status_payloads_come_from_real_examples(fake_github: FakeGitHub, repo: str) -> None:
    fake = fake_github
    run = fake.add_check_run(repo, SHA, "build-images", status="in_progress")
    created = check_run_event(fake, repo, run)
    assert created["action"] == "created" and created["check_run"]["status"] == "in_progress"
    fake.update_check_run(repo, run, status="completed", conclusion="success")
    done = check_run_event(fake, repo, run)
    real = next(e for e in webhook_examples()["check_run"] if e["action"] == "completed")
    assert _keys(done["check_run"]) == _keys(real["check_run"])
    assert (done["check_run"]["head_sha"], done["check_run"]["name"], done["check_run"]["conclusion"]) == \
        (SHA, "build-images", "success")
    assert done["check_run"]["app"]["slug"] == "github-actions"
    assert done["check_run"]["pull_requests"][0]["number"] == 7
    assert done["installation"]["id"] == fake.repos[repo].installation_id
    record = fake.set_commit_status(repo, SHA, "ci/images", "failure", target_url="https://ci.example.com/9")
    event = status_event(fake, repo, record)
    real_status = _example("status", None)  # the real example the payload is built from
    assert set(event) - {"installation"} == set(real_status) - {"installation", "organization"}
    assert (event["sha"], event["context"], event["state"], event["target_url"]) == \
        (SHA, "ci/images", "failure", "https://ci.example.com/9")
    assert event["branches"][0]["name"] == "pr-7" and event["commit"]["sha"] == SHA
