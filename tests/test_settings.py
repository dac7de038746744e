"""Settings: read once, validated, immutable; bad configuration exits 2 with one clear line."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from service.projects import REGISTRY
from service.settings import (
    DOCUMENTED,
    ConfigError,
    Settings,
    config_table,
    integer,
    load_settings,
    read_vars,
    var,
    variables,
)
from tests.support import ROOT, free_port

PARSERS = {p.name: p.parse_settings for p in REGISTRY}
REDIS_PASSWORD = "Rpw-do-not-print-4f7c1a"  # distinctive, so a leak is unmistakable
CA_CERT = """\
-----BEGIN CERTIFICATE-----
MIIBizCCATGgAwIBAgIUF5jEKpwSRNPHN/pb+8nL9aIckbAwCgYIKoZIzj0EAwIw
GjEYMBYGA1UEAwwPc2l0ZWFwaS10ZXN0LWNhMCAXDTI2MTIwMTIzMjAzOVoYDzIx
MjYxMTA3MjMyMDM5WjAaMRgwFgYDVQQDDA9zaXRlYXBpLXRlc3QtY2EwWTATBgcq
hkjOPQIBBggqhkjOPQMBBwNCAARsFC6QwaPiE7bpOCWoVxdqCTnWa59pU3uH14D+
anspgHBUBnC2Dt5JGVY/ucfAqE6/rM8kgzbWsAD8E1OgDvhJo1MwUTAdBgNVHQ4E
FgQU4BuDHqAzTwB76JinMUKC/+fiCO8wHwYDVR0jBBgwFoAU4BuDHqAzTwB76Jin
MUKC/+fiCO8wDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNIADBFAiEA2Q8s
BqgD89ovy1dRZ+aKzn5PWDCDd+Mo7VI3/DOcgxUCIGvn8VY+qRc3pmXnDyQ0Ox2b
64Chqps2f4C11UTuBczM
-----END CERTIFICATE-----
"""  # a throwaway self-signed CA (openssl req -x509), so TLS can load it


def test_defaults() -> None:
    s = load_settings({}, parsers=PARSERS)
    assert s.port == 8080
    assert s.max_body_bytes == 64 * 1024
    assert s.log_format == "json"
    assert s.cors_allow_origins == ()
    assert "strava-integration" in s.projects
    # Unset REDIS_URL is the embedded mode.
    assert (s.redis_url, s.redis_ca_cert) == (None, None)
    assert (s.redis_key_prefix, s.redis_timeout_seconds) == ("siteapi:", 0.25)
    assert s.secrets() == ()


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
        ({"REDIS_URL": f"http://:{REDIS_PASSWORD}@cache.internal:6379"}, "REDIS_URL"),
        ({"REDIS_URL": f"redis://:{REDIS_PASSWORD}@cache.internal:port"}, "REDIS_URL"),
        ({"REDIS_URL": f"redis://:{REDIS_PASSWORD}@cache.internal:99999"}, "REDIS_URL"),
        ({"REDIS_URL": f"redis://:{REDIS_PASSWORD}@:6379"}, "REDIS_URL"),
        ({"REDIS_URL": f"rediss://:{REDIS_PASSWORD}@cache.internal/zero"}, "REDIS_URL"),
        ({"REDIS_URL": f"redis://:{REDIS_PASSWORD}@cache.internal?ssl_cert_reqs=none"}, "REDIS_URL"),
        ({"REDIS_URL": f"redis://:{REDIS_PASSWORD} x@cache.internal"}, "REDIS_URL"),
        ({"REDIS_URL": "cache.internal:6379"}, "REDIS_URL"),
        ({"REDIS_CA_CERT": "MIIBszCCAVmgAwIBAgIU-no-pem-markers", "REDIS_URL": "rediss://h"}, "REDIS_CA_CERT"),
        (  # the markers, but nothing TLS can load between them
            {
                "REDIS_CA_CERT": CA_CERT.replace("MII", "AII"),
                "REDIS_URL": "rediss://h",
            },
            "REDIS_CA_CERT",
        ),
        ({"REDIS_CA_CERT": CA_CERT + "A" * 65536, "REDIS_URL": "rediss://h"}, "REDIS_CA_CERT"),
        ({"REDIS_CA_CERT": CA_CERT, "REDIS_URL": "redis://cache.internal"}, "REDIS_CA_CERT"),
        ({"REDIS_CA_CERT": CA_CERT}, "REDIS_CA_CERT"),
        ({"REDIS_KEY_PREFIX": "has space"}, "REDIS_KEY_PREFIX"),
        ({"REDIS_KEY_PREFIX": "p" * 65}, "REDIS_KEY_PREFIX"),
        ({"REDIS_KEY_PREFIX": "app{tag}"}, "REDIS_KEY_PREFIX"),
        ({"REDIS_TIMEOUT_SECONDS": "0.001"}, "REDIS_TIMEOUT_SECONDS"),
        ({"REDIS_TIMEOUT_SECONDS": "6"}, "REDIS_TIMEOUT_SECONDS"),
        ({"REDIS_TIMEOUT_SECONDS": "250ms"}, "REDIS_TIMEOUT_SECONDS"),
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


@pytest.mark.parametrize(
    ("url", "password"),
    [
        ("redis://127.0.0.1:6379", None),
        ("redis://localhost/3", None),
        ("redis://[::1]:6380/0", None),
        (f"redis://:{REDIS_PASSWORD}@127.0.0.1:6379/0", REDIS_PASSWORD),
        # App Platform's managed Valkey: a user, a password, TLS, a non-default port.
        (f"rediss://default:{REDIS_PASSWORD}@db-valkey-fra1-1.b.db.ondigitalocean.com:25061", REDIS_PASSWORD),
    ],
)
def test_redis_urls_accepted(url: str, password: str | None) -> None:
    s = load_settings({"REDIS_URL": url})
    assert s.redis_url == url
    assert REDIS_PASSWORD not in repr(s)
    assert set(s.secrets()) == ({url, password} if password else {url})


def test_redis_password_is_handed_to_the_redactor_as_written_and_decoded() -> None:
    s = load_settings({"REDIS_URL": "rediss://default:p%40ss-w0rd-123@cache.internal:25061"})
    assert {"p%40ss-w0rd-123", "p@ss-w0rd-123"} <= set(s.secrets())


def test_settings_secrets_include_the_metrics_token() -> None:
    s = load_settings({"METRICS_BEARER_TOKEN": "a-very-secret-metrics-token"})
    assert s.secrets() == ("a-very-secret-metrics-token",)


def test_redis_settings_read() -> None:
    env = {
        "REDIS_URL": "rediss://cache.internal:25061",
        "REDIS_CA_CERT": CA_CERT,
        "REDIS_KEY_PREFIX": "site-a:v1.",
        "REDIS_TIMEOUT_SECONDS": "0.5",
    }
    s = load_settings(env)
    assert (s.redis_ca_cert, s.redis_key_prefix, s.redis_timeout_seconds) == (CA_CERT, "site-a:v1.", 0.5)


def test_a_ca_certificate_pasted_on_one_line_is_read_as_pem() -> None:
    one_line = CA_CERT.replace("\n", "\\n")
    assert "\n" not in one_line
    s = load_settings({"REDIS_URL": "rediss://cache.internal", "REDIS_CA_CERT": one_line})
    assert s.redis_ca_cert == CA_CERT


def test_the_loader_reads_exactly_the_declared_variables() -> None:
    asked: list[str] = []

    class RecordingEnv(dict[str, str]):
        def get(self, key: str, default: Any = None) -> Any:
            asked.append(key)
            return super().get(key, default)

    load_settings(RecordingEnv())
    assert asked == list(DOCUMENTED)
    assert tuple(v.name for v in variables(Settings)) == DOCUMENTED


def test_a_new_variable_is_one_declaration() -> None:
    # The mechanism a new variable relies on: declared once, it is read, defaulted, and documented.
    @dataclasses.dataclass(frozen=True)
    class Section:
        answer: int = var("ANSWER", integer(1, 99), 42, "the answer")
        plain: str = "not a variable"

    assert Section().answer == 42
    assert read_vars(Section, {}, Settings()) == {"answer": 42}
    assert read_vars(Section, {"ANSWER": " 7 "}, Settings()) == {"answer": 7}
    with pytest.raises(ConfigError, match=r"^ANSWER: expected an integer from 1 to 99$"):
        read_vars(Section, {"ANSWER": "100"}, Settings())
    assert config_table([Section]).splitlines()[2] == "| `ANSWER` | `42` | the answer |"


def _sections() -> list[Any]:
    """The service's settings, then each project's, as README lists them."""
    return [Settings, *(type(parsed) for parsed in load_settings({}, parsers=PARSERS).projects.values())]


def _table_rows(markdown: str) -> list[tuple[str, str, str]]:
    lines = markdown.splitlines()
    start = lines.index("| variable | default | meaning |") + 2  # skip the header and its |---| line
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip().removeprefix("|").removesuffix("|").split(" | ")]
        assert len(cells) == 3, line
        rows.append((cells[0], cells[1], cells[2]))
    return rows


def test_readme_configuration_table_matches_the_declarations() -> None:
    readme = _table_rows((ROOT / "README.md").read_text())
    declared = [v for section in _sections() for v in variables(section)]
    assert [name for name, _, _ in readme] == [f"`{v.name}`" for v in declared]
    # Defaults and meanings too: README's table is exactly what the declarations render.
    expected = config_table(_sections())
    assert readme == _table_rows(expected), "paste this table into README.md:\n" + expected


def test_every_variable_is_declared_once() -> None:
    names = [v.name for section in _sections() for v in variables(section)]
    assert len(names) == len(set(names))


def run_service(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("STRAVA_", "METRICS_", "REDIS_"))}
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


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"REDIS_URL": f"redis://:{REDIS_PASSWORD}@cache.internal:port/0"}, "REDIS_URL"),
        ({"REDIS_URL": f"rediss://default:{REDIS_PASSWORD}@cache.internal?db=1"}, "REDIS_URL"),
        # A valid URL beside a bad neighbour: the line names the neighbour, and still not the password.
        (
            {"REDIS_URL": f"rediss://default:{REDIS_PASSWORD}@cache.internal", "REDIS_KEY_PREFIX": "a b"},
            "REDIS_KEY_PREFIX",
        ),
        ({"REDIS_URL": f"redis://:{REDIS_PASSWORD}@cache.internal", "REDIS_CA_CERT": CA_CERT}, "REDIS_CA_CERT"),
        (  # the PEM markers around a body TLS cannot load: refused here, not by the store at start-up
            {"REDIS_URL": f"rediss://:{REDIS_PASSWORD}@cache.internal", "REDIS_CA_CERT": CA_CERT.replace("MII", "AII")},
            "REDIS_CA_CERT",
        ),
        (
            {"REDIS_URL": f"redis://:{REDIS_PASSWORD}@cache.internal", "REDIS_TIMEOUT_SECONDS": "9"},
            "REDIS_TIMEOUT_SECONDS",
        ),
    ],
)
def test_bad_redis_settings_exit_2_without_printing_the_password(env: dict[str, str], name: str) -> None:
    result = run_service(env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"siteapi: configuration error: {name}: expected ")
    assert REDIS_PASSWORD not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr + result.stdout


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
