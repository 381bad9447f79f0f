"""bot.settings: every bad variable is named; secrets never show in repr."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from bot.errors import ConfigError
from bot.settings import (
    DEFAULT_HOST_TEMPLATE,
    ClusterSettings,
    Policy,
    load_cluster_settings,
    load_settings,
    parse_quantity,
    parse_resource_list,
    validate_host_template,
)
from tests.fakegithub.server import _app_key

PEM = _app_key()[1].strip()  # a real RSA key (the fake GitHub's, generated once per process)
DAMAGED_PEM = ("-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7\n"
               "-----END PRIVATE KEY-----")
SECRET = "s3cr3t-webhook-value-0123456789"


def base_env(**overrides: str) -> dict[str, str]:
    env = {
        "GITHUB_APP_ID": "12345",
        "GITHUB_WEBHOOK_SECRET": SECRET,
        "GITHUB_PRIVATE_KEY": PEM,
        "PREVIEW_DOMAIN": "example.com",
    }
    env.update(overrides)
    return {k: v for k, v in env.items() if v is not None}


def error_for(env: dict[str, str]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    return info.value


def test_valid_minimal_env_gives_defaults() -> None:
    settings = load_settings(base_env())
    assert settings.app_id == 12345
    assert settings.webhook_secret == SECRET
    assert settings.private_key == PEM + "\n"
    assert settings.api_url == "https://api.github.com"
    assert settings.cluster.domain == "example.com"
    assert settings.cluster.host_template == DEFAULT_HOST_TEMPLATE
    assert settings.cluster.gateway == "istio-system/preview-gateway"
    assert settings.cluster.header_name == "x-preview"
    assert settings.cluster.match_mode == "header"
    assert settings.max_concurrency == 8
    assert settings.shutdown_delay == 5.0
    assert settings.leader_election is False
    assert settings.cluster.policy == Policy()


@pytest.mark.parametrize("name", ["GITHUB_APP_ID", "GITHUB_WEBHOOK_SECRET", "PREVIEW_DOMAIN"])
@pytest.mark.parametrize("empty", [None, ""])
def test_each_required_variable_missing_is_named(name: str, empty: str | None) -> None:
    env = base_env()
    if empty is None:
        del env[name]
    else:
        env[name] = empty
    err = error_for(env)
    assert err.field == name
    assert name in str(err)


def test_missing_private_key_names_the_key_variables() -> None:
    env = base_env()
    del env["GITHUB_PRIVATE_KEY"]
    err = error_for(env)
    assert "GITHUB_PRIVATE_KEY_PATH" in str(err)
    assert err.field.startswith("GITHUB_PRIVATE_KEY")


def test_private_key_from_path(tmp_path: Path) -> None:
    key_file = tmp_path / "key.pem"
    key_file.write_text(PEM + "\n\n", encoding="utf-8")
    env = base_env(GITHUB_PRIVATE_KEY_PATH=str(key_file))
    del env["GITHUB_PRIVATE_KEY"]
    assert load_settings(env).private_key == PEM + "\n"


def test_private_key_path_unreadable_is_named(tmp_path: Path) -> None:
    env = base_env(GITHUB_PRIVATE_KEY_PATH=str(tmp_path / "missing.pem"))
    del env["GITHUB_PRIVATE_KEY"]
    err = error_for(env)
    assert err.field == "GITHUB_PRIVATE_KEY_PATH"
    assert "missing.pem" not in err.reason or "cannot read" in err.reason


def test_private_key_both_inline_and_path_refused(tmp_path: Path) -> None:
    key_file = tmp_path / "key.pem"
    key_file.write_text(PEM, encoding="utf-8")
    err = error_for(base_env(GITHUB_PRIVATE_KEY_PATH=str(key_file)))
    assert "GITHUB_PRIVATE_KEY" in err.field
    assert "not both" in err.reason


def test_a_damaged_pem_key_is_named_without_echoing_it() -> None:
    err = error_for(base_env(GITHUB_PRIVATE_KEY=DAMAGED_PEM))
    assert err.field == "GITHUB_PRIVATE_KEY" and "cannot be loaded" in err.reason
    assert "MIIEvQ" not in str(err)


def test_private_key_not_pem_is_named_without_echoing_it() -> None:
    err = error_for(base_env(GITHUB_PRIVATE_KEY="hunter2-not-a-key"))
    assert err.field == "GITHUB_PRIVATE_KEY"
    assert "hunter2" not in str(err)


def test_a_private_key_that_is_not_rsa_is_named_without_echoing_it() -> None:
    """GitHub App JWTs are RS256: an EC key loads but could never sign one, so start-up refuses it."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    err = error_for(base_env(GITHUB_PRIVATE_KEY=pem))
    assert err.field == "GITHUB_PRIVATE_KEY" and "RSA" in err.reason
    assert pem.splitlines()[1] not in str(err)


