"""`preview-bot render`: bot.cli.main with the example config, and its error paths."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot import cli, naming
from bot.naming import PreviewKey

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / ".github" / "preview.yml"
SHA = "0123456789abcdef0123456789abcdef01234567"
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
KEY = PreviewKey("acme/shop", 7, 1296269)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("PREVIEW_"):
            monkeypatch.delenv(name)


def render(capsys: pytest.CaptureFixture[str], *extra: str, config: Path = EXAMPLE,
           repo: str = "acme/shop", pr: str = "7", sha: str = SHA,
           repo_id: str = "1296269") -> tuple[int, list[dict[str, Any]], str]:
    code = cli.main(["render", "--config", str(config), "--repo", repo, "--repo-id", repo_id, "--pr", pr,
                     "--sha", sha, *extra])
    out, err = capsys.readouterr()
    documents = [d for d in yaml.safe_load_all(out) if d is not None] if code == 0 else []
    return code, documents, err


def test_render_example(capsys: pytest.CaptureFixture[str]) -> None:
    code, documents, err = render(capsys, "--domain", "example.com")
    assert code == 0, err
    assert err == ""
    kinds = [(d["apiVersion"], d["kind"]) for d in documents]
    assert kinds.count(("apps/v1", "Deployment")) == 2
    assert kinds.count(("v1", "Service")) == 2
    assert kinds.count(("networking.istio.io/v1", "VirtualService")) == 4

    deployments = {d["metadata"]["name"]: d for d in documents if d["kind"] == "Deployment"}
    assert set(deployments) == {KEY.object_name("a"), KEY.object_name("b")}
    container = deployments[KEY.object_name("a")]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == f"registry.example.com/acme/a:{SHA}"

    services = [d for d in documents if d["kind"] == "Service"]
    assert {s["spec"]["ports"][0]["port"] for s in services} == {8080, 9090}

    roles = {d["metadata"]["name"]: d["metadata"]["labels"].get(naming.ROLE_LABEL)
             for d in documents if d["kind"] == "VirtualService"}
    gateway = [d for d in documents if d["kind"] == "VirtualService"
               and d["metadata"]["labels"].get(naming.ROLE_LABEL) == naming.ROLE_GATEWAY]
    mesh = [d for d in documents if d["kind"] == "VirtualService"
            and d["metadata"]["labels"].get(naming.ROLE_LABEL) == naming.ROLE_MESH]
    assert len(gateway) == 2 and len(mesh) == 2, roles

    hosts = sorted(h for g in gateway for h in g["spec"]["hosts"])
    assert hosts == ["preview-7-api-a.example.com", "preview-7-api-b.example.com"]
    for route in gateway:
        (http,) = route["spec"]["http"]
        assert http["headers"]["request"]["set"] == {"x-preview": KEY.value}
        assert route["spec"]["gateways"] == ["istio-system/preview-gateway"]

    assert sorted(m["spec"]["hosts"][0] for m in mesh) == ["a.default.svc.cluster.local", "b.shop.svc.cluster.local"]
    for route in mesh:
        http = route["spec"]["http"]
        assert http[0]["match"] == [{"headers": {"x-preview": {"exact": KEY.value}},
                                     "port": http[0]["route"][0]["destination"]["port"]["number"]}]
        assert route["spec"]["exportTo"] == ["*"]
        assert http[0]["name"] == KEY.value
        assert "match" not in http[-1] and http[-1]["name"] == "default"
        assert http[-1]["route"][0]["destination"]["host"] == route["spec"]["hosts"][0]

    for document in documents:
        name = document["metadata"]["name"]
        assert DNS_LABEL.match(name) and len(name) <= 63, name
        for value in document["metadata"].get("labels", {}).values():
            assert len(value) <= 63


def test_domain_from_environment(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREVIEW_DOMAIN", "env.example.org")
    code, documents, _ = render(capsys)
    assert code == 0
    hosts = {h for d in documents if d["kind"] == "VirtualService" for h in d["spec"]["hosts"]}
    assert "preview-7-api-a.env.example.org" in hosts


def test_render_uppercase_sha_is_lowercased(capsys: pytest.CaptureFixture[str]) -> None:
    code, documents, _ = render(capsys, "--domain", "example.com", sha=SHA.upper())
    assert code == 0
    assert all(d["metadata"]["annotations"].get(naming.SHA_ANNOTATION, SHA) == SHA for d in documents)


def test_missing_domain_names_preview_domain(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = render(capsys)
    assert code == 2
    assert "PREVIEW_DOMAIN" in err
    assert err.startswith("preview-bot: error: ")


@pytest.mark.parametrize(
    ("yaml_text", "field"),
    [
        ("services:\n  - name: a\n    image: r/a:{sha}\n    port: http\n", "services[0].port"),
        ("services:\n  - name: a\n    image: r/a:{sha}\n    port: 80\n  - name: B\n    image: x\n    port: 1\n",
         "services[1].name"),
        ("services:\n  - name: a\n    image: r/a:{tag}\n    port: 80\n", "services[0].image"),
        ("trigger: never\nservices: []\n", "trigger"),
        ("services:\n  - name: a\n    image: r/a\n    port: 80\n    replicas: 50\n", "services[0].replicas"),
    ],
)
def test_bad_config_exit_code_2_names_file_and_field(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                    yaml_text: str, field: str) -> None:
    config = tmp_path / "preview.yml"
    config.write_text(yaml_text, encoding="utf-8")
    code, _, err = render(capsys, "--domain", "example.com", config=config)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert str(config) in lines[0]
    assert f"{field}:" in lines[0]
    assert "Traceback" not in err


def test_policy_from_environment_applies(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREVIEW_ALLOWED_IMAGES", "ghcr.io/acme/")
    code, _, err = render(capsys, "--domain", "example.com")
    assert code == 2
    assert "services[0].image" in err and str(EXAMPLE) in err


def test_missing_config_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = render(capsys, "--domain", "example.com", config=tmp_path / "nope.yml")
    assert code == 2
    assert "nope.yml" in err and "cannot read" in err


@pytest.mark.parametrize("repo", ["acme", "acme/shop/x", "ac me/shop", "../etc/passwd", "acme/"])
def test_invalid_repo_is_refused(capsys: pytest.CaptureFixture[str], repo: str) -> None:
    code, _, err = render(capsys, "--domain", "example.com", repo=repo)
    assert code == 2
    assert "--repo" in err


def test_a_config_that_is_not_utf8_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = tmp_path / "preview.yml"
    config.write_bytes(b"services: []\n\xff\xfe\n")
    code, _, err = render(capsys, "--domain", "example.com", config=config)
    assert code == 2
    assert err.startswith(f"preview-bot: error: {config}: is not UTF-8 text") and err.count("\n") == 1


def test_invalid_domain_option_names_the_option(capsys: pytest.CaptureFixture[str]) -> None:
    """The bad value came from --domain, not from PREVIEW_DOMAIN in the environment."""
    code, _, err = render(capsys, "--domain", "example..com")
    assert code == 2
    assert err.startswith("preview-bot: error: --domain: ") and "environment" not in err


@pytest.mark.parametrize(("option", "value"), [("pr", "0"), ("sha", "not-a-sha"), ("sha", ""),
                                               ("pr", str(2**31)), ("pr", "9" * 60), ("repo_id", "9" * 60)])
def test_invalid_pr_or_sha_is_refused(capsys: pytest.CaptureFixture[str], option: str, value: str) -> None:
    code, _, err = render(capsys, "--domain", "example.com", **{option: value})
    assert code == 2
    assert err.startswith(f"preview-bot: error: --{option.replace('_', '-')}: ") and err.count("\n") == 1, err


@pytest.mark.parametrize("content", [b"a" * 1_000_001, b"services: []\n" + b"#" * 1_000_000])
def test_a_config_larger_than_github_serves_is_refused_without_reading_it_all(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, content: bytes) -> None:
    config = tmp_path / "preview.yml"
    config.write_bytes(content)
    code, _, err = render(capsys, "--domain", "example.com", config=config)
    assert code == 2
    assert err == f"preview-bot: error: {config}: is larger than 1000000 bytes (GitHub serves the bot a config of " \
                  "at most 1 MB)\n"


def test_a_config_that_never_ends_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = render(capsys, "--domain", "example.com", config=Path("/dev/zero"))  # was: read for ever
    assert code == 2 and "/dev/zero: is larger than" in err


@pytest.mark.parametrize("sha", ["ab12", "a" * 7, SHA[:39], SHA + "8", "a" * 63, "a" * 65, "a" * 128, "g" * 40,
                                 SHA[:39] + " ", "0x" + SHA[:38]])
def test_sha_of_another_length_than_sha1_or_sha256_is_refused(capsys: pytest.CaptureFixture[str], sha: str) -> None:
    """GitHub's head SHAs are 40 hex digits (SHA-1), or 64 in a SHA-256 repository."""
    code, _, err = render(capsys, "--domain", "example.com", sha=sha)
    assert code == 2
    assert err == f"preview-bot: error: --sha: must be a commit SHA of 40 or 64 hexadecimal digits, got {sha!r}\n"


