"""Browser sessions (PREVIEW_BROWSER_SESSIONS, opt-in): a browser that opened a preview URL stays on the
preview for the calls its page makes to the normal hosts of the domain (pure).

- The preview host's gateway route adds `Set-Cookie: <header>=<key>; Domain=<domain>; ...` to every
  response (Istio HTTPRoute `headers.response.add`).
- For each normal host in PREVIEW_SESSION_HOSTS the preview gets its own gateway VirtualService for that
  host, bound to the same Gateway, whose one route matches the cookie (Istio header match on `cookie` with
  a regex), puts the key on the request as the preview host does (`x-preview`, or W3C baggage with
  PREVIEW_MATCH=baggage) and sends the request to the PR's build of the service behind
  that host, or to the normal service when the PR does not change it (the header then carries the
  preview on through the mesh). Istio merges VirtualServices bound to a gateway for one host and moves
  catch-all routes last (pilot: networking/core/gateway.go, route.SortVHostRoutes), so the team's own
  route for the host keeps serving everybody else.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bot import mesh_routes, naming
from bot.naming import PreviewKey
from bot.settings import ClusterSettings

ROLE_SESSION = "session-route"
MAX_AGE = 8 * 3600  # seconds a browser stays on a preview after it last opened a preview URL


def set_cookie(settings: ClusterSettings, key: PreviewKey) -> str:
    """The Set-Cookie value: for the whole domain, sent on same-site requests, not readable by scripts."""
    return (f"{settings.header_name}={key.value}; Domain={settings.domain}; Path=/; Max-Age={MAX_AGE}; "
            "Secure; HttpOnly; SameSite=Lax")


def cookie_regex(cookie_name: str, key: str) -> str:
    """RE2 regex for a `Cookie` header holding `<cookie_name>=<key>` as one whole cookie (RFC 6265 pairs are
    separated by `; `). Names and keys are DNS labels: nothing to escape."""
    return rf"^(.*;)?\s*{cookie_name}={key}\s*(;.*)?$"


def response_headers(settings: ClusterSettings, key: PreviewKey) -> dict[str, Any]:
    """`headers.response` of the preview host's gateway route; empty when sessions are off."""
    if not settings.browser_sessions:
        return {}
    return {"add": {"set-cookie": set_cookie(settings, key)}}


def session_routes(settings: ClusterSettings, key: PreviewKey, previews: Mapping[str, tuple[str, int]],
                   annotations: Mapping[str, str]) -> list[dict[str, Any]]:
    """One gateway VirtualService per normal host. `previews`: mesh host -> (the PR's destination, port) for
    the services this PR deploys."""
    if not settings.browser_sessions or not previews:
        return []
    result = []
    for session in settings.session_hosts:
        destination, port = previews.get(session.mesh_host, (session.mesh_host, session.port))
        labels = key.labels(role=ROLE_SESSION)
        result.append({
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": {
                "name": naming.dns_label(f"{key.value}-session-{session.host.replace('.', '-')}"),
                "namespace": settings.routing_namespace,
                "labels": labels,
                "annotations": {**annotations, naming.HOST_ANNOTATION: session.host},
            },
            "spec": {
                "hosts": [session.host],
                "gateways": [settings.gateway],
                # The key goes on as PREVIEW_MATCH needs it, as on the preview host (mesh_routes.entry_headers).
                "http": [{
                    "name": key.value,
                    "match": [{"headers": {"cookie": {"regex": cookie_regex(settings.header_name, key.value)},
                                           **(extra or {})}}],
                    "headers": {"request": request},
                    "route": [{"destination": {"host": destination, "port": {"number": port}}}],
                } for extra, request in mesh_routes.entry_headers(key.value, header_name=settings.header_name,
                                                                    mode=settings.match_mode)],
            },
        })
    return result


def session_hosts_of(documents: Sequence[Mapping[str, Any]]) -> list[str]:
    """The normal hosts a rendered preview keeps browsers on (for the PR comment)."""
    return [str(d["spec"]["hosts"][0]) for d in documents
            if (d.get("metadata") or {}).get("labels", {}).get(naming.ROLE_LABEL) == ROLE_SESSION]
