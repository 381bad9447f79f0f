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
from datetime import UTC, datetime
from typing import TextIO

import aiohttp
from aiohttp import web
from gidgethub import routing

from bot import access, links, logs
from bot.arbiter import Arbiter
from bot.context import Context
from bot.errors import PreviewError, StartupError
from bot.gateway import ISTIO_RESOURCES, gateway_problem, istio_api_problem
from bot.github.api import Pacer
from bot.github.auth import AppAuth
from bot.github.client import RepoClient
from bot.github.errors import GitHubError
from bot.handlers import checks, preview_commands, pull_request
from bot.kube import Kube, KubeError
from bot.leader import LeaderElector
from bot.manifests import VIRTUAL_SERVICE_API
from bot.previews import DeployResult, Previewer
from bot.queue import WorkQueue
from bot.reconcile import UNFINISHED, GcReport, Reconciler, Repositories
from bot.reporting import Reporter
from bot.settings import Settings, kube_timeout, load_cluster_settings, load_settings
from bot.timestamps import parse_time
from bot.webhook import WebhookConfig, create_app

log = logging.getLogger(__name__)
# One PR is converged at most once a second; `pull_request` events in between merge (bot.coalesce).
CONVERGE_INTERVAL = 1.0


def build_router() -> routing.Router:
    return routing.Router(pull_request.router, preview_commands.router, checks.router)


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
        self.arbiter = Arbiter(kube, namespace=settings.lease_namespace, identity=settings.identity)
        # What PRs show (sticky comments, Deployments): one per process, its caches with it.
        self.reporter = Reporter(link_lines=lambda repo, repo_id, n: links.report_lines(kube, repo, repo_id, n),
                                 identity=settings.identity, delete_environments=settings.delete_environments,
                                 header_name=settings.cluster.header_name, match_mode=settings.cluster.match_mode,
                                 app_id=settings.app_id)
        self.previewer = Previewer(settings.cluster, kube, ready_timeout=settings.ready_timeout,
                                   arbiter=self.arbiter, reporter=self.reporter,
                                   image_pull_grace=settings.image_pull_grace)
        self.previewer.link_refresh = lambda repo, number: links.refresh_sticky(self.reporter, self.client_for,
                                                                                repo, number)
        self.queue = WorkQueue(settings.max_concurrency, max_pending=settings.max_queue,
                               min_interval=CONVERGE_INTERVAL)
        self.ctx = Context(settings=settings, kube=kube, auth=self.auth, previewer=self.previewer,
                           queue=self.queue, router=build_router(), reporter=self.reporter)
        self.webhook = WebhookConfig(
            secret=settings.webhook_secret, max_body_bytes=settings.max_body_bytes,
            dispatch=self.ctx.dispatch, submit=self.queue.submit,
            readiness={"kubernetes": cached_check(lambda: kube_reachable(kube), 5.0),
                       "github-key": self.auth.check_key})
        self.elector = LeaderElector(kube, namespace=settings.lease_namespace, name=settings.lease_name,
                                     identity=settings.identity, lease_seconds=settings.lease_seconds) \
            if settings.leader_election else None
        self.port = 0
        self.repositories = Repositories(self.auth)
        self.reconciler = Reconciler(settings, kube, self.previewer, self.repositories, self.queue, self.ctx.waits,
                                     superseded=self.ctx.superseded, elector=self.elector)
        # A teardown here that frees a slot while PRs wait in line queues the deploy of the oldest.
        self.previewer.on_slot_freed = self.reconciler.slot_freed

    async def client_for(self, repo_id: int | None, repo: str) -> RepoClient | None:
        """A client on the repository's installation (bot.reconcile.Repositories.client_for)."""
        return await self.repositories.client_for(repo_id, repo)

    async def reconcile_once(self, *, dry_run: bool = False) -> GcReport:
        return await self.reconciler.reconcile_once(dry_run=dry_run)

    @property
    def first_pass_done(self) -> bool:
        """The start-up pass (discovery of missed events, then reconciliation) has run."""
        return self.reconciler.first_pass_done

    def check_waits(self, now: float | None = None) -> list[tuple[int, str, int]]:
        """Queue a new look at every PR whose wait for checks ran out (the decision reports it); returns
        their (repository id, repository name, PR)."""
        due = self.ctx.waits.due(time.time() if now is None else now)
        for repo_id, repo, number in due:
            self.ctx.waits.forget(repo_id, number)  # noted again if it still waits
            self.reconciler.resume(repo_id, repo, number, UNFINISHED)
        return due

    async def watch_waits_forever(self, every: float = 5.0) -> None:
        """One process-wide loop (no task per PR): waits live in this replica's memory, so every replica
        runs it, leader or not."""
        while True:
            if self.queue.accepting:
                self.check_waits()
            await asyncio.sleep(every)


