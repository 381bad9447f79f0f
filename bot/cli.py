"""Command line: serve | render | gc | list | explain. Nothing runs at import time."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from bot.errors import ConfigError, StartupError

# GitHub's issue and pull request numbers are 32-bit integers; a larger one would only make labels too long.
MAX_PR_NUMBER = 2**31 - 1
MAX_REPO_ID = 2**63 - 1  # GitHub's ids are 64-bit (int64 in its OpenAPI description)
MAX_CONFIG_BYTES = 1_000_000  # what GitHub's contents API returns at most (bot.github.client)


def _render(args: argparse.Namespace) -> int:
    from bot import manifests
    from bot.naming import PreviewKey, valid_repo
    from bot.repo_config import parse_for_cluster
    from bot.settings import load_cluster_settings

    if not valid_repo(args.repo):
        raise ConfigError("--repo", "", f"must be owner/name, got {args.repo!r}")
    if not 1 <= args.repo_id <= MAX_REPO_ID:
        raise ConfigError("--repo-id", "", f"must be the repository's numeric id (1 to {MAX_REPO_ID}), "
                                           f"got {args.repo_id}")
    if not 1 <= args.pr <= MAX_PR_NUMBER:
        raise ConfigError("--pr", "", f"must be a pull request number (1 to {MAX_PR_NUMBER}), got {args.pr}")
    # A Git object name: SHA-1 (40 hex digits) or, in a SHA-256 repository, 64.
    if len(args.sha) not in (40, 64) or not all(c in "0123456789abcdef" for c in args.sha.lower()):
        raise ConfigError("--sha", "", f"must be a commit SHA of 40 or 64 hexadecimal digits, got {args.sha!r}")
    try:
        settings = load_cluster_settings(os.environ, domain=args.domain)
    except ConfigError as exc:
        if args.domain and exc.field == "PREVIEW_DOMAIN":  # the value came from the option: name the option
            raise ConfigError("--domain", "", exc.reason) from None
        raise
    path = Path(args.config)
    try:
        with path.open("rb") as file:  # bounded: `--config /dev/zero` must not read for ever
            raw = file.read(MAX_CONFIG_BYTES + 1)
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(str(path), "", f"is larger than {MAX_CONFIG_BYTES} bytes (GitHub serves the bot a "
                              "config of at most 1 MB)")
        text = raw.decode("utf-8")
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:  # a ValueError, not an OSError: it escaped as a traceback
        raise ConfigError(str(path), "", f"is not UTF-8 text (byte {exc.start})") from None
    config = parse_for_cluster(text, settings.policy, settings.namespace, source=str(path))
    documents = manifests.render(settings, config, PreviewKey(args.repo, args.pr, args.repo_id), args.sha.lower())
    sys.stdout.write(manifests.to_yaml(documents))
    return 0


def _serve(args: argparse.Namespace) -> int:
    from bot.server import run

    if not 0 <= args.port <= 65535:
        raise ConfigError("--port", "", f"must be from 0 to 65535, got {args.port}")
    return run(host=args.host, port=args.port)


def _gc(args: argparse.Namespace) -> int:
    from bot.server import run_gc

    return run_gc(dry_run=args.dry_run)


def _list(args: argparse.Namespace) -> int:
    from bot.server import run_list

    return run_list(output=args.output)


def _explain(args: argparse.Namespace) -> int:
    from bot.explaining import run_cli

    return run_cli(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="preview-bot", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="receive GitHub webhooks and manage previews")
    serve.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")  # noqa: S104
    serve.add_argument("--port", type=int, default=8080)
    serve.set_defaults(func=_serve)

    render = sub.add_parser("render", help="print the objects a preview would create (no cluster, no GitHub)")
    render.add_argument("--config", required=True, help="path to a .github/preview.yml")
    render.add_argument("--repo", required=True, help="owner/name")
    render.add_argument("--repo-id", required=True, type=int,
                        help="the repository's numeric id (GitHub's repository.id; the preview key hashes it)")
    render.add_argument("--pr", required=True, type=int, help="pull request number")
    render.add_argument("--sha", required=True, help="head commit SHA")
    render.add_argument("--domain", help="preview domain (default: $PREVIEW_DOMAIN)")
    render.set_defaults(func=_render)

    gc = sub.add_parser("gc", help="one reconciliation pass: tear down orphaned and idle previews")
    gc.add_argument("--dry-run", action="store_true", help="print what would be done, change nothing")
    gc.set_defaults(func=_gc)

    listing = sub.add_parser("list", help="list live previews from the cluster")
    listing.add_argument("--output", choices=["table", "json"], default="table")
    listing.set_defaults(func=_list)

    explain = sub.add_parser("explain", help="which VirtualService rule a request matches, and why the others do not")
    explain.add_argument("--host", required=True, help="Host of the request, e.g. preview-12-api-a.example.com")
    explain.add_argument("--header", action="append", metavar="NAME=VALUE", help="a request header (repeatable)")
    explain.add_argument("--from", dest="source", metavar="NAMESPACE",
                         help="sent by a workload in this namespace (in-mesh); default: from outside, via the Gateway")
    explain.add_argument("--port", type=int, help="port of the request (default: the Gateway's, or unknown in-mesh)")
    explain.add_argument("--path", default="/", help="path and query (default /)")
    explain.add_argument("--method", default="GET")
    explain.add_argument("--then", action="append", metavar="HOST",
                         help="the workload reached then calls HOST, forwarding the preview header (repeatable)")
    explain.add_argument("--default-export-to", default="*",
                         help="the mesh's defaultVirtualServiceExportTo (default *), comma-separated")
    explain.add_argument("--output", choices=["text", "json"], default="text")
    explain.set_defaults(func=_explain)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except (ConfigError, StartupError) as exc:
        # Expected start-up failures: one line, no traceback; messages never carry secrets.
        print(f"preview-bot: error: {exc}", file=sys.stderr)
        return 2
    return result


if __name__ == "__main__":
    sys.exit(main())
