from __future__ import annotations

import pickle
from typing import Any

import requests
from requests.adapters import BaseAdapter, HTTPAdapter

from preview_propagation import preview_context
from preview_propagation.requests import PreviewAdapter, PreviewSession, install


class Recorder(BaseAdapter):
    """A transport that records what would have been sent."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[requests.PreparedRequest] = []

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        self.sent.append(request)
        response = requests.Response()
        response.status_code = 200
        response.request = request
        return response

    def close(self) -> None:
        pass


def test_install_wraps_mounted_adapters() -> None:
    session = requests.Session()
    recorder = Recorder()
    session.mount("http://", recorder)
    assert install(install(session)) is session  # idempotent
    adapter = session.get_adapter("http://svc/")
    assert isinstance(adapter, PreviewAdapter) and adapter.inner is recorder
    with preview_context("preview-1"):
        session.get("http://svc/", headers={"X-PREVIEW": "stale"})
    session.get("http://svc/")
    session.get("http://svc/", headers={"X-PREVIEW": "explicit"})
    assert [r.headers.get("X-PREVIEW") for r in recorder.sent] == ["preview-1", None, "explicit"]


def test_preview_session_baggage_mode() -> None:
    session = PreviewSession(mode="baggage")
    recorder = Recorder()
    session.mount("http://", PreviewAdapter(recorder, mode="baggage"))
    with preview_context("preview-1"):
        session.get("http://svc/", headers={"baggage": "a=1"})
    assert recorder.sent[0].headers["baggage"] == "a=1,preview=preview-1"
    assert "X-PREVIEW" not in recorder.sent[0].headers


def test_adapter_passes_attributes_through() -> None:
    session = PreviewSession()
    adapter = session.get_adapter("https://svc/")
    assert isinstance(adapter, PreviewAdapter) and isinstance(adapter.inner, HTTPAdapter)
    assert adapter.max_retries is adapter.inner.max_retries
    pickle.loads(pickle.dumps(adapter))  # no recursion through __getattr__
    session.close()
