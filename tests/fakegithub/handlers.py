"""The operations the fake implements, keyed by GitHub's operationId."""

from __future__ import annotations

import base64
import textwrap
import time
from datetime import datetime
from typing import Any

from .server import (
    LEVEL,
    LIST_FILES_MAX,
    ROLE_TO_PERMISSION,
    SUSPENDED_MESSAGE,
    Ctx,
    FakeGitHub,
    GitHubError,
    Reply,
    iso,
    op,
)
from .state import CheckRun, Comment, Deployment, DeploymentStatus, Pull, Reaction, Repo, blob_sha, fake_sha, next_id


def _repo(ctx: Ctx) -> Repo:
    assert ctx.repo is not None  # every repo route went through _authorize
    return ctx.repo


def _pull(ctx: Ctx, key: str = "pull_number") -> Pull:
    pull = _repo(ctx).pulls.get(int(ctx.params[key]))
    if pull is None:
        raise GitHubError(404, "Not Found")
    return pull


def _comment(ctx: Ctx) -> Comment:
    c = _repo(ctx).comments.get(int(ctx.params["comment_id"]))
    if c is None:
        raise GitHubError(404, "Not Found")
    return c


def _deployment(ctx: Ctx) -> Deployment:
    d = next((d for d in _repo(ctx).deployments if d.id == int(ctx.params["deployment_id"])), None)
    if d is None:
        raise GitHubError(404, "Not Found")
    return d


def _created(body: dict[str, Any]) -> Reply:
    return Reply(201, body, {"Location": body["url"]})


# -- the App ------------------------------------------------------------------------------------------
@op("apps/get-authenticated")
async def get_app(gh: FakeGitHub, ctx: Ctx) -> Reply:
    return Reply(200, gh.app_json())


@op("apps/get-repo-installation")
async def get_repo_installation(gh: FakeGitHub, ctx: Ctx) -> Reply:
    repo = _repo(ctx)
    if repo.installation_id is None:
        raise GitHubError(404, "Not Found")
    return Reply(200, gh.installation_json(gh.installations[repo.installation_id]))


@op("apps/list-installations")
async def list_installations(gh: FakeGitHub, ctx: Ctx) -> Reply:
    return gh.paginate(ctx, [gh.installation_json(i) for i in sorted(gh.installations.values(), key=lambda i: i.id)])


@op("apps/list-repos-accessible-to-installation")
async def list_installation_repos(gh: FakeGitHub, ctx: Ctx) -> Reply:
    token = ctx.token
    assert token is not None
    repos = [gh.repo_json(gh.repos[name]) for name in sorted(token.repos) if name in gh.repos]
    reply = gh.paginate(ctx, repos)
    return Reply(reply.status, {"total_count": len(repos), "repositories": reply.body}, reply.headers)


@op("apps/create-installation-access-token")
async def create_token(gh: FakeGitHub, ctx: Ctx) -> Reply:
    inst = gh.installations.get(int(ctx.params["installation_id"]))
    if inst is None:
        raise GitHubError(404, "Not Found")
    if inst.suspended_at is not None:
        raise GitHubError(403, SUSPENDED_MESSAGE)
    body = ctx.body or {}
    wanted = body.get("permissions") or inst.permissions
    if any(LEVEL.get(v, 9) > LEVEL.get(inst.permissions.get(k, "none"), 0) for k, v in wanted.items()):
        raise GitHubError(422, "The permissions requested are not granted to this installation.")
    repos = set(inst.repos)
    if "repositories" in body or "repository_ids" in body:
        by_id = {gh.repos[n].id: n for n in inst.repos}
        names = {f"{inst.account.login}/{n}" for n in body.get("repositories", [])}
        names |= {by_id.get(i, f"#{i}") for i in body.get("repository_ids", [])}
        if not names <= inst.repos:
            raise GitHubError(422, "There is at least one repository that does not exist or is not "
                                   "accessible to the parent installation.")
        repos = names
    token = gh.installation_token(inst.id)
    gh.tokens[token].permissions, gh.tokens[token].repos = dict(wanted), repos
    shaped = gh._shape("installation-token", token=token, expires_at=iso(gh.tokens[token].expires_at),
                       permissions=dict(wanted), repository_selection="selected")
    if repos != inst.repos:
        shaped["repositories"] = [gh.repo_json(gh.repos[n]) for n in sorted(repos)]
    else:
        shaped.pop("repositories", None)
    return Reply(201, shaped)


