"""bot.triggers: what a pull_request event means for the preview."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.repo_config import RepoConfig, ServiceConfig
from bot.triggers import Decision, EventSubject, PullRequestFacts, decide, event_subject, facts_from_pull, is_fork

SERVICES = (ServiceConfig(name="a", image="i", port=1),)
AUTO = RepoConfig(services=SERVICES, trigger="auto")
LABEL = RepoConfig(services=SERVICES, trigger="label", label="preview")
COMMAND = RepoConfig(services=SERVICES, trigger="command")
UPDATES = ["opened", "reopened", "synchronize", "ready_for_review"]


def facts(action: str, *, draft: bool = False, fork: bool = False, labels: tuple[str, ...] = (),
          changed: str | None = None) -> PullRequestFacts:
    return PullRequestFacts(action=action, draft=draft, fork=fork, labels=frozenset(labels), changed_label=changed)


@settings(max_examples=50)
@given(st.sampled_from([AUTO, LABEL, COMMAND]), st.booleans(), st.booleans(),
       st.frozensets(st.sampled_from(["preview", "bug", "x"])))
def test_closed_always_tears_down(config: RepoConfig, draft: bool, fork: bool, labels: frozenset[str]) -> None:
    assert decide(config, PullRequestFacts("closed", draft, fork, labels)) is Decision.TEARDOWN


@pytest.mark.parametrize("action", UPDATES)
def test_auto_deploys_on_updates(action: str) -> None:
    assert decide(AUTO, facts(action)) is Decision.DEPLOY


@pytest.mark.parametrize("action", ["labeled", "unlabeled", "assigned", "converted_to_draft", "review_requested"])
def test_auto_ignores_other_actions(action: str) -> None:
    assert decide(AUTO, facts(action, labels=("preview",), changed="preview")) is Decision.IGNORE


@pytest.mark.parametrize("config", [AUTO, LABEL])
def test_drafts_are_ignored(config: RepoConfig) -> None:
    assert decide(config, facts("opened", draft=True, labels=("preview",))) is Decision.IGNORE
    assert decide(config, facts("ready_for_review", draft=False, labels=("preview",))) is Decision.DEPLOY


@pytest.mark.parametrize("config", [AUTO, LABEL])
def test_forks_wait_for_approval(config: RepoConfig) -> None:
    assert decide(config, facts("synchronize", fork=True, labels=("preview",))) is Decision.AWAIT_APPROVAL


@pytest.mark.parametrize("action", [*UPDATES, "labeled", "unlabeled"])
def test_command_trigger_ignores_everything_but_close(action: str) -> None:
    assert decide(COMMAND, facts(action, labels=("preview",), changed="preview")) is Decision.IGNORE


def test_a_base_branch_change_is_decided_like_a_push_of_the_same_head_but_never_for_a_fork() -> None:
    """`edited` reaches the rules only with `changes.base` (bot.coalesce.classify): the diff changed."""
    assert decide(AUTO, facts("edited")) is Decision.DEPLOY
    assert decide(AUTO, facts("edited", draft=True)) is Decision.IGNORE
    assert decide(AUTO, facts("edited", fork=True)) is Decision.IGNORE  # no new code: `/preview <sha>` redoes it
    assert decide(LABEL, facts("edited", labels=("preview",))) is Decision.DEPLOY
    assert decide(LABEL, facts("edited", labels=("bug",))) is Decision.IGNORE
    assert decide(COMMAND, facts("edited")) is Decision.IGNORE


def test_label_trigger() -> None:
    assert decide(LABEL, facts("labeled", labels=("preview",), changed="preview")) is Decision.DEPLOY
    assert decide(LABEL, facts("labeled", labels=("preview", "bug"), changed="bug")) is Decision.IGNORE
    assert decide(LABEL, facts("synchronize", labels=("preview",))) is Decision.DEPLOY
    assert decide(LABEL, facts("synchronize", labels=("bug",))) is Decision.IGNORE
    assert decide(LABEL, facts("opened")) is Decision.IGNORE
    assert decide(LABEL, facts("unlabeled", labels=(), changed="preview")) is Decision.TEARDOWN
    assert decide(LABEL, facts("unlabeled", labels=("preview",), changed="bug")) is Decision.IGNORE
    assert decide(LABEL, facts("labeled", fork=True, labels=("preview",), changed="preview")) is Decision.AWAIT_APPROVAL


def test_labels_match_whatever_their_case() -> None:
    """GitHub keeps one label per name whatever its case: `Preview` on the PR is the config's `preview`."""
    assert decide(LABEL, facts("labeled", labels=("Preview",), changed="Preview")) is Decision.DEPLOY
    assert decide(LABEL, facts("synchronize", labels=("PREVIEW",))) is Decision.DEPLOY
    assert decide(LABEL, facts("unlabeled", labels=(), changed="PreView")) is Decision.TEARDOWN
    config = RepoConfig(services=SERVICES, trigger="label", label="Deploy-Me")
    assert decide(config, facts("labeled", labels=("deploy-me",), changed="deploy-me")) is Decision.DEPLOY