@pytest.mark.parametrize(("content", "reason"), [
    (b"0\x82\x04\xa4\x02\x01\x00\x02\x82\x01\x01\x00\xc3", "binary content: a DER key?"),
    (b"", "the key file is empty"),
    (b"  \n", "the key file is empty"),
])
def test_a_key_file_that_is_not_pem_text_is_named(tmp_path: Path, content: bytes, reason: str) -> None:
    key_file = tmp_path / "key.der"
    key_file.write_bytes(content)
    env = {k: v for k, v in base_env(GITHUB_PRIVATE_KEY_PATH=str(key_file)).items() if k != "GITHUB_PRIVATE_KEY"}
    err = error_for(env)
    assert err.field == "GITHUB_PRIVATE_KEY_PATH" and reason in err.reason


def test_a_pem_with_literal_backslash_n_escapes_is_named() -> None:
    err = error_for(base_env(GITHUB_PRIVATE_KEY=PEM.replace("\n", "\\n")))
    assert err.field == "GITHUB_PRIVATE_KEY" and "literal \\n escapes" in err.reason
    assert PEM.splitlines()[1] not in str(err)


@pytest.mark.parametrize("header", ["host", "Cookie", "content-length", "x-forwarded-for", "authorization",
                                    "x-envoy-original-path", "baggage", "traceparent", "x-b3-traceid"])
def test_a_routing_header_that_already_means_something_is_refused(header: str) -> None:
    err = error_for(base_env(PREVIEW_HEADER=header))
    assert err.field == "PREVIEW_HEADER" and "already carries something else" in err.reason


def test_an_own_routing_header_is_accepted() -> None:
    assert load_settings(base_env(PREVIEW_HEADER="X-Team-Preview")).cluster.header_name == "x-team-preview"


