"""Webhook deliveries built from GitHub's real example payloads (npm `@octokit/webhooks-examples`).

Each payload keeps exactly the keys of a real example of that event and action; the values come from the
fake's state (repository, pull request, comment, installation, sender), so the bot sees what GitHub sends.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import time
import uuid
from typing import Any

from .server import FakeGitHub, iso
from .spec import webhook_examples
from .state import CheckRun, CommitStatus, Repo


def _example(event: str, action: str | None) -> dict[str, Any]:
    """The best real example: right action, sent to an App installation, owned by a user."""
    found = [e for e in webhook_examples()[event] if e.get("action") == action]
    if not found:
        raise ValueError(f"no real {event}.{action} example in @octokit/webhooks-examples")
    best = max(found, key=lambda e: ("installation" in e, "organization" not in e))
    return copy.deepcopy(best)


def _overlay(example: Any, ours: Any) -> Any:
    """Values from `ours`, keys from the real example (keys only the example has keep its value)."""
    if isinstance(example, dict) and isinstance(ours, dict):
        return {k: _overlay(v, ours[k]) if k in ours else v for k, v in example.items()}
    return copy.deepcopy(ours)


def _rebase(fake: FakeGitHub, payload: dict[str, Any], repo: Repo) -> dict[str, Any]:
    """Point the example's leftover URLs at the fake and our repository."""
    old = payload.get("repository", {}).get("full_name")
    pairs = [("https://api.github.com", fake.url)] + ([(old, repo.full_name)] if old else [])

    def walk(node: Any) -> Any:
        if isinstance(node, str):
            for a, b in pairs:
                node = node.replace(a, b)
            return node
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        return [walk(v) for v in node] if isinstance(node, list) else node

    result: dict[str, Any] = walk(payload)
    return result


def _common(fake: FakeGitHub, payload: dict[str, Any], repo: Repo, sender: str) -> dict[str, Any]:
    payload = _rebase(fake, payload, repo)
    payload.pop("organization", None)  # the fake's owners are users
    payload["repository"] = _overlay(payload["repository"], fake.repo_json(repo))
    payload["sender"] = _overlay(payload["sender"], fake.user_json(fake.user(sender)))
    if repo.installation_id is not None:
        payload["installation"] = {"id": repo.installation_id, "node_id": f"MDIzOkludGVncmF0aW9uSW5zdGFsbGF0aW9u"
                                                                         f"{repo.installation_id}"}
    else:
        payload.pop("installation", None)
    return payload


def _repo(fake: FakeGitHub, repo: str | Repo) -> Repo:
    return repo if isinstance(repo, Repo) else fake.repos[repo]


def pull_request_event(fake: FakeGitHub, repo: str | Repo, number: int, action: str,
                       **extra: Any) -> dict[str, Any]:
    """A `pull_request` delivery; the action is applied to the fake's state first (closed, reopened,
    labeled/unlabeled with `label=`, ready_for_review, converted_to_draft). For `synchronize`, call
    `fake.push` first: `before`/`after` are the previous and current head. `merged=` for closed,
    `sender=` (default: the PR's author). `edited` needs `changes=` (`fake.change_base` returns a base
    change's). Anything else in `extra` is set at the top level."""
    r = _repo(fake, repo)
    pull = r.pulls[number]
    merged = bool(extra.pop("merged", False))
    label = extra.pop("label", None)
    sender = extra.pop("sender", pull.user.login)
    if action == "closed":
        pull.state, pull.merged, pull.closed_at = "closed", merged, time.time()
    elif action == "reopened":
        pull.state, pull.merged, pull.closed_at = "open", False, None
    elif action in ("labeled", "unlabeled"):
        if label is None:
            raise ValueError(f"{action} needs label=")
        if action == "labeled" and label not in pull.labels:
            pull.labels.append(label)
        elif action == "unlabeled" and label in pull.labels:
            pull.labels.remove(label)
    elif action in ("ready_for_review", "converted_to_draft"):
        pull.draft = action == "converted_to_draft"
    changes = extra.pop("changes", None)
    if action == "edited" and changes is None:
        raise ValueError("edited needs changes= (e.g. what fake.change_base returns)")
    # GitHub documents `edited` (with `changes`) but @octokit/webhooks-examples has no example of it: it
    # is built on `reopened`'s, whose keys are the same but `changes`, and checked against GitHub's
    # schema of the event (its OpenAPI description, `webhook-pull-request-edited`) below.
    payload = _common(fake, _example("pull_request", "reopened" if action == "edited" else action), r, sender)
    payload["action"], payload["number"] = action, number
    if changes is not None:
        payload["changes"] = changes
    payload["pull_request"] = _overlay(payload["pull_request"], fake.pull_json(r, pull))
    if action == "synchronize":
        payload["before"], payload["after"] = pull.previous_sha or pull.base_sha, pull.head_sha
    if label is not None:
        payload["label"] = _overlay(payload["label"], fake.label_json(r, label))
    payload.update(extra)
    if action == "edited":
        errors = fake.spec.webhook_errors("webhook-pull-request-edited", payload)
        if errors:
            raise ValueError(f"not what GitHub sends for pull_request.edited: {errors[:3]}")
    return payload


