"""Webhook bodies: the few fields intake needs now, the whole payload when the work runs (pure).

Intake (bot.webhook) must answer in milliseconds, and under a flood most deliveries of a PR are merged
into one pending job and never run (bot.coalesce). So it reads only the envelope: the fields that
decide whether a delivery is work, which PR it belongs to and how it merges (`action`, `installation`,
`repository.id`/`full_name`, `pull_request.number`/`head.sha`/`draft`/`state`/`labels[].name`,
`issue.number`/`pull_request`, `comment.body`, `label.name`, `changes.base`: an `edited` PR is work
only when its base branch changed), keyed and nested as in GitHub's payload, so the pure rules
(bot.coalesce, bot.triggers.event_subject) read it like the payload itself. The whole payload is
decoded when the job runs (`payload`). For the 28 KB `pull_request.opened` example that is about 20 us
instead of 70-90 us.

Invariants:
- A body intake accepts, `payload` decodes: both use one parser (msgspec) with one set of rules, and
  intake also checks what the envelope skips over (UTF-8 in every string).
- A body whose envelope fields have other types than GitHub's (a payload of an event these rules were
  not written for) is decoded whole instead; never refused for that (`decode_envelope`). For the events
  that can become work, intake refuses such a body naming the field (`shape_problem`): GitHub's own
  payloads of those events always fit (checked against every documented example).
- The envelope of a body is a sub-tree of its payload: same keys, same values (a list: the same
  elements, each a sub-tree).
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


class _Label(TypedDict, total=False):
    name: str


class _Head(TypedDict, total=False):
    sha: str


class _PullRequest(TypedDict, total=False):
    number: int
    head: _Head  # its `sha`: a push queued behind a running `/preview` deploy (bot.context.newer_head_queued)
    # These three: remembered per event by a merged job (bot.coalesce, "Merge rule").
    draft: bool
    state: str
    labels: list[_Label]


class _Issue(TypedDict, total=False):
    number: int
    pull_request: dict[str, Any] | None  # present on an issue that is a pull request


class _Comment(TypedDict, total=False):
    body: str | None


class _Changes(TypedDict, total=False):
    # Only `base` ({ref: {from}, sha: {from}}, a few dozen bytes): `title` and `body` (the old body, up to
    # 65,536 characters) are skipped, so a flood of text edits costs a scan, not their decoding.
    base: dict[str, Any] | None


class _Envelope(TypedDict, total=False):
    action: str
    installation: _Installation | None
    repository: _Repository | None
    pull_request: _PullRequest | None
    issue: _Issue | None
    comment: _Comment | None
    label: _Label | None
    changes: _Changes | None


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


# What the rules and handlers read of the events that can become work, with the JSON types GitHub's
# webhook payloads give them (GitHub docs, "Webhook events and payloads"). (path, allowed types, required)
_COMMON: tuple[tuple[tuple[str, ...], tuple[type, ...], bool], ...] = (
    (("installation",), (dict,), True), (("installation", "id"), (int,), True),
    (("repository",), (dict,), True), (("repository", "id"), (int,), False),
    (("repository", "full_name"), (str,), True),
)
_BY_EVENT: dict[str, tuple[tuple[tuple[str, ...], tuple[type, ...], bool], ...]] = {
    "pull_request": ((("action",), (str,), True), (("pull_request",), (dict,), True),
                     (("pull_request", "number"), (int,), True), (("pull_request", "draft"), (bool,), False),
                     (("pull_request", "head"), (dict,), False), (("pull_request", "head", "sha"), (str,), False),
                     (("pull_request", "state"), (str,), False), (("pull_request", "labels"), (list,), False),
                     (("label",), (dict, type(None)), False),
                     (("label", "name"), (str,), False), (("changes",), (dict,), False),
                     (("changes", "base"), (dict,), False)),
    "issue_comment": ((("action",), (str,), True), (("issue",), (dict,), True), (("issue", "number"), (int,), True),
                      (("issue", "pull_request"), (dict, type(None)), False), (("comment",), (dict,), True),
                      (("comment", "body"), (str, type(None)), False)),
    "check_run": ((("action",), (str,), True),),
    "status": (),
}
_TYPE_NAMES = {dict: "an object", list: "a list", str: "a string", int: "a number", float: "a number",
               bool: "a boolean", type(None): "null"}


def shape_problem(event: str, data: dict[str, Any]) -> str | None:
    """For an event that can become work (pull_request, issue_comment, check_run, status): the first
    field the rules read whose JSON type is not GitHub's, as `repository.full_name must be a string, got
    a number`; None when every such field fits, and for every other event (never read)."""
    if event not in _BY_EVENT:
        return None
    for path, types, required in _COMMON + _BY_EVENT[event]:
        value: Any = data
        for key in path:
            value = value.get(key, _MISSING) if isinstance(value, dict) else _MISSING
        if value is _MISSING:
            if required:
                return f"{'.'.join(path)} is missing"
            continue
        if type(value) not in types:  # bool is not a number here, as in JSON
            wanted = " or ".join(dict.fromkeys(_TYPE_NAMES[t] for t in types))
            return f"{'.'.join(path)} must be {wanted}, got {_TYPE_NAMES.get(type(value), 'another type')}"
    return None


_MISSING = object()
