"""strava-integration settings: defaults, sandbox defaults, validation that names the variable."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

from service.projects.strava_integration import config as config_module
from service.projects.strava_integration.config import DOCUMENTED, StravaSettings, parse_settings
from service.projects.strava_integration.simulator import SimulatorConfig
from service.settings import ConfigError, Settings

FULL = {
    "STRAVA_CLIENT_ID": "12345",
    "STRAVA_CLIENT_SECRET": "csec-ZZ9-leakcheck-client-secret",
    "STRAVA_REFRESH_TOKEN": "rtok-ZZ9-leakcheck-refresh",
    "STRAVA_API_URL": "http://127.0.0.1:9999/api/v3/",
    "STRAVA_OAUTH_URL": "http://127.0.0.1:9999/oauth",
    "STRAVA_WEBHOOK_VERIFY_TOKEN": "vtok-ZZ9-leakcheck-verify",
    "STRAVA_WEBHOOK_SUBSCRIPTION_ID": "777",
    "STRAVA_ADMIN_API_KEY": "akey-ZZ9-leakcheck-admin-key",
    "STRAVA_CACHE_TTL_SECONDS": "60",
    "STRAVA_CACHE_STALE_SECONDS": "600",
    "STRAVA_CACHE_MAX_ENTRIES": "100",
    "STRAVA_CACHE_MAX_BYTES": "1048576",
    "STRAVA_REQUEST_TIMEOUT_SECONDS": "2.5",
    "STRAVA_CONNECT_TIMEOUT_SECONDS": "0.5",
    "STRAVA_BUDGET_RESERVE": "3",
    "STRAVA_PRIVACY_TRIM_METERS": "0",
    "STRAVA_DEMO_PAGE": "yes",
}
SECRET_NAMES = ("STRAVA_CLIENT_SECRET", "STRAVA_REFRESH_TOKEN", "STRAVA_WEBHOOK_VERIFY_TOKEN", "STRAVA_ADMIN_API_KEY")


def test_defaults_without_any_variable(tmp_path: Path) -> None:
    parsed = parse_settings({}, Settings(data_dir=tmp_path))
    assert parsed.client_id is None and parsed.client_secret is None and parsed.refresh_token is None
    assert parsed.configured is False
    assert parsed.api_url == "https://www.api-v3.strava.com"  # Strava's base from 1 June 2027
    assert parsed.oauth_url == "https://www.strava.com/oauth"
    assert parsed.token_file == tmp_path / "strava" / "tokens.json"
    assert parsed.has_token_file is False
    assert (parsed.cache_ttl_seconds, parsed.cache_stale_seconds) == (300, 86400)
    assert (parsed.cache_max_entries, parsed.cache_max_bytes) == (512, 16 * 1024 * 1024)
    assert (parsed.request_timeout_seconds, parsed.connect_timeout_seconds) == (10.0, 3.0)
    assert parsed.budget_reserve == 10
    assert parsed.webhook_subscription_id is None
    assert parsed.admin_api_key is None and parsed.webhook_verify_token is None
    assert parsed.privacy_trim_meters == 200
    assert parsed.demo_page is False
    assert parsed.sandbox is False
    assert parsed.secrets() == ()
    assert parsed == StravaSettings(token_file=tmp_path / "strava" / "tokens.json")  # one set of defaults


def test_every_variable_is_read(tmp_path: Path) -> None:
    parsed = parse_settings({**FULL, "STRAVA_TOKEN_FILE": str(tmp_path / "t.json")}, Settings(data_dir=tmp_path))
    assert parsed.client_id == "12345"
    assert parsed.client_secret == FULL["STRAVA_CLIENT_SECRET"]
    assert parsed.refresh_token == FULL["STRAVA_REFRESH_TOKEN"]
    assert parsed.api_url == "http://127.0.0.1:9999/api/v3"  # trailing slash dropped
    assert parsed.oauth_url == "http://127.0.0.1:9999/oauth"
    assert parsed.webhook_verify_token == FULL["STRAVA_WEBHOOK_VERIFY_TOKEN"]
    assert parsed.webhook_subscription_id == 777
    assert parsed.admin_api_key == FULL["STRAVA_ADMIN_API_KEY"]
    assert parsed.token_file == tmp_path / "t.json"
    assert (parsed.cache_ttl_seconds, parsed.cache_stale_seconds) == (60, 600)
    assert (parsed.cache_max_entries, parsed.cache_max_bytes) == (100, 1048576)
    assert (parsed.request_timeout_seconds, parsed.connect_timeout_seconds) == (2.5, 0.5)
    assert parsed.budget_reserve == 3
    assert (parsed.privacy_trim_meters, parsed.demo_page) == (0, True)
    assert parsed.configured is True
    assert set(parsed.secrets()) == {FULL[name] for name in SECRET_NAMES}


def test_a_token_file_alone_makes_it_configured(tmp_path: Path) -> None:
    env = {"STRAVA_CLIENT_ID": "1", "STRAVA_CLIENT_SECRET": "secret-value"}
    assert parse_settings(env, Settings(data_dir=tmp_path)).configured is False
    (tmp_path / "strava").mkdir()
    (tmp_path / "strava" / "tokens.json").write_text("{}")
    parsed = parse_settings(env, Settings(data_dir=tmp_path))
    assert parsed.has_token_file is True and parsed.configured is True


def test_secrets_stay_out_of_repr(tmp_path: Path) -> None:
    text = repr(parse_settings(FULL, Settings(data_dir=tmp_path)))
    assert "12345" in text  # the client id is not a secret
    for name in SECRET_NAMES:
        assert FULL[name] not in text


def test_the_old_api_base_stays_settable(tmp_path: Path) -> None:
    parsed = parse_settings({"STRAVA_API_URL": "https://www.strava.com/api/v3"}, Settings(data_dir=tmp_path))
    assert parsed.api_url == config_module.LEGACY_API_URL == "https://www.strava.com/api/v3"


def test_sandbox_constants_are_the_simulators_defaults() -> None:
    sim = SimulatorConfig()
    assert config_module.SANDBOX_CLIENT_ID == sim.client_id == "sim-client"
    assert config_module.SANDBOX_CLIENT_SECRET == sim.client_secret == "sim-secret"
    assert config_module.SANDBOX_REFRESH_TOKEN == sim.initial_refresh_token == "sim-refresh-0"


def test_the_settings_module_does_not_import_the_simulator() -> None:
    # Production reads these settings and never runs the sandbox: the simulator stays out of it.
    tree = ast.parse(Path(config_module.__file__).read_text())
    imported = [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    imported += [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    assert imported and not [name for name in imported if "simulator" in name]


def test_sandbox_defaults_to_the_simulator(tmp_path: Path) -> None:
    sim = SimulatorConfig()
    parsed = parse_settings({}, Settings(data_dir=tmp_path, sandbox=True))
    assert (parsed.client_id, parsed.client_secret, parsed.refresh_token) == (
        sim.client_id,
        sim.client_secret,
        sim.initial_refresh_token,
    )
    assert parsed.token_file == tmp_path / "strava" / "sandbox-tokens.json"
    assert parsed.admin_api_key == "sandbox-admin-key"
    assert parsed.webhook_verify_token == "sandbox-verify-token"
    assert parsed.sandbox is True and parsed.configured is True
    assert parsed.demo_page is True  # a newcomer's first run shows the widget
    # Explicit values still win in the sandbox.
    parsed = parse_settings(FULL, Settings(data_dir=tmp_path, sandbox=True))
    assert parsed.admin_api_key == FULL["STRAVA_ADMIN_API_KEY"]
    assert parsed.client_secret == FULL["STRAVA_CLIENT_SECRET"]
    parsed = parse_settings({"STRAVA_DEMO_PAGE": "off"}, Settings(data_dir=tmp_path, sandbox=True))
    assert parsed.demo_page is False


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("STRAVA_CLIENT_ID", "12 345"),
        ("STRAVA_CLIENT_ID", "id/../x"),
        ("STRAVA_CLIENT_SECRET", "has space-secret"),
        ("STRAVA_REFRESH_TOKEN", "tok\u00e9n-nonascii"),
        ("STRAVA_API_URL", "ftp://strava.example/api/v3"),
        ("STRAVA_API_URL", "www.strava.com/api/v3"),
        ("STRAVA_OAUTH_URL", "https://www.strava.com/oauth?x=1"),
        ("STRAVA_ADMIN_API_KEY", "short-key"),
        ("STRAVA_WEBHOOK_VERIFY_TOKEN", "two words"),
        ("STRAVA_WEBHOOK_SUBSCRIPTION_ID", "abc"),
        ("STRAVA_WEBHOOK_SUBSCRIPTION_ID", "0"),
        ("STRAVA_CACHE_TTL_SECONDS", "4"),
        ("STRAVA_CACHE_TTL_SECONDS", "86401"),
        ("STRAVA_CACHE_TTL_SECONDS", "5m"),
        ("STRAVA_CACHE_STALE_SECONDS", "-1"),
        ("STRAVA_CACHE_MAX_ENTRIES", "0"),
        ("STRAVA_CACHE_MAX_BYTES", "lots"),
        ("STRAVA_REQUEST_TIMEOUT_SECONDS", "nan"),
        ("STRAVA_REQUEST_TIMEOUT_SECONDS", "0"),
        ("STRAVA_CONNECT_TIMEOUT_SECONDS", "-3"),
        ("STRAVA_BUDGET_RESERVE", "ten"),
        ("STRAVA_TOKEN_FILE", "bad\x01path"),
        ("STRAVA_PRIVACY_TRIM_METERS", "-1"),
        ("STRAVA_PRIVACY_TRIM_METERS", "5001"),
        ("STRAVA_PRIVACY_TRIM_METERS", "200m"),
        ("STRAVA_PRIVACY_TRIM_METERS", "0.5"),
        ("STRAVA_DEMO_PAGE", "maybe"),
        ("STRAVA_DEMO_PAGE", "2"),
    ],
)
def test_malformed_values_name_the_variable_not_the_value(tmp_path: Path, name: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings({name: value}, Settings(data_dir=tmp_path))
    assert caught.value.name == name
    assert str(caught.value).startswith(f"{name}: expected ")
    if len(value) > 3:  # short ones ("0") may well appear in the expectation text itself
        assert value not in str(caught.value)


def test_blank_values_mean_unset(tmp_path: Path) -> None:
    parsed = parse_settings({name: "  " for name in DOCUMENTED}, Settings(data_dir=tmp_path))
    assert parsed == parse_settings({}, Settings(data_dir=tmp_path))


class RecordingEnv(dict[str, str]):
    """An environment that remembers which variables were asked for."""

    def __init__(self, values: dict[str, str]) -> None:
        super().__init__(values)
        self.asked: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.asked.add(key)
        return super().get(key, default)


@pytest.mark.parametrize("sandbox", [False, True])
def test_documented_lists_exactly_the_variables_read(tmp_path: Path, sandbox: bool) -> None:
    for values in ({}, FULL):
        env = RecordingEnv(values)
        parse_settings(env, Settings(data_dir=tmp_path, sandbox=sandbox))
        assert env.asked == set(DOCUMENTED)
    assert len(DOCUMENTED) == len(set(DOCUMENTED))
    assert all(name in Path(config_module.__file__).read_text() for name in DOCUMENTED)


def test_settings_are_immutable() -> None:
    parsed = StravaSettings(client_id="1")
    with pytest.raises(AttributeError):
        parsed.client_id = "2"  # type: ignore[misc]