def issue_comment_event(fake: FakeGitHub, repo: str | Repo, number: int, body: str, user: str,
                        action: str = "created", comment_id: int | None = None) -> dict[str, Any]:
    """An `issue_comment` delivery on PR `number`. `created` adds the comment to the fake; `edited` and
    `deleted` act on `comment_id`."""
    r = _repo(fake, repo)
    pull = r.pulls[number]
    if action == "created":
        comment_id = fake.add_comment(r.full_name, number, body, user)["id"]
    if comment_id is None or comment_id not in r.comments:
        raise ValueError(f"{action} needs the comment_id of an existing comment")
    comment = r.comments[comment_id]
    old_body = comment.body
    if action == "edited":
        comment.body, comment.updated_at = body, time.time()
    comment_json = fake.comment_json(r, comment)
    if action == "deleted":
        del r.comments[comment_id]
    payload = _common(fake, _example("issue_comment", action), r, user)
    payload["action"] = action
    issue = fake.issue_json(r, pull)
    payload["issue"] = _overlay(payload["issue"], issue)
    payload["issue"]["pull_request"] = issue["pull_request"]  # present on PR comments; no example has it
    payload["comment"] = _overlay(payload["comment"], comment_json)
    if action == "edited":
        payload["changes"] = {"body": {"from": old_body}}
    return payload


def check_run_event(fake: FakeGitHub, repo: str | Repo, run: CheckRun, action: str | None = None,
                    sender: str = "github-actions[bot]") -> dict[str, Any]:
    """A `check_run` delivery for `run` as it is now (`created`, `completed`; default from its status).
    GitHub sends it to every App with the Checks permission, whichever App made the run."""
    r = _repo(fake, repo)
    action = action or ("completed" if run.status == "completed" else "created")
    fake.user(sender, type="Bot")
    payload = _common(fake, _example("check_run", action), r, sender)
    payload["action"] = action
    ours = fake.check_run_json(r, run)
    suite = fake.check_suite_json(r, run.suite)
    ours["check_suite"] = {k: suite[k] for k in ("id", "node_id", "head_branch", "head_sha", "status", "conclusion",
                                                 "url", "before", "after", "pull_requests", "app", "created_at",
                                                 "updated_at")}
    payload["check_run"] = _overlay(payload["check_run"], ours)
    payload["check_run"]["check_suite"]["pull_requests"] = ours["pull_requests"]
    payload["check_run"]["pull_requests"] = ours["pull_requests"]
    return payload


def status_event(fake: FakeGitHub, repo: str | Repo, status: CommitStatus) -> dict[str, Any]:
    """A `status` delivery (no `action`) for a commit status set with fake.set_commit_status."""
    r = _repo(fake, repo)
    payload = _common(fake, _example("status", None), r, status.creator.login)
    branches = [{"name": p.head_ref, "commit": {"sha": p.head_sha, "url": f"{fake.url}/repos/{r.full_name}/commits/"
                                                                         f"{p.head_sha}"}, "protected": False}
                for p in r.pulls.values() if p.head_sha == status.sha and p.head_repo is r]
    payload.update({
        "id": status.id, "sha": status.sha, "name": r.full_name, "target_url": status.target_url,
        "context": status.context, "description": status.description, "state": status.state,
        "branches": branches, "created_at": iso(status.created_at), "updated_at": iso(status.updated_at),
    })
    commit = payload["commit"]
    commit.update({"sha": status.sha, "node_id": f"C_kwDO{status.sha[:12]}",
                   "url": f"{fake.url}/repos/{r.full_name}/commits/{status.sha}",
                   "html_url": f"https://github.com/{r.full_name}/commit/{status.sha}"})
    return payload


def ping_event(fake: FakeGitHub | None = None) -> dict[str, Any]:
    """The `ping` sent when the App's webhook is set up (an App's ping names the app, not a repo)."""
    payload = copy.deepcopy(webhook_examples()["ping"][0])
    if fake is not None:
        payload.pop("repository", None)
        payload["hook"]["app_id"] = fake.app_id
        payload["hook"]["type"] = "App"
        payload["hook"]["updated_at"] = payload["hook"]["created_at"] = iso(time.time())
    return payload


def sign(body: bytes, secret: str) -> str:
    """The `X-Hub-Signature-256` value: sha256= + hex HMAC-SHA256 of the raw body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def webhook_headers(event: str, body: bytes, secret: str, delivery_id: str | None = None) -> dict[str, str]:
    """The headers GitHub's hookshot sends with a delivery."""
    return {
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery_id or str(uuid.uuid4()),
        "X-Hub-Signature-256": sign(body, secret),
        # The legacy SHA-1 signature is still sent; a bot must not rely on it.
        "X-Hub-Signature": "sha1=" + hmac.new(secret.encode(), body, hashlib.sha1).hexdigest(),
        "X-GitHub-Hook-ID": "400000001",
        "X-GitHub-Hook-Installation-Target-Type": "integration",
        "Content-Type": "application/json",
        "User-Agent": "GitHub-Hookshot/7d4b1d1",
    }
