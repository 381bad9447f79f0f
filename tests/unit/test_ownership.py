"""The ownership rule (bot/ownership.py) without a cluster; tests/e2e/test_identity.py and
tests/e2e/test_policy.py hold it on the real API server."""

from __future__ import annotations

from typing import Any

import pytest

from bot import naming
from bot.errors import HostConflictError
from bot.naming import PreviewKey
from bot.ownership import check_owner

KEY = PreviewKey("acme/shop", 7, 1296269)


def live(labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {"metadata": {"labels": labels or {}, "annotations": annotations or {}}}


def manifest(kind: str = "Deployment", host: str | None = None) -> dict[str, Any]:
    annotations = {naming.HOST_ANNOTATION: host} if host else {}
    return {"kind": kind, "metadata": {"name": "pr-7-web", "annotations": annotations}}


def test_the_repository_id_decides_whatever_the_name_says() -> None:
    check_owner(live({naming.REPO_ID_LABEL: "1296269"}, {naming.REPO_ANNOTATION: "old/name"}), manifest(), KEY)
    with pytest.raises(HostConflictError, match=r"^host pr-7\.example\.com is already used by a preview of acme/shop"):
        check_owner(live({naming.REPO_ID_LABEL: "42"}, {naming.REPO_ANNOTATION: "acme/shop"}),
                    manifest("VirtualService", "pr-7.example.com"), KEY)


def test_an_object_from_before_ids_is_ours_by_key_or_by_name_in_any_case() -> None:
    check_owner(live({naming.KEY_LABEL: KEY.value}, {naming.REPO_ANNOTATION: "someone/else"}), manifest(), KEY)
    check_owner(live(annotations={naming.REPO_ANNOTATION: "ACME/Shop"}), manifest(), KEY)
    with pytest.raises(HostConflictError, match=r"^Deployment pr-7-web is already used by a preview of other/shop; "
                                                 r"include \{repo\} or \{owner\} in PREVIEW_HOST_TEMPLATE"):
        check_owner(live(annotations={naming.REPO_ANNOTATION: "other/shop"}), manifest(), KEY)


def test_an_unlabelled_object_is_taken_over_unless_it_is_a_virtual_service() -> None:
    check_owner(live(), manifest("Service"), KEY)
    with pytest.raises(HostConflictError, match="VirtualService pr-7-web exists and is not managed by preview-bot"):
        check_owner(live(), manifest("VirtualService", "pr-7.example.com"), KEY)