# -- repositories -------------------------------------------------------------------------------------
@op("repos/get")
async def get_repo(gh: FakeGitHub, ctx: Ctx) -> Reply:
    return Reply(200, gh.repo_json(_repo(ctx)))


@op("repos/get-content")
async def get_content(gh: FakeGitHub, ctx: Ctx) -> Reply:
    repo, path = _repo(ctx), ctx.params["path"].strip("/")
    ref = ctx.query.get("ref") or repo.default_branch
    sha = repo.resolve(ref)
    if sha is None:
        raise GitHubError(404, f"No commit found for the ref {ref}")
    tree = repo.trees[sha]
    api = f"{gh.url}/repos/{repo.full_name}"

    def entry(p: str, kind: str, text: str = "") -> dict[str, Any]:
        oid = blob_sha(text) if kind == "file" else fake_sha(f"tree {sha} {p}")
        html = f"https://github.com/{repo.full_name}/{'blob' if kind == 'file' else 'tree'}/{ref}/{p}"
        git = f"{api}/git/{'blobs' if kind == 'file' else 'trees'}/{oid}"
        return {
            "type": kind, "size": len(text.encode()), "name": p.rsplit("/", 1)[-1], "path": p, "sha": oid,
            "url": f"{api}/contents/{p}?ref={ref}", "git_url": git, "html_url": html,
            "download_url": f"https://raw.githubusercontent.com/{repo.full_name}/{sha}/{p}"
            if kind == "file" else None, "_links": {"self": f"{api}/contents/{p}?ref={ref}", "git": git,
                                                   "html": html},
        }

    if path in tree:
        text = tree[path]
        if len(text.encode()) > 1 << 20:
            # Over 1 MB GitHub answers the JSON media type without the content ("Get repository content").
            return Reply(200, entry(path, "file", text) | {"content": "", "encoding": "none"})
        # GitHub wraps the base64 at 60 columns, with a trailing newline.
        encoded = "\n".join(textwrap.wrap(base64.b64encode(text.encode()).decode(), 60)) + "\n"
        return Reply(200, entry(path, "file", text) | {"content": encoded, "encoding": "base64"})
    prefix = f"{path}/" if path else ""
    children = {p[len(prefix):].split("/", 1)[0] for p in tree if p.startswith(prefix)}
    if not children:
        raise GitHubError(404, "Not Found")
    listing = [entry(prefix + c, "file", tree[prefix + c]) if prefix + c in tree else entry(prefix + c, "dir")
               for c in sorted(children)]
    return Reply(200, listing)


@op("repos/get-collaborator-permission-level")
async def get_permission(gh: FakeGitHub, ctx: Ctx) -> Reply:
    repo, login = _repo(ctx), ctx.params["username"]
    user = next((u for name, u in gh.users.items() if name.lower() == login.lower()), None)
    if user is None:
        raise GitHubError(404, "Not Found")  # no such account
    # A known account that is no collaborator can still read a public repository.
    role = "admin" if user is repo.owner else repo.collaborators.get(user.login,
                                                                      "none" if repo.private else "read")
    permission = ROLE_TO_PERMISSION.get(role, "none")
    level = LEVEL[permission]
    perms = {"admin": level >= 3, "maintain": role in ("admin", "maintain"), "push": level >= 2,
             "triage": level >= 2 or role == "triage", "pull": level >= 1}
    collaborator = gh.user_json(user) | {"permissions": perms, "role_name": role}
    return Reply(200, {"permission": permission, "role_name": role, "user": collaborator})


# -- pull requests ------------------------------------------------------------------------------------
@op("pulls/get")
async def get_pull(gh: FakeGitHub, ctx: Ctx) -> Reply:
    return Reply(200, gh.pull_json(_repo(ctx), _pull(ctx)))