async def kube_reachable(kube: Kube) -> None:
    """Readiness: the API server answers and accepts the credentials; raises StartupError naming the
    server and its answer (shown by /readyz)."""
    try:
        await kube.ping()
    except KubeError as exc:
        raise StartupError(f"Kubernetes: {kube.server}: {exc}") from None


async def check_gateway(kube: Kube, settings: Settings) -> None:
    """PREVIEW_GATEWAY exists and serves the template's hosts; raises StartupError naming both (and a
    cluster that cannot be read, with the API server's URL)."""
    try:
        found = await kube.gateway(settings.cluster.gateway)
    except KubeError as exc:
        # An exec plugin that fails stops start-up before this (bot/kube/transport.py); its token can still be refused.
        hint = {401: " (the API server does not accept the credentials: an expired or revoked token or client "
                     "certificate, or an exec plugin's token for another cluster)",
                403: " (the bot needs `get` on gateways.networking.istio.io there)"}.get(exc.status, "")
        raise StartupError(f"Kubernetes: reading Gateway {settings.cluster.gateway} from {kube.server} "
                           f"failed: {exc}{hint}") from None
    except PreviewError as exc:  # TemporaryError: unreachable after the adapter's retries
        raise StartupError(f"Kubernetes: {kube.server}: {exc}") from None
    problem = gateway_problem(found, settings.cluster)
    if problem and found is None:  # a 404 also when the cluster has no Istio CRDs: name that instead
        try:
            served = await kube.inventory.served_resources(VIRTUAL_SERVICE_API)
        except (KubeError, PreviewError):
            served = frozenset(ISTIO_RESOURCES)  # discovery unreadable: keep the Gateway's message
        problem = istio_api_problem(VIRTUAL_SERVICE_API, served, kube.server) or problem
    if problem:
        raise StartupError(problem)


