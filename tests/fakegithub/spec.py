"""GitHub's published REST description (npm `@octokit/openapi`), indexed for the fake.

The full description is 13 MB (73 MB dereferenced: 4.5 s just to parse), so we parse it once, keep only
the operations the fake implements plus the `#/components/...` they reach, and cache that small index as
JSON under `.cache/` keyed by the description's hash. Every route of GitHub is kept (method, template,
operationId) so an unimplemented-but-real endpoint can be told apart from a typo.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import re
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema.exceptions import ValidationError
from openapi_schema_validator import OAS30Validator
from referencing import Registry
from referencing.jsonschema import DRAFT4

HERE = Path(__file__).resolve().parent
NODE_MODULES = HERE / "node_modules"
CACHE_DIR = HERE / ".cache"
OPENAPI_PKG = NODE_MODULES / "@octokit" / "openapi"
# The `$ref` form, not `.deref.json`: resolving refs for a dozen operations ourselves is far cheaper.
OPENAPI_FILE = OPENAPI_PKG / "generated" / "api.github.com.json"
EXAMPLES_FILE = NODE_MODULES / "@octokit" / "webhooks-examples" / "api.github.com" / "index.json"
INDEX_VERSION = "2"
# Webhook payload schemas kept in the index (`#/components/schemas/NAME`): deliveries built without a real
# example of their action are checked against GitHub's own schema of it (payloads.py).
WEBHOOK_SCHEMAS = frozenset({"webhook-pull-request-edited"})
SPEC_URI = "urn:github-rest"
METHODS = ("get", "put", "post", "patch", "delete", "head")


def ensure_installed() -> None:
    """Install the pinned npm packages once (file lock: pytest-xdist workers may race); fail loudly."""
    if OPENAPI_FILE.exists() and EXAMPLES_FILE.exists():
        return
    CACHE_DIR.mkdir(exist_ok=True)
    with open(CACHE_DIR / "npm-install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if OPENAPI_FILE.exists() and EXAMPLES_FILE.exists():
            return
        cmd = ["npm", "install", "--no-package-lock", "--no-audit", "--no-fund", "--prefix", str(HERE)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0 or not OPENAPI_FILE.exists():
            raise RuntimeError(f"`{' '.join(cmd)}` failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")


@dataclass(frozen=True)
class Route:
    method: str
    template: str
    operation_id: str
    regex: re.Pattern[str]
    literals: int  # more literal segments wins: /pulls/comments beats /pulls/{pull_number}


@dataclass(frozen=True)
class Operation:
    route: Route
    doc_url: str
    params: tuple[dict[str, Any], ...]  # resolved Parameter objects, each with a "pointer" to its schema
    body_pointer: str | None
    body_required: bool
    responses: dict[str, str] = field(default_factory=dict)  # status -> JSON-schema pointer

    @property
    def operation_id(self) -> str:
        return self.route.operation_id


class RequestInvalid(Exception):
    """The description rejects the request: GitHub answers 422 (400 for unparsable JSON)."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.message, self.status = message, status


def _pointer(*parts: str) -> str:
    return "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            yield ref
        for v in node.values():
            yield from _refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _refs(v)