@op("pulls/list")
async def list_pulls(gh: FakeGitHub, ctx: Ctx) -> Reply:
    repo, q = _repo(ctx), ctx.query
    state = q.get("state", "open")
    pulls = [p for p in repo.pulls.values() if state == "all" or p.state == state]
    if "head" in q:
        pulls = [p for p in pulls if f"{p.head_repo.owner.login}:{p.head_ref}" == q["head"]]
    if "base" in q:
        pulls = [p for p in pulls if repo.default_branch == q["base"]]
    desc = q.get("direction", "desc" if q.get("sort", "created") == "created" else "asc") == "desc"
    pulls.sort(key=lambda p: (p.created_at, p.number), reverse=desc)
    return gh.paginate(ctx, [gh.pull_simple_json(repo, p) for p in pulls])


@op("pulls/list-files")
async def list_files(gh: FakeGitHub, ctx: Ctx) -> Reply:
    repo, pull = _repo(ctx), _pull(ctx)
    base, head = repo.trees[pull.base_sha], repo.trees[pull.head_sha]
    entries = []
    # The PR's whole diff against its base, as GitHub computes it (plus any paths a test named), cut at
    # 3000 files even when paginated to the end ("Responses include a maximum of 3000 files").
    for path in gh.pull_changed_paths(repo, pull)[:LIST_FILES_MAX]:
        status = "removed" if path not in head else "added" if path not in base else "modified"
        text = head.get(path, base.get(path, ""))
        lines = text.count("\n") + 1
        added, deleted = (0, lines) if status == "removed" else (lines, 0 if status == "added" else 1)
        entries.append({
            "sha": blob_sha(text), "filename": path, "status": status, "additions": added,
            "deletions": deleted, "changes": added + deleted,
            "blob_url": f"https://github.com/{repo.full_name}/blob/{pull.head_sha}/{path}",
            "raw_url": f"https://github.com/{repo.full_name}/raw/{pull.head_sha}/{path}",
            "contents_url": f"{gh.url}/repos/{repo.full_name}/contents/{path}?ref={pull.head_sha}",
            "patch": f"@@ -1 +1 @@\n-{path}\n+{path}",
        })
    return gh.paginate(ctx, entries)


# -- issues and comments ------------------------------------------------------------------------------
@op("issues/get")
async def get_issue(gh: FakeGitHub, ctx: Ctx) -> Reply:
    return Reply(200, gh.issue_json(_repo(ctx), _pull(ctx, "issue_number")))


@op("issues/list-comments")
async def list_comments(gh: FakeGitHub, ctx: Ctx) -> Reply:
    repo, pull = _repo(ctx), _pull(ctx, "issue_number")
    since = ctx.query.get("since")
    floor = datetime.fromisoformat(since.replace("Z", "+00:00")).timestamp() if since else 0
    comments = sorted((c for c in repo.comments.values() if c.number == pull.number and c.updated_at >= floor),
                      key=lambda c: c.id)
    return gh.paginate(ctx, [gh.comment_json(repo, c) for c in comments])


@op("issues/create-comment")
async def create_comment(gh: FakeGitHub, ctx: Ctx) -> Reply:
    repo, pull = _repo(ctx), _pull(ctx, "issue_number")
    assert ctx.actor is not None
    now = time.time()
    c = Comment(next_id("comment"), pull.number, ctx.body["body"], ctx.actor, now, now, via_app=True)
    repo.comments[c.id] = c
    return _created(gh.comment_json(repo, c))


@op("issues/get-comment")
async def get_comment(gh: FakeGitHub, ctx: Ctx) -> Reply:
    return Reply(200, gh.comment_json(_repo(ctx), _comment(ctx)))


@op("issues/update-comment")
async def update_comment(gh: FakeGitHub, ctx: Ctx) -> Reply:
    c = _comment(ctx)
    c.body, c.updated_at = ctx.body["body"], time.time()
    return Reply(200, gh.comment_json(_repo(ctx), c))


@op("issues/delete-comment")
async def delete_comment(gh: FakeGitHub, ctx: Ctx) -> Reply:
    c = _comment(ctx)
    del _repo(ctx).comments[c.id]
    return Reply(204)


