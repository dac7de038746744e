"""One version: `service.__version__`; every other place that names it must agree."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from service import __version__
from service.projects import REGISTRY

ROOT = Path(__file__).resolve().parent.parent


def test_pyproject_dockerfile_and_projects_carry_the_service_version() -> None:
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"] == __version__
    # The image's label default (CI may pass another with --build-arg, e.g. a release tag).
    arg = re.search(r"^ARG VERSION=(\S+)$", (ROOT / "Dockerfile.production").read_text(), re.MULTILINE)
    assert arg is not None and arg.group(1) == __version__
    assert {spec.version for spec in REGISTRY} == {__version__}
