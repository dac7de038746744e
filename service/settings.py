"""Settings: every environment variable is declared here (or in a project's settings), read once.

Each variable is declared exactly once, as a dataclass field made by `var()`: its name, parser,
default, whether it is secret, and one line of documentation. The loader, the list of what is
documented and README's configuration table (`config_table`, which a test compares with README)
all derive from those declarations. Cross-field rules are small explicit validators beside them.

The result is one immutable object passed down to everything else; projects declare their own
variables the same way and read them from the same mapping, so no other module touches the
environment. A bad value raises `ConfigError`, which the launcher turns into exit code 2 and one
line that names the variable and what it expects, never the value (it may be a secret).
"""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("json", "console")
KIB = 1024
_VAR = "siteapi.var"  # the dataclass field metadata key that holds a field's `Var`


class ConfigError(Exception):
    """A missing or malformed variable. The message never includes the value."""

    def __init__(self, name: str, expected: str) -> None:
        super().__init__(f"{name}: expected {expected}")
        self.name = name
        self.expected = expected


class Expected(Exception):
    """Raised by a parser with what the variable expects; the loader adds the variable's name.

    A parser raises only this (never lets `int()`'s ValueError through): the text of an arbitrary
    exception may quote the value, and the value may be a secret.
    """

    def __init__(self, expected: str) -> None:
        super().__init__(expected)
        self.expected = expected


Parse = Callable[[str], Any]


@dataclass(frozen=True, slots=True)
class Var:
    """One environment variable: everything there is to know about it, in one place."""

    name: str
    parse: Parse  # the stripped, non-blank raw value -> the field's value; raises `Expected`
    default: Any  # when unset or blank; also the dataclass field's default
    doc: str  # README's "meaning" column
    secret: bool = False  # kept out of repr, handed to the log redactor
    doc_default: str | None = None  # README's "default" column where the rendered default says too little
    # A default that depends on the service settings (the sandbox, DATA_DIR); README then needs `doc_default`.
    default_for: Callable[[Settings], Any] | None = None

    def read(self, env: Mapping[str, str], context: Settings) -> Any:
        raw = env.get(self.name)
        if raw is None or raw.strip() == "":
            return self.default_for(context) if self.default_for else self.default
        try:
            return self.parse(raw.strip())
        except Expected as exc:
            raise ConfigError(self.name, exc.expected) from None

    def documented_default(self) -> str:
        return self.doc_default if self.doc_default is not None else render_default(self.default)


def var(
    name: str,
    parse: Parse,
    default: Any,
    doc: str,
    *,
    secret: bool = False,
    doc_default: str | None = None,
    default_for: Callable[[Settings], Any] | None = None,
) -> Any:
    """A dataclass field declared as the environment variable `name` (typed Any, like `field()`)."""
    declared = Var(name, parse, default, doc, secret, doc_default, default_for)
    return field(default=default, repr=not secret, metadata={_VAR: declared})


def variables(section: Any) -> tuple[Var, ...]:
    """The variables a settings dataclass (or an instance of one) declares, in field order."""
    return tuple(f.metadata[_VAR] for f in fields(section) if _VAR in f.metadata)


def read_vars(section: type, env: Mapping[str, str], context: Settings) -> dict[str, Any]:
    """Each declared field's value from `env`, by field name: the keyword arguments for `section`."""
    return {f.name: f.metadata[_VAR].read(env, context) for f in fields(section) if _VAR in f.metadata}


def secret_values(settings: Any) -> tuple[str, ...]:
    """Every secret field that is set, for the log redactor."""
    values = (getattr(settings, f.name) for f in fields(settings) if _VAR in f.metadata and f.metadata[_VAR].secret)
    return tuple(value for value in values if value)


def render_default(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float):
        return f"`{value:g}`"
    if isinstance(value, tuple):
        return f"`{','.join(value)}`" if value else "empty"
    return f"`{value}`"


