"""Process settings: environment variables -> frozen dataclasses, validated once at start.

Every error names the variable, so `serve` can stop with one clear line. Policy that a pull request
could abuse (images, replicas, resources, how many previews) lives here, never in the repository's
own config file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Literal

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bot import dns, images
from bot.errors import ConfigError

DEFAULT_API_URL = "https://api.github.com"
DEFAULT_HOST_TEMPLATE = "preview-{number}-api-{service}.{domain}"
HOST_PLACEHOLDERS = frozenset({"number", "service", "domain", "key", "repo", "owner"})
# The longest value each placeholder can take (host_for shortens labels over 63 characters, so these bound
# the longest host): a service name (repo_config: 40), a repository name (GitHub: 100, made a DNS label:
# at most 63), an owner (GitHub: 39, plus a hash when not already a label), a PR number (10 digits).
LONGEST_PLACEHOLDERS: Mapping[str, str] = {
    "service": "s" * 40,
    "repo": "r" * 63,
    "owner": "o" * 46,
    "number": "9" * 10,
    "key": f"preview-{'9' * 10}-abcdef",
}
MatchMode = Literal["header", "baggage", "both"]

# `\Z`, not `$`: Python's `$` also matches before a final line break, which would pass a value ending in one.
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z")
_DNS_NAME = re.compile(r"^(?=.{1,253}\Z)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z")
_RESOURCE_NAMES = frozenset({"cpu", "memory", "ephemeral-storage"})
SOURCE = "environment"
MAX_DURATION = 1_000_000  # the largest number a duration setting takes, in its own unit (seconds, hours, days)
# Passes more often than this would spend the GitHub rate limit on listing PRs and little else.
MIN_RECONCILE_INTERVAL = 10.0


def _env_error(name: str, reason: str) -> ConfigError:
    return ConfigError(SOURCE, name, reason)


def parse_quantity(text: str) -> Decimal:
    """Parse a Kubernetes resource quantity (100m, 1.5, 64Mi, 1G) to a Decimal of base units."""
    suffixes: dict[str, Decimal | int] = {
        "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
        "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"),
        "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
    }
    match = re.fullmatch(r"([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)([A-Za-z]{0,2})", text.strip())
    if not match or (match.group(2) and match.group(2) not in suffixes):
        raise ValueError(f"{text!r} is not a Kubernetes quantity (e.g. 100m, 0.5, 256Mi)")
    try:
        number = Decimal(match.group(1))
    except InvalidOperation as exc:  # pragma: no cover - the regex already guards this
        raise ValueError(f"{text!r} is not a number") from exc
    return number * Decimal(suffixes[match.group(2)]) if match.group(2) else number


def parse_resource_list(text: str, *, where: str) -> dict[str, str]:
    """`cpu=100m,memory=128Mi` -> {"cpu": "100m", "memory": "128Mi"}; errors name `where`."""
    result: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or name not in _RESOURCE_NAMES:
            raise _env_error(where, f"expected name=quantity with name in {sorted(_RESOURCE_NAMES)}, got {item!r}")
        try:
            parse_quantity(value)
        except ValueError as exc:
            raise _env_error(where, str(exc)) from None
        result[name] = value
    return result


@dataclass(frozen=True)
class Policy:
    """Limits a repository's config cannot lift."""

    allowed_image_prefixes: tuple[str, ...] = ()
    max_replicas: int = 3
    max_previews_per_repo: int = 10
    default_requests: Mapping[str, str] = field(default_factory=lambda: {"cpu": "50m", "memory": "64Mi"})
    default_limits: Mapping[str, str] = field(default_factory=lambda: {"cpu": "500m", "memory": "256Mi"})
    max_resources: Mapping[str, str] = field(default_factory=lambda: {"cpu": "2", "memory": "2Gi"})


@dataclass(frozen=True)
class SessionHost:
    """A normal public host whose gateway routes honour a preview's browser-session cookie: requests to
    `host` carrying the cookie go to `mesh_host:port` (or to the PR's build of that service)."""

    host: str
    mesh_host: str
    port: int


