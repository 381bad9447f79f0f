"""Loading a kubeconfig (bot.kube.transport, bot.kube.kubeconfig): what the Kubernetes client would misreport
or ignore becomes one StartupError naming the file, the user or cluster, and the field. No cluster: the
kubeconfigs are files in tmp_path, exec plugins small scripts there."""

from __future__ import annotations

import base64
import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from bot.errors import StartupError
from bot.kube import kubeconfig
from bot.kube.transport import Transport, api_client_from_environment

TOKEN = "kubeconfig-bearer-token-s3cr3t-0123456789"
SECRETS = ("client-s3cr3t-0123456789", "refresh-s3cr3t-0123456789", TOKEN)
SERVER = "https://127.0.0.1:6443"


def write(folder: Path, user: str = f"{{token: {TOKEN}}}", cluster: str = "", server: str | None = SERVER,
          name: str = "kc") -> Path:
    """A kubeconfig with one user `u` (its `user:` mapping as flow YAML) and one cluster `c`."""
    fields = ([f'server: "{server}"'] if server is not None else []) + ([cluster] if cluster else [])
    path = folder / name
    path.write_text(f"""apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{{", ".join(fields)}}}}}]
users: [{{name: u, user: {user}}}]
contexts: [{{name: x, context: {{cluster: c, user: u}}}}]
current-context: x
""")
    return path


def refused(path: Path) -> str:
    with pytest.raises(StartupError) as caught:
        api_client_from_environment(str(path))
    message = str(caught.value)
    assert "\n" not in message
    for secret in SECRETS:
        assert secret not in message
    return message


def plugin(folder: Path, body: str, name: str = "plugin.sh", mode: int = 0o755) -> Path:
    script = folder / name
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(mode)
    return script


def exec_user(command: str) -> str:
    # args and env may carry secrets: the messages never show them
    return (f"{{exec: {{apiVersion: client.authentication.k8s.io/v1beta1, command: '{command}', "
            f"args: [--secret, {SECRETS[0]}], env: [{{name: X, value: {SECRETS[1]}}}]}}}}")


# -- exec credential plugins ----------------------------------------------------------------------


def test_a_failing_exec_plugin_is_the_error_not_a_log_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    script = plugin(tmp_path, 'echo "error: could not get token: NoCredentialProviders" >&2\n'
                              'echo "second line" >&2\nexit 3')
    with caplog.at_level(logging.DEBUG):
        message = refused(write(tmp_path, user=exec_user(str(script))))
    assert message == (f"Kubernetes: the kubeconfig {tmp_path / 'kc'}: user u: the exec credential plugin "
                       f"`{script}` failed: exited with status 3: error: could not get token: NoCredentialProviders")
    # The client's own log line is not shown as well (other threads' urllib3 debug lines may be captured).
    assert [r for r in caplog.records if r.module == "kube_config" or r.levelno >= logging.WARNING] == []


def test_an_exec_plugin_that_is_not_installed(tmp_path: Path) -> None:
    message = refused(write(tmp_path, user=exec_user("preview-bot-no-such-plugin")))
    assert message.endswith("the exec credential plugin `preview-bot-no-such-plugin` failed: not found (is it "
                            "installed, and on PATH?)")


def test_an_exec_plugin_that_cannot_be_run(tmp_path: Path) -> None:
    script = plugin(tmp_path, "exit 0", mode=0o644)
    assert refused(write(tmp_path, user=exec_user(str(script)))).endswith("failed: cannot be run (permission denied)")


@pytest.mark.parametrize(("output", "reason"), [
    ("not json", "failed: failed to decode process output"),
    ('{"apiVersion": "client.authentication.k8s.io/v1beta1", "kind": "ExecCredential", "status": {}}',
     "failed: missing token or clientCertificateData field in plugin output"),
])
def test_an_exec_plugin_that_answers_without_credentials(tmp_path: Path, output: str, reason: str) -> None:
    script = plugin(tmp_path, f"echo '{output}'")
    assert reason in refused(write(tmp_path, user=exec_user(str(script))))


def test_an_exec_plugin_that_gives_a_token_loads(tmp_path: Path) -> None:
    answer = {"apiVersion": "client.authentication.k8s.io/v1beta1", "kind": "ExecCredential",
              "status": {"token": TOKEN}}
    script = plugin(tmp_path, f"echo '{json.dumps(answer)}'")
    client = api_client_from_environment(str(write(tmp_path, user=exec_user(str(script)))))
    assert client.configuration.api_key["BearerToken"] == f"Bearer {TOKEN}"


def test_a_token_wins_over_an_exec_plugin_as_in_the_client(tmp_path: Path) -> None:
    user = f"{{token: {TOKEN}, exec: {{apiVersion: client.authentication.k8s.io/v1beta1, command: nope-no-such}}}}"
    client = api_client_from_environment(str(write(tmp_path, user=user)))
    assert client.configuration.api_key["BearerToken"] == f"Bearer {TOKEN}"