def config_table(sections: Iterable[Any]) -> str:
    """README's configuration table, rendered from the declarations (a test compares the two)."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    rows += [f"| `{v.name}` | {v.documented_default()} | {v.doc} |" for s in sections for v in variables(s)]
    return "\n".join(rows) + "\n"


# ---- parsers: each returns a function from the raw (stripped, non-blank) string to the value ----


def _printable(raw: str) -> bool:
    return not any(ord(c) < 32 or c == "\x7f" for c in raw)


def text(max_len: int = 4096, *, min_len: int = 1) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if len(raw) > max_len or not _printable(raw):
            raise Expected(f"a printable string of at most {max_len} characters")
        if len(raw) < min_len:
            raise Expected(f"at least {min_len} characters")
        return raw

    return parse


def matching(regex: str, expected: str, *, max_len: int = 512) -> Callable[[str], str]:
    compiled = re.compile(regex)

    def parse(raw: str) -> str:
        if len(raw) > max_len or not compiled.fullmatch(raw):
            raise Expected(expected)
        return raw

    return parse


def _bounded(convert: Callable[[str], Any], minimum: float, maximum: float, expected: str) -> Callable[[str], Any]:
    def parse(raw: str) -> Any:
        try:
            value = convert(raw)
        except ValueError:
            raise Expected(expected) from None
        if not minimum <= value <= maximum:  # also rejects nan
            raise Expected(expected)
        return value

    return parse


def integer(minimum: int, maximum: int) -> Callable[[str], int]:
    return _bounded(lambda raw: int(raw, 10), minimum, maximum, f"an integer from {minimum} to {maximum}")


def number(minimum: float, maximum: float) -> Callable[[str], float]:
    return _bounded(float, minimum, maximum, f"a number from {minimum:g} to {maximum:g}")


def boolean(raw: str) -> bool:
    value = raw.lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise Expected("one of true/false/1/0/yes/no/on/off")


def choice(*options: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw.lower() not in options:
            raise Expected("one of " + ", ".join(options))
        return raw.lower()

    return parse


def path(max_len: int = 1024) -> Callable[[str], Path]:
    check = text(max_len)
    return lambda raw: Path(check(raw))


def comma_list(valid: Callable[[str], bool], expected: str) -> Callable[[str], tuple[str, ...]]:
    check = text()

    def parse(raw: str) -> tuple[str, ...]:
        items = tuple(item.strip() for item in check(raw).split(",") if item.strip())
        if not all(valid(item) for item in items):
            raise Expected(expected)
        return items

    return parse


def http_url(raw: str) -> str:
    valid = 9 <= len(raw) <= 512 and _printable(raw) and not any(c in raw for c in " ?#")
    if not valid or not raw.startswith(("http://", "https://")):
        raise Expected("an http:// or https:// URL without query or fragment")
    return raw.rstrip("/")


_REDIS_URL_EXPECTED = "a redis:// or rediss:// URL: [[user]:password@]host[:port][/db], no query"


def redis_url(raw: str) -> str:
    """A URL redis-py's `from_url` takes. Checked here so a typo stops start-up, not the first request."""
    if len(raw) > 2048 or not _printable(raw) or " " in raw:
        raise Expected(_REDIS_URL_EXPECTED)
    try:
        parts = urlsplit(raw)
        port = parts.port  # raises ValueError when not a number in 0..65535
    except ValueError:
        raise Expected(_REDIS_URL_EXPECTED) from None
    db = parts.path.removeprefix("/")
    if (
        parts.scheme not in ("redis", "rediss")
        or not parts.hostname
        or port == 0
        or parts.query
        or parts.fragment
        or (db and not (db.isascii() and db.isdigit() and len(db) <= 6))
    ):
        raise Expected(_REDIS_URL_EXPECTED)
    return raw


