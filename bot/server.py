"""Process wiring for `serve`, `gc` and `list`: settings -> adapters -> app, and an orderly shutdown."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime, timedelta

import aiohttp
import cachetools
import gidgethub
from aiohttp import web
from gidgethub import routing

from bot import logs
from bot.context import Context
from bot.errors import ConfigError
from bot.github.api import Pacer
from bot.github.auth import AppAuth
from bot.github.client import RepoClient
from bot.handlers import commands, pull_request
from bot.kube import Kube
from bot.leader import LeaderElector
from bot.previews import Previewer
from bot.queue import QueueClosed, QueueFull, WorkQueue
from bot.reconcile import GcReport, reconcile
from bot.settings import Settings, load_cluster_settings, load_settings
from bot.triggers import Decision, decide, facts_from_pull
from bot.webhook import WebhookConfig, create_app

log = logging.getLogger(__name__)
# One PR is converged at most once a second; `pull_request` events in between merge (bot.coalesce).
CONVERGE_INTERVAL = 1.0


def build_router() -> routing.Router:
    return routing.Router(pull_request.router, commands.router)


def cached_check(check: Callable[[], Awaitable[None]], ttl: float) -> Callable[[], Awaitable[None]]:
    """Readiness probes run often; a success is reused for `ttl` seconds (spares the API server)."""
    passed_at = -float("inf")

    async def run() -> None:
        nonlocal passed_at
        if time.monotonic() - passed_at < ttl:
            return
        await check()
        passed_at = time.monotonic()

    return run


class Bot:
    """Everything one `serve` process owns."""

    def __init__(self, settings: Settings, session: aiohttp.ClientSession, kube: Kube) -> None:
        self.settings = settings
        self.kube = kube
        self.auth = AppAuth(app_id=settings.app_id, private_key=settings.private_key, api_url=settings.api_url,
                            session=session, pacer=Pacer(settings.content_requests_per_minute,
                                                                per_hour=settings.content_requests_per_hour),
                            timeout=settings.github_timeout)
        self.previewer = Previewer(settings.cluster, kube, ready_timeout=settings.ready_timeout,
                                   identity=settings.identity)
        self.queue = WorkQueue(settings.max_concurrency, max_pending=settings.max_queue,
                               min_interval=CONVERGE_INTERVAL)
        self.ctx = Context(settings=settings, kube=kube, auth=self.auth, previewer=self.previewer,
                           queue=self.queue, router=build_router())
        self.webhook = WebhookConfig(
            secret=settings.webhook_secret, max_body_bytes=settings.max_body_bytes,
            dispatch=self.ctx.dispatch, submit=self.queue.submit,
            readiness={"kubernetes": cached_check(kube.ping, 5.0), "github-key": self.auth.check_key})
        self.elector = LeaderElector(kube, namespace=settings.lease_namespace, name=settings.lease_name,
                                     identity=settings.identity, lease_seconds=settings.lease_seconds) \
            if settings.leader_election else None
        self.port = 0
        self._first_pass = True  # after a restart, look for deploys a crash left half-done
        self._installations: cachetools.TTLCache[str, int | None] = cachetools.TTLCache(maxsize=4096, ttl=600)

    async def client_for(self, repo: str) -> RepoClient | None:
        """A client on the repository's installation; None when the App is not installed there."""
        if repo not in self._installations:
            try:
                data = await self.auth.api().getitem(f"/repos/{repo}/installation", jwt=self.auth.app_jwt())
                self._installations[repo] = int(data["id"])
            except gidgethub.BadRequest as exc:
                if exc.status_code != 404:
                    raise
                self._installations[repo] = None
        installation = self._installations[repo]
        if installation is None:
            return None
        return RepoClient(await self.auth.installation_api(installation), repo)

    async def reconcile_once(self, *, dry_run: bool = False) -> GcReport:
        report = await reconcile(self.kube, self.previewer, self.client_for,
                                 idle_ttl=timedelta(days=self.settings.idle_ttl_days), dry_run=dry_run,
                                 resume=None if dry_run else self.resume, check_stuck=self._first_pass,
                                 stuck_after=timedelta(seconds=self.settings.ready_timeout + 60),
                                 identity=self.settings.identity)
        self._first_pass = False
        return report

    async def discover_missed(self) -> list[tuple[str, int]]:
        """After a restart: open PRs that should have a preview and have none (an event lost mid-flight).

        GitHub does not redeliver, so this walks every installation's repositories once at start."""
        live = {(p.repo, p.number) for p in await self.kube.live_previews()}
        missed: list[tuple[str, int]] = []
        async for installation in self.auth.api().getiter("/app/installations", jwt=self.auth.app_jwt()):
            gh = await self.auth.installation_api(int(installation["id"]))
            async for repo in gh.getiter("/installation/repositories", iterable_key="repositories"):
                client = RepoClient(gh, str(repo["full_name"]))
                try:
                    config = await self.previewer.load_config(client)
                except ConfigError:
                    continue  # reported on the PR when its next event comes
                if config is None:
                    continue
                for pull in await client.open_pulls():
                    number = int(pull["number"])
                    wanted = decide(config, facts_from_pull(pull, "synchronize")) is Decision.DEPLOY
                    if wanted and (client.repo, number) not in live:
                        missed.append((client.repo, number))
                        self.resume(client.repo, number)
        return missed

    def resume(self, repo: str, number: int) -> None:
        """Queue a redeploy of a preview found half-done (crash mid-deploy) or behind its PR's head."""
        async def job() -> None:
            client = await self.client_for(repo)
            if client is None:
                return
            pull = await client.pull(number)
            if pull.get("state") != "open":
                return
            # A webhook may have got there first (this job waited behind it in the PR's queue): the
            # deploy is then a no-op.
            await self.previewer.deploy(client, number, str(pull["head"]["sha"]), force=False,
                                        superseded=lambda: self.ctx.superseded(repo, number))
        try:
            self.queue.submit((repo, number), job, supersedes=False, slot="resume")
        except QueueClosed:
            pass
        except QueueFull:
            log.warning("work queue full: resume left to the next reconciliation pass",
                        extra={"repo": repo, "pr": number})

    def leading(self) -> bool:
        return self.elector is None or self.elector.leading

    async def reconcile_forever(self) -> None:
        """Reconcile every `reconcile_interval` while leading; leadership is renewed by its own task, so a
        long pass never lets the lease lapse unnoticed, and a pass stops as soon as leadership is lost."""
        elector = asyncio.create_task(self.elector.run(), name="leader-election") if self.elector else None
        next_pass = 0.0
        try:
            while True:
                if self.leading() and self.queue.accepting and time.monotonic() >= next_pass:
                    await self._pass_while_leading()
                    next_pass = time.monotonic() + self.settings.reconcile_interval
                await asyncio.sleep(min(1.0, max(next_pass - time.monotonic(), 0.05)))
        finally:
            if elector is not None:
                elector.cancel()
                with suppress(asyncio.CancelledError):
                    await elector

    async def _pass_while_leading(self) -> None:
        task = asyncio.create_task(self._pass(), name="reconcile-pass")
        while not task.done():
            await asyncio.wait({task}, timeout=0.5)
            if not task.done() and not self.leading():
                log.warning("leadership lost during a reconciliation pass; stopping it")
                task.cancel()
        with suppress(asyncio.CancelledError):
            await task

    async def _pass(self) -> None:
        try:
            if self._first_pass:
                missed = await self.discover_missed()
                if missed:
                    log.info("resuming previews missed while down", extra={"count": len(missed)})
            await self.reconcile_once()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("reconciliation pass failed")


