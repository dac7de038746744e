"""Settings: every environment variable is read here, once, at start-up.

The result is one immutable object passed down to everything else. Projects parse their own
variables with the helpers below, from the same mapping, so no other module touches the
environment. A bad value raises `ConfigError`, which the launcher turns into exit code 2 and one
line that names the variable and what it expects, never the value (it may be a secret).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("json", "console")


class ConfigError(Exception):
    """A missing or malformed variable. The message never includes the value."""

    def __init__(self, name: str, expected: str) -> None:
        super().__init__(f"{name}: expected {expected}")
        self.name = name
        self.expected = expected


def env_str(env: Mapping[str, str], name: str, default: str | None = None, *, max_len: int = 4096) -> str | None:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip()
    if len(value) > max_len or any(ord(c) < 32 for c in value):
        raise ConfigError(name, f"a printable string of at most {max_len} characters")
    return value


def env_int(env: Mapping[str, str], name: str, default: int, *, minimum: int, maximum: int) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip(), 10)
    except ValueError:
        raise ConfigError(name, f"an integer from {minimum} to {maximum}") from None
    if not minimum <= value <= maximum:
        raise ConfigError(name, f"an integer from {minimum} to {maximum}")
    return value


def env_float(env: Mapping[str, str], name: str, default: float, *, minimum: float, maximum: float) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw.strip())
    except ValueError:
        raise ConfigError(name, f"a number from {minimum:g} to {maximum:g}") from None
    if not minimum <= value <= maximum:  # also rejects nan
        raise ConfigError(name, f"a number from {minimum:g} to {maximum:g}")
    return value


def env_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(name, "one of true/false/1/0/yes/no/on/off")


def env_choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value not in choices:
        raise ConfigError(name, "one of " + ", ".join(choices))
    return value


def env_list(env: Mapping[str, str], name: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
    raw = env_str(env, name)
    if raw is None:
        return default
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _validate_origins(origins: tuple[str, ...]) -> tuple[str, ...]:
    for origin in origins:
        if origin == "*":
            continue
        if not origin.startswith(("http://", "https://")) or origin.endswith("/"):
            raise ConfigError("CORS_ALLOW_ORIGINS", "comma-separated origins like https://example.com (no path)")
    return origins


def _validate_forwarded(values: tuple[str, ...]) -> tuple[str, ...]:
    for value in values:
        if value == "*":
            continue
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ConfigError("FORWARDED_ALLOW_IPS", "comma-separated IP addresses or networks, or *") from None
    return values


def _validate_paths(values: tuple[str, ...]) -> tuple[str, ...]:
    for value in values:
        if not value.startswith("/"):
            raise ConfigError("METRICS_EXCLUDE_PATHS", "comma-separated paths that start with /")
    return values


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    log_level: str = "info"
    log_format: str = "json"
    data_dir: Path = Path("data")
    max_body_bytes: int = 64 * 1024
    cors_allow_origins: tuple[str, ...] = ()
    cors_allow_credentials: bool = False
    forwarded_allow_ips: tuple[str, ...] = ("127.0.0.1", "::1")
    shutdown_drain_seconds: float = 2.0
    shutdown_timeout_seconds: float = 20.0
    metrics_bearer_token: str | None = field(default=None, repr=False)
    metrics_exclude_paths: tuple[str, ...] = ("/livez", "/readyz", "/metrics")
    projects_enabled: tuple[str, ...] | None = None
    sandbox: bool = False
    # Per-project settings, parsed by each project's own `parse_settings`, keyed by project name.
    projects: Mapping[str, Any] = field(default_factory=dict)


# What README documents; kept here so a test can check the two agree.
DOCUMENTED = (
    "HOST",
    "PORT",
    "LOG_LEVEL",
    "LOG_FORMAT",
    "DATA_DIR",
    "MAX_BODY_BYTES",
    "CORS_ALLOW_ORIGINS",
    "CORS_ALLOW_CREDENTIALS",
    "FORWARDED_ALLOW_IPS",
    "SHUTDOWN_DRAIN_SECONDS",
    "SHUTDOWN_TIMEOUT_SECONDS",
    "METRICS_BEARER_TOKEN",
    "METRICS_EXCLUDE_PATHS",
    "PROJECTS",
)

ProjectSettingsParser = Callable[[Mapping[str, str], "Settings"], Any]


def load_settings(
    env: Mapping[str, str] | None = None,
    *,
    sandbox: bool = False,
    parsers: Mapping[str, ProjectSettingsParser] | None = None,
) -> Settings:
    """Read and validate everything once. `parsers` maps project name to its settings parser."""
    env = os.environ if env is None else env
    cors = _validate_origins(env_list(env, "CORS_ALLOW_ORIGINS"))
    credentials = env_bool(env, "CORS_ALLOW_CREDENTIALS", False)
    if credentials and "*" in cors:
        raise ConfigError("CORS_ALLOW_CREDENTIALS", "false when CORS_ALLOW_ORIGINS contains * (browsers forbid both)")
    token = env_str(env, "METRICS_BEARER_TOKEN", max_len=512)
    if token is not None and len(token) < 16:
        raise ConfigError("METRICS_BEARER_TOKEN", "at least 16 characters")
    drain = env_float(env, "SHUTDOWN_DRAIN_SECONDS", 2.0, minimum=0, maximum=110)
    timeout = env_float(env, "SHUTDOWN_TIMEOUT_SECONDS", 20.0, minimum=1, maximum=600)
    enabled = env_list(env, "PROJECTS")
    base = Settings(
        host=env_str(env, "HOST", "127.0.0.1", max_len=255) or "127.0.0.1",
        port=env_int(env, "PORT", 8080, minimum=1, maximum=65535),
        log_level=env_choice(env, "LOG_LEVEL", "info", LOG_LEVELS),
        log_format=env_choice(env, "LOG_FORMAT", "json", LOG_FORMATS),
        data_dir=Path(env_str(env, "DATA_DIR", "data") or "data"),
        max_body_bytes=env_int(env, "MAX_BODY_BYTES", 64 * 1024, minimum=1024, maximum=16 * 1024 * 1024),
        cors_allow_origins=cors,
        cors_allow_credentials=credentials,
        forwarded_allow_ips=_validate_forwarded(env_list(env, "FORWARDED_ALLOW_IPS", ("127.0.0.1", "::1"))),
        shutdown_drain_seconds=drain,
        shutdown_timeout_seconds=timeout,
        metrics_bearer_token=token,
        metrics_exclude_paths=_validate_paths(
            env_list(env, "METRICS_EXCLUDE_PATHS", ("/livez", "/readyz", "/metrics"))
        ),
        projects_enabled=enabled or None,
        sandbox=sandbox,
    )
    if parsers:
        if base.projects_enabled is not None:
            unknown = [name for name in base.projects_enabled if name not in parsers]
            if unknown:
                raise ConfigError("PROJECTS", "a comma-separated subset of: " + ", ".join(parsers))
        chosen = {
            name: parse(env, base)
            for name, parse in parsers.items()
            if base.projects_enabled is None or name in base.projects_enabled
        }
        base = replace(base, projects=chosen)
    return base