def redis_password(url: str | None) -> tuple[str, ...]:
    """The password in a Redis URL, as written and as redis-py decodes it, for the log redactor."""
    password = urlsplit(url).password if url else None
    return tuple(dict.fromkeys((password, unquote(password)))) if password else ()


PEM_BEGIN = "-----BEGIN CERTIFICATE-----"
PEM_END = "-----END CERTIFICATE-----"


def pem_certificates(raw: str) -> str:
    expected = f"PEM text with {PEM_BEGIN} ... {PEM_END}, at most 64 KiB"
    # Some consoles keep a pasted certificate on one line with literal "\n": that is still meant as PEM.
    pem = raw.replace("\\n", "\n") if "\n" not in raw else raw
    if (
        len(pem) > 64 * KIB
        or PEM_BEGIN not in pem
        or PEM_END not in pem
        or any(ord(c) < 32 and c not in "\r\n\t" for c in pem)
    ):
        raise Expected(expected)
    try:  # the markers are not enough: what TLS will load must load now, not at the first connection
        ssl.create_default_context(cadata=pem)
    except (ssl.SSLError, ValueError):
        raise Expected(f"{expected}, holding a certificate TLS can load") from None
    return pem + "\n" if not pem.endswith("\n") else pem


def _origin(value: str) -> bool:
    return value == "*" or (value.startswith(("http://", "https://")) and not value.endswith("/"))


def _network(value: str) -> bool:
    if value == "*":
        return True
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return False
    return True


def _projects(raw: str) -> tuple[str, ...] | None:
    return comma_list(lambda _: True, "comma-separated project names")(raw) or None


# ---- the service's settings ----


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = var(
        "HOST", text(255), "127.0.0.1", "address to listen on", doc_default="`127.0.0.1` (`0.0.0.0` in the image)"
    )
    port: int = var("PORT", integer(1, 65535), 8080, "port to listen on")
    log_level: str = var("LOG_LEVEL", choice(*LOG_LEVELS), "info", "`debug`, `info`, `warning`, `error`")
    log_format: str = var(
        "LOG_FORMAT",
        choice(*LOG_FORMATS),
        "json",
        "`json` (one object per line) or `console` (colored, for local work)",
    )
    data_dir: Path = var(  # noqa: RUF009 - var() is a field(); its default, a Path, is immutable
        "DATA_DIR",
        path(),
        Path("data"),
        "the only directory the service writes (token file)",
        doc_default="`data` (`/data` in the image)",
    )
    max_body_bytes: int = var(
        "MAX_BODY_BYTES", integer(1024, 16 * 1024 * KIB), 64 * KIB, "request bodies above this get 413"
    )
    cors_allow_origins: tuple[str, ...] = var(
        "CORS_ALLOW_ORIGINS",
        comma_list(_origin, "comma-separated origins like https://example.com (no path)"),
        (),
        "comma-separated origins allowed to call the API from browsers",
        doc_default="empty (CORS off)",
    )
    cors_allow_credentials: bool = var(
        "CORS_ALLOW_CREDENTIALS", boolean, False, "allow credentials; refused together with `*`"
    )
    forwarded_allow_ips: tuple[str, ...] = var(
        "FORWARDED_ALLOW_IPS",
        comma_list(_network, "comma-separated IP addresses or networks, or *"),
        ("127.0.0.1", "::1"),
        "proxies trusted for `X-Forwarded-For`/`-Proto` (`*` on App Platform, where only DO's edge reaches the"
        " container)",
    )
    shutdown_drain_seconds: float = var(
        "SHUTDOWN_DRAIN_SECONDS",
        number(0, 110),
        2.0,
        "after SIGTERM: seconds `/readyz` says 503 while still serving",
    )
    shutdown_timeout_seconds: float = var(
        "SHUTDOWN_TIMEOUT_SECONDS",
        number(1, 600),
        20.0,
        "then: at most this long for in-flight requests to finish",
    )
    metrics_bearer_token: str | None = var(
        "METRICS_BEARER_TOKEN",
        text(512, min_len=16),
        None,
        "when set (16+ chars), `/metrics` requires `Authorization: Bearer <token>`",
        secret=True,
        doc_default="unset (open)",
    )
    metrics_exclude_paths: tuple[str, ...] = var(
        "METRICS_EXCLUDE_PATHS",
        comma_list(lambda p: p.startswith("/"), "comma-separated paths that start with /"),
        ("/livez", "/readyz", "/metrics"),
        "paths left out of the request metrics",
    )
    projects_enabled: tuple[str, ...] | None = var(
        "PROJECTS", _projects, None, "comma-separated subset of projects to enable", doc_default="all"
    )
    redis_url: str | None = var(
        "REDIS_URL",
        redis_url,
        None,
        "Valkey/Redis for state shared by several instances (`rediss://` for TLS); unset: embedded state"
        " (memory + token file)",
        secret=True,
        doc_default="unset (embedded)",
    )
    redis_ca_cert: str | None = var(
        "REDIS_CA_CERT",
        pem_certificates,
        None,
        "PEM text of the CA that signed the server's certificate (App Platform: `${<db>.CA_CERT}`); only with"
        " `rediss://`",
        doc_default="unset (system CAs)",
    )
    redis_key_prefix: str = var(
        "REDIS_KEY_PREFIX",
        matching(r"[A-Za-z0-9:_.-]{1,64}", "1 to 64 characters of A-Z a-z 0-9 : _ . -"),
        "siteapi:",
        "prefix of every key, so several apps can share one server (1 to 64 of `A-Za-z0-9:_.-`)",
    )
    redis_timeout_seconds: float = var(
        "REDIS_TIMEOUT_SECONDS",
        number(0.01, 5),
        0.25,
        "bound on every Redis operation (0.01 to 5)",
    )
    sandbox: bool = False
    # Per-project settings, parsed by each project's own `parse_settings`, keyed by project name.
    projects: Mapping[str, Any] = field(default_factory=dict)

    def secrets(self) -> tuple[str, ...]:
        """Every secret value set (the Redis password included), for the log redactor."""
        return (*secret_values(self), *redis_password(self.redis_url))


