"""The alert rules, their unit tests and the example scrape config pass promtool.

promtool comes with the Debian package `prometheus`; CI installs it. These tests fail, not skip, without it.
"""

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS_DIR = ROOT / "observability" / "prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERTS_TEST = PROMETHEUS_DIR / "alerts.test.yml"
SCRAPE_CONFIG = PROMETHEUS_DIR / "scrape-config.example.yml"
TOKEN_FILE = "/etc/prometheus/siteapi-metrics-token"

EXPECTED_ALERTS = {
    "SiteapiTargetDown",
    "SiteapiHighErrorRatio",
    "SiteapiHighLatencyP95",
    "SiteapiStravaBudgetLow",
    "SiteapiStravaBudgetBlocked",
    "SiteapiStravaAuthFailing",
    "SiteapiStravaUpstreamErrors",
    "SiteapiStravaTokenRefreshFailures",
    "SiteapiStoreDown",
    "SiteapiStoreErrors",
}


def promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    assert exe, "promtool not found on PATH: install the Debian package `prometheus` (CI does)"
    return subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, f"{result.args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"


def alert_rules() -> list[dict]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", str(ALERTS))
    assert_ok(result)
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_promtool_test_rules() -> None:
    assert_ok(promtool("test", "rules", str(ALERTS_TEST)))


def test_promtool_check_example_scrape_config(tmp_path: Path) -> None:
    # `check config` stats the bearer credentials file, which only exists on the Prometheus host: check a copy
    # pointing at a temporary token file, with alerts.yml beside it as `rule_files` expects.
    text = SCRAPE_CONFIG.read_text()
    assert f"credentials_file: {TOKEN_FILE}" in text
    token = tmp_path / "siteapi-metrics-token"
    token.write_text("example-token\n")
    config = tmp_path / "prometheus.yml"
    config.write_text(text.replace(TOKEN_FILE, str(token)))
    shutil.copy(ALERTS, tmp_path / "alerts.yml")

    result = promtool("check", "config", str(config))
    assert_ok(result)
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout

    # The file as shipped is at least syntactically valid.
    assert_ok(promtool("check", "config", "--syntax-only", str(SCRAPE_CONFIG)))


def test_example_scrape_config_uses_https_and_bearer_file() -> None:
    (job,) = yaml.safe_load(SCRAPE_CONFIG.read_text())["scrape_configs"]
    assert job["job_name"] == "siteapi"
    assert job["scheme"] == "https"
    assert job["authorization"] == {"type": "Bearer", "credentials_file": TOKEN_FILE}


def test_every_expected_alert_exists_once() -> None:
    names = [rule["alert"] for rule in alert_rules()]
    assert sorted(names) == sorted(EXPECTED_ALERTS)


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_alert_has_for_severity_summary_and_runbook(rule: dict) -> None:
    assert rule.get("for"), "every alert needs a `for` duration"
    assert rule["labels"]["severity"] in {"page", "ticket"}
    assert rule["annotations"]["summary"].strip()
    assert "Runbook:" in rule["annotations"]["description"]


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    cases = [case for test in yaml.safe_load(ALERTS_TEST.read_text())["tests"] for case in test["alert_rule_test"]]
    firing = {case["alertname"] for case in cases if case["exp_alerts"]}
    quiet = {case["alertname"] for case in cases if not case["exp_alerts"]}
    assert firing == EXPECTED_ALERTS
    assert quiet == EXPECTED_ALERTS


def test_strava_auth_alert_points_at_reauthorization() -> None:
    (rule,) = [rule for rule in alert_rules() if rule["alert"] == "SiteapiStravaAuthFailing"]
    assert "/api/strava-integration/auth/start" in rule["annotations"]["description"]


def test_store_down_alert_says_readiness_stays_up() -> None:
    """The runbook must not send anyone chasing /readyz: it stays 200 while the store is down, by design."""
    (rule,) = [rule for rule in alert_rules() if rule["alert"] == "SiteapiStoreDown"]
    assert rule["expr"].strip() == "siteapi_store_up == 0"
    assert "/readyz stays 200" in rule["annotations"]["description"]