def test_custom_label_name() -> None:
    config = RepoConfig(services=SERVICES, trigger="label", label="deploy-me")
    assert decide(config, facts("labeled", labels=("deploy-me",), changed="deploy-me")) is Decision.DEPLOY
    assert decide(config, facts("labeled", labels=("preview",), changed="preview")) is Decision.IGNORE
    assert decide(config, facts("unlabeled", changed="deploy-me")) is Decision.TEARDOWN


@given(st.sampled_from([AUTO, LABEL, COMMAND]), st.text(max_size=20), st.booleans(), st.booleans(),
       st.frozensets(st.sampled_from(["preview", "bug"])), st.one_of(st.none(), st.sampled_from(["preview", "bug"])))
def test_forks_never_deploy_directly(config: RepoConfig, action: str, draft: bool, fork: bool,
                                     labels: frozenset[str], changed: str | None) -> None:
    decision = decide(config, PullRequestFacts(action, draft, fork, labels, changed))
    if fork:
        assert decision is not Decision.DEPLOY
    if draft:
        assert decision in (Decision.IGNORE, Decision.TEARDOWN)


def test_fork_is_told_by_repository_id_not_name() -> None:
    from bot.triggers import facts_from_pull

    def pull(head: dict[str, object] | None, base: dict[str, object]) -> dict[str, object]:
        return {"head": {"repo": head}, "base": {"repo": base}, "labels": []}

    same = {"id": 7, "full_name": "acme/shop"}
    assert not facts_from_pull(pull(same, same), "opened").fork
    # The head was read before a rename, the base after: still the same repository.
    assert not facts_from_pull(pull(same, {"id": 7, "full_name": "acme/storefront"}), "opened").fork
    assert facts_from_pull(pull({"id": 8, "full_name": "acme/shop"}, same), "opened").fork
    assert facts_from_pull(pull(None, same), "opened").fork  # a deleted fork


@pytest.mark.parametrize(("data", "subject"), [
    ({"repository": {"id": 99, "full_name": "acme/shop"}, "pull_request": {"number": 8}},
     EventSubject(99, "acme/shop", 8)),
    ({"repository": {"id": 99, "full_name": "acme/shop"}, "issue": {"number": 3}}, EventSubject(99, "acme/shop", 3)),
    ({"repository": {"id": 99, "full_name": "acme/shop"}, "check_run": {"id": 1}}, EventSubject(99, "acme/shop", None)),
    ({"repository": {"full_name": "acme/shop"}, "pull_request": {"number": 8}}, EventSubject(None, "acme/shop", 8)),
    ({"repository": None, "pull_request": None}, EventSubject(None, "", None)),
])
def test_event_subject(data: dict[str, Any], subject: EventSubject) -> None:
    assert event_subject(data) == subject


@pytest.mark.parametrize(("head_repo", "fork"), [
    ({"id": 1, "full_name": "acme/shop"}, False),
    ({"id": 1, "full_name": "acme/renamed"}, False),  # by id: a rename is the same repository
    ({"id": 2, "full_name": "someone/shop"}, True),
    (None, True),  # a deleted fork
])
def test_is_fork(head_repo: dict[str, Any] | None, fork: bool) -> None:
    pull = {"head": {"repo": head_repo}, "base": {"repo": {"id": 1, "full_name": "acme/shop"}}}
    assert is_fork(pull) is fork
    assert facts_from_pull(pull, "opened").fork is fork  # the trigger and the reconciler's resume agree
