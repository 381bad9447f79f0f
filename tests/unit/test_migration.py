"""Previews made before repository ids keep working: the legacy key reproduces their names and labels.

`data/legacy-render-v1.yaml` is `make render` as printed by the last version keyed by the repository's
name (before `--repo-id` existed); it is also what the end-to-end migration test applies.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from bot import manifests
from bot.naming import PreviewKey, resolve_key
from bot.repo_config import parse_repo_config
from bot.settings import ClusterSettings

ROOT = Path(__file__).resolve().parents[2]
LEGACY = ROOT / "tests" / "unit" / "data" / "legacy-render-v1.yaml"
SHA = "4f9c2b1e8d7a6c5b4a3f2e1d0c9b8a7f6e5d4c3b"


def test_legacy_key_reproduces_the_old_versions_objects() -> None:
    old = list(yaml.safe_load_all(LEGACY.read_text()))
    config = parse_repo_config((ROOT / "examples" / ".github" / "preview.yml").read_text())
    new = manifests.render(ClusterSettings(domain="example.com"), config, PreviewKey("acme/shop", 123, None), SHA)
    assert [(d["kind"], d["metadata"]) for d in new] == [(d["kind"], d["metadata"]) for d in old]


def test_an_old_preview_keeps_its_key_once_the_id_is_known() -> None:
    old = list(yaml.safe_load_all(LEGACY.read_text()))
    keys = {d["metadata"]["labels"]["preview-bot.dev/key"] for d in old if d["kind"] == "Deployment"}
    key = resolve_key("acme/shop", 1296269, 123, keys)
    assert {key.value} == keys
    assert key.object_name("a") in {d["metadata"]["name"] for d in old}
