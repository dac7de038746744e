"""Supply chain: every dependency pinned exactly, once; the image installs the runtime pins only.

requirements.txt is what the production image installs; requirements-dev.txt adds the test and
lint tools on top through `-r requirements.txt`. If both hold exact `==` pins, neither repeats the
other, and the environment the tests run in has exactly the runtime pins installed, then CI tests
the dependency set the image ships.
"""

from __future__ import annotations

import importlib.metadata
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUNTIME = ROOT / "requirements.txt"
DEV = ROOT / "requirements-dev.txt"
DOCKERFILE = ROOT / "Dockerfile.production"
# A snapshot of PyPI's newest versions that some workstations have; CI machines need not.
PYPI_SNAPSHOT = Path("/work/.library/env/packages/pypi.tsv")

_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
# PEP 440 public version (optional epoch, pre/post/dev parts) plus an optional local part; no
# wildcards, so `==1.*` is not taken for an exact pin.
_VERSION = r"(?:\d+!)?\d+(?:\.\d+)*(?:(?:a|b|rc)\d+)?(?:\.post\d+)?(?:\.dev\d+)?(?:\+[A-Za-z0-9.]+)?"
_PIN = re.compile(
    rf"(?P<name>{_NAME})\s*(?:\[(?P<extras>\s*{_NAME}\s*(?:,\s*{_NAME}\s*)*)\])?"
    rf"\s*==\s*(?P<version>{_VERSION})\s*(?:;\s*(?P<marker>.+))?"
)
_URL = re.compile(r"(?:^|\s|@)(?:[a-z][a-z0-9+.-]*://|(?:git|hg|svn|bzr)\+)", re.IGNORECASE)
_LOOSE = re.compile(r"(?:>=|<=|~=|!=|===|(?<![=!<>~])[<>](?!=)|\*)")


def normalize(name: str) -> str:
    """PEP 503: runs of `-`, `_` and `.` are one `-`, case-insensitively."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True, slots=True)
class Pin:
    name: str
    extras: tuple[str, ...]
    version: str
    where: str  # "requirements.txt:3"

    @property
    def key(self) -> str:
        return normalize(self.name)


@dataclass(slots=True)
class RequirementsFile:
    path: Path
    pins: list[Pin] = field(default_factory=list)
    includes: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, line) with comments dropped and backslash continuations joined."""
    lines: list[tuple[int, str]] = []
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = re.sub(r"(?:^|\s)#.*$", "", raw).rstrip()
        if pending and not line:
            continue  # a comment or blank line inside a continuation does not end it
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = (pending + line).strip(), ""
        if line:
            lines.append((start, line))
    if pending.strip():
        lines.append((start, pending.strip()))
    return lines


def parse_requirements(text: str, path: Path) -> RequirementsFile:
    """One file's exact pins and `-r` includes; anything else is a problem, named by line."""
    parsed = RequirementsFile(path)
    for number, line in _logical_lines(text):
        where = f"{path.name}:{number}"
        include = re.fullmatch(r"(?:-r|--requirement)(?:\s*=\s*|\s+)(\S+)", line)
        if include:
            parsed.includes.append(path.parent / include.group(1))
        elif re.match(r"(?:-e|--editable)\b", line):
            parsed.problems.append(f"{where}: editable install {line!r}")
        elif line.startswith("-"):
            parsed.problems.append(f"{where}: option {line!r}: only `-r <file>` belongs here")
        elif _URL.search(line) or line.startswith((".", "/")):
            parsed.problems.append(f"{where}: {line!r} installs from a URL, VCS or path, not a pinned release")
        elif (pin := _PIN.fullmatch(line)) is not None:
            extras = tuple(e.strip() for e in (pin.group("extras") or "").split(",") if e.strip())
            parsed.pins.append(Pin(pin.group("name"), extras, pin.group("version"), where))
        elif _LOOSE.search(line):
            parsed.problems.append(f"{where}: {line!r} is a range, not an exact `==` pin")
        else:
            parsed.problems.append(f"{where}: {line!r} is not pinned with `==` to an exact version")
    return parsed


def load_requirements(path: Path) -> list[RequirementsFile]:
    """`path` and every file it includes with `-r`, each once, included files before includers."""
    files: list[RequirementsFile] = []
    seen: set[Path] = set()

    def visit(current: Path, via: str) -> None:
        resolved = current.resolve()
        if resolved in seen:
            return
        seen.add(resolved)
        if not current.is_file():
            missing = RequirementsFile(current)
            missing.problems.append(f"{via}: includes {current.name}, which does not exist")
            files.append(missing)
            return
        parsed = parse_requirements(current.read_text(), current)
        for included in parsed.includes:
            visit(included, parsed.path.name)
        files.append(parsed)

    visit(path, path.name)
    return files