@asynccontextmanager
async def _adapters(make_kube: Callable[[], Kube]) -> AsyncIterator[tuple[aiohttp.ClientSession, Kube]]:
    kube = make_kube()
    session = aiohttp.ClientSession()
    try:
        yield session, kube
    finally:
        await session.close()
        kube.close()


@asynccontextmanager
async def running(settings: Settings, host: str, port: int, *,
                  kubeconfig: str | None = None) -> AsyncIterator[Bot]:
    """The serving bot; leaving the block is an orderly shutdown: intake closes (503), in-flight work
    gets `drain_timeout` to finish, the lease is handed over."""
    async with _adapters(lambda: Kube.from_environment(settings.cluster, kubeconfig,
                                                       timeout=settings.kube_timeout)) as (session, kube):
        bot = Bot(settings, session, kube)
        runner = web.AppRunner(create_app(bot.webhook), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        bot.port = runner.addresses[0][1]
        log.info("listening", extra={"host": host, "port": bot.port})
        try:
            log.info("GitHub accepts the App key", extra={"app": await bot.auth.verify_with_github()})
        except Exception as exc:  # a warning, not a crash: GitHub may be down while we start
            log.warning("GitHub did not accept the App key yet: %s", type(exc).__name__)
        reconciler = asyncio.create_task(bot.reconcile_forever(), name="reconciler")
        try:
            yield bot
        finally:
            log.info("shutting down: intake closed, draining work", extra={"in_flight": bot.queue.depth})
            bot.webhook.draining = True
            finished = await bot.queue.drain(settings.drain_timeout)
            reconciler.cancel()
            with suppress(asyncio.CancelledError):
                await reconciler
            if bot.elector is not None:
                with suppress(Exception):
                    await bot.elector.release()
            await runner.cleanup()
            log.info("stopped", extra={"drained": finished})


async def serve(settings: Settings, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with running(settings, host, port):
        await stop.wait()


def run(host: str, port: int) -> int:
    logs.setup(os.environ.get("LOG_LEVEL", "INFO"))
    try:
        settings = load_settings(os.environ)
    except ConfigError as exc:
        print(f"preview-bot: error: {exc}", file=sys.stderr)
        return 2
    asyncio.run(serve(settings, host, port))
    return 0


def run_gc(*, dry_run: bool) -> int:
    settings = load_settings(os.environ)

    async def main() -> GcReport:
        async with _adapters(lambda: Kube.from_environment(settings.cluster)) as (session, kube):
            return await Bot(settings, session, kube).reconcile_once(dry_run=dry_run)

    report = asyncio.run(main())
    prefix = "would " if dry_run else ""
    for action in report.actions:
        print(f"{prefix}{action.kind}: {action.target} ({action.reason})")
    for error in report.errors:
        print(f"error: {error}", file=sys.stderr)
    if not report.actions:
        print("nothing to do")
    return 1 if report.errors else 0


def _age(created: str, now: datetime) -> str:
    try:
        seconds = int((now - datetime.fromisoformat(created.replace("Z", "+00:00"))).total_seconds())
    except ValueError:
        return "?"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def run_list(*, output: str) -> int:
    cluster = load_cluster_settings(os.environ, domain=os.environ.get("PREVIEW_DOMAIN") or "unset.invalid")
    kube = Kube.from_environment(cluster)
    try:
        previews = asyncio.run(kube.live_previews())
    finally:
        kube.close()
    now = datetime.now(UTC)
    rows = [{"repo": p.repo, "pr": p.number, "key": p.key, "services": list(p.services), "sha": p.sha,
             "age": _age(p.created, now), "urls": [f"https://{h}" for h in p.hosts], "keep": p.keep}
            for p in previews]
    if output == "json":
        print(json.dumps(rows, indent=2))
        return 0
    header = ("REPO", "PR", "SERVICES", "SHA", "AGE", "URLS")
    table = [header] + [(p.repo, str(p.number), ",".join(p.services), p.sha[:12], _age(p.created, now),
                         " ".join(f"https://{h}" for h in p.hosts)) for p in previews]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
    return 0

