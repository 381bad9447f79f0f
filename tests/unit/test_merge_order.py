"""A PR's merged queue ends where processing its deliveries one by one ends (bot.coalesce "Order rule" and
"Merge rule", bot.queue, bot.webhook.enqueue, bot.handlers, bot.triggers.decide_merged).

Each run: a PR whose deploy is running (its rollout held), then a sequence of happenings on GitHub, each
delivering what GitHub sends (a snapshot of the PR at that moment); then the rollout ends and the queue
drains. The real intake rules, queue, merge and handlers run against a model of the previewer (what is
live, whether the last deploy reported ready or was cut short, the head a stop was recorded at). The
reference processes every delivery by the same handlers at once, in arrival order, with no queue.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from gidgethub import sansio
from hypothesis import given, settings
from hypothesis import strategies as st

from bot import coalesce, envelope
from bot.context import answered_cache
from bot.gate import WaitRegistry
from bot.handlers import preview_commands, pull_request
from bot.queue import WorkQueue
from bot.repo_config import RepoConfig, ServiceConfig
from bot.webhook import EventJob, enqueue
from tests.unit.fakes import APP_ID, FakeRepo

NUMBER = 7
# With `paths`: a base change (`edited`) is decided too (without, it changes nothing deployed).
SERVICES = (ServiceConfig(name="web", image="i", port=80, paths=("web/**",)),)
CONFIGS = {"auto": RepoConfig(services=SERVICES, trigger="auto"),
           "label": RepoConfig(services=SERVICES, trigger="label", label="preview")}
# What can happen to the PR. The ones GitHub sends no queued event for still change what later events carry.
HAPPENINGS = ("push", "label", "unlabel", "label-bug", "close", "reopen", "base", "draft", "ready",
              "/preview stop", "/preview", "/preview help", "stranger /preview stop")


class ModelPreviewer:
    """What bot.previews.Previewer does to the PR's preview, as state: `live` (the SHA running, None when
    torn down), `status` (ready, deploying: cut short, stopped), `stopped_at` (the head a stop recorded,
    Previewer.stopped_at_head). The first deploy waits for `rollout` and then, like the real one, stops
    short when `superseded()` says so."""

    def __init__(self, gh: FakeRepo, config: RepoConfig, rollout: asyncio.Event | None = None) -> None:
        self.gh, self.config, self.rollout = gh, config, rollout
        self.live: str | None = None
        self.status = "none"
        self.stopped_at: str | None = None

    async def load_config(self, gh: Any) -> RepoConfig:
        return self.config

    async def stopped_at_head(self, gh: Any, number: int, head_sha: str) -> bool:
        return self.stopped_at == head_sha

    async def deploy(self, gh: Any, number: int, head_sha: str | None = None, *, unless_stopped: bool = False,
                     superseded: Callable[[], bool] = lambda: False, **_: Any) -> None:
        if head_sha is None:  # read under the PR's lock, as the real deploy does
            pull = await self.gh.pull(number)
            if pull["state"] != "open":
                return
            head_sha = str(pull["head"]["sha"])
        if unless_stopped and self.stopped_at == head_sha:
            return
        self.live, self.status, self.stopped_at = head_sha, "deploying", None
        if self.rollout is not None:
            rollout, self.rollout = self.rollout, None
            await rollout.wait()
            if superseded():
                return  # reported superseded: a newer job is to say where the PR ends
        self.status = "ready"

    async def stop(self, gh: Any, number: int, reason: str, *, head_sha: str | None = None, **_: Any) -> int:
        self.live, self.status, self.stopped_at = None, "stopped", head_sha
        return 0

    def end(self) -> tuple[str | None, str]:
        return self.live, self.status


class PR:
    """The pull request on GitHub (FakeRepo's pull, which handlers read) and the deliveries it causes."""

    def __init__(self, gh: FakeRepo, labels: tuple[str, ...]) -> None:
        self.gh = gh
        self.shas = (f"{i:040x}" for i in itertools.count(1))  # the same in every run
        self.pull = gh.add_pull(NUMBER, next(self.shas), labels=labels)
        self.pull.update(draft=False, merged=False)
        self.comment_ids = itertools.count(1)

    def happen(self, what: str) -> tuple[str, dict[str, Any]] | None:
        """Apply `what` to the PR; the delivery GitHub sends for it (None: none, or not possible now)."""
        pull, labels = self.pull, {label["name"] for label in self.pull["labels"]}
        extra: dict[str, Any] = {}
        if what.startswith(("/preview", "stranger")):
            user = "mallory" if what.startswith("stranger") else "alice"
            comment = {"id": next(self.comment_ids), "body": what.removeprefix("stranger "),
                       "user": {"login": user, "type": "User"}}
            return "issue_comment", {"action": "created", "comment": comment, **self._common(),
                                     "issue": {"number": NUMBER, "pull_request": {}}}
        if what == "push" and pull["state"] == "open":
            pull["head"] = {**pull["head"], "sha": next(self.shas)}
            action = "synchronize"
        elif what in ("label", "label-bug") and (name := "preview" if what == "label" else "bug") not in labels:
            pull["labels"] = [*pull["labels"], {"name": name}]
            action, extra = "labeled", {"label": {"name": name}}
        elif what == "unlabel" and "preview" in labels:
            pull["labels"] = [label for label in pull["labels"] if label["name"] != "preview"]
            action, extra = "unlabeled", {"label": {"name": "preview"}}
        elif what == "close" and pull["state"] == "open":
            pull["state"], action = "closed", "closed"
        elif what == "reopen" and pull["state"] == "closed":
            pull["state"], action = "open", "reopened"
        elif what == "base" and pull["state"] == "open":
            action, extra = "edited", {"changes": {"base": {"ref": {"from": "release"}, "sha": {"from": "f" * 40}}}}
        elif what == "draft" and not pull["draft"]:
            pull["draft"], action = True, "converted_to_draft"
        elif what == "ready" and pull["draft"]:
            pull["draft"], action = False, "ready_for_review"
        else:
            return None
        return "pull_request", {"action": action, "number": NUMBER, "pull_request": json.loads(json.dumps(pull)),
                                **extra, **self._common()}

    @staticmethod
    def _common() -> dict[str, Any]:
        return {"repository": {"id": 101, "full_name": "acme/shop"}, "installation": {"id": 42}}


def world(config: str, monkeypatch: pytest.MonkeyPatch,
          rollout: asyncio.Event | None = None) -> tuple[PR, ModelPreviewer, SimpleNamespace]:
    gh = FakeRepo()
    gh.collaborators = {"alice": "write"}
    pr = PR(gh, ("preview",))
    previewer = ModelPreviewer(gh, CONFIGS[config], rollout)
    monkeypatch.setattr(pull_request, "repo_client", lambda _event, _gh: gh)
    monkeypatch.setattr(preview_commands, "repo_client", lambda _event, _gh: gh)
    ctx = SimpleNamespace(previewer=previewer, waits=WaitRegistry(), answered=answered_cache(),
                          fork_notices=answered_cache(), settings=SimpleNamespace(app_id=APP_ID),
                          reporter=SimpleNamespace(), superseded=lambda _repo_id, _number: False)
    return pr, previewer, ctx


async def dispatch(ctx: SimpleNamespace, event: sansio.Event) -> None:
    if event.event == "pull_request":
        await pull_request.on_pull_request(event, None, ctx)  # type: ignore[arg-type]
    else:
        await preview_commands.on_comment(event, None, ctx)  # type: ignore[arg-type]


def delivered(pr: PR, what: str) -> tuple[str, bytes, str] | None:
    """The delivery `what` causes, when it is work (bot.coalesce.classify): (event, body, kind)."""
    sent = pr.happen(what)
    if sent is None:
        return None
    event, data = sent
    body = json.dumps(data).encode()
    kind = coalesce.classify(event, envelope.decode_envelope(body))
    return None if kind is None else (event, body, kind)


async def one_by_one(config: str, happenings: tuple[str, ...], monkeypatch: pytest.MonkeyPatch, *,
                     first_early: bool) -> tuple[str | None, str]:
    """The reference: every delivery processed at once by the handlers, in arrival order, once all of them
    arrived (a handler reads GitHub as it is when it runs, as in the queue); with `first_early`, the first
    delivery (a push) is processed before the happenings instead."""
    pr, previewer, ctx = world(config, monkeypatch)
    sent = [delivered(pr, "push")]
    if first_early:
        await run_all(ctx, sent)
        sent = []
    sent += [delivered(pr, what) for what in happenings]
    await run_all(ctx, sent)
    return previewer.end()


async def run_all(ctx: SimpleNamespace, deliveries: list[tuple[str, bytes, str] | None]) -> None:
    for sent in deliveries:
        if sent is not None:
            event, body, _kind = sent
            await dispatch(ctx, sansio.Event(envelope.payload(body), event=event, delivery_id="d"))


async def queued(config: str, happenings: tuple[str, ...], monkeypatch: pytest.MonkeyPatch, *,
                 running: bool) -> tuple[tuple[str | None, str], int]:
    """Through intake's queue and merge rules: the end state, and the most jobs that waited at once. With
    `running`, the first delivery's deploy runs while the others arrive (its rollout held until then), and
    may be cut short by them (bot.queue.WorkQueue.supersedes_running); else all arrive before any runs."""
    rollout = asyncio.Event()
    pr, previewer, ctx = world(config, monkeypatch, rollout if running else None)
    queue = WorkQueue(max_concurrency=1, max_pending=100)
    ctx.superseded = lambda repo_id, number: queue.supersedes_running((str(repo_id), number))

    async def run(event: sansio.Event) -> None:
        await dispatch(ctx, event)

    most = 0
    for i, what in enumerate(("push", *happenings)):
        sent = delivered(pr, what)
        if sent is not None:
            event, body, kind = sent
            enqueue(queue.submit, kind, EventJob(run, event, f"d{i}", body, envelope.decode_envelope(body)))
            most = max(most, queue.waiting)
        if i == 0 and running:
            await asyncio.sleep(0)  # the push's deploy runs: its rollout is held until every delivery is in
    rollout.set()
    await queue.join()
    return previewer.end(), most


def sequences(length: int) -> list[tuple[str, ...]]:
    return [s for n in range(1, length + 1) for s in itertools.product(HAPPENINGS, repeat=n)]


async def check(config: str, happenings: tuple[str, ...], monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What is wrong with the queue's outcome for `happenings`, with and without a deploy running."""
    wrong = []
    expected = await one_by_one(config, happenings, monkeypatch, first_early=False)
    got, most = await queued(config, happenings, monkeypatch, running=False)
    if got != expected:
        wrong.append(f"{' -> '.join(happenings)}: one by one {expected}, queued {got}")
    # A deploy running while they arrive read its head before them; cut short, it is done again after
    # them: either is the end of some processing one by one in arrival order, never one left half-done.
    early = await one_by_one(config, happenings, monkeypatch, first_early=True)
    got_running, most_running = await queued(config, happenings, monkeypatch, running=True)
    if got_running not in (early, expected):
        wrong.append(f"{' -> '.join(happenings)} during a deploy: one by one {early} or {expected}, "
                     f"queued {got_running}")
    # Bounded: one converge job per run of pull_request events between two commands, not one per event.
    commands = sum(what.startswith(("/", "stranger")) for what in happenings)
    if max(most, most_running) > 2 * commands + 1:
        wrong.append(f"{' -> '.join(happenings)}: {max(most, most_running)} jobs waited")
    return wrong


@pytest.mark.parametrize("config", sorted(CONFIGS))
async def test_every_short_sequence_ends_as_one_by_one(config: str, monkeypatch: pytest.MonkeyPatch) -> None:
    wrong = [line for happenings in sequences(3) for line in await check(config, happenings, monkeypatch)]
    assert not wrong, f"{len(wrong)} sequences end elsewhere, e.g.\n" + "\n".join(wrong[:15])


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(sorted(CONFIGS)), st.lists(st.sampled_from(HAPPENINGS), min_size=4, max_size=14))
def test_longer_sequences_end_as_one_by_one(config: str, happenings: list[str]) -> None:
    with pytest.MonkeyPatch.context() as monkeypatch:
        assert asyncio.run(check(config, tuple(happenings), monkeypatch)) == []


async def test_the_example_push_stop_label_ends_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    """A deploy runs; a push, `/preview stop`, a label at the same head: stopped, as one by one."""
    for config in CONFIGS:
        happenings = ("push", "/preview stop", "label-bug")
        assert await one_by_one(config, happenings, monkeypatch, first_early=True) == (None, "stopped")
        assert (await queued(config, happenings, monkeypatch, running=True))[0] == (None, "stopped")


async def test_a_flood_between_two_commands_is_one_job(monkeypatch: pytest.MonkeyPatch) -> None:
    flood = ("label-bug", "push", "base") * 30
    _, most = await queued("auto", ("/preview help", *flood, "/preview help", *flood), monkeypatch, running=True)
    assert most == 4  # help, converge, help, converge
