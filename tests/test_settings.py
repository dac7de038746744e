"""Settings: read once, validated, immutable; bad configuration exits 2 with one clear line."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.projects import REGISTRY
from service.settings import DOCUMENTED, ConfigError, Settings, load_settings
from tests.support import ROOT, free_port

PARSERS = {p.name: p.parse_settings for p in REGISTRY}


def test_defaults() -> None:
    s = load_settings({}, parsers=PARSERS)
    assert s.port == 8080
    assert s.max_body_bytes == 64 * 1024
    assert s.log_format == "json"
    assert s.cors_allow_origins == ()
    assert "strava-integration" in s.projects


def test_settings_are_immutable() -> None:
    s = load_settings({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"PORT": "eighty"}, "PORT"),
        ({"PORT": "70000"}, "PORT"),
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL"),
        ({"MAX_BODY_BYTES": "-1"}, "MAX_BODY_BYTES"),
        ({"CORS_ALLOW_ORIGINS": "mysite.test"}, "CORS_ALLOW_ORIGINS"),
        ({"CORS_ALLOW_ORIGINS": "*", "CORS_ALLOW_CREDENTIALS": "true"}, "CORS_ALLOW_CREDENTIALS"),
        ({"FORWARDED_ALLOW_IPS": "not-an-ip"}, "FORWARDED_ALLOW_IPS"),
        ({"SHUTDOWN_DRAIN_SECONDS": "nan"}, "SHUTDOWN_DRAIN_SECONDS"),
        ({"METRICS_BEARER_TOKEN": "short"}, "METRICS_BEARER_TOKEN"),
        ({"PROJECTS": "nope"}, "PROJECTS"),
    ],
)
def test_malformed_values_name_the_variable(env: dict[str, str], name: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env, parsers=PARSERS)
    assert info.value.name == name
    for value in env.values():
        if len(value) > 4:
            assert value not in str(info.value)


def test_secret_not_in_repr() -> None:
    s = load_settings({"METRICS_BEARER_TOKEN": "a-very-secret-metrics-token"})
    assert "a-very-secret-metrics-token" not in repr(s)


def test_every_documented_variable_is_in_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    project_vars = [v for p in REGISTRY for v in getattr(sys.modules[p.build.__module__], "DOCUMENTED", ())]
    for name in (*DOCUMENTED, *project_vars):
        assert f"`{name}`" in readme, name


def run_service(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("STRAVA_", "METRICS_"))}
    return subprocess.run(
        [sys.executable, "-m", "service"],
        cwd=ROOT,
        env={**base, "PORT": str(free_port()), **env},
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


def test_malformed_value_exits_2_with_one_clear_line() -> None:
    result = run_service({"PORT": "http"})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == ["siteapi: configuration error: PORT: expected an integer from 1 to 65535"]
    assert "Traceback" not in result.stderr + result.stdout


def test_missing_value_exits_2_without_printing_secrets() -> None:
    secret = "csec-do-not-print-me-0123456789"
    result = run_service({"STRAVA_CLIENT_SECRET": secret})  # a secret without its client id
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "STRAVA_CLIENT_ID" in lines[0]
    assert "required" in lines[0]
    assert secret not in result.stderr + result.stdout


def test_settings_is_the_only_reader_of_the_environment() -> None:
    offenders = []
    for path in [*Path(ROOT / "service").rglob("*.py"), *Path(ROOT / "observability").rglob("*.py")]:
        if path.name == "settings.py" or "simulator" in path.parts:
            continue
        text = path.read_text()
        if "os.environ" in text or "os.getenv" in text:
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_settings_type_is_frozen_dataclass() -> None:
    assert dataclasses.is_dataclass(Settings)
    assert Settings.__dataclass_params__.frozen  # type: ignore[attr-defined]