# -- auth-providers -------------------------------------------------------------------------------


def jwt(expiry: float) -> str:
    def part(value: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")
    return f"{part({'alg': 'none'})}.{part({'exp': int(expiry), 'sub': 'x'})}.sig"


def oidc(id_token: str | None) -> str:
    token = f", id-token: '{id_token}'" if id_token is not None else ""
    return (f"{{auth-provider: {{name: oidc, config: {{client-id: a, client-secret: {SECRETS[0]}, "
            f"refresh-token: {SECRETS[1]}, idp-issuer-url: 'https://127.0.0.1:1'{token}}}}}}}")


@pytest.mark.parametrize(("user", "expected"), [
    ("{auth-provider: {name: gcp}}", "user u: auth-provider gcp is not supported (Kubernetes removed it in 1.26): "
                                     "use the exec credential plugin gke-gcloud-auth-plugin"),
    ("{auth-provider: {name: gcp, config: {cmd-path: /usr/bin/gcloud}}}", "auth-provider gcp is not supported"),
    ("{auth-provider: {name: azure, config: {tenant-id: t}}}", "use the exec credential plugin kubelogin"),
    ("{auth-provider: {name: openstack}}", "auth-provider openstack is not supported by the Kubernetes Python "
                                           "client: use an exec credential plugin"),
    ("{auth-provider: {config: {}}}", "auth-provider has no name"),
    (oidc(None), "auth-provider oidc has no id-token"),
    (oidc("not-a-jwt"), "the id-token is not a JWT"),
    (oidc(jwt(time.time() - 3600)), "the id-token has expired"),
    (oidc(jwt(time.time() + 60)), "the id-token has expired (or expires within 5 minutes)"),
])
def test_an_auth_provider_the_client_cannot_use_is_named(tmp_path: Path, user: str, expected: str) -> None:
    path = write(tmp_path, user=user)
    before = path.read_text()
    message = refused(path)
    assert message.startswith(f"Kubernetes: the kubeconfig {path}: user u: "), message
    assert expected in message
    assert path.read_text() == before


def test_an_oidc_id_token_that_is_valid_is_used_as_it_is(tmp_path: Path) -> None:
    token = jwt(time.time() + 3600)
    path = write(tmp_path, user=oidc(token))
    before = path.read_text()
    assert api_client_from_environment(str(path)).configuration.api_key["BearerToken"] == f"Bearer {token}"
    assert path.read_text() == before  # never rewritten


# -- files a kubeconfig names ---------------------------------------------------------------------


def test_a_missing_token_file_names_the_file_and_the_field(tmp_path: Path) -> None:
    message = refused(write(tmp_path, user="{tokenFile: /missing/path}"))
    assert message == f"Kubernetes: the kubeconfig {tmp_path / 'kc'}: user u: tokenFile /missing/path does not exist"


@pytest.mark.parametrize(("user", "cluster", "expected"), [
    ("{tokenFile: token}", "", "user u: tokenFile {dir}/token does not exist"),  # relative: the kubeconfig's folder
    ("{tokenFile: sub}", "", "user u: tokenFile {dir}/sub is not a file"),
    (f"{{token: {TOKEN}}}", "certificate-authority: /missing/ca.crt",
     "cluster c: certificate-authority /missing/ca.crt does not exist"),
    ("{client-certificate: tls.crt, client-key: tls.key}", "insecure-skip-tls-verify: true",
     "user u: client-certificate {dir}/tls.crt does not exist"),
    ("{client-certificate-data: Zm9v, client-key: tls.key}", "insecure-skip-tls-verify: true",
     "user u: client-key {dir}/tls.key does not exist"),
    (f"{{token: {TOKEN}}}", "certificate-authority-data: 'not base64!!'", "cluster c: certificate-authority-data "
                                                                          "is not base64"),
    (f"{{client-key-data: '{SECRETS[0]}!'}}", "insecure-skip-tls-verify: true", "user u: client-key-data is not "
                                                                                "base64"),
])
def test_a_file_the_client_reads_is_named_with_its_field(tmp_path: Path, user: str, cluster: str,
                                                         expected: str) -> None:
    (tmp_path / "sub").mkdir()
    message = refused(write(tmp_path, user=user, cluster=cluster))
    assert message == f"Kubernetes: the kubeconfig {tmp_path / 'kc'}: {expected.format(dir=tmp_path)}"


def test_an_unreadable_token_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "token").write_text(TOKEN)
    real_open = open

    def denying_open(file: Any, *args: Any, **kwargs: Any) -> Any:  # root reads any file: deny it here
        if str(file) == str(tmp_path / "token"):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)
    monkeypatch.setattr("builtins.open", denying_open)
    message = refused(write(tmp_path, user="{tokenFile: token}"))
    assert message.endswith(f"tokenFile {tmp_path}/token cannot be read: Permission denied")