def _lookup(doc: dict[str, Any], ref: str) -> Any:
    node: Any = doc
    for part in ref.removeprefix("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _route_regex(template: str, params: dict[str, dict[str, Any]]) -> tuple[str, int]:
    parts, literals = [], 0
    for seg in template.strip("/").split("/"):
        m = re.fullmatch(r"\{(\w+)\}", seg)
        if not m:
            parts.append(re.escape(seg))
            literals += 1
            continue
        p = params.get(m.group(1), {})
        if p.get("x-multi-segment"):
            parts.append(f"(?P<{m.group(1)}>.+)")
        elif p.get("schema", {}).get("type") == "integer":
            parts.append(f"(?P<{m.group(1)}>[0-9]+)")  # /pulls/abc does not route on GitHub: 404
        else:
            parts.append(f"(?P<{m.group(1)}>[^/]+)")
    return "^/" + "/".join(parts) + "/?$", literals


def _build(doc: dict[str, Any], operation_ids: frozenset[str], examples: frozenset[str]) -> dict[str, Any]:
    routes: list[list[Any]] = []
    mini_paths: dict[str, dict[str, Any]] = {}
    for template, item in doc["paths"].items():
        for method in METHODS:
            op = item.get(method)
            if not op:
                continue
            params = {}
            for p in [*item.get("parameters", []), *op.get("parameters", [])]:
                p = _lookup(doc, p["$ref"]) if "$ref" in p else p
                params[p["name"]] = p
            regex, literals = _route_regex(template, params)
            routes.append([method.upper(), template, op["operationId"], regex, literals])
            if op["operationId"] in operation_ids:
                mini_paths.setdefault(template, {})[method] = op | {"parameters": list(params.values())}
    # Copy the transitive closure of components the kept operations reach.
    components: dict[str, dict[str, Any]] = {}
    todo = [*_refs(mini_paths), *(f"#/components/examples/{name}" for name in examples),
            *(f"#/components/schemas/{name}" for name in WEBHOOK_SCHEMAS)]
    while todo:
        ref = todo.pop()
        _, _, kind, name = ref.split("/", 3)
        if name in components.setdefault(kind, {}):
            continue
        components[kind][name] = node = _lookup(doc, ref)
        todo.extend(_refs(node))
    missing = operation_ids - {o["operationId"] for i in mini_paths.values() for o in i.values()}
    if missing:
        raise RuntimeError(f"operations not in GitHub's description: {sorted(missing)}")
    return {
        "info": doc["info"],
        "openapi": doc["openapi"],
        "paths": mini_paths,
        "components": components,
        "x-routes": routes,
    }


class Spec:
    """The indexed description: routing, request validation, response shapes and examples."""

    def __init__(self, mini: dict[str, Any]) -> None:
        if not mini["openapi"].startswith("3.0"):
            raise RuntimeError(f"expected OpenAPI 3.0, got {mini['openapi']}")  # OAS30Validator below
        self.doc = mini
        self.version: str = mini["info"]["version"]
        self.registry: Registry[Any] = Registry().with_resource(SPEC_URI, DRAFT4.create_resource(mini))
        self.routes = sorted(
            (Route(m, t, o, re.compile(rx), lit) for m, t, o, rx, lit in mini["x-routes"]),
            key=lambda r: -r.literals,
        )
        self.operations: dict[str, Operation] = {}
        for template, item in mini["paths"].items():
            for method, op in item.items():
                self.operations[op["operationId"]] = self._operation(method, template, op)
        self._validators: dict[str, OAS30Validator] = {}

    def _operation(self, method: str, template: str, op: dict[str, Any]) -> Operation:
        base = ("paths", template, method)
        params = tuple(
            p | {"pointer": _pointer(*base, "parameters", str(i), "schema")}
            for i, p in enumerate(op["parameters"])
        )
        body = op.get("requestBody")
        if body and "$ref" in body:
            body = _lookup(self.doc, body["$ref"])
        has_json = bool(body and "application/json" in body["content"])
        responses = {}
        for status, resp in op["responses"].items():
            where: tuple[str, ...] = (*base, "responses", status)
            if "$ref" in resp:  # a shared response: point into #/components/responses
                where = tuple(resp["$ref"].removeprefix("#/").split("/"))
                resp = _lookup(self.doc, resp["$ref"])
            if "application/json" in resp.get("content", {}):
                responses[status] = _pointer(*where, "content", "application/json", "schema")
        route = next(r for r in self.routes if r.operation_id == op["operationId"])
        return Operation(
            route=route,
            doc_url=op.get("externalDocs", {}).get("url", "https://docs.github.com/rest"),
            params=params,
            body_pointer=_pointer(*base, "requestBody", "content", "application/json", "schema")
            if has_json
            else None,
            body_required=bool(body and body.get("required")),
            responses=responses,
        )

    # -- routing -------------------------------------------------------------------------------------
    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]] | None:
        """The GitHub route for (method, path); None if GitHub has no such route (404)."""
        for route in self.routes:
            if route.method == method and (m := route.regex.match(path)):
                return route, m.groupdict()
        return None

    # -- validation ----------------------------------------------------------------------------------
    def validator(self, pointer: str) -> OAS30Validator:
        if pointer not in self._validators:
            # Refs inside the pointed-to schema resolve against the mini spec: "#/components/schemas/..".
            schema = {"$ref": f"{SPEC_URI}#/{pointer}"}
            self._validators[pointer] = OAS30Validator(schema, registry=self.registry)
        return self._validators[pointer]

    def resolve(self, node: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in node:
            node = _lookup(self.doc, node["$ref"])
        return node

    def check_query(self, op: Operation, query: Iterable[tuple[str, str]]) -> dict[str, Any]:
        """Coerce and validate query parameters; unknown ones are ignored, as GitHub does."""
        given = dict(query)
        out: dict[str, Any] = {}
        for p in op.params:
            if p["in"] != "query" or p["name"] not in given:
                continue
            raw, schema = given[p["name"]], self.resolve(p["schema"])
            value: Any = raw
            if schema.get("type") == "integer":
                try:
                    value = int(raw)
                except ValueError:
                    raise RequestInvalid(f"Invalid request.\n\nFor '{p['name']}', {raw!r} is not an integer.")
            elif schema.get("type") == "boolean" and raw in ("true", "false"):
                value = raw == "true"
            errors = list(self.validator(p["pointer"]).iter_errors(value))
            if errors:
                raise RequestInvalid("Invalid request.\n\n" + _describe(errors[0], p["name"]))
            out[p["name"]] = value
        return out

    def check_body(self, op: Operation, raw: bytes) -> Any:
        if op.body_pointer is None:
            return None
        if not raw.strip():
            if op.body_required:
                raise RequestInvalid("Invalid request.\n\nFor 'links/0/schema', nil is not an object.")
            return {}
        try:
            body = json.loads(raw)
        except ValueError:
            raise RequestInvalid("Problems parsing JSON", status=400)
        errors = sorted(self.validator(op.body_pointer).iter_errors(body), key=lambda e: list(e.path))
        if errors:
            raise RequestInvalid("Invalid request.\n\n" + "\n".join(_describe(e) for e in errors))
        return body

    def response_errors(self, op: Operation, status: int, body: Any) -> list[str]:
        """Where our own answer strays from GitHub's schema (the fake checks itself in tests)."""
        pointer = op.responses.get(str(status))
        if pointer is None:
            return []
        return [f"{op.operation_id} {status} {list(e.absolute_path)}: {e.message}"
                for e in self.validator(pointer).iter_errors(body)
                if not self._validator_quirk(e) and not _description_bug(op.operation_id, e)]

    def _validator_quirk(self, err: ValidationError) -> bool:
        """Errors of the validator, not of the answer: GitHub sends these, its description allows them."""
        if err.instance is None and isinstance(err.schema, dict) and err.schema.get("nullable"):
            return True  # `nullable` + `enum` without null: OAS 3.0.3 is ambiguous, GitHub sends null
        if err.validator == "oneOf" and isinstance(err.schema, dict) and "discriminator" in err.schema \
                and not isinstance(err.instance, dict):
            # The discriminator of repos/get-content assumes an object, but one branch is an array.
            branches = [b["$ref"].removeprefix("#/") for b in err.schema["oneOf"] if "$ref" in b]
            return sum(bool(self.validator(b).is_valid(err.instance)) for b in branches) == 1
        return False

    def webhook_errors(self, schema: str, payload: Any) -> list[str]:
        """Where a webhook payload strays from GitHub's schema of it (`schema`: one of WEBHOOK_SCHEMAS)."""
        return [f"{schema} {list(e.absolute_path)}: {e.message}"
                for e in self.validator(_pointer("components", "schemas", schema)).iter_errors(payload)
                if not self._validator_quirk(e)]

    def example(self, name: str) -> Any:
        """A copy of one of GitHub's own examples (`#/components/examples/NAME`): our response shapes."""
        return json.loads(json.dumps(self.doc["components"]["examples"][name]["value"]))


def _description_bug(operation_id: str, err: ValidationError) -> bool:
    """apps/list-installations inlines `account` as allOf [simple-user, enterprise] (elsewhere it is anyOf):
    no real account satisfies both, so GitHub's own answers fail it too."""
    return operation_id == "apps/list-installations" and "account" in list(err.absolute_path)


def _describe(err: ValidationError, name: str | None = None) -> str:
    """GitHub's wording: `"body" wasn't supplied.` / `For 'properties/state', "x" is not a member of enum.`"""
    where = name or "/".join(["properties", *("items" if isinstance(p, int) else str(p) for p in err.path)])
    if name is None and not err.path:
        where = "links/0/schema"
    value = json.dumps(err.instance) if not isinstance(err.instance, (dict, list)) else "the value"
    if err.validator == "required":
        missing = re.search(r"'([^']+)' is a required property", err.message)
        return f'"{missing.group(1) if missing else err.message}" wasn\'t supplied.'
    if err.validator == "enum":
        return f"For '{where}', {value} is not a member of enum."
    if err.validator == "type":
        kind = err.validator_value
        article = "an" if kind in ("integer", "array", "object") else "a"
        return f"For '{where}', {value} is not {article} {kind}."
    return f"For '{where}', {err.message}."


@cache
def load_spec(operation_ids: frozenset[str], examples: frozenset[str] = frozenset()) -> Spec:
    """The index for these operations (plus these `#/components/examples`), built once and cached."""
    ensure_installed()
    raw = OPENAPI_FILE.read_bytes()
    key = hashlib.sha256(raw + INDEX_VERSION.encode() + ",".join(sorted(operation_ids | examples)).encode()
                         + ",".join(sorted(WEBHOOK_SCHEMAS)).encode())
    cached = CACHE_DIR / f"openapi-index-{key.hexdigest()[:16]}.json"
    try:
        mini = json.loads(cached.read_text())
    except (OSError, ValueError):
        mini = _build(json.loads(raw), operation_ids, examples)
        CACHE_DIR.mkdir(exist_ok=True)
        tmp = cached.with_suffix(f".{id(mini)}.tmp")
        tmp.write_text(json.dumps(mini))
        tmp.replace(cached)  # atomic: concurrent workers never read half a file
    return Spec(mini)


@cache
def webhook_examples() -> dict[str, list[dict[str, Any]]]:
    """Real payloads by event name, from `@octokit/webhooks-examples`."""
    ensure_installed()
    return {e["name"]: e["examples"] for e in json.loads(EXAMPLES_FILE.read_text())}