async def check_access(kube: Kube, settings: Settings, *, reads_only: bool = False) -> None:
    """The API server allows every call the bot makes (bot.access) and its namespaces exist; raises
    StartupError with one line naming each refused namespace, verbs, resource and the RBAC object of
    deploy/ to apply. An authorization API that cannot be asked only warns (the calls tell later).
    `reads_only`: for a pass that changes nothing (`gc --dry-run`), only its reads (bot.access.reads_only)."""
    namespaces = {"preview_namespace": settings.cluster.namespace,
                  "routing_namespace": settings.cluster.routing_namespace,
                  "lease_namespace": settings.lease_namespace}
    needs = access.needed(**namespaces)
    refused: list[str] = []
    try:
        for need in access.reads_only(needs) if reads_only else needs:
            verbs = []
            for verb in need.verbs:
                answer = await kube.call("POST", access.REVIEW_PATH, body=access.review(verb, need))
                if not ((answer or {}).get("status") or {}).get("allowed"):
                    verbs.append(verb)
            if verbs:
                refused.append(access.refusal(need, verbs))
    except KubeError as exc:
        log.warning("cannot check the bot's Kubernetes access: %s", exc)
        return
    except PreviewError as exc:
        raise StartupError(f"Kubernetes: {kube.server}: {exc}") from None
    if refused:
        raise StartupError(f"Kubernetes: {kube.server}: the bot " + "; ".join(refused))
    for probe in access.namespace_probes(**namespaces):
        if reads_only and probe.setting == "POD_NAMESPACE":
            continue  # no Lease is read nor written
        try:
            await kube.call("POST", probe.path, query=[("dryRun", "All")], body=probe.body)
        except KubeError as exc:  # only a missing namespace counts: the calls report anything else
            missing = access.missing_namespace(probe, exc.status, str(exc))
            if missing:
                raise StartupError(missing) from None
        except PreviewError as exc:
            raise StartupError(f"Kubernetes: {kube.server}: {exc}") from None


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
        await check_gateway(kube, settings)
        await check_access(kube, settings)
        bot = Bot(settings, session, kube)
        bot.webhook.readiness["gateway"] = cached_check(lambda: check_gateway(kube, settings), 10.0)
        runner = web.AppRunner(create_app(bot.webhook), access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            await runner.cleanup()
            raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        bot.port = runner.addresses[0][1]
        log.info("listening", extra={"host": host, "port": bot.port})
        # In the background: its retries (GitHub down) must not hold up serving nor a SIGTERM.
        key_check = asyncio.create_task(_check_app_key(bot.auth), name="app-key-check")
        reconciler = asyncio.create_task(bot.reconciler.run_forever(), name="reconciler")
        waits = asyncio.create_task(bot.watch_waits_forever(), name="check-waits")
        try:
            yield bot
        finally:
            for task in (key_check, waits):
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task
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


async def _check_app_key(auth: AppAuth) -> None:
    """Log whether GitHub accepts the App's key (GET /app with its JWT); a warning, never a crash."""
    try:
        log.info("GitHub accepts the App key", extra={"app": await auth.verify_with_github()})
    except GitHubError as exc:
        log.warning("GitHub refused the App key: %s %s", exc.status, exc)
    except Exception as exc:  # GitHub may be unreachable while we start: the first event tells again
        log.warning("GitHub could not be asked whether it accepts the App key: %s", type(exc).__name__)


async def linger(bot: Bot, delay: float, interrupt: asyncio.Event) -> None:
    """After SIGTERM: /readyz answers 503 while deliveries are still accepted, for `delay` seconds or
    until `interrupt` is set (a second signal). Kubernetes removes a terminating pod from its Service's
    EndpointSlices at the same time as it sends SIGTERM, and kube-proxy and ingresses apply that a moment
    later (kubernetes.io: Pod lifecycle, "Termination of Pods"); deliveries still sent here meanwhile
    would be refused, and GitHub does not redeliver them."""
    if delay <= 0:
        return
    bot.webhook.terminating = True
    log.info("terminating: not ready, still accepting deliveries", extra={"delay": delay})
    with suppress(TimeoutError):
        async with asyncio.timeout(delay):
            await interrupt.wait()


async def serve(settings: Settings, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with running(settings, host, port) as bot:
        await stop.wait()
        stop.clear()  # a second SIGTERM or SIGINT ends the delay
        await linger(bot, settings.shutdown_delay, stop)


def run(host: str, port: int) -> int:
    """`serve`; a start-up failure raises ConfigError or StartupError (the CLI prints one line, exit 2)."""
    _setup_logs("INFO", sys.stdout)
    settings = load_settings(os.environ)
    asyncio.run(serve(settings, host, port))
    return 0


def _setup_logs(default: str, stream: TextIO) -> None:
    logs.setup_from_environment(os.environ, default, stream)


def _cluster_unusable(kube: Kube, exc: Exception) -> StartupError:
    """A Kubernetes failure that ends `gc` or `list`: one line with the server's URL."""
    return StartupError(f"Kubernetes: {kube.server}: {exc}")


def _command_logs() -> None:
    """gc and list print their own output: logs go to stderr, and only errors unless LOG_LEVEL says more
    (a retried call is not worth a line)."""
    _setup_logs("ERROR", sys.stderr)


def run_gc(*, dry_run: bool) -> int:
    """One reconciliation pass, printed, after the access check of `serve` (check_access; its reads alone
    with `dry_run`): a refusal raises StartupError (one line, exit 2). The redeploys it finds due
    (`resume:` lines) are run here before exiting, for all of them at most the longest a deploy may wait
    (Previewer.longest_wait) + 60 s, each outcome printed (`resumed:`). One not done by then is left to
    `serve` (its passes resume unfinished deploys). Exit 1 when an error was printed."""
    _command_logs()
    settings = load_settings(os.environ, webhooks=False)

    async def main() -> tuple[GcReport, list[str], list[str]]:
        async with _adapters(lambda: Kube.from_environment(settings.cluster,
                                                           timeout=settings.kube_timeout)) as (session, kube):
            # As `serve` does: a missing Role stops gc with one line before its pass changes anything, not
            # preview by preview half-way through (a teardown that may delete routes but not take a lock).
            await check_access(kube, settings, reads_only=dry_run)
            bot = Bot(settings, session, kube)
            due: list[tuple[int, str, int, str]] = []
            try:
                report = await bot.reconciler.reconcile_once(
                    dry_run=dry_run, resume=lambda repo_id, repo, number, why: due.append((repo_id, repo, number, why)))
            except (KubeError, PreviewError) as exc:
                raise _cluster_unusable(kube, exc) from None
            outcomes, errors = await _run_resumes(bot, due, bot.previewer.longest_wait + 60)
            return report, outcomes, errors

    report, outcomes, resume_errors = asyncio.run(main())
    prefix = "would " if dry_run else ""
    for action in report.actions:
        print(f"{prefix}{action.kind}: {action.target} ({action.reason})")
    for line in outcomes:
        print(line)
    errors = report.errors + resume_errors
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    if not report.actions:
        # After errors the pass did not see everything: "nothing to do" would not be true.
        print(f"nothing done; {len(errors)} error(s), on stderr" if errors else "nothing to do")
    return 1 if errors else 0


async def _run_resumes(bot: Bot, due: list[tuple[int, str, int, str]],
                       timeout: float) -> tuple[list[str], list[str]]:
    """Run the redeploys a gc pass found due, at most `max_concurrency` at once and `timeout` seconds in
    all: (one `resumed:` line per redeploy, error lines). One not finished in time is cancelled (its
    GitHub Deployment stays in progress: `serve` resumes it) and is an error."""
    slots = asyncio.Semaphore(bot.settings.max_concurrency)

    async def one(repo_id: int, repo: str, number: int, why: str) -> DeployResult | None:
        async with slots:
            return await bot.reconciler.redeploy(repo_id, repo, number, why)

    tasks = {asyncio.create_task(one(*resume)): f"{resume[1]}#{resume[2]}" for resume in due}
    if not tasks:
        return [], []
    _, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    outcomes: list[str] = []
    errors: list[str] = []
    for task, target in tasks.items():
        if task in pending:
            errors.append(f"{target}: redeploy not finished within {timeout:g} s; left to `serve`")
        elif task.exception() is not None:
            exc = task.exception()
            errors.append(f"{target}: redeploy failed: {type(exc).__name__}: {exc}")
        else:
            result = task.result()
            if result is None:
                outcomes.append(f"resumed: {target} (not deployed now: the PR is closed, or it waits for or "
                                "failed its checks; its comment says which)")
            else:
                outcomes.append(f"resumed: {target} ({result.state.value}"
                                f"{': ' + result.detail if result.detail else ''})")
    return outcomes, errors


def _age(created: str, now: datetime) -> str:
    moment = parse_time(created)
    if moment is None:
        return "?"
    seconds = int((now - moment).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def run_list(*, output: str) -> int:
    _command_logs()
    cluster = load_cluster_settings(os.environ, domain=os.environ.get("PREVIEW_DOMAIN") or "unset.invalid")
    kube = Kube.from_environment(cluster, timeout=kube_timeout(os.environ))
    try:
        previews = asyncio.run(kube.live_previews())
    except (KubeError, PreviewError) as exc:
        raise _cluster_unusable(kube, exc) from None
    finally:
        kube.close()
    now = datetime.now(UTC)
    rows = [{"repo": p.repo, "pr": p.number, "key": p.key, "services": list(p.services), "sha": p.sha,
             "age": _age(p.created, now), "urls": [f"https://{h}" for h in p.hosts], "keep": p.keep,
             "namespace": p.namespace or cluster.namespace}
            for p in previews]
    for p in previews:
        if p.unreadable:  # made before PREVIEW_NAMESPACE changed: its services cannot be listed
            print(f"note: {p.repo}#{p.number}: {p.unreadable}", file=sys.stderr)
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

