"""Start-up failures of the real CLI (`python -m bot.cli`, as a subprocess): one line on stderr naming
what is wrong, exit status 2, no traceback, no secret. (Failures that need a cluster to happen, such as a
missing Gateway or a port in use, are in tests/e2e/test_startup.py.)"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fakegithub.server import _app_key

ROOT = Path(__file__).resolve().parents[1]
SECRET = "startup-webhook-secret-0123456789"
PEM = _app_key()[1]
TOKEN = "kubeconfig-bearer-token-s3cr3t-0123456789"


def base_env(home: Path, **extra: str) -> dict[str, str]:
    """A clean environment: no KUBECONFIG, a HOME without ~/.kube, not in a pod."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LANG": "C.UTF-8",
           "GITHUB_APP_ID": "12345", "GITHUB_PRIVATE_KEY": PEM, "GITHUB_WEBHOOK_SECRET": SECRET,
           "PREVIEW_DOMAIN": "example.com"}
    env.update(extra)
    return {k: v for k, v in env.items() if v != ""}


def cli(env: dict[str, str], *args: str, timeout: float = 60) -> tuple[int, str, str]:
    result = subprocess.run([sys.executable, "-m", "bot.cli", *args], env=env, cwd=ROOT, capture_output=True,
                            text=True, timeout=timeout, check=False)
    return result.returncode, result.stdout, result.stderr


