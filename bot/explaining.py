"""I/O around `bot.explain`: read the live Gateway and VirtualServices, explain, print or reply.

`preview-bot explain` (CLI) and `/preview explain` (PR comment) both end here; the routing logic itself
is pure and lives in `bot.explain`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bot import explain, logs
from bot.errors import ConfigError, StartupError, TemporaryError
from bot.kube import Kube, KubeError
from bot.naming import PreviewKey
from bot.settings import ClusterSettings, kube_timeout, load_cluster_settings

# `\Z`, not `$`: Python's `$` also matches before a final line break, which would pass a value ending in one.
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")  # RFC 9110 field-name / method token
_HOST = re.compile(r"^(?=.{1,253}(:|\Z))[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?"
                   r"(\.[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?)*\.?(:[0-9]{1,5})?\Z")
MAX_REPLY = 60_000
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z")


def parse_header(text: str) -> tuple[str, str]:
    """`name=value` or `name: value` -> (lowercase name, value); ConfigError naming `--header`."""
    name, sep, value = text.partition("=")
    if not sep or ":" in name:
        name, sep, value = text.partition(":")
    name, value = name.strip(), value.strip()
    if not sep or not _TOKEN.match(name):
        raise ConfigError("--header", "", f"expected name=value with a valid header name, got {text!r}")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ConfigError("--header", "", f"value of {name} has control characters")
    return name.lower(), value


def build_request(*, host: str, headers: Sequence[str], source: str | None, port: int | None, path: str,
                  method: str) -> explain.Request:
    """Validated CLI input -> Request; every error is a ConfigError naming the flag."""
    if not _HOST.match(host) or host.startswith("*"):
        raise ConfigError("--host", "", f"must be a host name (optionally :port), got {host!r}")
    _, colon, host_port = host.rpartition(":")
    if colon and not (host_port.isdigit() and 1 <= int(host_port) <= 65535):
        raise ConfigError("--host", "", f"has a port outside 1-65535: {host!r}")
    if source is not None and not _LABEL.match(source):
        raise ConfigError("--from", "", f"must be a Kubernetes namespace name, got {source!r}")
    if port is not None and not 1 <= port <= 65535:
        raise ConfigError("--port", "", f"must be 1-65535, got {port}")
    if not path.startswith("/") or any(c.isspace() for c in path):
        raise ConfigError("--path", "", f"must start with / and have no spaces, got {path!r}")
    if not _TOKEN.match(method):
        raise ConfigError("--method", "", f"is not an HTTP method, got {method!r}")
    return explain.Request(host=host, headers=dict(parse_header(h) for h in headers), path=path,
                           method=method.upper(), port=port, source_namespace=source)


def parse_export_to(text: str) -> tuple[str, ...]:
    values = tuple(v.strip() for v in text.split(",") if v.strip())
    if not values or any(v not in (".", "*", "~") and not _LABEL.match(v) for v in values):
        raise ConfigError("--default-export-to", "", f"expected a comma-separated list of ., *, ~ or namespaces, "
                                                     f"got {text!r}")
    return values


async def read_routing(kube: Kube, default_export_to: tuple[str, ...] = ("*",)) -> tuple[explain.Routing, list[str]]:
    gateway, services, notes = await kube.routing_objects()
    return explain.Routing(gateway, services, gateway_name=kube.settings.gateway,
                           default_export_to=default_export_to), notes


def run_cli(args: argparse.Namespace) -> int:
    """`preview-bot explain`: prints the report (or JSON); 0 when the request is routed somewhere."""
    request = build_request(host=args.host, headers=args.header or [], source=args.source, port=args.port,
                            path=args.path, method=args.method)
    for next_host in args.then or []:
        if not _HOST.match(next_host) or next_host.startswith("*"):
            raise ConfigError("--then", "", f"must be a host name, got {next_host!r}")
    export_to = parse_export_to(args.default_export_to)
    # As for gc and list: the report is the output; a retried Kubernetes call is not worth a line.
    logs.setup_from_environment(os.environ, "ERROR", sys.stderr)
    cluster = load_cluster_settings(os.environ, domain=os.environ.get("PREVIEW_DOMAIN") or "unset.invalid")
    kube = Kube.from_environment(cluster, timeout=kube_timeout(os.environ))
    try:
        routing, notes = asyncio.run(read_routing(kube, export_to))
    except (KubeError, TemporaryError) as exc:
        # As gc and list: one line naming the API server, exit status 2 (the CLI prints it).
        raise StartupError(f"Kubernetes: {kube.server}: reading the routing objects: {exc}") from None
    finally:
        kube.close()
    result = explain.explain(routing, request, then=args.then or [], forward=(cluster.header_name, "baggage"))
    if args.output == "json":
        print(json.dumps({**result.to_dict(), "notes": notes}, indent=2))
    else:
        print(explain.render(result))
        for note in notes:
            print(f"note: {note}")
    return 0


# -- `/preview explain` ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    title: str
    request: explain.Request


def pr_cases(settings: ClusterSettings, key: PreviewKey, gateway_hosts: Sequence[str],
             mesh_hosts: Sequence[str], ports: Mapping[str, int] | None = None) -> list[Case]:
    """The requests `/preview explain` answers for one PR: each preview host without and with the key, and
    each mesh host carrying the PR's route with and without the key (sent from the preview namespace, to
    the port of the PR's route when `ports` names it)."""
    ports = ports or {}
    header = settings.header_name
    cases = []
    for host in gateway_hosts:
        cases.append(Case(f"`{host}` from a browser (no header)", explain.Request(host=host)))
        cases.append(Case(f"`{host}` with `{header}: {key.value}`",
                          explain.Request(host=host, headers={header: key.value})))
    for host in mesh_hosts:
        cases.append(Case(f"`{host}` called with `{header}: {key.value}`",
                          explain.Request(host=host, headers={header: key.value}, port=ports.get(host),
                                          source_namespace=settings.namespace)))
        cases.append(Case(f"`{host}` called without the header",
                          explain.Request(host=host, port=ports.get(host), source_namespace=settings.namespace)))
    return cases