async def _react(gh: FakeGitHub, ctx: Ctx, comment_id: int | None, number: int | None) -> Reply:
    repo, content = _repo(ctx), ctx.body["content"]
    assert ctx.actor is not None
    for x in repo.reactions:  # the same reaction twice is answered 200 with the existing one
        if (x.comment_id, x.number, x.user, x.content) == (comment_id, number, ctx.actor, content):
            return Reply(200, gh.reaction_json(x))
    x = Reaction(next_id("reaction"), content, ctx.actor, time.time(), comment_id, number)
    repo.reactions.append(x)
    return Reply(201, gh.reaction_json(x))


@op("reactions/create-for-issue-comment")
async def react_comment(gh: FakeGitHub, ctx: Ctx) -> Reply:
    return await _react(gh, ctx, _comment(ctx).id, None)


@op("reactions/create-for-issue")
async def react_issue(gh: FakeGitHub, ctx: Ctx) -> Reply:
    return await _react(gh, ctx, None, _pull(ctx, "issue_number").number)


# -- deployments --------------------------------------------------------------------------------------
@op("repos/create-deployment")
async def create_deployment(gh: FakeGitHub, ctx: Ctx) -> Reply:
    repo, body = _repo(ctx), ctx.body
    ref = body["ref"]
    sha = repo.resolve(ref)
    if sha is None:
        raise GitHubError(422, f"No ref found for: {ref}")
    behind = next((p for p in repo.pulls.values() if p.head_ref == ref.removeprefix("refs/heads/")
                   and p.head_repo is repo and p.behind_base), None)
    if behind and body.get("auto_merge", True):
        # GitHub merges the default branch into the topic branch instead of deploying.
        behind.behind_base = False
        gh.push(repo, behind.number, fake_sha(f"merge {repo.default_branch} into {behind.head_sha}"))
        return Reply(202, {"message": f"Auto-merged {repo.default_branch} into {ref} on deployment."})
    statuses = repo.commit_statuses.get(sha, {})
    required = body.get("required_contexts")
    contexts = list(statuses) if required is None else required
    failed = [{"context": c, "state": statuses.get(c, "missing")} for c in contexts
              if statuses.get(c) != "success"]
    if failed:
        raise GitHubError(409, f"Conflict: Commit status checks failed for {ref}.",
                          errors=[{"contexts": failed, "resource": "Deployment", "field": "required_contexts",
                                   "code": "invalid"}])
    environment = body.get("environment", "production")
    assert ctx.actor is not None
    d = Deployment(
        next_id("deployment"), sha, ref, body.get("task", "deploy"), body.get("payload", {}), environment,
        environment, body.get("description", ""), bool(body.get("transient_environment", False)),
        bool(body.get("production_environment", environment == "production")), ctx.actor, time.time(),
    )
    repo.deployments.append(d)
    repo.environments.add(environment)  # GitHub creates the environment on its first deployment
    return _created(gh.deployment_json(repo, d))


@op("repos/list-deployments")
async def list_deployments(gh: FakeGitHub, ctx: Ctx) -> Reply:
    repo, q = _repo(ctx), ctx.query
    # The description's default for these filters is the string "none": no filtering.
    wanted = {k: q[k] for k in ("sha", "ref", "task", "environment") if q.get(k) not in (None, "none")}
    found = [d for d in reversed(repo.deployments)
             if all(getattr(d, k) == v for k, v in wanted.items())]
    return gh.paginate(ctx, [gh.deployment_json(repo, d) for d in found])


@op("repos/get-deployment")
async def get_deployment(gh: FakeGitHub, ctx: Ctx) -> Reply:
    return Reply(200, gh.deployment_json(_repo(ctx), _deployment(ctx)))


@op("repos/delete-deployment")
async def delete_deployment(gh: FakeGitHub, ctx: Ctx) -> Reply:
    repo, d = _repo(ctx), _deployment(ctx)
    if len(repo.deployments) > 1 and d.state != "inactive":
        raise GitHubError(422, "We cannot delete an active deployment unless it is the only deployment in a "
                               "given environment.")
    repo.deployments.remove(d)
    repo.deleted_deployments.append(d)
    return Reply(204)