@pytest.mark.parametrize("private_format", ["PKCS8", "TraditionalOpenSSL"])
def test_an_encrypted_private_key_is_named_as_encrypted(private_format: str) -> None:
    """`-----BEGIN ENCRYPTED PRIVATE KEY-----` and `Proc-Type: 4,ENCRYPTED`: both need a passphrase."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, getattr(serialization.PrivateFormat, private_format),
        serialization.BestAvailableEncryption(b"passphrase")).decode()
    err = error_for(base_env(GITHUB_PRIVATE_KEY=pem))
    assert err.field == "GITHUB_PRIVATE_KEY" and "encrypted (passphrase-protected)" in err.reason
    assert pem.splitlines()[-2] not in str(err)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GITHUB_APP_ID", "abc"),
        ("GITHUB_APP_ID", "12a"),
        ("GITHUB_APP_ID", "-5"),
        ("GITHUB_WEBHOOK_SECRET", "short"),
        ("GITHUB_WEBHOOK_SECRET", SECRET + "\n"),  # every signature would fail with 401
        ("GITHUB_API_URL", "ftp://example.com"),
        ("GITHUB_API_URL", "not a url"),
        ("PREVIEW_DOMAIN", "exa mple.com"),
        ("PREVIEW_DOMAIN", "-bad-.com"),
        ("PREVIEW_GATEWAY", "nogateway"),
        ("PREVIEW_GATEWAY", "Istio_System/gw"),
        ("PREVIEW_GATEWAY", "istio-system/"),
        ("PREVIEW_HOST_TEMPLATE", "preview-api-{service}.{domain}"),
        ("PREVIEW_HOST_TEMPLATE", "preview-{number}.{domain}"),
        ("PREVIEW_HOST_TEMPLATE", "preview-{number}-{service}-{branch}.{domain}"),
        ("PREVIEW_HOST_TEMPLATE", "preview-{number}-{service}-{}.{domain}"),
        ("PREVIEW_HOST_TEMPLATE", "preview_{number}_{service}.{domain}"),
        ("PREVIEW_HOST_TEMPLATE", "preview-{number}-{service}.{domain"),  # str.format raised, uncaught
        ("PREVIEW_HOST_TEMPLATE", "preview-{number}-{service}.{domain}}"),
        ("PREVIEW_HOST_TEMPLATE", "preview-{number}-{service}"),  # one label: Istio's short name in-cluster
        ("PREVIEW_HOST_TEMPLATE", "{key}-{service}"),
        ("PREVIEW_ALLOWED_IMAGES", "ghcr.io"),  # would admit ghcr.io.evil.example/...
        ("PREVIEW_ALLOWED_IMAGES", "registry.example.com/acme/,ghcr.io/acme"),  # would admit ghcr.io/acme-evil/
        ("PREVIEW_ALLOWED_IMAGES", "/"),  # would admit no image at all
        ("PREVIEW_ALLOWED_IMAGES", "ghcr.io//"),
        ("PREVIEW_ALLOWED_IMAGES", "ghcr.io/Acme/"),  # paths are lowercase: no image could match
        ("PREVIEW_ALLOWED_IMAGES", "https://ghcr.io/acme/"),
        ("PREVIEW_IDLE_TTL_DAYS", "inf"),  # timedelta(days=inf) overflowed in the reconciler
        ("PREVIEW_IDLE_TTL_DAYS", "1e308"),
        ("PREVIEW_TTL_WARNING", "inf"),
        ("PREVIEW_RECONCILE_INTERVAL", "inf"),
        ("PREVIEW_READY_TIMEOUT", "1e300"),
        ("PREVIEW_HEADER", "x preview"),
        ("PREVIEW_MATCH", "cookie"),
        ("PREVIEW_NAMESPACE", "Default"),
        ("PREVIEW_ROUTING_NAMESPACE", "a" * 64),
        ("PREVIEW_MAX_REPLICAS", "0"),
        ("PREVIEW_MAX_REPLICAS", "-1"),
        ("PREVIEW_MAX_REPLICAS", "two"),
        ("PREVIEW_MAX_PER_REPO", "1.5"),
        ("PREVIEW_DEFAULT_REQUESTS", "cpu=lots"),
        ("PREVIEW_DEFAULT_REQUESTS", "gpu=1"),
        ("PREVIEW_DEFAULT_REQUESTS", "cpu"),
        ("PREVIEW_DEFAULT_LIMITS", "memory=12XB"),
        ("PREVIEW_MAX_RESOURCES", "cpu=-1"),
        ("PREVIEW_READY_TIMEOUT", "0"),
        ("PREVIEW_READY_TIMEOUT", "soon"),
        ("PREVIEW_READY_TIMEOUT", "nan"),
        ("PREVIEW_DRAIN_TIMEOUT", "-3"),
        ("PREVIEW_SHUTDOWN_DELAY", "-1"),
        ("PREVIEW_SHUTDOWN_DELAY", "5s"),
        ("PREVIEW_MAX_CONCURRENCY", "0"),
        ("PREVIEW_MAX_BODY_BYTES", "1MB"),
        ("PREVIEW_LEADER_ELECTION", "maybe"),
        ("PREVIEW_DELETE_ENVIRONMENTS", "sometimes"),
        ("POD_NAMESPACE", "Not_A_Namespace"),
        ("PREVIEW_LEASE_NAME", "UPPER"),
        ("PREVIEW_LEASE_NAME", "a" * 254),
        ("PREVIEW_LEASE_NAME", "lease..name"),
        ("PREVIEW_TTL_WARNING", "168"),  # the default TTL (7 days): due at every deploy
        ("PREVIEW_TTL_WARNING", "200"),
    ],
)
def test_malformed_value_names_the_variable(name: str, value: str) -> None:
    err = error_for(base_env(**{name: value}))
    assert err.field == name
    assert str(err).startswith(f"environment: {name}: ")
    assert err.reason


@pytest.mark.parametrize(("name", "value"), [
    ("PREVIEW_NAMESPACE", "previews\n"),  # a ConfigMap value written as a YAML block (`|`) ends in a line break
    ("PREVIEW_ROUTING_NAMESPACE", "istio-system\n"),
    ("POD_NAMESPACE", "preview-bot\n"),
    ("PREVIEW_LEASE_NAME", "preview-bot-reconciler\n"),
    ("PREVIEW_GATEWAY", "istio-system/preview-gateway\n"),
    ("PREVIEW_HOST_TEMPLATE", "preview-{number}-{service}.{domain}\n"),
    ("GITHUB_API_URL", "https://ghe.example.com/api/v3\n"),
])
def test_a_value_with_a_trailing_line_break_is_named(name: str, value: str) -> None:
    """Python's `$` also matches before a last line break: the value would pass and reach Kubernetes or
    GitHub with it (an object name, a host, a URL)."""
    err = error_for(base_env(**{name: value}))
    assert err.field == name


@pytest.mark.parametrize("url", ["https://x-access-token:ghp_aaaaBBBBccccDDDD1234@ghe.example.com/api/v3",
                                 "https://admin:hunter2-secret@ghe.example.com/api/v3 ",
                                 "http://hunter2-secret@ghe.example.com"])
def test_credentials_in_the_api_url_are_refused_and_never_shown(url: str) -> None:
    err = error_for(base_env(GITHUB_API_URL=url))
    assert err.field == "GITHUB_API_URL"
    assert "ghp_" not in str(err) and "hunter2" not in str(err) and "ghe.example.com" in str(err)


def test_default_above_cap_is_named() -> None:
    err = error_for(base_env(PREVIEW_DEFAULT_REQUESTS="cpu=4", PREVIEW_MAX_RESOURCES="cpu=2,memory=2Gi"))
    assert err.field == "PREVIEW_DEFAULT_REQUESTS"
    assert "PREVIEW_MAX_RESOURCES" in err.reason
    err = error_for(base_env(PREVIEW_DEFAULT_LIMITS="memory=4Gi"))
    assert err.field == "PREVIEW_DEFAULT_LIMITS"


@pytest.mark.parametrize(("requests", "limits", "named"), [
    ("cpu=1", None, "cpu=1 is above PREVIEW_DEFAULT_LIMITS cpu=500m"),  # over the built-in default limit
    ("memory=512Mi", "memory=256Mi", "memory=512Mi is above PREVIEW_DEFAULT_LIMITS memory=256Mi"),
    (None, "cpu=10m", "cpu=50m is above PREVIEW_DEFAULT_LIMITS cpu=10m"),  # the built-in request over a low limit
])
def test_default_request_above_default_limit_is_refused(requests: str | None, limits: str | None, named: str) -> None:
    env = base_env(**{k: v for k, v in (("PREVIEW_DEFAULT_REQUESTS", requests), ("PREVIEW_DEFAULT_LIMITS", limits))
                      if v is not None})
    err = error_for(env)
    assert err.field == "PREVIEW_DEFAULT_REQUESTS"
    assert err.reason == named


def test_default_request_equal_to_its_limit_is_accepted() -> None:
    settings = load_settings(base_env(PREVIEW_DEFAULT_REQUESTS="cpu=200m,memory=128Mi",
                                      PREVIEW_DEFAULT_LIMITS="cpu=0.2,memory=128Mi"))
    assert settings.cluster.policy.default_requests == {"cpu": "200m", "memory": "128Mi"}


@given(st.text(min_size=1, max_size=12))
@example("\u00b2")  # superscript two: str.isdigit() is True, int() refuses it
@example("\u0663")  # ARABIC-INDIC DIGIT THREE: int() accepts it
def test_any_app_id_value_is_a_number_or_a_named_config_error(raw: str) -> None:
    """Whatever the operator types, the result is a Settings or a ConfigError naming GITHUB_APP_ID."""
    try:
        settings = load_settings(base_env(GITHUB_APP_ID=raw))
    except ConfigError as exc:
        assert exc.field == "GITHUB_APP_ID"
    else:
        assert settings.app_id == int(raw.strip())


def test_optional_values_are_parsed() -> None:
    settings = load_settings(base_env(
        GITHUB_API_URL="https://ghe.example.com/api/v3/",
        PREVIEW_DOMAIN="Preview.Example.COM.",
        PREVIEW_HOST_TEMPLATE="{service}-{key}.{domain}",
        PREVIEW_GATEWAY="gw-ns/my-gateway",
        PREVIEW_HEADER="X-Preview-Key",
        PREVIEW_MATCH="Both",
        PREVIEW_NAMESPACE="previews",
        PREVIEW_ALLOWED_IMAGES=" registry.example.com/acme/ , ,ghcr.io/acme/",
        PREVIEW_MAX_REPLICAS="5",
        PREVIEW_DEFAULT_REQUESTS="cpu=10m, memory=32Mi",
        PREVIEW_MAX_CONCURRENCY="3",
        PREVIEW_READY_TIMEOUT="12.5",
        PREVIEW_LEADER_ELECTION="Yes",
        PREVIEW_DELETE_ENVIRONMENTS="true",
        POD_NAME="bot-0",
    ))
    assert settings.delete_environments is True
    assert load_settings(base_env()).delete_environments is False  # opt-in: needs Administration: write
    assert settings.api_url == "https://ghe.example.com/api/v3"
    assert settings.cluster.domain == "preview.example.com"
    assert settings.cluster.gateway == "gw-ns/my-gateway"
    assert settings.cluster.header_name == "x-preview-key"
    assert settings.cluster.match_mode == "both"
    assert settings.cluster.namespace == "previews"
    assert settings.cluster.policy.allowed_image_prefixes == ("registry.example.com/acme/", "ghcr.io/acme/")
    assert settings.cluster.policy.max_replicas == 5
    assert settings.cluster.policy.default_requests == {"cpu": "10m", "memory": "32Mi"}
    assert settings.max_concurrency == 3
    assert settings.ready_timeout == 12.5
    assert settings.leader_election is True
    assert settings.identity == "bot-0"


def test_repr_never_contains_secrets() -> None:
    settings = load_settings(base_env())
    for text in (repr(settings), str(settings), repr(settings.cluster)):
        assert SECRET not in text
        assert "PRIVATE KEY" not in text
        assert PEM.splitlines()[1] not in text
    assert "12345" in repr(settings)  # repr still useful


def test_settings_are_frozen() -> None:
    settings = load_settings(base_env())
    with pytest.raises(AttributeError):
        settings.app_id = 1  # type: ignore[misc]


def test_load_cluster_settings_domain_argument_wins_and_needs_no_credentials() -> None:
    cluster = load_cluster_settings({"PREVIEW_DOMAIN": "env.example.com"}, domain="arg.example.com")
    assert isinstance(cluster, ClusterSettings)
    assert cluster.domain == "arg.example.com"
    with pytest.raises(ConfigError) as info:
        load_cluster_settings({})
    assert info.value.field == "PREVIEW_DOMAIN"


def test_host_for_lowercases() -> None:
    cluster = ClusterSettings(domain="example.com")
    assert cluster.host_for(number=7, service="API") == "preview-7-api-api.example.com"


@pytest.mark.parametrize("template", ["{service}-{key}.{domain}", "pr{number}.{service}.{owner}.{repo}.{domain}"])
def test_valid_host_templates_pass(template: str) -> None:
    assert validate_host_template(template, "example.com") == template


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("100m", Decimal("0.1")),
        ("1.5", Decimal("1.5")),
        ("64Mi", Decimal(64 * 2**20)),
        ("1G", Decimal(10**9)),
        (" 2Ki ", Decimal(2048)),
        ("250u", Decimal("0.00025")),
    ],
)
def test_parse_quantity(text: str, expected: Decimal) -> None:
    assert parse_quantity(text) == expected


@pytest.mark.parametrize("text", ["", "lots", "1mi", "1XB", "-1", "1.", "m"])
def test_parse_quantity_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_quantity(text)


def test_parse_resource_list_errors_name_where() -> None:
    assert parse_resource_list("cpu=1, ,memory=1Gi", where="X") == {"cpu": "1", "memory": "1Gi"}
    with pytest.raises(ConfigError) as info:
        parse_resource_list("cpu=1,disk=2", where="SOME_VAR")
    assert info.value.field == "SOME_VAR"
    assert "disk" in info.value.reason


def test_lease_name_is_an_object_name_not_a_label() -> None:
    # A Lease's name is a DNS-1123 subdomain: dots allowed, up to 253 characters.
    settings = load_settings(base_env(PREVIEW_LEASE_NAME="preview-bot.reconciler"))
    assert settings.lease_name == "preview-bot.reconciler"
    assert "Kubernetes object name" in error_for(base_env(PREVIEW_LEASE_NAME="UPPER")).reason


@pytest.mark.parametrize(("env", "hours"), [
    ({}, 24.0),
    ({"PREVIEW_IDLE_TTL_DAYS": "1"}, 12.0),  # the default stays below a short TTL: half of it
    ({"PREVIEW_IDLE_TTL_DAYS": "1", "PREVIEW_TTL_WARNING": "23.5"}, 23.5),
    ({"PREVIEW_IDLE_TTL_DAYS": "0.5", "PREVIEW_TTL_WARNING": "0"}, 0.0),
])
def test_ttl_warning_stays_below_the_ttl(env: dict[str, str], hours: float) -> None:
    assert load_settings(base_env(**env)).ttl_warning_hours == hours


def test_ttl_warning_not_below_the_ttl_names_both() -> None:
    err = error_for(base_env(PREVIEW_IDLE_TTL_DAYS="1", PREVIEW_TTL_WARNING="24"))
    assert err.field == "PREVIEW_TTL_WARNING"
    assert err.reason == "(24 hours) must be less than the idle TTL, PREVIEW_IDLE_TTL_DAYS=1 (24 hours); 0: no warning"


def test_single_label_host_template_is_refused_naming_istio_short_names() -> None:
    err = error_for(base_env(PREVIEW_HOST_TEMPLATE="preview-{number}-{service}"))
    assert err.field == "PREVIEW_HOST_TEMPLATE"
    assert "single-label hosts (e.g. 'preview-123-svc')" in err.reason and "short names" in err.reason


@pytest.mark.parametrize("prefixes", ["registry.example.com/acme/", "ghcr.io/", "localhost:5000/team/app/",
                                      "acme/", "registry.example.com/acme/,ghcr.io/acme_corp/"])
def test_allowed_image_prefixes_that_can_start_an_image(prefixes: str) -> None:
    settings = load_settings(base_env(PREVIEW_ALLOWED_IMAGES=prefixes))
    assert settings.cluster.policy.allowed_image_prefixes == tuple(prefixes.split(","))


@pytest.mark.parametrize(("name", "value", "reason"), [
    # The Lease's leaseDurationSeconds is an int32; 3e9 was accepted and the Lease could never be written.
    ("PREVIEW_LEASE_SECONDS", "3000000000", "must be at most 1,000,000, got 3000000000"),
    ("PREVIEW_LEASE_SECONDS", "1000001", "must be at most 1,000,000"),
    # A pass every 50 ms lists every installation's pull requests 20 times a second.
    ("PREVIEW_RECONCILE_INTERVAL", "0.05", "must be at least 10 seconds"),
    ("PREVIEW_RECONCILE_INTERVAL", "9.9", "must be at least 10 seconds"),
])
def test_duration_bounds(name: str, value: str, reason: str) -> None:
    err = error_for(base_env(**{name: value}))
    assert err.field == name and reason in err.reason


def test_duration_bounds_take_their_limits() -> None:
    settings = load_settings(base_env(PREVIEW_LEASE_SECONDS="1000000", PREVIEW_RECONCILE_INTERVAL="10"))
    assert (settings.lease_seconds, settings.reconcile_interval) == (1_000_000, 10.0)


def test_commands_without_webhooks_need_no_webhook_secret() -> None:
    env = base_env()
    del env["GITHUB_WEBHOOK_SECRET"]
    assert load_settings(env, webhooks=False).webhook_secret == ""
    assert error_for(env).field == "GITHUB_WEBHOOK_SECRET"