def pr_reply(key: PreviewKey, cases: Sequence[Case], routing: explain.Routing, notes: Sequence[str]) -> str:
    """Markdown reply: per request a one-line verdict and the report; other repositories' keys hidden."""
    if not cases:
        return (f"Nothing to explain: this pull request has no live preview (key `{key.value}`). "
                "Deploy it with `/preview` first.")
    lines = [f"**How requests reach the preview `{key.value}`**", ""]
    findings: dict[str, None] = {}
    for case in cases:
        result = explain.explain(routing, case.request)
        reached = result.reached()
        verdict = "does not reach any workload" if reached is None else \
            f"reaches `{reached}`" + (" (this preview)" if reached.startswith(key.value) else "")
        lines += [f"- {case.title}: {verdict}", "", "  ```text"]
        text = explain.render(explain.Explanation(result.request, result.hops, ()))
        lines += [f"  {line}" for line in text.splitlines()]
        lines += ["  ```", ""]
        findings.update(dict.fromkeys(f.message for f in result.findings))
    if findings:
        lines += ["**Warnings** (routes Istio ignores):", ""]
        lines += [f"- {message.replace('`', '')}" for message in findings]
    for note in notes:
        lines.append(f"\n<sub>{note}</sub>")
    text = explain.redact_other_keys("\n".join(lines), key.repo_hash)
    if len(text) > MAX_REPLY:  # GitHub refuses comments over 65,536 characters
        text = text[:MAX_REPLY].rsplit("\n", 1)[0] + "\n  ```\n\n… cut here: `preview-bot explain` prints the rest."
    return text


async def explain_pull_request(kube: Kube, key: PreviewKey) -> str:
    """Read the live objects and compose the `/preview explain` reply for one PR."""
    routing, notes = await read_routing(kube)
    gateway_hosts: list[str] = []
    for preview in await kube.live_previews((key.repo_id, key.repo) if key.repo_id is not None else None):
        if preview.key == key.value:
            gateway_hosts += list(preview.hosts)
    ports: dict[str, int] = {}
    for item in routing.virtual_services:
        spec = item.get("spec") or {}
        if explain.MESH not in explain.gateways_of(item):
            continue
        for route in spec.get("http") or []:
            if route.get("name") != key.value:
                continue
            port = ((route.get("route") or [{}])[0].get("destination") or {}).get("port", {}).get("number")
            for host in spec.get("hosts") or []:
                ports[str(host)] = int(port) if port else 0
    mesh_hosts = sorted(ports)
    known = {h: p for h, p in ports.items() if p}
    return pr_reply(key, pr_cases(kube.settings, key, sorted(gateway_hosts), mesh_hosts, known), routing, notes)