@op("repos/delete-an-environment")
async def delete_environment(gh: FakeGitHub, ctx: Ctx) -> Reply:
    # GitHub answers 204 whether or not the environment existed; its deployments go with it.
    repo, name = _repo(ctx), ctx.params["environment_name"]
    repo.environments.discard(name)
    gone = [d for d in repo.deployments if d.environment == name]
    repo.deployments = [d for d in repo.deployments if d.environment != name]
    repo.deleted_deployments += gone
    return Reply(204)


@op("repos/create-deployment-status")
async def create_status(gh: FakeGitHub, ctx: Ctx) -> Reply:
    repo, d, body = _repo(ctx), _deployment(ctx), ctx.body
    description = body.get("description", "")
    if len(description) > 140:
        raise GitHubError(422, "Validation Failed", errors=[{
            "resource": "DeploymentStatus", "code": "custom", "field": "description",
            "message": "description is too long (maximum is 140 characters)"}])
    environment = body.get("environment") or (d.statuses[-1].environment if d.statuses else d.environment)
    # log_url replaced target_url; setting either sets both.
    log_url = body.get("log_url") or body.get("target_url", "")
    target_url = body.get("target_url") or log_url
    assert ctx.actor is not None
    s = DeploymentStatus(next_id("status"), body["state"], description, environment, target_url, log_url,
                         body.get("environment_url", ""), ctx.actor, time.time(),
                         {p.number: p.head_sha for p in repo.pulls.values()})
    d.environment = environment
    d.statuses.append(s)
    if s.state == "success" and body.get("auto_inactive", True):
        # GitHub's rule: prior non-transient, non-production deployments of this environment that were
        # `success` get an `inactive` status. Transient environments are left alone: the bot must do it.
        for other in repo.deployments:
            if (other.id < d.id and other.environment == environment and not other.transient
                    and not other.production and other.state == "success"):
                other.statuses.append(DeploymentStatus(next_id("status"), "inactive", "", environment, "", "",
                                                       "", ctx.actor, s.created_at))
    return _created(gh.status_json(repo, d, s))


@op("repos/list-deployment-statuses")
async def list_statuses(gh: FakeGitHub, ctx: Ctx) -> Reply:
    repo, d = _repo(ctx), _deployment(ctx)
    return gh.paginate(ctx, [gh.status_json(repo, d, s) for s in reversed(d.statuses)])


# -- checks and commit statuses --------------------------------------------------------------------------
def _commit(ctx: Ctx) -> str:
    sha = _repo(ctx).resolve(ctx.params.get("ref") or ctx.params.get("sha") or "")
    if sha is None:
        raise GitHubError(422, f"No commit found for SHA: {ctx.params.get('ref') or ctx.params.get('sha')}")
    return sha


def _check_run(ctx: Ctx) -> CheckRun:
    run = next((x for x in _repo(ctx).check_runs if x.id == int(ctx.params["check_run_id"])), None)
    if run is None:
        raise GitHubError(404, "Not Found")
    return run


@op("checks/list-for-ref")
async def list_check_runs(gh: FakeGitHub, ctx: Ctx) -> Reply:
    repo, q = _repo(ctx), ctx.query
    sha = _commit(ctx)
    runs = [x for x in repo.check_runs if x.head_sha == sha]
    if q.get("check_name"):
        runs = [x for x in runs if x.name == q["check_name"]]
    if q.get("status"):
        runs = [x for x in runs if x.status == q["status"]]
    if q.get("app_id"):
        runs = [x for x in runs if x.suite.app.id == int(q["app_id"])]
    if q.get("filter", "latest") == "latest":  # the newest run of each name
        newest: dict[str, CheckRun] = {}
        for x in runs:
            newest[x.name] = x if x.name not in newest or x.id > newest[x.name].id else newest[x.name]
        runs = list(newest.values())
    runs.sort(key=lambda x: -x.id)
    reply = gh.paginate(ctx, [gh.check_run_json(repo, x) for x in runs])
    return Reply(reply.status, {"total_count": len(runs), "check_runs": reply.body}, reply.headers)


@op("checks/get")
async def get_check_run(gh: FakeGitHub, ctx: Ctx) -> Reply:
    return Reply(200, gh.check_run_json(_repo(ctx), _check_run(ctx)))