def assert_one_line(code: int, err: str, *expected: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("preview-bot: error: "), err
    for text in expected:
        assert text in lines[0], err
    for secret in (SECRET, TOKEN, "PRIVATE KEY", PEM.splitlines()[1]):
        assert secret not in err
    assert "Traceback" not in err


def kubeconfig(path: Path, server: str) -> Path:
    path.write_text(f"""apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{server: "{server}", insecure-skip-tls-verify: true}}}}]
users: [{{name: u, user: {{token: {TOKEN}}}}}]
contexts: [{{name: x, context: {{cluster: c, user: u}}}}]
current-context: x
""")
    return path


@pytest.mark.parametrize("command", [["serve", "--host", "127.0.0.1", "--port", "0"], ["gc"], ["list"]])
def test_no_kubernetes_configuration(tmp_path: Path, command: list[str]) -> None:
    code, _, err = cli(base_env(tmp_path), *command)
    assert_one_line(code, err, "Kubernetes: no configuration found: set KUBECONFIG or run in a pod")


@pytest.mark.parametrize(("kubeconfig_text", "expected"), [
    (None, "does not exist"),
    ("just text\n", "is not a kubeconfig"),
    ("apiVersion: v1\nkind: Config\ncurrent-context: nowhere\ncontexts: []\n", "cannot be used"),
])
def test_a_kubeconfig_that_cannot_be_used(tmp_path: Path, kubeconfig_text: str | None, expected: str) -> None:
    path = tmp_path / "kubeconfig"
    if kubeconfig_text is not None:
        path.write_text(kubeconfig_text)
    for command in (["serve", "--port", "0"], ["list"]):
        code, _, err = cli(base_env(tmp_path, KUBECONFIG=str(path)), *command)
        assert_one_line(code, err, f"kubeconfig {path}", expected)


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def kubeconfig_with(path: Path, *, user: str, server: str) -> Path:
    """A kubeconfig whose user `u` is `user` (a flow-YAML mapping)."""
    path.write_text(f"""apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{server: "{server}", insecure-skip-tls-verify: true}}}}]
users: [{{name: u, user: {user}}}]
contexts: [{{name: x, context: {{cluster: c, user: u}}}}]
current-context: x
""")
    return path


@pytest.mark.parametrize("plugin", ["fails", "missing"])
@pytest.mark.parametrize("command", [["serve", "--host", "127.0.0.1", "--port", "0"], ["list"]])
def test_a_failing_exec_plugin_is_the_one_line(tmp_path: Path, plugin: str, command: list[str]) -> None:
    """The client only logs an exec plugin's failure and goes on without credentials: the line names the
    plugin and why (its stderr's first line, or that it is not installed), and is not logged besides."""
    if plugin == "fails":
        script = tmp_path / "aws"
        script.write_text("#!/bin/sh\necho 'error: could not get token: ExpiredToken' >&2\necho more >&2\nexit 1\n")
        script.chmod(0o755)
        name, expected = str(script), "exited with status 1: error: could not get token: ExpiredToken"
    else:
        name, expected = "preview-bot-no-such-plugin", "not found"
    user = (f"{{exec: {{apiVersion: client.authentication.k8s.io/v1beta1, command: '{name}', "
            f"args: [--token, {TOKEN}]}}}}")
    path = kubeconfig_with(tmp_path / "kc", user=user, server=f"https://127.0.0.1:{closed_port()}")
    code, out, err = cli(base_env(tmp_path, KUBECONFIG=str(path)), *command)
    assert_one_line(code, err, f"the kubeconfig {path}: user u: the exec credential plugin `{name}` failed: {expected}")
    assert "exec" not in out and "unreachable" not in err


@pytest.mark.parametrize(("user", "server", "expected"), [
    ("{auth-provider: {name: gcp}}", "https://127.0.0.1:{port}",
     "user u: auth-provider gcp is not supported (Kubernetes removed it in 1.26): use the exec credential plugin "
     "gke-gcloud-auth-plugin"),
    ("{auth-provider: {name: azure, config: {tenant-id: t}}}", "https://127.0.0.1:{port}",
     "user u: auth-provider azure is not supported"),
    ("{tokenFile: /missing/path}", "https://127.0.0.1:{port}", "user u: tokenFile /missing/path does not exist"),
    (f"{{token: {TOKEN}}}", "ftp://admin:hunter2@127.0.0.1:{port}",
     "cluster c: server ftp://127.0.0.1:{port}: the URL scheme ftp is not https or http"),
])
def test_what_the_client_would_misreport_is_named(tmp_path: Path, user: str, server: str, expected: str) -> None:
    """Not "not a kubeconfig", not "cannot read the kubeconfig", not a network error retried: the file, the
    user or cluster, and the field."""
    port = closed_port()
    path = kubeconfig_with(tmp_path / "kc", user=user, server=server.format(port=port))
    code, _, err = cli(base_env(tmp_path, KUBECONFIG=str(path)), "list")
    assert_one_line(code, err, f"Kubernetes: the kubeconfig {path}: {expected.format(port=port)}")
    assert "hunter2" not in err


@pytest.mark.parametrize(("variable", "value", "expected"), [
    ("GITHUB_APP_ID", "", "GITHUB_APP_ID: is required"),
    ("GITHUB_WEBHOOK_SECRET", "short", "GITHUB_WEBHOOK_SECRET: is too short"),
    ("PREVIEW_DOMAIN", "a" * 64 + ".example.com", "PREVIEW_DOMAIN"),
    ("PREVIEW_HOST_TEMPLATE", "{service}.{domain}", "PREVIEW_HOST_TEMPLATE"),
    ("GITHUB_PRIVATE_KEY", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----", "cannot be loaded"),
    ("LOG_LEVEL", "chatty", "LOG_LEVEL"),
])
def test_bad_settings(tmp_path: Path, variable: str, value: str, expected: str) -> None:
    code, _, err = cli(base_env(tmp_path, **{variable: value}), "serve", "--port", "0")
    assert_one_line(code, err, expected)


@pytest.mark.parametrize("make_path", [lambda d: d / "missing.pem", lambda d: d])
def test_unreadable_key_file(tmp_path: Path, make_path: object) -> None:
    path = make_path(tmp_path)  # type: ignore[operator]
    env = base_env(tmp_path, GITHUB_PRIVATE_KEY="", GITHUB_PRIVATE_KEY_PATH=str(path))
    code, _, err = cli(env, "serve", "--port", "0")
    assert_one_line(code, err, "GITHUB_PRIVATE_KEY_PATH: cannot read the key file")


def test_bad_port(tmp_path: Path) -> None:
    code, _, err = cli(base_env(tmp_path), "serve", "--port", "70000")
    assert_one_line(code, err, "--port", "0 to 65535")


@pytest.mark.parametrize("command", [["serve", "--host", "127.0.0.1", "--port", "0"], ["gc"], ["list"],
                                     ["explain", "--host", "preview-1-api-a.example.com"]])
def test_an_unreachable_cluster_is_fatal(tmp_path: Path, command: list[str]) -> None:
    """Nothing listens on the port (bound, then closed): the adapter retries, then the command stops with
    the API server's URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = base_env(tmp_path, KUBECONFIG=str(kubeconfig(tmp_path / "kc", f"https://127.0.0.1:{port}")))
    code, _, err = cli(env, *command)
    assert_one_line(code, err, f"Kubernetes: https://127.0.0.1:{port}", "unreachable")


def test_render_errors_are_one_line(tmp_path: Path) -> None:
    code, _, err = cli(base_env(tmp_path), "render", "--config", str(tmp_path / "nope.yml"), "--repo",
                       "acme/shop", "--repo-id", "1", "--pr", "1", "--sha", "ab12" * 10)
    assert_one_line(code, err, "nope.yml", "cannot read")


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that no kubeconfig trusts, and its key."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "not-the-api-server")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    (folder / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "tls.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    return folder / "tls.crt", folder / "tls.key"


@pytest.mark.parametrize("command", [["gc"], ["list"]])
def test_an_api_server_certificate_that_does_not_verify_is_one_line(tmp_path: Path, command: list[str]) -> None:
    """The kubeconfig trusts no CA that signed the server's certificate (certificate-authority missing or
    wrong): the client's SSLError is named once, not retried, no traceback."""
    import ssl
    import threading

    crt, key = _self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(crt, key)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(30)
    port = listener.getsockname()[1]
    handshakes: list[str] = []

    def serve() -> None:  # bounded: at most 10 connections, each refused in the TLS handshake
        for _ in range(10):
            try:
                conn, _addr = listener.accept()
            except OSError:
                return
            with conn:
                try:
                    context.wrap_socket(conn, server_side=True).close()
                except (ssl.SSLError, OSError) as exc:
                    handshakes.append(type(exc).__name__)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    path = tmp_path / "kc"
    path.write_text(f"""apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{server: "https://127.0.0.1:{port}"}}}}]
users: [{{name: u, user: {{token: {TOKEN}}}}}]
contexts: [{{name: x, context: {{cluster: c, user: u}}}}]
current-context: x
""")
    try:
        code, _, err = cli(base_env(tmp_path, KUBECONFIG=str(path)), *command)
    finally:
        listener.close()
        thread.join(5)
    assert_one_line(code, err, "not usable over TLS", "certificate verify failed", "certificate-authority")
    assert len(handshakes) == 1, handshakes  # not retried


def test_an_exec_plugin_that_hangs_is_killed_and_named(tmp_path: Path) -> None:
    """The client waits for an exec plugin for ever: with nobody at a terminal it gets its time, is killed,
    and start-up says so in one line (never the plugin's arguments, which may hold a secret)."""
    from bot.errors import StartupError
    from bot.kube import transport

    pid_file = tmp_path / "pid"
    script = tmp_path / "aws"
    script.write_text(f"#!/bin/sh\necho $$ > {pid_file}\nexec sleep 30\n")
    script.chmod(0o755)
    user = (f"{{exec: {{apiVersion: client.authentication.k8s.io/v1beta1, command: '{script}', "
            f"args: [--token, {TOKEN}]}}}}")
    path = kubeconfig_with(tmp_path / "kc", user=user, server=f"https://127.0.0.1:{closed_port()}")
    try:
        with pytest.raises(StartupError) as raised:
            transport.api_client_from_environment(str(path), exec_timeout=1)
    finally:
        transport._bound_exec_plugins(transport.EXEC_PLUGIN_TIMEOUT)
    assert str(raised.value) == (f"Kubernetes: the kubeconfig {path}: user u: the exec credential plugin "
                                 f"`{script}` failed: did not finish within 1 s (killed)")
    with pytest.raises(ProcessLookupError):  # killed and reaped, not left behind
        os.kill(int(pid_file.read_text()), 0)
