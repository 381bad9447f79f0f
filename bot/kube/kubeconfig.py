"""What the kubeconfig's selected user and cluster ask of the Kubernetes client, checked before it runs.

The client reports some of these as something else: a missing tokenFile as an unreadable kubeconfig, a
`gcp` auth-provider as a malformed kubeconfig, an `ftp://` server as a network error to retry, and it
ignores an `azure` auth-provider (the API server then answers 401). Each check here names the user or
cluster, the field and the file instead. They follow the client's own rules (kubernetes/config/
kube_config.py): which field wins (`*-data` over the file, `token` over `tokenFile`), where a relative
path is resolved from, that the TLS files are read only for an https server. No message carries a
field's content, except a server URL without its userinfo, query and fragment.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bot.errors import first_line

# Removed from Kubernetes in 1.26 (client-go's in-tree providers); their exec plugins replace them.
_REPLACED_PROVIDERS = {
    "gcp": "gke-gcloud-auth-plugin (`gcloud container clusters get-credentials` sets it up)",
    "azure": "kubelogin (`kubelogin convert-kubeconfig -l azurecli` sets it up)",
}
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")


@dataclass(frozen=True)
class Entry:
    """The selected user's `user:` or cluster's `cluster:` mapping (`kind`), its name, and its file."""

    kind: str
    name: str
    body: Mapping[str, Any]
    file: str

    @property
    def label(self) -> str:
        """How messages name it: `the kubeconfig <file>: user <name>`."""
        return f"the kubeconfig {self.file}: {self.kind} {self.name}"

    @property
    def folder(self) -> str:
        """Where the client resolves this entry's relative paths from."""
        return os.path.dirname(os.path.abspath(self.file))


def safe_url(url: str) -> str:
    """`url` without userinfo, query and fragment: a server URL fit for a message."""
    scheme, sep, rest = url.partition("://")
    if not sep or not _SCHEME.fullmatch(scheme):
        scheme, sep, rest = "", "", url
    authority, slash, path = rest.partition("/")
    path = re.split(r"[?#]", path, maxsplit=1)[0]
    return f"{scheme}{sep}{authority.rpartition('@')[2]}{slash}{path}"


def server_problem(cluster: Entry) -> str | None:
    """The client would not send requests to the server it was given (it would retry them as network
    errors, or send them to http://localhost when there is none)."""
    server = cluster.body.get("server")
    if not isinstance(server, str) or not server.strip():
        return f"{cluster.label}: server is missing (the API server's https:// URL)"
    shown = safe_url(server.strip())
    scheme, sep, rest = server.strip().partition("://")
    if not sep or not _SCHEME.fullmatch(scheme):
        return f"{cluster.label}: server {shown} has no URL scheme (it must start with https://)"
    # Exactly these: the client reads the TLS files only when the server starts with "https".
    if scheme not in ("https", "http"):
        return f"{cluster.label}: server {shown}: the URL scheme {scheme} is not https or http"
    if not re.split(r"[/?#]", rest, maxsplit=1)[0].rpartition("@")[2]:
        return f"{cluster.label}: server {shown} has no host"
    return None


def _file_problem(owner: str, field: str, value: Any, folder: str) -> str | None:
    if not isinstance(value, str) or not value:
        return f"{owner}: {field} is not a file path"
    path = os.path.normpath(os.path.join(folder, value))
    if not os.path.exists(path):
        return f"{owner}: {field} {path} does not exist"
    if not os.path.isfile(path):
        return f"{owner}: {field} {path} is not a file"
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        return f"{owner}: {field} {path} cannot be read: {exc.strerror}"
    return None


def _data_problem(owner: str, field: str, value: Any) -> str | None:
    if not value:
        return None  # the client then uses neither this nor the file
    try:
        base64.standard_b64decode(value.encode() if isinstance(value, str) else value)
    except (binascii.Error, TypeError, ValueError):
        return f"{owner}: {field} is not base64"
    return None


def _file_or_data_problem(owner: str, body: Mapping[str, Any], field: str, folder: str) -> str | None:
    if f"{field}-data" in body:  # the client's rule: the data wins, the file is not read
        return _data_problem(owner, f"{field}-data", body[f"{field}-data"])
    if field in body:
        return _file_problem(owner, field, body[field], folder)
    return None


