"""Whose an existing object is: the rule that keeps one repository's preview off another's objects (pure).

Ownership is the repository id label (`naming.REPO_ID_LABEL`): it survives renames and transfers. An
object made before ids (no id label) is ours when it carries this preview's key (adopted, see
naming.resolve_key) or our current full name (`naming.REPO_ANNOTATION`). An object with neither is not
the bot's: a Deployment or Service of that name is taken over (as before ids), a VirtualService never
(it would route a host the bot does not own).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bot import naming
from bot.errors import HostConflictError
from bot.naming import PreviewKey


def check_owner(existing: Mapping[str, Any], manifest: Mapping[str, Any], key: PreviewKey) -> None:
    """Raise HostConflictError when `existing` (the live object `manifest` would overwrite) belongs to
    another repository's preview, or is a VirtualService the bot did not make; return when ours."""
    meta = existing.get("metadata") or {}
    labels, annotations = meta.get("labels") or {}, meta.get("annotations") or {}
    owner_name = annotations.get(naming.REPO_ANNOTATION)
    owner_id = labels.get(naming.REPO_ID_LABEL)
    if owner_id is not None:
        ours = owner_id == str(key.repo_id)
    elif owner_name is not None:
        ours = labels.get(naming.KEY_LABEL) == key.value or owner_name.lower() == key.repo.lower()
    else:
        ours = manifest["kind"] != "VirtualService"
        if not ours:
            raise HostConflictError(f"VirtualService {manifest['metadata']['name']} exists and is not "
                                    "managed by preview-bot; refusing to overwrite it")
    if not ours:
        host = (manifest["metadata"].get("annotations") or {}).get(naming.HOST_ANNOTATION)
        what = f"host {host}" if host else f"{manifest['kind']} {manifest['metadata']['name']}"
        raise HostConflictError(f"{what} is already used by a preview of {owner_name or 'another repository'}; "
                                "include {repo} or {owner} in PREVIEW_HOST_TEMPLATE to separate them")
