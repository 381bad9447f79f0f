"""bot.explaining: CLI input validation and the `/preview explain` reply (no cluster)."""

from __future__ import annotations

import pytest

from bot import cli, explain, explaining
from bot.errors import ConfigError
from bot.naming import PreviewKey
from tests.unit.test_explain import GATEWAY, SETTINGS, bot_routing


@pytest.mark.parametrize(("argv", "message"), [
    (["--host", "*.example.com"], "--host: must be a host name"),
    (["--host", "a b"], "--host: must be a host name"),
    (["--host", "a.example.com:99999"], "--host: has a port outside 1-65535"),  # --port 99999 was refused, this not
    (["--host", "a.example.com:0"], "--host: has a port outside 1-65535"),
    (["--host", "a.example.com", "--header", "novalue"], "--header: expected name=value"),
    (["--host", "a.example.com", "--header", "bad name=1"], "--header: expected name=value"),
    (["--host", "a.example.com", "--from", "Not_A_Namespace"], "--from: must be a Kubernetes namespace name"),
    (["--host", "a.example.com", "--port", "70000"], "--port: must be 1-65535"),
    (["--host", "a.example.com", "--path", "api"], "--path: must start with /"),
    (["--host", "a.example.com", "--method", "GE T"], "--method: is not an HTTP method"),
    (["--host", "a.example.com", "--then", "a..b"], "--then: must be a host name"),
    (["--host", "a.example.com", "--default-export-to", "Bad!"], "--default-export-to: expected"),
    # Python's `$` also matches before a last line break: none of these may pass with one.
    (["--host", "a.example.com\n"], "--host: must be a host name"),
    (["--host", "a.example.com", "--from", "shop\n"], "--from: must be a Kubernetes namespace name"),
    (["--host", "a.example.com", "--method", "GET\n"], "--method: is not an HTTP method"),
])
def test_bad_input_is_one_line_and_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", "/nonexistent")  # never reached: input is checked first
    assert cli.main(["explain", *argv]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith(f"preview-bot: error: {message}")


def test_headers_parse_both_forms() -> None:
    assert explaining.parse_header("X-Preview=preview-1-abcdef") == ("x-preview", "preview-1-abcdef")
    assert explaining.parse_header("x-preview: a=b") == ("x-preview", "a=b")
    assert explaining.parse_header("cookie=a=b; c=d") == ("cookie", "a=b; c=d")
    with pytest.raises(ConfigError, match="control characters"):
        explaining.parse_header("x=a\rb")


def test_pr_reply_explains_the_prs_hosts_and_hides_other_repositories() -> None:
    routing = bot_routing([12, 123])
    other = PreviewKey("other/repo", 5, 1296273)
    mesh_vs = routing.virtual_services[-1]
    spec = dict(mesh_vs["spec"])
    spec["http"] = [{"name": other.value, "match": [{"headers": {"x-preview": {"exact": other.value}}}],
                     "route": [{"destination": {"host": f"{other.value}-a.shop.svc.cluster.local"}}]}, *spec["http"]]
    routing = explain.Routing(GATEWAY, [*routing.virtual_services[:-1], {**mesh_vs, "spec": spec}])
    key = PreviewKey("acme/shop", 123, 1296269)
    cases = explaining.pr_cases(SETTINGS, key, ["preview-123-api-a.example.com"], ["a.shop.svc.cluster.local"],
                                {"a.shop.svc.cluster.local": 8080})  # the port of the PR's route
    assert [c.request.source_namespace for c in cases] == [None, None, "shop", "shop"]
    text = explaining.pr_reply(key, cases, routing, ["a note"])
    assert text.count(f"reaches `{key.value}-a.shop.svc.cluster.local` (this preview)") == 3
    assert "called without the header: reaches `a.shop.svc.cluster.local`" in text
    assert other.value not in text and "preview-…" in text
    assert PreviewKey("acme/shop", 12, 1296269).value in text  # the same repository's keys stay readable
    assert "<sub>a note</sub>" in text
    assert "Nothing to explain" in explaining.pr_reply(key, [], routing, [])


def test_pr_reply_stays_under_githubs_comment_limit() -> None:
    routing = bot_routing(list(range(1, 200)))
    key = PreviewKey("acme/shop", 150, 1296269)
    hosts = ["a.shop.svc.cluster.local"] * 60
    text = explaining.pr_reply(key, explaining.pr_cases(SETTINGS, key, [], hosts), routing, [])
    assert len(text) <= explaining.MAX_REPLY + 100 and text.endswith("prints the rest.")