@pytest.mark.parametrize(("user", "cluster", "server"), [
    (f"{{token: {TOKEN}, tokenFile: /missing/path}}", "", SERVER),  # the token wins, the file is not read
    (f"{{token: {TOKEN}}}", "certificate-authority: /missing/ca.crt", "http://127.0.0.1:8080"),  # no TLS
    (f"{{token: {TOKEN}}}", "certificate-authority: /missing/ca.crt, certificate-authority-data: ''", SERVER),
])
def test_files_the_client_does_not_read_are_not_checked(tmp_path: Path, user: str, cluster: str, server: str) -> None:
    api_client_from_environment(str(write(tmp_path, user=user, cluster=cluster, server=server)))


def test_a_token_file_is_read(tmp_path: Path) -> None:
    (tmp_path / "token").write_text(TOKEN)
    client = api_client_from_environment(str(write(tmp_path, user="{tokenFile: token}")))
    assert client.configuration.api_key["BearerToken"] == f"Bearer {TOKEN}"


# -- the cluster's server -------------------------------------------------------------------------


@pytest.mark.parametrize(("server", "expected"), [
    ("ftp://host", "server ftp://host: the URL scheme ftp is not https or http"),
    ("ftp://admin:hunter2@host:21/x?token=abc", "server ftp://host:21/x: the URL scheme ftp is not https or http"),
    ("HTTPS://host", "server HTTPS://host: the URL scheme HTTPS is not https or http"),
    ("10.0.0.1:6443", "server 10.0.0.1:6443 has no URL scheme (it must start with https://)"),
    ("localhost:6443", "server localhost:6443 has no URL scheme"),
    ("https://", "server https:// has no host"),
    ("https://admin:hunter2@/api", "server https:///api has no host"),
    (None, "server is missing"),
    ("", "server is missing"),
])
def test_a_server_that_is_not_an_http_url_is_refused_at_load(tmp_path: Path, server: str | None,
                                                             expected: str) -> None:
    message = refused(write(tmp_path, server=server))
    assert message.startswith(f"Kubernetes: the kubeconfig {tmp_path / 'kc'}: cluster c: {expected}"), message
    assert "hunter2" not in message and "admin" not in message


def test_the_server_named_in_messages_has_no_userinfo(tmp_path: Path) -> None:
    client = api_client_from_environment(str(write(tmp_path, server="https://admin:hunter2@127.0.0.1:6443",
                                                   cluster="insecure-skip-tls-verify: true")))
    assert Transport(client).server == "https://127.0.0.1:6443"


@pytest.mark.parametrize(("url", "shown"), [
    ("https://h:1", "https://h:1"), ("https://u:p@h:1/a/b?t=1#f", "https://h:1/a/b"), ("u:p@h:1", "h:1"),
    ("https://u@p@h", "https://h"),
])
def test_safe_url(url: str, shown: str) -> None:
    assert kubeconfig.safe_url(url) == shown


# -- the client's own messages --------------------------------------------------------------------


def test_the_clients_messages_do_not_quote_entries(tmp_path: Path) -> None:
    """The client names an entry by its dict's repr; a user's would carry its credentials."""
    assert kubeconfig.redacted(f"Expected key id-token in /kc/{{'name': 'u', 'user': {{'token': '{TOKEN}'}}}}/user") \
        == "Expected key id-token in /kc/{...}/user"
    path = tmp_path / "kc"
    path.write_text(f"""apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{server: "{SERVER}"}}}}]
users: [{{name: u, user: {{token: {TOKEN}}}}}]
contexts: [{{name: x, context: {{user: u, note: {TOKEN}}}}}]
current-context: x
""")
    assert refused(path) == (f"Kubernetes: the kubeconfig {path} cannot be used: Invalid kube-config file. Expected "
                             f"key cluster in {path}/{{...}}/context")


def test_several_kubeconfigs_name_the_file_the_entry_is_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """KUBECONFIG lists two files: the user is in the second one."""
    first = tmp_path / "first"
    first.write_text(f"""apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{server: "{SERVER}"}}}}]
contexts: [{{name: x, context: {{cluster: c, user: u}}}}]
current-context: x
""")
    second = tmp_path / "second"
    second.write_text("apiVersion: v1\nkind: Config\nusers: [{name: u, user: {tokenFile: /missing/path}}]\n")
    monkeypatch.setattr("kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION", f"{first}:{second}")
    monkeypatch.setenv("KUBECONFIG", f"{first}:{second}")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "")  # not in a pod
    with pytest.raises(StartupError) as caught:
        api_client_from_environment()
    assert str(caught.value) == f"Kubernetes: the kubeconfig {second}: user u: tokenFile /missing/path does not exist"
