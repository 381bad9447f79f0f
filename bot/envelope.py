"""Webhook bodies: the few fields intake needs now, the whole payload when the work runs (pure).

Intake (bot.webhook) must answer in milliseconds, and under a flood most deliveries of a PR are merged
into one pending job and never run (bot.coalesce). So it reads only the envelope: the fields that
decide whether a delivery is work, which PR it belongs to and how it merges (`action`, `installation`,
`repository.id`/`full_name`, `pull_request.number`, `issue.number`/`pull_request`, `comment.body`,
`label.name`), keyed and nested as in GitHub's payload, so the pure rules (bot.coalesce,
bot.triggers.event_subject) read it like the payload itself. The whole payload is decoded when the job
runs (`payload`). For the 28 KB `pull_request.opened` example that is about 20 us instead of 70-90 us.

Invariants:
- A body intake accepts, `payload` decodes: both use one parser (msgspec) with one set of rules, and
  intake also checks what the envelope skips over (UTF-8 in every string).
- A body whose envelope fields have other types than GitHub's (a payload of an event these rules were
  not written for) is decoded whole instead; never refused for that (`decode_envelope`).
- The envelope of a body is a sub-tree of its payload: same keys, same values.
"""

from __future__ import annotations

from typing import Any, TypedDict, cast

import msgspec


class InvalidBody(ValueError):
    """The body is not a JSON object encoded as UTF-8 (RFC 8259); the message says which."""


class _Installation(TypedDict, total=False):
    id: int


class _Repository(TypedDict, total=False):
    id: int
    full_name: str


class _PullRequest(TypedDict, total=False):
    number: int


class _Issue(TypedDict, total=False):
    number: int
    pull_request: dict[str, Any] | None  # present on an issue that is a pull request


class _Comment(TypedDict, total=False):
    body: str | None


class _Label(TypedDict, total=False):
    name: str


class _Envelope(TypedDict, total=False):
    action: str
    installation: _Installation | None
    repository: _Repository | None
    pull_request: _PullRequest | None
    issue: _Issue | None
    comment: _Comment | None
    label: _Label | None


_ENVELOPE = msgspec.json.Decoder(_Envelope)
_PAYLOAD = msgspec.json.Decoder()


def decode_envelope(body: bytes) -> dict[str, Any]:
    """The envelope of a webhook body: a dict holding only the fields listed in this module's docstring
    that the body has, nested as in the body. Fields are skipped, not decoded, so the cost is mostly a
    validating scan of the bytes.

    Raises InvalidBody when the body is not UTF-8, not JSON, or not a JSON object.
    """
    try:
        body.decode("utf-8")  # the envelope decoder does not look inside the strings it skips
    except UnicodeDecodeError as exc:
        raise InvalidBody(f"body is not JSON: not UTF-8 at byte {exc.start}") from None
    try:
        envelope = _ENVELOPE.decode(body)
    except msgspec.ValidationError:
        # Valid JSON, other shape: a non-object top level is refused by `payload`; an envelope field of
        # another type (not a shape GitHub sends for the events handled here) is read from the whole payload.
        return payload(body)
    except msgspec.DecodeError as exc:
        raise InvalidBody(f"body is not JSON: {exc}") from None
    except RecursionError:
        raise InvalidBody("body is not JSON this server reads: nested too deeply") from None
    return cast(dict[str, Any], envelope)  # a TypedDict decodes to a plain dict


def payload(body: bytes) -> dict[str, Any]:
    """The whole webhook payload (JSON object -> dict; numbers, strings, lists as JSON gives them).

    Raises InvalidBody when the body is not a JSON object encoded as UTF-8.
    """
    try:
        data = _PAYLOAD.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise InvalidBody(f"body is not JSON: {exc}") from None
    except RecursionError:
        raise InvalidBody("body is not JSON this server reads: nested too deeply") from None
    if not isinstance(data, dict):
        raise InvalidBody("body is not a JSON object")
    return data
