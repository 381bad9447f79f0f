"""`preview-bot render` prints YAML that the real kube-apiserver reads back as the strings the config gave.

The API server decodes a `Content-Type: application/yaml` body with the same go-yaml (sigs.k8s.io/yaml) as
kubectl, so each rendered document is sent to it as the text `render` printed (server-side dry run).
"""

from __future__ import annotations

import json
import os
import re
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot import cli, naming
from tests.plugins.cluster import Cluster

# Plain in PyYAML's output but something else to go-yaml v2 (y, n: booleans; the rest numbers), go-yaml v3
# (2001-1-2: a timestamp) or YAML 1.2 (1e400); then strings PyYAML quotes itself.
TRICKY = ["y", "n", "Y", "N", "1e3", "1E3", "1e+3", "1.0e3", ".5e3", "+.5", "-.5", "09", "08", "0" * 39 + "9",
          "0o17", "0O17", "0X1F", "0B101", "0b+1", "+_1", "-_1", "0_9", "1_e3", "2001-1-2", "1e400",
          "", "~", "null", "true", "yes", "on", "+1", ".5", "1_000", "0x1F", "12:30", ".inf", "2001-12-14", "<<"]
SHA = "0" * 39 + "9"  # all digits with a leading zero: go-yaml reads it as the number 9 when plain
COLLECTIONS = {"Deployment": "/apis/apps/v1/namespaces/{}/deployments",
               "Service": "/api/v1/namespaces/{}/services",
               "VirtualService": "/apis/networking.istio.io/v1/namespaces/{}/virtualservices"}


def post_yaml(cluster: Cluster, kind: str, namespace: str, text: str) -> tuple[int, dict[str, Any]]:
    """Create the object from YAML text, dry run; (status, the answer's JSON)."""
    url = f"{cluster.server}{COLLECTIONS[kind].format(namespace)}?dryRun=All&fieldValidation=Strict"
    request = urllib.request.Request(url, data=text.encode("utf-8"), method="POST", headers={
        "Content-Type": "application/yaml", "Accept": "application/json",
        "Authorization": f"Bearer {cluster.admin_token}"})
    context = ssl.create_default_context(cafile=str(cluster.ca_file))
    try:
        with urllib.request.urlopen(request, context=context, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def kept(sent: Any, answer: Any, where: str = "") -> None:
    """Every value sent is in the answer, as sent (the server may add defaults around them)."""
    if isinstance(sent, dict):
        assert isinstance(answer, dict), where
        for key, value in sent.items():
            if key not in answer:
                assert value in ("", [], {}), f"{where}.{key} missing"  # empty values are omitted (omitempty)
                continue
            kept(value, answer[key], f"{where}.{key}")
    elif isinstance(sent, list):
        assert isinstance(answer, list) and len(answer) == len(sent), where
        for i, (value, back) in enumerate(zip(sent, answer, strict=True)):
            kept(value, back, f"{where}[{i}]")
    else:
        assert answer == sent and type(answer) is type(sent), f"{where}: sent {sent!r}, got back {answer!r}"


def render(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
           namespace: str) -> list[str]:
    env = "".join(f"        V{i}: '{value}'\n" for i, value in enumerate(TRICKY))
    env += "        PORT: 8080\n        DEBUG: true\n        RATIO: 0.5\n        MODE: 0755\n"
    env += "".join(f"        {name}: x\n" for name in ("y", "n", "Y", "N"))  # names that go-yaml v2 reads as booleans
    args = ", ".join(f"'{value}'" for value in TRICKY if value)  # args are non-empty strings
    config = tmp_path / "preview.yml"
    config.write_text("services:\n"
                      "  - name: y\n    image: registry.example.com/acme/y:{sha}\n    port: 8080\n"
                      f"    command: ['09']\n    args: [{args}]\n    env:\n{env}"
                      "  - name: n\n    image: registry.example.com/acme/n:{short_sha}-{number}\n    port: 9090\n",
                      encoding="utf-8")
    for name in [n for n in os.environ if n.startswith("PREVIEW_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("PREVIEW_NAMESPACE", namespace)
    monkeypatch.setenv("PREVIEW_ROUTING_NAMESPACE", namespace)
    code = cli.main(["render", "--config", str(config), "--repo", "acme/shop", "--repo-id", "1296269", "--pr", "7",
                     "--sha", SHA, "--domain", "example.com"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return re.split(r"(?m)^---\n", out)


def test_the_api_server_reads_rendered_documents_as_written(cluster: Cluster, namespace: str, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    texts = render(tmp_path, capsys, monkeypatch, namespace)
    kinds = []
    for text in texts:
        document = yaml.safe_load(text)
        status, answer = post_yaml(cluster, document["kind"], namespace, text)
        assert status == 201, f"{document['kind']} {document['metadata']['name']}: {answer.get('message')}"
        kept(document, answer)
        kinds.append(document["kind"])
        if document["kind"] != "VirtualService" or naming.SHA_ANNOTATION in document["metadata"]["annotations"]:
            assert answer["metadata"]["annotations"][naming.SHA_ANNOTATION] == SHA
        if document["kind"] == "Deployment" and answer["metadata"]["labels"][naming.SERVICE_LABEL] == "y":
            (container,) = answer["spec"]["template"]["spec"]["containers"]
            values = {e["name"]: e.get("value", "") for e in container["env"]}
            assert [values[f"V{i}"] for i in range(len(TRICKY))] == TRICKY
            assert {k: values[k] for k in ("PORT", "DEBUG", "RATIO", "MODE")} == {
                "PORT": "8080", "DEBUG": "true", "RATIO": "0.5", "MODE": "493"}  # YAML 1.1 reads 0755 as octal
            assert {"y", "n", "Y", "N"} <= values.keys()
            assert container["command"] == ["09"] and container["args"] == [v for v in TRICKY if v]
    assert sorted(kinds) == ["Deployment"] * 2 + ["Service"] * 2 + ["VirtualService"] * 4


@pytest.mark.parametrize("value", ["1e3", "y", "09", "0o17", "+.5"])
def test_the_api_server_refuses_what_plain_safe_dump_prints(cluster: Cluster, namespace: str, value: str) -> None:
    """The oracle can tell: PyYAML's own quoting leaves these plain, and go-yaml reads a number or a boolean."""
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "plain"},
                  "spec": {"selector": {"matchLabels": {"app": "plain"}},
                           "template": {"metadata": {"labels": {"app": "plain"}},
                                        "spec": {"containers": [{"name": "c", "image": "registry.example.com/c:1",
                                                                 "env": [{"name": "V", "value": value}]}]}}}}
    text = yaml.safe_dump(deployment, sort_keys=False)
    assert f"value: {value}\n" in text
    status, answer = post_yaml(cluster, "Deployment", namespace, text)
    assert status == 400, answer
    assert re.search(r"cannot unmarshal (number|bool) into Go struct field EnvVar\S*\.value of type string",
                     answer["message"]), answer["message"]