@op("checks/create")
async def create_check_run(gh: FakeGitHub, ctx: Ctx) -> Reply:
    """A check run by the bot's own App (other Apps' runs are made with fake.add_check_run)."""
    repo, body = _repo(ctx), ctx.body
    sha = repo.resolve(body["head_sha"])
    if sha is None or sha != body["head_sha"]:
        raise GitHubError(422, "No commit found for SHA: " + body["head_sha"])
    if body.get("conclusion") and body.get("status", "completed") != "completed":
        raise GitHubError(422, "Conclusion can only be set when status is completed")
    status = "completed" if body.get("conclusion") else body.get("status", "queued")
    own = gh.other_app(gh.app_slug)
    run = gh.add_check_run(repo.full_name, sha, body["name"], status=status, conclusion=body.get("conclusion"),
                           app=own.slug, details_url=body.get("details_url"))
    run.external_id = body.get("external_id", "")
    return Reply(201, gh.check_run_json(repo, run))


@op("checks/update")
async def update_check_run(gh: FakeGitHub, ctx: Ctx) -> Reply:
    repo, run, body = _repo(ctx), _check_run(ctx), ctx.body
    if run.suite.app.slug != gh.app_slug:
        raise GitHubError(403, f"Invalid app_id `{gh.app_id}` - check run can only be modified by the GitHub "
                               "App that created it.")
    status = "completed" if body.get("conclusion") else body.get("status", run.status)
    gh.update_check_run(repo.full_name, run, status=status, conclusion=body.get("conclusion"))
    run.name = body.get("name", run.name)
    return Reply(200, gh.check_run_json(repo, run))


@op("checks/list-suites-for-ref")
async def list_check_suites(gh: FakeGitHub, ctx: Ctx) -> Reply:
    repo, q = _repo(ctx), ctx.query
    sha = _commit(ctx)
    suites = [x for x in repo.check_suites if x.head_sha == sha
              and (not q.get("app_id") or x.app.id == int(q["app_id"]))]
    reply = gh.paginate(ctx, [gh.check_suite_json(repo, x) for x in suites])
    return Reply(reply.status, {"total_count": len(suites), "check_suites": reply.body}, reply.headers)


@op("checks/get-suite")
async def get_check_suite(gh: FakeGitHub, ctx: Ctx) -> Reply:
    repo = _repo(ctx)
    suite = next((x for x in repo.check_suites if x.id == int(ctx.params["check_suite_id"])), None)
    if suite is None:
        raise GitHubError(404, "Not Found")
    return Reply(200, gh.check_suite_json(repo, suite))


@op("repos/create-commit-status")
async def create_commit_status(gh: FakeGitHub, ctx: Ctx) -> Reply:
    repo, body = _repo(ctx), ctx.body
    sha = _commit(ctx)
    assert ctx.actor is not None
    record = gh.set_commit_status(repo.full_name, sha, body.get("context") or "default", body["state"],
                                  target_url=body.get("target_url"), description=body.get("description"),
                                  user=ctx.actor.login)
    return _created(gh.commit_status_json(repo, record))


@op("repos/get-combined-status-for-ref")
async def get_combined_status(gh: FakeGitHub, ctx: Ctx) -> Reply:
    repo = _repo(ctx)
    sha = _commit(ctx)
    latest = gh.latest_statuses(repo, sha)
    reply = gh.paginate(ctx, [gh.commit_status_json(repo, x, creator=False) for x in latest])
    api = f"{gh.url}/repos/{repo.full_name}"
    return Reply(200, {
        "state": gh.combined_state(repo, sha), "statuses": reply.body, "sha": sha, "total_count": len(latest),
        "repository": gh.combined_repo_json(repo), "commit_url": f"{api}/commits/{sha}",
        "url": f"{api}/commits/{sha}/status"}, reply.headers)


@op("repos/list-commit-statuses-for-ref")
async def list_commit_statuses(gh: FakeGitHub, ctx: Ctx) -> Reply:
    repo = _repo(ctx)
    sha = _commit(ctx)
    records = [x for x in reversed(repo.status_records) if x.sha == sha]
    return gh.paginate(ctx, [gh.commit_status_json(repo, x) for x in records])
