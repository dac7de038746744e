"""End to end: a real Prometheus server scrapes the sandbox service, evaluates alerts.yml and runs the dashboard's
queries; promtool lints a real scrape.

Needs /usr/bin/prometheus and promtool (Debian package `prometheus`; CI installs it). Everything listens on
127.0.0.1 and every wait is bounded.
"""

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from tests.support import free_port, wait_until

ROOT = Path(__file__).resolve().parents[1]
ALERTS = ROOT / "observability" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "observability" / "grafana" / "siteapi-dashboard.json"
HEALTH_ROUTE = "/api/strava-integration/health"
QUERY_DEADLINE_SECONDS = 30.0


def executable(name: str) -> str:
    exe = shutil.which(name) or shutil.which(name, path="/usr/bin")
    assert exe, f"{name} not found: install the Debian package `prometheus` (CI does)"
    return exe


class Prometheus:
    def __init__(self, base_url: str, log_path: Path) -> None:
        self.base_url = base_url
        self.log_path = log_path

    def api(self, path: str, **params: str) -> dict:
        response = httpx.get(f"{self.base_url}/api/v1/{path}", params=params, timeout=5)
        body = response.json()
        assert body["status"] == "success", f"{path} {params}: {body}\nPrometheus log:\n{self.log()}"
        return body["data"]

    def query(self, promql: str) -> list[dict]:
        return self.api("query", query=promql)["result"]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


@pytest.fixture(scope="module")
def prometheus(sandbox_service, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    tmp = tmp_path_factory.mktemp("prometheus")
    target = urlsplit(sandbox_service.base_url).netloc
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [{"job_name": "siteapi", "static_configs": [{"targets": [target]}]}],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log_path = tmp / "prometheus.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                executable("prometheus"),
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = Prometheus(f"http://127.0.0.1:{port}", log_path)
    try:
        ready = wait_until(lambda: httpx.get(f"{server.base_url}/-/ready", timeout=1).status_code == 200, 20, 0.2)
        assert ready, f"Prometheus not ready (exit code {proc.poll()}); log:\n{server.log()}"
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def test_prometheus_scrapes_request_counts_from_the_service(sandbox_service, prometheus: Prometheus) -> None:
    for path in ("/", HEALTH_ROUTE):
        httpx.get(sandbox_service.base_url + path, timeout=5)

    def health_series() -> list[dict]:
        return [s for s in prometheus.query("siteapi_http_requests_total") if s["metric"].get("route") == HEALTH_ROUTE]

    assert wait_until(health_series, QUERY_DEADLINE_SECONDS, 0.5), (
        f"no siteapi_http_requests_total{{route={HEALTH_ROUTE!r}}} within {QUERY_DEADLINE_SECONDS}s: "
        f"{prometheus.query('siteapi_http_requests_total')}\nPrometheus log:\n{prometheus.log()}"
    )
    (series,) = [s for s in health_series() if s["metric"]["method"] == "GET"]
    assert series["metric"]["job"] == "siteapi"
    assert series["metric"]["status"].isdigit()
    assert float(series["value"][1]) >= 1

    (up,) = prometheus.query('up{job="siteapi"}')
    assert up["value"][1] == "1"


def test_alert_rules_evaluate_without_errors(prometheus: Prometheus) -> None:
    def rules() -> list[dict]:
        return [rule for group in prometheus.api("rules")["groups"] for rule in group["rules"]]

    # Health is "unknown" until a rule's first evaluation, "err" if evaluating it failed.
    evaluated = wait_until(lambda: all(rule["health"] != "unknown" for rule in rules()), QUERY_DEADLINE_SECONDS, 0.5)
    assert evaluated, f"rules not evaluated within {QUERY_DEADLINE_SECONDS}s: {rules()}\n{prometheus.log()}"
    loaded = rules()
    assert len(loaded) == sum(len(group["rules"]) for group in yaml.safe_load(ALERTS.read_text())["groups"])
    failed = {rule["name"]: rule.get("lastError") for rule in loaded if rule["health"] != "ok"}
    assert not failed


def test_dashboard_queries_run_on_real_prometheus(prometheus: Prometheus) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for top in dashboard["panels"] for p in (top, *top.get("panels", []))]
    exprs = [t["expr"] for p in panels for t in p.get("targets", [])]
    assert exprs
    for expr in exprs:
        promql = expr.replace("$__rate_interval", "1m").replace("$job", "siteapi")
        prometheus.query(promql)  # raises on a PromQL syntax or evaluation error


def test_scrape_passes_promtool_check_metrics(sandbox_service) -> None:
    body = httpx.get(f"{sandbox_service.base_url}/metrics", timeout=10).text
    result = subprocess.run(
        [executable("promtool"), "check", "metrics"],
        input=body,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    problems = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert not [line for line in problems if "siteapi_" in line], problems
    assert result.returncode == 0, problems
    assert not problems