def problems(files: list[RequirementsFile]) -> list[str]:
    """Every file's own problems, plus any package pinned twice (by its PEP 503 name)."""
    found = [problem for f in files for problem in f.problems]
    first: dict[str, Pin] = {}
    for pin in (pin for f in files for pin in f.pins):
        if pin.key in first:
            found.append(f"{pin.where}: {pin.name} is already pinned at {first[pin.key].where}")
        else:
            first[pin.key] = pin
    return found


def runtime_pins() -> list[Pin]:
    return [pin for f in load_requirements(RUNTIME) for pin in f.pins]


# ---- the project's files ----


@pytest.mark.parametrize("path", [RUNTIME, DEV], ids=lambda p: p.name)
def test_every_requirement_is_pinned_exactly_and_once(path: Path) -> None:
    files = load_requirements(path)
    assert problems(files) == []
    assert [pin for f in files for pin in f.pins], f"{path.name} pins nothing"


def test_dev_requirements_include_the_runtime_file_rather_than_repeat_it() -> None:
    dev = parse_requirements(DEV.read_text(), DEV)
    assert [p.resolve() for p in dev.includes] == [RUNTIME.resolve()]
    runtime_keys = {pin.key for pin in runtime_pins()}
    assert [pin.where for pin in dev.pins if pin.key in runtime_keys] == []
    assert dev.pins, "requirements-dev.txt adds no tools of its own"


def _dockerfile_instructions(text: str) -> list[str]:
    return [line for _, line in _logical_lines(text)]


def test_the_image_installs_the_runtime_requirements_only() -> None:
    text = DOCKERFILE.read_text()
    assert "requirements-dev" not in text, f"{DOCKERFILE.name} must not touch the dev requirements"
    installed: list[str] = []
    for instruction in _dockerfile_instructions(text):
        if not instruction.upper().startswith("RUN") or "pip" not in instruction:
            continue
        for command in re.split(r"&&|;|\|\|", instruction[3:]):
            words = shlex.split(command)
            if "install" not in words or not any(w.endswith("pip") for w in words[: words.index("install")]):
                continue
            args = iter(words[words.index("install") + 1 :])
            for word in args:
                if word in ("-r", "--requirement"):
                    installed.append(next(args))
                elif word.startswith("--requirement="):
                    installed.append(word.split("=", 1)[1])
                elif word in ("--python", "-c", "--constraint", "--only-binary", "--no-binary", "-t", "--target"):
                    next(args)
                else:
                    # Every package comes from the pinned file: no stray `pip install name`.
                    assert word.startswith("-"), f"the image installs {word!r} outside requirements.txt"
    assert installed == ["requirements.txt"], f"the image installs from {installed}"
    copied = [i for i in _dockerfile_instructions(text) if i.upper().startswith("COPY") and "requirements" in i]
    assert copied and all(re.search(r"\brequirements\.txt\b", c) for c in copied)


@pytest.mark.parametrize("pin", runtime_pins(), ids=lambda p: p.name)
def test_the_environment_runs_the_runtime_pins(pin: Pin) -> None:
    # CI installs requirements-dev.txt, which includes requirements.txt: the versions the tests ran
    # against are the versions the image installs.
    assert importlib.metadata.version(pin.name) == pin.version, f"{pin.where} pins {pin.version}"


def test_what_the_runtime_pins_pull_in_is_installed() -> None:
    """Their dependencies, and those of their extras (`uvicorn[standard]` brings httptools and uvloop,
    which the launcher asks for), are installed in versions they accept."""
    requirements = pytest.importorskip("packaging.requirements")
    wrong = []
    for pin in runtime_pins():
        for spec in importlib.metadata.requires(pin.name) or []:
            wanted = requirements.Requirement(spec)
            if wanted.marker and not any(wanted.marker.evaluate({"extra": e}) for e in ("", *pin.extras)):
                continue  # another extra's, or another platform's
            try:
                have = importlib.metadata.version(wanted.name)
            except importlib.metadata.PackageNotFoundError:
                wrong.append(f"{pin.where}: {pin.name} needs {wanted}, which is not installed")
                continue
            if not wanted.specifier.contains(have, prereleases=True):
                wrong.append(f"{pin.where}: {pin.name} needs {wanted}, {have} is installed")
    assert wrong == []


def test_what_the_runtime_pins_pull_in_is_pinned_too() -> None:
    """Every package the image ends up with is pinned in requirements.txt, dependencies of
    dependencies included: otherwise each image build resolves them anew, maybe not as CI did."""
    requirements = pytest.importorskip("packaging.requirements")
    pinned = {pin.key for pin in runtime_pins()}
    todo = [(pin.name, set(pin.extras)) for pin in runtime_pins()]
    seen: set[str] = set()
    unpinned = set()
    while todo:
        name, extras = todo.pop()
        if normalize(name) in seen:
            continue
        seen.add(normalize(name))
        for spec in importlib.metadata.requires(name) or []:
            wanted = requirements.Requirement(spec)
            if wanted.marker and not any(wanted.marker.evaluate({"extra": e}) for e in ("", *extras)):
                continue
            if normalize(wanted.name) not in pinned:
                unpinned.add(wanted.name)
            todo.append((wanted.name, set(wanted.extras)))
    assert sorted(unpinned) == []