def test_sha256_commit_renders(capsys: pytest.CaptureFixture[str]) -> None:
    sha = "0123456789abcdef" * 4
    code, documents, err = render(capsys, "--domain", "example.com", sha=sha)
    assert code == 0, err
    assert {d["metadata"]["annotations"].get(naming.SHA_ANNOTATION, sha) for d in documents} == {sha}


def test_render_quotes_strings_kubectl_would_read_as_numbers_or_booleans(capsys: pytest.CaptureFixture[str],
                                                                        tmp_path: Path) -> None:
    """kubectl reads YAML with go-yaml: plain `1e3` is a number and `y` a boolean there (tests/cluster has the
    API server read the output)."""
    config = tmp_path / "preview.yml"
    config.write_text("services:\n  - name: y\n    image: r.example.com/y:{sha}\n    port: 80\n    args: ['09']\n"
                      "    env: {A: '1e3', B: 'y', C: '0o17', D: '+.5', n: x, PORT: 8080, DEBUG: true}\n",
                      encoding="utf-8")
    sha = "0" * 39 + "9"
    code, documents, err = render(capsys, "--domain", "example.com", config=config, sha=sha)
    assert code == 0, err
    cli.main(["render", "--config", str(config), "--repo", "acme/shop", "--repo-id", "1296269", "--pr", "7",
              "--sha", sha, "--domain", "example.com"])
    out = capsys.readouterr().out
    for line in ["value: '1e3'", "value: 'y'", "value: '0o17'", "value: '+.5'", "- name: 'n'", "value: '8080'",
                 "value: 'true'", "- '09'", f"preview-bot.dev/sha: '{sha}'", "preview-bot.dev/service: 'y'",
                 f"image: r.example.com/y:{sha}"]:
        assert f" {line}\n" in out, line
    container = documents[0]["spec"]["template"]["spec"]["containers"][0]
    assert {e["name"]: e["value"] for e in container["env"]} == {
        "A": "1e3", "B": "y", "C": "0o17", "D": "+.5", "n": "x", "PORT": "8080", "DEBUG": "true"}


def test_render_is_deterministic(capsys: pytest.CaptureFixture[str]) -> None:
    cli.main(["render", "--config", str(EXAMPLE), "--repo", "acme/shop", "--repo-id", "1296269", "--pr", "7",
              "--sha", SHA, "--domain", "example.com"])
    first = capsys.readouterr().out
    cli.main(["render", "--config", str(EXAMPLE), "--repo", "acme/shop", "--repo-id", "1296269", "--pr", "7",
              "--sha", SHA, "--domain", "example.com"])
    assert capsys.readouterr().out == first


def test_two_repos_render_disjoint_object_names(capsys: pytest.CaptureFixture[str]) -> None:
    _, mine, _ = render(capsys, "--domain", "example.com")
    _, theirs, _ = render(capsys, "--domain", "example.com", repo="other/shop", repo_id="42")
    workload = {"Deployment", "Service"}
    names_mine = {d["metadata"]["name"] for d in mine if d["kind"] in workload}
    names_theirs = {d["metadata"]["name"] for d in theirs if d["kind"] in workload}
    assert names_mine and not names_mine & names_theirs