@dataclass(frozen=True)
class ClusterSettings:
    """What rendering a preview needs: no credentials."""

    domain: str
    host_template: str = DEFAULT_HOST_TEMPLATE
    namespace: str = "default"
    gateway: str = "istio-system/preview-gateway"
    routing_namespace: str = "istio-system"
    header_name: str = "x-preview"
    match_mode: MatchMode = "header"
    policy: Policy = field(default_factory=Policy)
    browser_sessions: bool = False
    session_hosts: tuple[SessionHost, ...] = ()

    def host_for(self, **values: str | int) -> str:
        """The template filled in, lowercased; a label over 63 characters is cut and given a hash of
        itself (dns.short_labels). The longest result was checked at start (validate_host_template)."""
        return dns.short_labels(self.host_template.format(domain=self.domain, **values).lower())


@dataclass(frozen=True)
class Settings:
    """Everything `serve` needs."""

    cluster: ClusterSettings
    app_id: int
    private_key: str = field(repr=False)
    webhook_secret: str = field(repr=False)
    api_url: str = DEFAULT_API_URL
    ready_timeout: float = 300.0  # seconds a preview has to become Available
    # Seconds after a rollout starts during which ErrImagePull/ImagePullBackOff means "the image is not
    # pushed yet" (CI builds it after the push), not a failure. A preview waiting for its image is waited
    # for this long even when it is longer than `ready_timeout` (bot.kube.rollout): the two never conflict.
    image_pull_grace: float = 600.0
    max_concurrency: int = 8
    max_queue: int = 2000
    max_body_bytes: int = 25 * 1024 * 1024
    drain_timeout: float = 30.0
    # Seconds serve keeps accepting deliveries after SIGTERM, /readyz 503, before it drains: Kubernetes
    # takes a terminating pod out of its Service's endpoints while it sends SIGTERM, and ingresses see
    # that a moment later (kubernetes.io: Pod lifecycle, "Termination of Pods").
    shutdown_delay: float = 5.0
    content_requests_per_minute: int = 60
    content_requests_per_hour: int = 450
    reconcile_interval: float = 300.0
    idle_ttl_days: float = 7.0
    ttl_warning_hours: float = 24.0  # 0: no warning before the idle TTL
    leader_election: bool = False
    lease_namespace: str = "preview-bot"
    lease_name: str = "preview-bot-reconciler"
    lease_seconds: int = 30
    github_timeout: float = 20.0
    kube_timeout: float = 30.0
    identity: str = "preview-bot"
    delete_environments: bool = False


def _positive_int(env: Mapping[str, str], name: str, default: int, *, maximum: int | None = None) -> int:
    """A whole number of at least 1 (and at most `maximum` when given)."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _env_error(name, f"must be a whole number, got {raw!r}") from None
    if value < 1:
        raise _env_error(name, f"must be at least 1, got {value}")
    if maximum is not None and value > maximum:
        raise _env_error(name, f"must be at most {maximum:,}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, *, zero: bool) -> float:
    """A finite number of the environment: greater than 0, or also 0 when `zero`."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise _env_error(name, f"must be a number, got {raw!r}") from None
    if zero and not value >= 0:
        raise _env_error(name, f"must be 0 or more, got {raw}")
    if not zero and not value > 0:
        raise _env_error(name, f"must be greater than 0, got {raw}")
    # Durations become timedeltas and timer deadlines: `inf` or 1e308 would overflow them mid-run.
    if not value <= MAX_DURATION:
        raise _env_error(name, f"must be at most {MAX_DURATION:,}, got {raw}")
    return value


def _positive_float(env: Mapping[str, str], name: str, default: float) -> float:
    return _float(env, name, default, zero=False)


def _non_negative_float(env: Mapping[str, str], name: str, default: float) -> float:
    return _float(env, name, default, zero=True)


