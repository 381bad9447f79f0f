"""Preview hosts: every DNS label at most 63 characters, the whole host at most 253 (RFC 1035 2.3.4)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot import dns
from bot.errors import ConfigError
from bot.naming import PreviewKey, preview_host
from bot.settings import ClusterSettings, load_cluster_settings, validate_host_template

LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def assert_valid_host(host: str) -> None:
    assert len(host) <= 253, host
    for label in host.split("."):
        assert LABEL.match(label) and len(label) <= 63, (label, host)


def test_the_reported_case_gets_a_short_stable_label() -> None:
    """{service}-{repo}-{number}: document-scanner + customer-onboarding-and-identity-verification + 12
    is a 65-character label as written; the posted host must not carry it."""
    cluster = load_cluster_settings({"PREVIEW_DOMAIN": "example.com",
                                     "PREVIEW_HOST_TEMPLATE": "{service}-{repo}-{number}.{domain}"})
    key = PreviewKey("acme/customer-onboarding-and-identity-verification", 12, 4242)
    host = preview_host(cluster, key, "document-scanner")
    raw = "document-scanner-customer-onboarding-and-identity-verification-12"
    assert len(raw) > 63
    assert_valid_host(host)
    assert host == f"{dns.dns_label(raw)}.example.com" == preview_host(cluster, key, "document-scanner")
    assert host.startswith("document-scanner-customer-onboarding-and-identity")
    # Another PR or service stays apart even though the readable part is cut.
    assert preview_host(cluster, PreviewKey(key.repo, 13, 4242), "document-scanner") != host
    # Labels that fit are left alone.
    short = PreviewKey("acme/shop", 12, 4242)
    assert preview_host(cluster, short, "document-scanner") == "document-scanner-shop-12.example.com"


@pytest.mark.parametrize("template", ["{service}-{repo}-{owner}-{key}.{domain}",
                                      "{repo}.{owner}.{key}.{service}.pr-{number}.{domain}"])
def test_a_template_whose_longest_host_is_too_long_is_a_start_up_error(template: str) -> None:
    domain = ".".join(["d" * 60] * 3) + ".example.com"  # 194 characters
    with pytest.raises(ConfigError) as info:
        validate_host_template(template, domain)
    assert info.value.field == "PREVIEW_HOST_TEMPLATE"
    assert "at most 253" in info.value.reason and "longest" in info.value.reason


@pytest.mark.parametrize("domain", ["a" * 64 + ".example.com", ".".join(["d" * 63] * 4) + ".com"])
def test_a_domain_with_a_long_label_or_name_is_a_start_up_error(domain: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_cluster_settings({"PREVIEW_DOMAIN": domain})
    assert info.value.field == "PREVIEW_DOMAIN"


PLACEHOLDER_PARTS = ["{service}", "{number}", "{key}", "{repo}", "{owner}", "pr", "preview", "-", "api"]
templates = st.builds(
    lambda labels: ".".join(labels) + ".{domain}",
    st.lists(st.lists(st.sampled_from(PLACEHOLDER_PARTS), min_size=1, max_size=5).map(
        lambda parts: "x".join(parts).strip("-") or "x"), min_size=1, max_size=4),
).filter(lambda t: "{service}" in t and ("{number}" in t or "{key}" in t))
domains = st.lists(st.from_regex(r"[a-z]([a-z0-9-]{0,61}[a-z0-9])?", fullmatch=True), min_size=1,
                   max_size=4).map(".".join).filter(lambda d: dns.name_problem(d) is None)
owners = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9-]{0,38}", fullmatch=True)
names = st.from_regex(r"[A-Za-z0-9._-]{1,100}", fullmatch=True)
services = st.from_regex(r"[a-z]([-a-z0-9]{0,38}[a-z0-9])?", fullmatch=True)


@settings(max_examples=300, deadline=None)
@given(templates, domains, owners, names, st.integers(min_value=1, max_value=9_999_999_999), services,
       st.integers(min_value=1, max_value=2**53))
def test_any_accepted_template_gives_valid_hosts_for_any_input(template: str, domain: str, owner: str, name: str,
                                                              number: int, service: str, repo_id: int) -> None:
    """Either the template is refused at start, or every host it gives is a valid DNS name."""
    try:
        validate_host_template(template, domain)
    except ConfigError as err:
        assert err.field == "PREVIEW_HOST_TEMPLATE"
        return
    cluster = ClusterSettings(domain=domain, host_template=template)
    host = preview_host(cluster, PreviewKey(f"{owner}/{name}", number, repo_id), service)
    assert_valid_host(host)
    assert host.endswith("." + domain)
