"""Every way a preview ends does the GitHub side too, and big pull requests still deploy what changed.

Teardown paths (issue: leftover deployments): close, `/preview stop`, the trigger label removed, no
service changed any more, the idle TTL, and a close the reconciler finds (webhook lost). Each must
leave no active GitHub deployment for the PR: GitHub shows them until they are marked inactive, and
they pile up in the repository's environments unless deleted (GitHub deletes only inactive ones).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bot import comment
from tests.e2e.harness import CONFIG, REPO, ClusterView, RunningBot, key_of, running_bot
from tests.fakegithub import FakeGitHub, issue_comment_event, pull_request_event
from tests.plugins.cluster import Cluster

pytestmark = pytest.mark.cluster

MONO = "acme/mono"
MONO_CONFIG = ("services:\n"
               "  - {name: a, image: 'registry.example.com/a:{sha}', port: 8080, paths: ['services/a/**']}\n"
               "  - {name: b, image: 'registry.example.com/b:{sha}', port: 9090, paths: ['services/b/**']}\n")
LABELLED = "acme/labels"


def sticky(fake: FakeGitHub, repo: str, number: int) -> str:
    [found] = [c for c in fake.comments(repo, number) if comment.MARKER in c["body"]]
    return str(found["body"])


def history(fake: FakeGitHub, repo: str, number: int) -> list[dict[str, Any]]:
    """The PR's deployments, deleted ones included (flagged), oldest first, each with its states."""
    environment = key_of(fake, repo, number).environment
    return [d | {"states": [s["state"] for s in fake.statuses(repo, d["id"])]}
            for d in fake.deployments(repo, deleted=True) if d["environment"] == environment]


def retire_problems(fake: FakeGitHub, repo: str, number: int) -> list[str]:
    """Why the PR's GitHub deployments are not retired: each marked inactive, then deleted."""
    records = history(fake, repo, number)
    if not records:
        return ["the PR never had a GitHub deployment: the test proves nothing"]
    return [f"deployment {d['id']}: deleted={d.get('deleted', False)}, states {d['states']}"
            for d in records if not d.get("deleted") or d["states"][-1:] != ["inactive"]]


async def deliver(bot: RunningBot, event: str, payload: dict[str, Any]) -> None:
    assert await bot.send(event, payload) == 202
    await bot.settle()


@pytest.mark.parametrize("path", ["close", "stop", "unlabel", "unchanged", "idle", "missed-close"])
async def test_every_teardown_path_retires_the_prs_deployments(
        fake_github: FakeGitHub, cluster: Cluster, namespace: str, view: ClusterView, path: str) -> None:
    repo = {"unlabel": LABELLED, "unchanged": MONO}.get(path, REPO)
    config = {"unlabel": "trigger: label\nlabel: deploy-me\n" + CONFIG, "unchanged": MONO_CONFIG}.get(path, CONFIG)
    fake_github.add_repo(repo, files={".github/preview.yml": config}, collaborators={"alice": "write"})
    env = {"PREVIEW_IDLE_TTL_DAYS": "0.00001"} if path == "idle" else {}  # about a second stands for days
    async with running_bot(fake_github, cluster, namespace, **env) as bot:
        fake_github.add_pull(repo, 1, labels=["deploy-me"] if path == "unlabel" else None)
        fake_github.push(repo, 1, "1" * 40, files={"services/a/main.go": "package main\n"})
        await deliver(bot, "pull_request", pull_request_event(fake_github, repo, 1, "opened"))
        # A push too, so there is an older (inactive) deployment beside the live one.
        fake_github.push(repo, 1, "2" * 40, files={"services/a/util.go": "package main\n"})
        await deliver(bot, "pull_request", pull_request_event(fake_github, repo, 1, "synchronize"))
        assert list(view.deployments()) == [key_of(fake_github, repo, 1).object_name("a")]
        assert [d["states"][-1] for d in history(fake_github, repo, 1)] == ["inactive", "success"]

        if path == "close":
            await deliver(bot, "pull_request", pull_request_event(fake_github, repo, 1, "closed"))
        elif path == "stop":
            await deliver(bot, "issue_comment", issue_comment_event(fake_github, repo, 1, "/preview stop",
                                                                    user="alice"))
        elif path == "unlabel":
            await deliver(bot, "pull_request", pull_request_event(fake_github, repo, 1, "unlabeled",
                                                                  label="deploy-me"))
        elif path == "unchanged":  # the PR drops its changes to services/a: no service is changed any more
            fake_github.push(repo, 1, "3" * 40, files={"services/a/main.go": None, "services/a/util.go": None,
                                                       "README.md": "docs\n"})
            await deliver(bot, "pull_request", pull_request_event(fake_github, repo, 1, "synchronize"))
        elif path == "idle":
            await asyncio.sleep(1.5)
            report = await bot.bot.reconcile_once()
            assert [a.kind for a in report.actions] == ["teardown-idle"]
        else:
            fake_github.repos[repo].pulls[1].state = "closed"  # closed on GitHub; the webhook never arrives
            report = await bot.bot.reconcile_once()
            assert [a.kind for a in report.actions] == ["teardown-closed"]

    assert view.deployments() == {}
    assert view.services() == []
    problems = retire_problems(fake_github, repo, 1)
    assert not problems, problems
    assert fake_github.deployments(repo) == []
    wanted = comment.State.NOT_DEPLOYED if path == "unchanged" else comment.State.STOPPED
    assert f"Preview: {wanted.value}" in sticky(fake_github, repo, 1)
    # Environments stay by default: deleting them needs a permission app.yml does not grant.
    assert fake_github.environments(repo) == {"preview-1"}
    assert not [c for c in fake_github.calls if c.operation_id == "repos/delete-an-environment"]
    assert not fake_github.response_errors