def files_problem(user: Entry | None, cluster: Entry) -> str | None:
    """A file the client will read (tokenFile; for an https server certificate-authority, client-certificate,
    client-key) that is missing or unreadable, or `*-data` that is not base64."""
    if user is not None and "token" not in user.body and "tokenFile" in user.body:
        problem = _file_problem(user.label, "tokenFile", user.body["tokenFile"], user.folder)
        if problem:
            return problem
    if not str(cluster.body.get("server", "")).startswith("https"):
        return None
    problem = _file_or_data_problem(cluster.label, cluster.body, "certificate-authority", cluster.folder)
    if problem or user is None:
        return problem
    for field in ("client-certificate", "client-key"):
        # The client resolves these from the cluster's file (the same file unless KUBECONFIG lists several).
        problem = _file_or_data_problem(user.label, user.body, field, cluster.folder)
        if problem:
            return problem
    return None


def _jwt_expiry(token: str) -> float | None:
    """The `exp` of a JWT (None when it has none); ValueError when it is not one the client accepts."""
    parts = token.split(".")
    if len(parts) != 3 or any(c in token for c in "=+/") or len(parts[1]) % 4 == 1:
        raise ValueError("not a JWT")
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise ValueError("not a JWT") from exc
    if not isinstance(claims, dict):
        raise ValueError("not a JWT")
    expiry = claims.get("exp")
    if expiry is not None and (isinstance(expiry, bool) or not isinstance(expiry, int | float)):
        raise ValueError("not a JWT")  # the client would fail on it with a TypeError
    return None if expiry is None else float(expiry)


def auth_provider_problem(user: Entry, *, now: float, skew: float) -> str | None:
    """An auth-provider the client cannot use: gcp and azure (gone from Kubernetes), any other name but
    oidc (ignored: the API server would answer 401), an oidc id-token missing or expired. The client would
    refresh an expired one with the identity provider, with no timeout, and write it into the kubeconfig:
    preview-bot leaves that to kubectl or an exec plugin. `skew`: the client refreshes that many seconds
    before the expiry."""
    provider = user.body.get("auth-provider")
    if provider is None:
        return None
    owner = user.label
    name = provider.get("name") if isinstance(provider, Mapping) else None
    if not isinstance(name, str) or not name:
        return f"{owner}: auth-provider has no name"
    shown = first_line(name, 40)
    if name in _REPLACED_PROVIDERS:
        return (f"{owner}: auth-provider {shown} is not supported (Kubernetes removed it in 1.26): use the exec "
                f"credential plugin {_REPLACED_PROVIDERS[name]}")
    if name != "oidc":
        return (f"{owner}: auth-provider {shown} is not supported by the Kubernetes Python client: use an exec "
                "credential plugin")
    config = provider.get("config")
    token = config.get("id-token") if isinstance(config, Mapping) else None
    plugin = "an exec credential plugin such as kubelogin"
    if not isinstance(token, str) or not token:
        return f"{owner}: auth-provider oidc has no id-token, and preview-bot does not fetch one: use {plugin}"
    try:
        expiry = _jwt_expiry(token)
    except ValueError:
        return f"{owner}: auth-provider oidc: the id-token is not a JWT"
    if expiry is not None and expiry - skew <= now:
        return (f"{owner}: auth-provider oidc: the id-token has expired (or expires within {int(skew // 60)} "
                f"minutes), and preview-bot does not refresh it: use {plugin}, or run a kubectl command first")
    return None


def exec_command(user: Entry) -> str:
    """The exec plugin's command as written (never its arguments or environment), for messages."""
    spec = user.body.get("exec")
    command = spec.get("command") if isinstance(spec, Mapping) else None
    return first_line(command, 100) if isinstance(command, str) and command else "(no command)"


class ExecPluginTimeout(Exception):
    """An exec credential plugin did not finish within its time (seconds) and was killed."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"did not finish within {seconds:g} s (killed)")


def exec_failure(message: str, error: BaseException | None) -> str:
    """Why the exec plugin gave no credentials, from what the client logged (`message`) and the exception it
    was handling then (`error`, when there was one)."""
    if isinstance(error, ExecPluginTimeout):
        return str(error)
    if isinstance(error, FileNotFoundError):
        return "not found (is it installed, and on PATH?)"
    if isinstance(error, PermissionError):
        return "cannot be run (permission denied)"
    if isinstance(error, OSError):
        return f"cannot be run ({error.strerror or type(error).__name__})"
    text = message.removeprefix("exec: ")
    exited = re.match(r"process returned (-?\d+)\.?\s*(.*)", text, re.DOTALL)
    if exited:
        stderr = first_line(exited[2], 200)
        return f"exited with status {exited[1]}" + (f": {stderr}" if stderr else "")
    return first_line(text, 200) or "no credentials"


def redacted(message: str) -> str:
    """A client error's message without the entry it quotes: the client names a kubeconfig entry by its
    dict's repr (`.../{'name': 'u', 'user': {'token': ...}}/user`), credentials and all."""
    return re.sub(r"\{.*\}", "{...}", message)