def _reconcile_interval(env: Mapping[str, str]) -> float:
    """PREVIEW_RECONCILE_INTERVAL: seconds between reconciliation passes, MIN_RECONCILE_INTERVAL or more."""
    value = _positive_float(env, "PREVIEW_RECONCILE_INTERVAL", 300.0)
    if value < MIN_RECONCILE_INTERVAL:
        raise _env_error("PREVIEW_RECONCILE_INTERVAL", f"must be at least {MIN_RECONCILE_INTERVAL:g} seconds (each "
                         f"pass reads every installation's pull requests from GitHub), got {value:g}")
    return value


def kube_timeout(env: Mapping[str, str]) -> float:
    """PREVIEW_KUBE_TIMEOUT: seconds one Kubernetes request may take (default 30), for every command."""
    return _positive_float(env, "PREVIEW_KUBE_TIMEOUT", 30.0)


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise _env_error(name, f"must be true or false, got {raw!r}")


def _matching(env: Mapping[str, str], name: str, default: str, pattern: re.Pattern[str], what: str) -> str:
    value = env.get(name) or default
    if not pattern.match(value):
        raise _env_error(name, f"must be {what}, got {value!r}")
    return value


def _dns_label(env: Mapping[str, str], name: str, default: str) -> str:
    """A namespace name: a DNS-1123 label (Kubernetes: "Object Names and IDs")."""
    return _matching(env, name, default, _DNS_LABEL, "a lowercase DNS-1123 label (a Kubernetes namespace)")


def _object_name(env: Mapping[str, str], name: str, default: str) -> str:
    """The name of an object like a Lease: a DNS-1123 subdomain (Kubernetes: "Object Names and IDs")."""
    return _matching(env, name, default, _DNS_NAME, "a Kubernetes object name (lowercase letters, digits, '-' "
                     "and '.', at most 253 characters, starting and ending with a letter or digit)")


def validate_host_template(template: str, domain: str) -> str:
    """Check the template's placeholders and that it yields a valid host name."""
    names = set(re.findall(r"{([^{}]*)}", template))
    unknown = names - HOST_PLACEHOLDERS
    if unknown:
        raise _env_error("PREVIEW_HOST_TEMPLATE", f"unknown placeholder(s) {sorted(unknown)}; "
                         f"allowed: {sorted(HOST_PLACEHOLDERS)}")
    # Without the PR and the service two previews would share one host.
    if not ({"number", "key"} & names) or "service" not in names:
        raise _env_error("PREVIEW_HOST_TEMPLATE", "must contain {service} and {number} (or {key})")
    try:
        sample = template.format(number=123, service="svc", domain=domain, key="preview-123-abcdef",
                                 repo="repo", owner="owner").lower()
    except (ValueError, IndexError, KeyError) as exc:  # an unpaired `{` or `}`: str.format's own words
        raise _env_error("PREVIEW_HOST_TEMPLATE", f"is not a valid template: {exc}") from None
    if not _DNS_NAME.match(sample):
        raise _env_error("PREVIEW_HOST_TEMPLATE", f"does not give a valid host name (e.g. {sample!r})")
    if "." not in sample:
        # Istio reads a VirtualService host without a dot as a short name in the VirtualService's own
        # namespace (<host>.<namespace>.svc.cluster.local; Istio: VirtualService `hosts`), so no request
        # through the Gateway would ever match it.
        raise _env_error("PREVIEW_HOST_TEMPLATE", f"gives single-label hosts (e.g. {sample!r}), which Istio reads "
                         "as short names of in-cluster services; add the domain, e.g. {service}-{number}.{domain}")
    # The longest inputs: every label is at most 63 characters once shortened, so the host's length is
    # bounded by the sum of its labels' min(length, 63); that must stay within 253.
    longest = template.format(domain=domain, **LONGEST_PLACEHOLDERS).lower()
    length = sum(min(len(label), dns.MAX_LABEL) for label in longest.split(".")) + longest.count(".")
    if length > dns.MAX_NAME:
        raise _env_error("PREVIEW_HOST_TEMPLATE", f"gives hosts of up to {length} characters with PREVIEW_DOMAIN "
                         f"{domain!r} and the longest service, repository, owner and PR number; a host name has "
                         f"at most {dns.MAX_NAME}")
    return template


