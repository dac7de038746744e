"""The App Platform specs in .do/: well-formed, consistent with the image, secrets kept secret.

`.do/app.yaml` is the single-instance default, `.do/app.scaled.yaml` the same service on two instances with a
managed Valkey database; every check runs on both, and the scaled spec may differ from the default only by
what scaling needs. Validation against DigitalOcean's published schema is in test_do_spec.py.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SPEC = ROOT / ".do" / "app.yaml"
SCALED_SPEC = ROOT / ".do" / "app.scaled.yaml"
SPECS = {"default": DEFAULT_SPEC, "scaled": SCALED_SPEC}
# What a spec's one service runs on: (instance_size_slug, instance_count).
INSTANCES = {"default": ("apps-s-1vcpu-0.5gb", 1), "scaled": ("apps-s-1vcpu-1gb", 2)}
STORE_ENVS = ("REDIS_URL", "REDIS_CA_CERT")
# App Platform's bindable variables of a database component, as the store's settings read them.
STORE_BINDINGS = {"REDIS_URL": "DATABASE_URL", "REDIS_CA_CERT": "CA_CERT"}

SECRETS = (
    "STRAVA_CLIENT_ID",
    "STRAVA_CLIENT_SECRET",
    "STRAVA_REFRESH_TOKEN",
    "STRAVA_WEBHOOK_VERIFY_TOKEN",
    "STRAVA_ADMIN_API_KEY",
    "METRICS_BEARER_TOKEN",
)
PLAIN = {
    "LOG_LEVEL": "info",
    "FORWARDED_ALLOW_IPS": "*",
    "SHUTDOWN_DRAIN_SECONDS": "5",
    "SHUTDOWN_TIMEOUT_SECONDS": "20",
}
SECRET_NAME = re.compile(r"SECRET|TOKEN|KEY")
PROBE_FIELDS = (
    "initial_delay_seconds",
    "period_seconds",
    "timeout_seconds",
    "success_threshold",
    "failure_threshold",
)


class UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping with the same key twice (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        self.flatten_mapping(node)
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, f"found duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_spec(text: str) -> Any:
    return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


@pytest.fixture(scope="module", params=sorted(SPECS))
def spec_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def spec(spec_name: str) -> dict[str, Any]:
    return load_spec(SPECS[spec_name].read_text())


@pytest.fixture(scope="module")
def default_spec() -> dict[str, Any]:
    return load_spec(DEFAULT_SPEC.read_text())


@pytest.fixture(scope="module")
def scaled_spec() -> dict[str, Any]:
    return load_spec(SCALED_SPEC.read_text())


@pytest.fixture(scope="module")
def service(spec: dict[str, Any]) -> dict[str, Any]:
    services = spec["services"]
    assert len(services) == 1, "one service component"
    return services[0]


@pytest.fixture(scope="module")
def envs(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    keys = [env["key"] for env in service["envs"]]
    assert len(keys) == len(set(keys)), "an env var is declared twice"
    return {env["key"]: env for env in service["envs"]}


def dockerfile_expose(path: Path) -> list[int]:
    return [int(port) for port in re.findall(r"^\s*EXPOSE\s+(\d+)", path.read_text(), flags=re.MULTILINE | re.I)]


def test_loader_rejects_duplicate_keys() -> None:
    with pytest.raises(yaml.constructor.ConstructorError, match="duplicate key 'a'"):
        load_spec("a: 1\nb:\n  c: 2\na: 3\n")
    with pytest.raises(yaml.constructor.ConstructorError, match="duplicate key 'c'"):
        load_spec("b:\n  c: 2\n  c: 3\n")


def test_app_level_fields(spec: dict[str, Any]) -> None:
    assert isinstance(spec["name"], str) and re.fullmatch(r"[a-z][a-z0-9-]{1,30}[a-z0-9]", spec["name"])
    assert isinstance(spec["region"], str) and spec["region"]
    assert {alert["rule"] for alert in spec["alerts"]} >= {"DEPLOYMENT_FAILED", "DOMAIN_FAILED"}


def test_ingress_routes_root_to_the_service(spec: dict[str, Any], service: dict[str, Any]) -> None:
    assert "routes" not in service, "use app-level ingress rules, not the deprecated component routes"
    rules = spec["ingress"]["rules"]
    root = [rule for rule in rules if rule["match"]["path"]["prefix"] == "/"]
    assert len(root) == 1
    assert root[0]["component"]["name"] == service["name"]


def test_service_is_built_from_the_production_dockerfile(service: dict[str, Any]) -> None:
    source = service.get("github") or service.get("git")
    assert source, "a github or git source block"
    assert source["branch"] == "main"
    assert source.get("repo") or source.get("repo_clone_url")
    if "github" in service:
        assert service["github"]["deploy_on_push"] is True
    dockerfile = ROOT / service.get("source_dir", "").lstrip("/") / service["dockerfile_path"]
    assert service["dockerfile_path"] == "Dockerfile.production"
    assert dockerfile.is_file()


def test_http_port_is_the_port_the_image_exposes(service: dict[str, Any]) -> None:
    exposed = dockerfile_expose(ROOT / service["dockerfile_path"])
    assert service["http_port"] == 8080
    assert exposed == [service["http_port"]]


def test_instance_size(spec_name: str, service: dict[str, Any]) -> None:
    slug = service["instance_size_slug"]
    assert not slug.startswith("basic-"), "basic-* slugs are the legacy sizes"
    assert "autoscaling" not in service, "a fixed instance count; autoscaling needs the dedicated apps-d-* sizes"
    assert (slug, service["instance_count"]) == INSTANCES[spec_name]


@pytest.mark.parametrize(("probe", "path"), [("health_check", "/readyz"), ("liveness_health_check", "/livez")])
def test_probes(service: dict[str, Any], probe: str, path: str) -> None:
    check = service[probe]
    assert check["http_path"] == path
    assert check.get("port", service["http_port"]) == service["http_port"]
    for name in PROBE_FIELDS:
        assert isinstance(check[name], int) and check[name] >= 0, name
    assert check["timeout_seconds"] < check["period_seconds"]
    assert check["success_threshold"] >= 1 and check["failure_threshold"] >= 1


def test_liveness_is_more_patient_than_readiness(service: dict[str, Any]) -> None:
    ready, live = service["health_check"], service["liveness_health_check"]
    assert live["period_seconds"] * live["failure_threshold"] >= ready["period_seconds"] * ready["failure_threshold"]


def test_termination_lets_the_app_finish(service: dict[str, Any], envs: dict[str, dict[str, Any]]) -> None:
    termination = service["termination"]
    assert termination == {"drain_seconds": 15, "grace_period_seconds": 30}
    assert termination["drain_seconds"] < termination["grace_period_seconds"]
    # After SIGTERM the app drains, then gets its own shutdown timeout; both must end before SIGKILL.
    app_drain = float(envs["SHUTDOWN_DRAIN_SECONDS"]["value"])
    app_timeout = float(envs["SHUTDOWN_TIMEOUT_SECONDS"]["value"])
    assert app_drain + app_timeout < termination["grace_period_seconds"]


def test_every_secret_is_a_runtime_secret_without_a_plain_value(envs: dict[str, dict[str, Any]]) -> None:
    assert set(SECRETS) <= set(envs)
    secret_like = {name for name in envs if SECRET_NAME.search(name)} | set(SECRETS)
    for name in secret_like:
        env = envs[name]
        assert env.get("type") == "SECRET", name
        assert env.get("scope") == "RUN_TIME", name
        value = env.get("value")
        assert value is None or str(value).startswith("EV["), f"{name} has a plaintext value"


def test_plain_settings(envs: dict[str, dict[str, Any]]) -> None:
    for name, value in PLAIN.items():
        env = envs[name]
        assert env["scope"] == "RUN_TIME", name
        assert env.get("type", "GENERAL") == "GENERAL", name
        assert env["value"] == value, name
        assert isinstance(env["value"], str), f"{name} must be a quoted string"


def test_component_alerts(service: dict[str, Any]) -> None:
    alerts = {alert["rule"]: alert for alert in service["alerts"]}
    assert set(alerts) >= {"CPU_UTILIZATION", "MEM_UTILIZATION", "RESTART_COUNT"}
    for rule in ("CPU_UTILIZATION", "MEM_UTILIZATION", "RESTART_COUNT"):
        alert = alerts[rule]
        assert alert["operator"] == "GREATER_THAN", rule
        assert isinstance(alert["value"], int | float) and alert["value"] > 0, rule
        assert alert["window"] in ("FIVE_MINUTES", "TEN_MINUTES", "THIRTY_MINUTES", "ONE_HOUR"), rule
    assert alerts["CPU_UTILIZATION"]["value"] <= 100 and alerts["MEM_UTILIZATION"]["value"] <= 100


# --- the scaled spec ------------------------------------------------------------------------------------------------


def test_scaled_spec_is_the_default_plus_the_store(default_spec: dict[str, Any], scaled_spec: dict[str, Any]) -> None:
    """Both specs describe one service: a setting changed in one and forgotten in the other fails here."""
    reduced = copy.deepcopy(scaled_spec)
    assert reduced.pop("databases"), "the scaled spec attaches a database"
    (service,) = reduced["services"]
    service["envs"] = [env for env in service["envs"] if env["key"] not in STORE_ENVS]
    service["instance_size_slug"], service["instance_count"] = INSTANCES["default"]
    assert reduced == default_spec
    assert not any(env["key"] in STORE_ENVS for env in default_spec["services"][0]["envs"]), (
        "the default spec runs the embedded store"
    )


def test_scaled_spec_attaches_a_production_valkey_cluster(scaled_spec: dict[str, Any]) -> None:
    (database,) = scaled_spec["databases"]
    assert database["engine"] == "VALKEY"
    assert database["production"] is True, "App Platform's dev databases are PostgreSQL only"
    # A production database is an existing cluster; the name is a placeholder like the repository's.
    assert database["cluster_name"] == "your-valkey-cluster"
    assert re.fullmatch(r"[a-z][a-z0-9-]{0,30}[a-z0-9]", database["name"])


def test_scaled_spec_binds_the_store_to_the_database_component(scaled_spec: dict[str, Any]) -> None:
    (database,) = scaled_spec["databases"]
    envs = {env["key"]: env for env in scaled_spec["services"][0]["envs"]}
    for key, variable in STORE_BINDINGS.items():
        env = envs[key]
        # Bound by App Platform at run time: no value typed by the operator, none committed.
        assert env["value"] == f"${{{database['name']}.{variable}}}", key
        assert env["scope"] == "RUN_TIME", key
        assert env.get("type", "GENERAL") == "GENERAL", f"{key} is a bindable variable, not a SECRET typed in"
