"""DNS names: labels of at most 63 characters, names of at most 253 (pure).

RFC 1035 section 2.3.4 limits a label to 63 octets and a name to 255 (253 in text form without the
trailing dot); Kubernetes' DNS-1123 label and subdomain rules repeat those limits. Object names and
hosts that would break them are shortened with a stable hash of the original, so they stay distinct.
"""

from __future__ import annotations

import hashlib
import re

MAX_LABEL = 63
MAX_NAME = 253
_INVALID = re.compile(r"[^a-z0-9-]+")


def short_hash(text: str, length: int = 6) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def dns_label(text: str, max_length: int = MAX_LABEL) -> str:
    """Any text -> a DNS-1123 label; a changed or shortened name gets a hash of the original."""
    cleaned = _INVALID.sub("-", text.lower()).strip("-")
    cleaned = re.sub(r"-{2,}", "-", cleaned) or "x"
    if cleaned == text and len(cleaned) <= max_length:
        return cleaned
    suffix = short_hash(text)
    head = cleaned[: max_length - len(suffix) - 1].rstrip("-")
    return f"{head}-{suffix}" if head else suffix


def short_labels(host: str) -> str:
    """`host` with every label longer than 63 characters cut and given a hash of the whole label
    (`document-scanner-customer-onboarding-...-12` -> `document-scanner-customer-onboarding-and-ide-1a2b3c`);
    labels that fit are kept as they are."""
    return ".".join(label if len(label) <= MAX_LABEL else dns_label(label) for label in host.split("."))


def name_problem(host: str) -> str | None:
    """Why `host` is not a valid lowercase DNS name, or None."""
    if not host or len(host) > MAX_NAME:
        return f"is {len(host)} characters long (at most {MAX_NAME})"
    for label in host.split("."):
        if len(label) > MAX_LABEL:
            return f"has the label {label!r} of {len(label)} characters (at most {MAX_LABEL})"
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", label):
            return f"has the label {label!r}, not a lowercase DNS label"
    return None