def parse_session_hosts(text: str, domain: str) -> tuple[SessionHost, ...]:
    """`api.example.com=api.shop.svc.cluster.local:8080,...` -> SessionHosts; errors name PREVIEW_SESSION_HOSTS."""
    name = "PREVIEW_SESSION_HOSTS"
    hosts: list[SessionHost] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        public, sep, target = item.partition("=")
        mesh_host, colon, port = target.strip().rpartition(":")
        public, mesh_host = public.strip().lower(), mesh_host.strip().lower()
        if not sep or not colon or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise _env_error(name, f"expected public.host=mesh.host:port, got {item!r}")
        if not _DNS_NAME.match(public) or not _DNS_NAME.match(mesh_host):
            raise _env_error(name, f"not valid host names in {item!r}")
        if public != domain and not public.endswith("." + domain):
            # The session cookie is set for the domain: a host outside it never receives it.
            raise _env_error(name, f"{public} is not inside PREVIEW_DOMAIN {domain}")
        if any(h.host == public for h in hosts):
            raise _env_error(name, f"{public} is listed twice")
        hosts.append(SessionHost(public, mesh_host, int(port)))
    return tuple(hosts)


def load_cluster_settings(env: Mapping[str, str], *, domain: str | None = None) -> ClusterSettings:
    domain = (domain or env.get("PREVIEW_DOMAIN", "")).strip().lower().rstrip(".")
    if not domain:
        raise _env_error("PREVIEW_DOMAIN", "is required (e.g. example.com)")
    if not _DNS_NAME.match(domain):
        raise _env_error("PREVIEW_DOMAIN", f"is not a valid DNS name: {domain!r}")
    problem = dns.name_problem(domain)
    if problem:
        raise _env_error("PREVIEW_DOMAIN", f"{domain!r} {problem}")
    template = validate_host_template(env.get("PREVIEW_HOST_TEMPLATE") or DEFAULT_HOST_TEMPLATE, domain)
    gateway = env.get("PREVIEW_GATEWAY") or "istio-system/preview-gateway"
    gw_namespace, slash, gw_name = gateway.partition("/")
    if not slash or not _DNS_LABEL.match(gw_namespace) or not _DNS_NAME.match(gw_name):
        raise _env_error("PREVIEW_GATEWAY", f"must be <namespace>/<name>, got {gateway!r}")
    header = (env.get("PREVIEW_HEADER") or "x-preview").lower()
    if not re.fullmatch(r"[a-z0-9][-a-z0-9]*", header):
        raise _env_error("PREVIEW_HEADER", f"is not a valid HTTP header name: {header!r}")
    reserved = _reserved_header(header)
    if reserved:
        raise _env_error("PREVIEW_HEADER", f"{header!r} {reserved}; use a header of its own, like x-preview")
    match_mode = (env.get("PREVIEW_MATCH") or "header").lower()
    if match_mode not in ("header", "baggage", "both"):
        raise _env_error("PREVIEW_MATCH", f"must be header, baggage or both, got {match_mode!r}")
    browser_sessions = _bool(env, "PREVIEW_BROWSER_SESSIONS", False)
    session_hosts = parse_session_hosts(env.get("PREVIEW_SESSION_HOSTS", ""), domain)
    if browser_sessions and not session_hosts:
        raise _env_error("PREVIEW_SESSION_HOSTS", "is required when PREVIEW_BROWSER_SESSIONS is true "
                         "(e.g. api.example.com=api.shop.svc.cluster.local:8080)")
    return ClusterSettings(
        browser_sessions=browser_sessions,
        session_hosts=session_hosts if browser_sessions else (),
        domain=domain,
        host_template=template,
        namespace=_dns_label(env, "PREVIEW_NAMESPACE", "default"),
        gateway=gateway,
        routing_namespace=_dns_label(env, "PREVIEW_ROUTING_NAMESPACE", "istio-system"),
        header_name=header,
        match_mode=match_mode,  # type: ignore[arg-type]  # checked just above
        policy=_load_policy(env),
    )


