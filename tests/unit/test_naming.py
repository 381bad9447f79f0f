"""bot.naming: keys, object names, hosts and labels."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot import naming
from bot.naming import PreviewKey, dns_label, preview_host
from bot.settings import ClusterSettings

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
SETTINGS = ClusterSettings(domain="example.com")

repo_names = st.builds(
    lambda owner, name: f"{owner}/{name}",
    st.from_regex(r"[A-Za-z0-9-]{1,39}", fullmatch=True),
    st.from_regex(r"[A-Za-z0-9._-]{1,100}", fullmatch=True),
)


def is_dns_label(text: str) -> bool:
    return bool(DNS_LABEL.match(text)) and len(text) <= 63


def test_two_repos_with_the_same_pr_number_are_kept_apart() -> None:
    a, b = PreviewKey("acme/shop", 7, 1), PreviewKey("other/shop", 7, 2)
    assert a.value != b.value
    assert a.value.startswith("preview-7-") and b.value.startswith("preview-7-")
    assert a.object_name("api") != b.object_name("api")
    assert a.labels("api")[naming.KEY_LABEL] != b.labels("api")[naming.KEY_LABEL]
    assert a.labels("api")[naming.REPO_ID_LABEL] != b.labels("api")[naming.REPO_ID_LABEL]
    assert a.selector() != b.selector()
    assert naming.repo_selectors(1, "acme/shop") != naming.repo_selectors(2, "other/shop")
    keyed = ClusterSettings(domain="example.com", host_template="{service}-{key}.{domain}")
    assert preview_host(keyed, a, "api") != preview_host(keyed, b, "api")
    by_repo = ClusterSettings(domain="example.com", host_template="{number}-{service}.{repo}.{owner}.{domain}")
    assert preview_host(by_repo, a, "api") != preview_host(by_repo, b, "api")


def test_default_host_template_is_per_number_so_repos_collide_by_gateway_route_name() -> None:
    """With the default template two repos' PR #7 share a host; the gateway route name then collides
    on purpose (the second repo gets a HostConflictError instead of stealing the host)."""
    a, b = PreviewKey("acme/shop", 7, 1), PreviewKey("other/shop", 7, 2)
    host_a, host_b = preview_host(SETTINGS, a, "api"), preview_host(SETTINGS, b, "api")
    assert host_a == host_b == "preview-7-api-api.example.com"
    assert naming.gateway_route_name(host_a) == naming.gateway_route_name(host_b)


def test_key_value_and_environment_format() -> None:
    key = PreviewKey("Acme/Shop", 123, 1296269)
    assert re.fullmatch(r"preview-123-[0-9a-f]{6}", key.value)
    assert key.environment == "preview-123"
    assert key.repo_hash == naming.short_hash("repository-id:1296269")


def test_the_key_is_the_repository_id_not_its_name() -> None:
    """A rename or a transfer changes `full_name`, never `id`: the preview stays the same preview."""
    before, after = PreviewKey("acme/shop", 8, 555), PreviewKey("other-org/storefront", 8, 555)
    assert before.value == after.value
    assert before.object_name("a") == after.object_name("a")
    assert {k: v for k, v in before.labels("a").items()} == after.labels("a")
    assert naming.REPO_LABEL not in before.labels("a")  # no name-keyed label on new objects
    assert PreviewKey("acme/shop", 8, 556).value != before.value


def test_legacy_keys_are_those_of_the_versions_before_ids() -> None:
    """No id: the key and labels versions before ids wrote (hash of the lower-cased full name)."""
    legacy = PreviewKey("Acme/Shop", 123, None)
    assert legacy.value == "preview-123-d21b2c" == PreviewKey("acme/shop", 123, None).value
    assert legacy.labels("a")[naming.REPO_LABEL] == "d21b2c"
    assert naming.REPO_ID_LABEL not in legacy.labels("a")


def test_resolve_key_keeps_an_existing_previews_key() -> None:
    new = PreviewKey("acme/shop", 12, 555)
    # Nothing live: the id's key.
    assert naming.resolve_key("acme/shop", 555, 12, []) == new
    assert naming.resolve_key("acme/shop", 555, 12, [new.value, "preview-123-d21b2c"]) == new
    # A legacy preview of this PR: its key is adopted, and the objects get the id label.
    adopted = naming.resolve_key("acme/shop", 555, 123, ["preview-12-aaaaaa", "preview-123-d21b2c"])
    assert adopted.value == "preview-123-d21b2c"
    assert adopted.labels("a")[naming.REPO_ID_LABEL] == "555"
    assert naming.REPO_LABEL not in adopted.labels("a")
    # ...and stays adopted after a rename (found by the id label then).
    assert naming.resolve_key("acme/storefront", 555, 123, [adopted.value]).value == adopted.value
    # Another PR's key, or a damaged one, is never taken.
    assert naming.resolve_key("acme/shop", 555, 1, ["preview-12-aaaaaa", "preview-1-zz"]) == \
        PreviewKey("acme/shop", 1, 555)


def test_existing_key_reads_a_live_previews_key() -> None:
    new = PreviewKey("acme/shop", 7, 555)
    assert naming.existing_key("acme/shop", 7, 555, new.value) == new
    assert naming.existing_key("acme/shop", 7, None, "preview-7-abcdef").value == "preview-7-abcdef"
    for damaged in ("preview-8-abcdef", "preview-7-xyz", "other"):
        with pytest.raises(ValueError):
            naming.existing_key("acme/shop", 7, 555, damaged)


def test_names_are_deterministic() -> None:
    first = [PreviewKey("acme/shop", 7, 5).object_name(s) for s in ("a", "B", "ünïcode", "x" * 200)]
    second = [PreviewKey("acme/shop", 7, 5).object_name(s) for s in ("a", "B", "ünïcode", "x" * 200)]
    assert first == second


@pytest.mark.parametrize("repo", ["acme", "acme/", "/shop", "acme/shop/extra", "ac me/shop", "a" * 40 + "/x", "",
                                  "acme/shop\n"])
def test_invalid_repository_refused(repo: str) -> None:
    assert not naming.valid_repo(repo)
    with pytest.raises(ValueError):
        PreviewKey(repo, 1, 5)


@pytest.mark.parametrize("number", [0, -1])
def test_invalid_pr_number_refused(number: int) -> None:
    with pytest.raises(ValueError):
        PreviewKey("acme/shop", number, 5)


@given(st.text(max_size=300))
def test_any_text_gives_a_dns_label(text: str) -> None:
    label = dns_label(text)
    assert is_dns_label(label), label
    assert dns_label(text) == label


@given(st.text(max_size=200), st.text(max_size=200))
def test_changed_names_carry_a_hash_so_different_inputs_stay_apart(a: str, b: str) -> None:
    if a != b and dns_label(a) == dns_label(b):
        # Only an unchanged valid label is returned verbatim; anything rewritten gets a hash suffix.
        pytest.fail(f"{a!r} and {b!r} both became {dns_label(a)!r}")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("api", "api"), ("a-b-1", "a-b-1"), ("x" * 63, "x" * 63)],
)
def test_valid_labels_are_kept(text: str, expected: str) -> None:
    assert dns_label(text) == expected


@pytest.mark.parametrize("text", ["API", "a_b", "-a", "a--b", "", "x" * 64, "ünï"])
def test_rewritten_labels_get_the_hash_of_the_original(text: str) -> None:
    label = dns_label(text)
    assert is_dns_label(label)
    assert label.endswith(naming.short_hash(text))


@settings(max_examples=60)
@given(repo_names, st.integers(min_value=1, max_value=10**9), st.text(max_size=120))
def test_object_names_and_labels_valid_for_any_service_name(repo: str, number: int, service: str) -> None:
    key = PreviewKey(repo, number, number * 7)
    name = key.object_name(service)
    assert is_dns_label(name), name
    assert name[0].isalpha()  # also a DNS-1035 label (Service names)
    labels = key.labels(service)
    for value in labels.values():
        assert len(value) <= 63 and LABEL_VALUE.match(value), value
    assert is_dns_label(key.value)


@settings(max_examples=40)
@given(repo_names, st.integers(min_value=1, max_value=10**6), st.from_regex(r"[a-z]([-a-z0-9]{0,38}[a-z0-9])?",
                                                                          fullmatch=True))
def test_route_names_valid_for_configured_services(repo: str, number: int, service: str) -> None:
    key = PreviewKey(repo, number, 5)
    host = preview_host(SETTINGS, key, service)
    assert is_dns_label(naming.gateway_route_name(host))
    assert is_dns_label(naming.mesh_route_name(f"{service}.default.svc.cluster.local"))
    assert host.endswith(".example.com")


def test_labels_and_selectors() -> None:
    key = PreviewKey("acme/shop", 7, 1296269)
    labels = key.labels("api", role=naming.ROLE_GATEWAY)
    assert labels == {
        naming.MANAGED_BY_LABEL: naming.MANAGED_BY,
        naming.KEY_LABEL: key.value,
        naming.REPO_ID_LABEL: "1296269",
        naming.PR_LABEL: "7",
        naming.ROLE_LABEL: naming.ROLE_GATEWAY,
        naming.SERVICE_LABEL: "api",
    }
    assert naming.SERVICE_LABEL not in key.labels()
    assert key.selector() == f"{naming.MANAGED_BY_LABEL}=preview-bot,{naming.KEY_LABEL}={key.value}"
    by_id, legacy = naming.repo_selectors(1296269, "Acme/Shop")
    assert by_id == f"{naming.MANAGED_BY_LABEL}=preview-bot,{naming.REPO_ID_LABEL}=1296269"
    assert legacy == naming.repo_selectors(1296269, "acme/shop")[1]
    assert legacy.endswith(f",!{naming.REPO_ID_LABEL}")


def test_preview_host_uses_every_placeholder() -> None:
    settings = ClusterSettings(domain="example.com", host_template="{number}-{service}-{key}.{repo}.{owner}.{domain}")
    key = PreviewKey("Acme/My.Shop", 42, 5)
    host = preview_host(settings, key, "Api")
    service, repo, owner = dns_label("Api"), dns_label("My.Shop"), dns_label("Acme")
    assert host == f"42-{service}-{key.value}.{repo}.{owner}.example.com"
    assert host == host.lower()


def test_service_fqdn() -> None:
    assert naming.service_fqdn("preview-1-abcdef-a", "default") == "preview-1-abcdef-a.default.svc.cluster.local"