@pytest.mark.skipif(not PYPI_SNAPSHOT.is_file(), reason="no PyPI snapshot on this machine (optional check)")
def test_pins_are_not_behind_the_pypi_snapshot() -> None:
    version = pytest.importorskip("packaging.version")
    pins = {pin.key: pin for f in load_requirements(DEV) for pin in f.pins}
    newest: dict[str, str] = {}
    with PYPI_SNAPSHOT.open(encoding="utf-8", errors="replace") as snapshot:
        for line in snapshot:
            name, _, rest = line.partition("\t")
            listed = rest.split("\t", 1)[0]
            if normalize(name) in pins and listed:  # the snapshot leaves some versions blank
                newest[normalize(name)] = listed
    behind = [
        f"{pin.where}: {pin.name}=={pin.version}, {newest[key]} is out"
        for key, pin in pins.items()
        if key in newest and version.Version(pin.version) < version.Version(newest[key])
    ]
    assert behind == []


# ---- the parser, on what it must refuse ----


def _parse(text: str, name: str = "requirements.txt") -> RequirementsFile:
    return parse_requirements(text, Path("/nowhere") / name)


def test_parser_accepts_exact_pins_with_extras_markers_comments_and_continuations() -> None:
    parsed = _parse(
        "# runtime\n"
        "uvicorn[standard]==0.54.0  # server\n"
        "Foo.Bar [a, b] == 1.2.3rc1 ; python_version >= '3.11'\n"
        "baz==2!1.0.post2.dev3+local.1\n"
        "qux==\\\n  4.5\n"
        "-r other.txt\n"
    )
    assert parsed.problems == []
    assert [(p.key, p.extras, p.version) for p in parsed.pins] == [
        ("uvicorn", ("standard",), "0.54.0"),
        ("foo-bar", ("a", "b"), "1.2.3rc1"),
        ("baz", (), "2!1.0.post2.dev3+local.1"),
        ("qux", (), "4.5"),
    ]
    assert parsed.includes == [Path("/nowhere/other.txt")]


@pytest.mark.parametrize(
    ("line", "complaint"),
    [
        ("requests", "not pinned"),
        ("requests[socks]", "not pinned"),
        ("requests>=2.31", "range"),
        ("requests~=2.31", "range"),
        ("requests==2.*", "range"),
        ("requests>2,<3", "range"),
        ("requests===2.31.0", "range"),
        ("requests==2.31.0,!=2.31.1", "range"),
        ("requests @ https://files.example/requests-2.31.0-py3-none-any.whl", "URL"),
        ("https://files.example/requests-2.31.0.tar.gz", "URL"),
        ("git+https://github.com/psf/requests@v2.31.0#egg=requests", "URL"),
        ("./vendor/requests", "URL"),
        ("-e git+https://github.com/psf/requests#egg=requests", "editable"),
        ("--editable .", "editable"),
        ("--index-url https://mirror.example/simple", "only `-r <file>`"),
        ("-c constraints.txt", "only `-r <file>`"),
    ],
)
def test_parser_refuses(line: str, complaint: str) -> None:
    parsed = _parse(f"ok==1.0\n{line}\n")
    assert len(parsed.problems) == 1 and complaint in parsed.problems[0], parsed.problems
    assert parsed.problems[0].startswith("requirements.txt:2:")


def test_duplicates_are_found_by_pep_503_name_within_and_across_files(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text("Typing_Extensions==4.12.0\nPyYAML==6.0.3\n")
    (tmp_path / "dev.txt").write_text("-r requirements.txt\npytest==9.2.0\ntyping.extensions==4.12.0\npyyaml==6.0.3\n")
    found = problems(load_requirements(tmp_path / "dev.txt"))
    assert found == [
        "dev.txt:3: typing.extensions is already pinned at requirements.txt:1",
        "dev.txt:4: pyyaml is already pinned at requirements.txt:2",
    ]
    (tmp_path / "one.txt").write_text("foo-bar==1.0\nFOO_BAR==1.0\n")
    assert problems(load_requirements(tmp_path / "one.txt")) == ["one.txt:2: FOO_BAR is already pinned at one.txt:1"]


def test_includes_are_followed_once_and_missing_ones_reported(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("-r b.txt\na==1.0\n")
    (tmp_path / "b.txt").write_text("-r a.txt\n--requirement=missing.txt\nb==1.0\n")
    files = load_requirements(tmp_path / "a.txt")
    assert [f.path.name for f in files] == ["missing.txt", "b.txt", "a.txt"]
    assert problems(files) == ["b.txt: includes missing.txt, which does not exist"]