async def test_environments_are_deleted_when_opted_in(fake_github: FakeGitHub, cluster: Cluster, namespace: str,
                                                      view: ClusterView) -> None:
    repo = fake_github.add_repo(REPO, files={".github/preview.yml": CONFIG})
    assert repo.installation_id is not None
    fake_github.installations[repo.installation_id].permissions["administration"] = "write"
    async with running_bot(fake_github, cluster, namespace, PREVIEW_DELETE_ENVIRONMENTS="true") as bot:
        for number in (11, 12, 13):
            fake_github.add_pull(REPO, number)
            await deliver(bot, "pull_request", pull_request_event(fake_github, REPO, number, "opened"))
        assert fake_github.environments(REPO) == {"preview-11", "preview-12", "preview-13"}
        for number in (11, 12, 13):
            await deliver(bot, "pull_request", pull_request_event(fake_github, REPO, number, "closed"))
    assert fake_github.environments(REPO) == set()
    assert fake_github.deployments(REPO) == []
    for number in (11, 12, 13):
        assert not retire_problems(fake_github, REPO, number)
    assert not fake_github.response_errors


async def test_an_opted_in_environment_deletion_without_the_permission_is_a_warning(
        fake_github: FakeGitHub, cluster: Cluster, namespace: str, view: ClusterView) -> None:
    fake_github.add_repo(REPO, files={".github/preview.yml": CONFIG})
    async with running_bot(fake_github, cluster, namespace, PREVIEW_DELETE_ENVIRONMENTS="true") as bot:
        fake_github.add_pull(REPO, 14)
        await deliver(bot, "pull_request", pull_request_event(fake_github, REPO, 14, "opened"))
        await deliver(bot, "pull_request", pull_request_event(fake_github, REPO, 14, "closed"))
    assert [c.status for c in fake_github.calls if c.operation_id == "repos/delete-an-environment"] == [403]
    assert fake_github.environments(REPO) == {"preview-14"}
    assert not retire_problems(fake_github, REPO, 14)  # the deployments went all the same
    assert view.deployments() == {}
    assert "Preview: stopped" in sticky(fake_github, REPO, 14)


async def test_more_changed_files_than_github_lists_deploy_every_service(
        fake_github: FakeGitHub, cluster: Cluster, namespace: str, view: ClusterView) -> None:
    """GitHub lists at most 3000 files of a PR: b's change hides behind 3000 docs files. Every service
    counts as changed, so b stays (redeployed at the new head) and a joins it."""
    fake_github.add_repo(MONO, files={".github/preview.yml": MONO_CONFIG})
    key = key_of(fake_github, MONO, 20)
    async with running_bot(fake_github, cluster, namespace) as bot:
        fake_github.add_pull(MONO, 20, files={"services/b/main.go": "package main\n"})
        await deliver(bot, "pull_request", pull_request_event(fake_github, MONO, 20, "opened"))
        assert list(view.deployments()) == [key.object_name("b")]

        head = "f" * 40
        docs: dict[str, str | None] = {f"docs/page-{i:04}.md": f"page {i}\n" for i in range(3000)}
        fake_github.push(MONO, 20, head, files={**docs, "services/b/main.go": "package main // v2\n"})
        # What GitHub would list: the first 3000 files, all docs (the fake cuts the listing like GitHub).
        assert len(fake_github.pull_changed_paths(fake_github.repos[MONO], fake_github.repos[MONO].pulls[20])) == 3001
        await deliver(bot, "pull_request", pull_request_event(fake_github, MONO, 20, "synchronize"))

    deployments = view.deployments()
    assert sorted(deployments) == sorted([key.object_name("a"), key.object_name("b")])
    for name in deployments:
        assert deployments[name].spec.template.spec.containers[0].image.endswith(head)
    records = history(fake_github, MONO, 20)
    active = [d for d in records if d["states"][-1:] == ["success"]]
    assert [(d["sha"], d["payload"]["services"]) for d in active] == [(head, ["a", "b"])]
    assert all(d["states"][-1] == "inactive" for d in records if d not in active)
    body = sticky(fake_github, MONO, 20)
    assert "Preview: ready" in body and head[:12] in body
    assert "| a |" in body and "| b |" in body
    assert "more files than GitHub lists (3000)" in body
    assert not fake_github.response_errors