def _load_policy(env: Mapping[str, str]) -> Policy:
    defaults = Policy()
    prefixes = tuple(p.strip() for p in env.get("PREVIEW_ALLOWED_IMAGES", "").split(",") if p.strip())
    for prefix in prefixes:
        # Without the final `/`, `ghcr.io/acme` also admits `ghcr.io/acme-evil/...` (and `ghcr.io` any host
        # starting with it): the check is a plain string prefix.
        if not prefix.endswith("/"):
            raise _env_error("PREVIEW_ALLOWED_IMAGES",
                             f"each prefix must end with `/` (e.g. {prefix}/), got {prefix!r}")
        problem = images.prefix_problem(prefix)
        if problem:  # `/` or `ghcr.io//` would allow no image at all: every config refused, for no clear reason
            raise _env_error("PREVIEW_ALLOWED_IMAGES", f"each prefix {problem}, got {prefix!r}")
    policy = Policy(
        allowed_image_prefixes=prefixes,
        max_replicas=_positive_int(env, "PREVIEW_MAX_REPLICAS", defaults.max_replicas),
        max_previews_per_repo=_positive_int(env, "PREVIEW_MAX_PER_REPO", defaults.max_previews_per_repo),
        default_requests=parse_resource_list(env["PREVIEW_DEFAULT_REQUESTS"], where="PREVIEW_DEFAULT_REQUESTS")
        if env.get("PREVIEW_DEFAULT_REQUESTS") else defaults.default_requests,
        default_limits=parse_resource_list(env["PREVIEW_DEFAULT_LIMITS"], where="PREVIEW_DEFAULT_LIMITS")
        if env.get("PREVIEW_DEFAULT_LIMITS") else defaults.default_limits,
        max_resources=parse_resource_list(env["PREVIEW_MAX_RESOURCES"], where="PREVIEW_MAX_RESOURCES")
        if env.get("PREVIEW_MAX_RESOURCES") else defaults.max_resources,
    )
    for kind, values in (("PREVIEW_DEFAULT_REQUESTS", policy.default_requests),
                         ("PREVIEW_DEFAULT_LIMITS", policy.default_limits)):
        for name, value in values.items():
            cap = policy.max_resources.get(name)
            if cap is not None and parse_quantity(value) > parse_quantity(cap):
                raise _env_error(kind, f"{name}={value} is above PREVIEW_MAX_RESOURCES {name}={cap}")
    for name in policy.default_requests.keys() & policy.default_limits.keys():
        request, limit = policy.default_requests[name], policy.default_limits[name]
        if parse_quantity(request) > parse_quantity(limit):
            # Kubernetes refuses a container whose request is above its limit (core/v1 ResourceRequirements).
            raise _env_error("PREVIEW_DEFAULT_REQUESTS",
                             f"{name}={request} is above PREVIEW_DEFAULT_LIMITS {name}={limit}")
    return policy


# Headers the gateway's `set` would break or that already mean something on every request: HTTP framing
# and connection headers (RFC 9110 section 7.6.1, RFC 9112), the request's host, credentials and cookies,
# proxies' forwarding records, tracing context (W3C, B3), and Envoy's own `x-envoy-` headers.
_RESERVED_HEADERS = frozenset({
    "host", "content-length", "content-type", "content-encoding", "transfer-encoding", "connection", "keep-alive",
    "upgrade", "te", "trailer", "expect", "cookie", "set-cookie", "authorization", "forwarded", "via",
    "x-request-id", "baggage", "traceparent", "tracestate", "b3"})
_RESERVED_PREFIXES = ("x-forwarded-", "x-envoy-", "proxy-", "x-b3-", "x-ot-", "grpc-", "x-amzn-")