# What README documents, derived from the declarations.
DOCUMENTED: tuple[str, ...] = tuple(v.name for v in variables(Settings))


def _check_cors(settings: Settings) -> None:
    if settings.cors_allow_credentials and "*" in settings.cors_allow_origins:
        raise ConfigError("CORS_ALLOW_CREDENTIALS", "false when CORS_ALLOW_ORIGINS contains * (browsers forbid both)")


def _check_redis_tls(settings: Settings) -> None:
    # A CA beside a plain or missing URL means the TLS the operator asked for would not happen.
    if settings.redis_ca_cert is not None and not (settings.redis_url or "").startswith("rediss://"):
        raise ConfigError("REDIS_CA_CERT", "a rediss:// REDIS_URL beside it (unset it otherwise)")


VALIDATORS: tuple[Callable[[Settings], None], ...] = (_check_cors, _check_redis_tls)

ProjectSettingsParser = Callable[[Mapping[str, str], "Settings"], Any]


def env_str(env: Mapping[str, str], name: str, default: str | None = None, *, max_len: int = 4096) -> str | None:
    """One ad-hoc string variable, for a project too small to declare a settings class (tests' demo)."""
    value: str | None = Var(name, text(max_len), default, "").read(env, Settings())
    return value


def load_settings(
    env: Mapping[str, str] | None = None,
    *,
    sandbox: bool = False,
    parsers: Mapping[str, ProjectSettingsParser] | None = None,
) -> Settings:
    """Read and validate everything once. `parsers` maps project name to its settings parser."""
    env = os.environ if env is None else env
    base = Settings(**read_vars(Settings, env, Settings(sandbox=sandbox)), sandbox=sandbox)
    for validate in VALIDATORS:
        validate(base)
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