def _reserved_header(name: str) -> str | None:
    """Why `name` cannot be the routing header, or None."""
    if name in _RESERVED_HEADERS or name.startswith(_RESERVED_PREFIXES):
        return "already carries something else on every request (the preview host would overwrite it)"
    return None


def _read_private_key(env: Mapping[str, str]) -> str:
    inline = env.get("GITHUB_PRIVATE_KEY", "").strip()
    path = env.get("GITHUB_PRIVATE_KEY_PATH", "").strip()
    if inline and path:
        raise _env_error("GITHUB_PRIVATE_KEY", "set either GITHUB_PRIVATE_KEY or GITHUB_PRIVATE_KEY_PATH, not both")
    if path:
        try:
            inline = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise _env_error("GITHUB_PRIVATE_KEY_PATH", f"cannot read the key file: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise _env_error("GITHUB_PRIVATE_KEY_PATH", "is not a PEM private key (binary content: a DER key? "
                             "`openssl pkey -inform DER` converts it)") from None
        if not inline:
            raise _env_error("GITHUB_PRIVATE_KEY_PATH", "the key file is empty")
        name = "GITHUB_PRIVATE_KEY_PATH"
    else:
        name = "GITHUB_PRIVATE_KEY"
    if not inline:
        raise _env_error("GITHUB_PRIVATE_KEY_PATH", "is required (or GITHUB_PRIVATE_KEY holding the PEM)")
    if "-----BEGIN" in inline and "\n" not in inline and "\\n" in inline:
        raise _env_error(name, "holds the PEM with literal \\n escapes on one line; give it with real line breaks")
    if "-----BEGIN" not in inline or "PRIVATE KEY-----" not in inline:
        raise _env_error(name, "is not a PEM private key")
    try:
        key = serialization.load_pem_private_key(inline.encode("utf-8"), password=None)
    except TypeError:  # cryptography's answer for a key that needs a passphrase
        raise _env_error(name, "is an encrypted (passphrase-protected) private key; GitHub App keys are "
                         "unencrypted: use the .pem GitHub gave, or decrypt it with `openssl pkey`") from None
    except (ValueError, UnsupportedAlgorithm):
        # Checked here so that a damaged key stops start-up, not the first JWT; never echoed.
        raise _env_error(name, "is not a usable PEM private key (it cannot be loaded)") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        # App JWTs are RS256 (GitHub: "Generating a JSON Web Token (JWT) for a GitHub App"): any other key
        # would load here and fail at the first JWT.
        raise _env_error(name, "is not an RSA private key (GitHub App keys are RSA; download the App's key again)")
    return inline + "\n"


def _webhook_secret(env: Mapping[str, str]) -> str:
    secret = env.get("GITHUB_WEBHOOK_SECRET", "")
    if not secret:
        raise _env_error("GITHUB_WEBHOOK_SECRET", "is required")
    if len(secret) < 16:
        raise _env_error("GITHUB_WEBHOOK_SECRET", "is too short (use at least 16 characters)")
    if "\n" in secret or "\r" in secret:
        # GitHub's one-line secret field holds no line break: such a secret (a Secret made from a file
        # written by `echo`) would make every delivery's signature fail with 401.
        raise _env_error("GITHUB_WEBHOOK_SECRET", "contains a line break (a Secret made from a file ending in a "
                         "newline?); GitHub's webhook secret is one line")
    return secret


def load_settings(env: Mapping[str, str], *, webhooks: bool = True) -> Settings:
    """Build and validate all settings; raises ConfigError naming the first bad variable. Without
    `webhooks` (`gc`, which receives none) GITHUB_WEBHOOK_SECRET is neither required nor read."""
    raw_app_id = env.get("GITHUB_APP_ID", "").strip()
    if not raw_app_id:
        raise _env_error("GITHUB_APP_ID", "is required (the App's numeric ID)")
    if not (raw_app_id.isascii() and raw_app_id.isdigit()) or int(raw_app_id) < 1:
        raise _env_error("GITHUB_APP_ID", f"must be a positive number, got {raw_app_id!r}")
    secret = _webhook_secret(env) if webhooks else ""
    api_url = (env.get("GITHUB_API_URL") or DEFAULT_API_URL).rstrip("/")
    # Shown without userinfo: the value is echoed when wrong, and a password there would reach the logs.
    shown = re.sub(r"^([^:/]*://)[^/]*@", r"\1", api_url)
    if shown != api_url:
        # Requests authenticate with the App's key (a JWT, then installation tokens); aiohttp refuses to
        # send credentials from the URL next to an Authorization header, so every request would fail.
        raise _env_error("GITHUB_API_URL", f"must not carry credentials (user:password@), got {shown!r}")
    if not re.match(r"^https?://[^/\s]+(/\S*)?\Z", api_url):
        raise _env_error("GITHUB_API_URL", f"must be an http(s) URL, got {api_url!r}")
    idle_ttl_days = _positive_float(env, "PREVIEW_IDLE_TTL_DAYS", 7.0)
    # A warning as early as the TTL itself would be due at every deploy: each push would be answered by one.
    # The default keeps clear of that on short TTLs; a value set on purpose is refused instead.
    ttl_warning_hours = _non_negative_float(env, "PREVIEW_TTL_WARNING", min(24.0, idle_ttl_days * 24 / 2))
    if ttl_warning_hours >= idle_ttl_days * 24:
        raise _env_error("PREVIEW_TTL_WARNING", f"({ttl_warning_hours:g} hours) must be less than the idle TTL, "
                         f"PREVIEW_IDLE_TTL_DAYS={idle_ttl_days:g} ({idle_ttl_days * 24:g} hours); 0: no warning")
    return Settings(
        cluster=load_cluster_settings(env),
        app_id=int(raw_app_id),
        private_key=_read_private_key(env),
        webhook_secret=secret,
        api_url=api_url,
        ready_timeout=_positive_float(env, "PREVIEW_READY_TIMEOUT", 300.0),
        image_pull_grace=_positive_float(env, "PREVIEW_IMAGE_PULL_GRACE", 600.0),
        max_concurrency=_positive_int(env, "PREVIEW_MAX_CONCURRENCY", 8),
        max_queue=_positive_int(env, "PREVIEW_MAX_QUEUE", 2000),
        max_body_bytes=_positive_int(env, "PREVIEW_MAX_BODY_BYTES", 25 * 1024 * 1024),
        drain_timeout=_positive_float(env, "PREVIEW_DRAIN_TIMEOUT", 30.0),
        shutdown_delay=_non_negative_float(env, "PREVIEW_SHUTDOWN_DELAY", 5.0),
        content_requests_per_minute=_positive_int(env, "PREVIEW_GITHUB_CONTENT_PER_MINUTE", 60),
        content_requests_per_hour=_positive_int(env, "PREVIEW_GITHUB_CONTENT_PER_HOUR", 450),
        reconcile_interval=_reconcile_interval(env),
        idle_ttl_days=idle_ttl_days,
        ttl_warning_hours=ttl_warning_hours,
        leader_election=_bool(env, "PREVIEW_LEADER_ELECTION", False),
        lease_namespace=_dns_label(env, "POD_NAMESPACE", "preview-bot"),
        lease_name=_object_name(env, "PREVIEW_LEASE_NAME", "preview-bot-reconciler"),
        # The Lease's leaseDurationSeconds is an int32 (coordination.k8s.io/v1 LeaseSpec); the duration
        # rule's bound is well inside it.
        lease_seconds=_positive_int(env, "PREVIEW_LEASE_SECONDS", 30, maximum=MAX_DURATION),
        github_timeout=_positive_float(env, "PREVIEW_GITHUB_TIMEOUT", 20.0),
        kube_timeout=kube_timeout(env),
        identity=env.get("POD_NAME") or env.get("HOSTNAME") or "preview-bot",
        delete_environments=_bool(env, "PREVIEW_DELETE_ENVIRONMENTS", False),
    )
