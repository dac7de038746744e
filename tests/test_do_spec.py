"""Both App Platform specs validate against DigitalOcean's published app-spec schema, and use sizes that fit.

The schema is reference data beside the repository (`<repo>/../shared/reference/digitalocean-app-spec/`: the
OpenAPI models of digitalocean/openapi and a README with the instance-size facts); it is not copied into the
project. Where it is absent the tests that need it skip with the reason; `DO_APP_SPEC_REFERENCE` points at
another copy (e.g. when running from a git worktree). The validator itself (tests/openapi_subset.py) is
tested here on small schemas of its own, which need no reference.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.openapi_subset import Models, SchemaError
from tests.test_app_yaml import SPECS, load_spec

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = Path(
    os.environ.get("DO_APP_SPEC_REFERENCE") or ROOT.parent / "shared" / "reference" / "digitalocean-app-spec"
)
ALERTS = {"type": "array", "items": {"$ref": "app_alert_spec.yml"}}
# The reference README's known gaps: the models lack `alerts` on the app and on a service, which the API
# (godo's AppSpec and AppServiceSpec) accepts; one alert is `app_alert_spec.yml`.
GAPS = {"app_spec.yml": {"alerts": ALERTS}, "app_service_spec.yml": {"alerts": ALERTS}}


@pytest.fixture(scope="module")
def models() -> Models:
    if not (REFERENCE / "models" / "app_spec.yml").is_file():
        pytest.skip(
            f"DigitalOcean's app-spec schema is not at {REFERENCE} (a copy of shared/ beside the repository, "
            "or DO_APP_SPEC_REFERENCE)"
        )
    return Models(REFERENCE / "models", patches=GAPS)


@dataclass(frozen=True)
class Size:
    slug: str
    usd_per_month: int
    single_instance_only: bool
    more_than_one_allowed: bool


@pytest.fixture(scope="module")
def sizes(models: Models) -> dict[str, Size]:
    """The instance-size table of the reference README (facts from digitalocean/openapi's examples)."""
    table = {}
    for line in (REFERENCE / "README.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 5 and re.fullmatch(r"apps-[a-z0-9.-]+", cells[0]):
            slug, _, _, usd, note = cells
            table[slug] = Size(
                slug,
                int(re.match(r"\d+", usd).group()),  # type: ignore[union-attr]
                "single_instance_only: true" in note,
                "more than one instance allowed" in note,
            )
    assert len(table) >= 5, "the README's size table did not parse"
    return table


def scaled() -> dict[str, Any]:
    return load_spec(SPECS["scaled"].read_text())


# --- the spec files -------------------------------------------------------------------------------------------------


def test_the_validator_understands_every_model_a_spec_can_reach(models: Models) -> None:
    # A keyword, type or format the validator does not implement would raise SchemaError here, even where no
    # spec of ours reaches it yet.
    assert models.reachable("app_spec.yml") > 100


@pytest.mark.parametrize("name", sorted(SPECS))
def test_spec_validates_against_the_published_schema(models: Models, name: str) -> None:
    report = models.validate(load_spec(SPECS[name].read_text()))
    assert report.errors == [], f".do/{SPECS[name].name} is invalid:\n" + "\n".join(report.errors)
    assert report.deprecated == [], f".do/{SPECS[name].name} uses deprecated fields: {report.deprecated}"


def test_the_alerts_gap_is_patched_not_ignored(models: Models) -> None:
    """The patched `alerts` are validated like any property: a wrong rule is caught, not waved through."""
    spec = scaled()
    assert models.validate(spec).errors == []
    unpatched = Models(REFERENCE / "models").validate(spec).errors
    assert sorted(unpatched) == ["$.services[0]: unknown property 'alerts'", "$: unknown property 'alerts'"]


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(spec: dict[str, Any]) -> None:
        *parents, last = _steps(path)
        target: Any = spec
        for step in parents:
            target = target[step]
        target[last] = value

    return mutate


def _delete(path: str) -> Callable[[dict[str, Any]], None]:
    def mutate(spec: dict[str, Any]) -> None:
        *parents, last = _steps(path)
        target: Any = spec
        for step in parents:
            target = target[step]
        del target[last]

    return mutate


def _steps(path: str) -> list[str | int]:
    return [int(step) if step.isdigit() else step for step in path.split(".")]


MUTATIONS = [
    ("wrong enum", _set("services.0.envs.0.scope", "RUNTIME"), "$.services[0].envs[0].scope: 'RUNTIME' is not one of"),
    ("wrong engine", _set("databases.0.engine", "VALKYRIE"), "$.databases[0].engine: 'VALKYRIE' is not one of"),
    ("wrong region", _set("region", "fra1"), "$.region: 'fra1' is not one of"),
    ("unknown app alert", _set("alerts.0.rule", "DEPLOY_FAILED"), "$.alerts[0].rule: 'DEPLOY_FAILED' is not one of"),
    ("unknown size", _set("services.0.instance_size_slug", "apps-s-1vcpu-3gb"), "matches no branch of oneOf"),
    ("misspelt key", _set("services.0.instance_sise_slug", "x"), "unknown property 'instance_sise_slug'"),
    ("unknown app key", _set("instances", 2), "$: unknown property 'instances'"),
    # Persistence is a setting of the Valkey cluster, not of the app's database component.
    ("database setting", _set("databases.0.persistence", "rdb"), "$.databases[0]: unknown property 'persistence'"),
    ("missing database name", _delete("databases.0.name"), "$.databases[0]: missing required property 'name'"),
    ("missing env key", _delete("services.0.envs.1.key"), "$.services[0].envs[1]: missing required property 'key'"),
    ("missing app name", _delete("name"), "$: missing required property 'name'"),
    ("name pattern", _set("name", "SiteAPI"), "$.name: 'SiteAPI' does not match"),
    ("env key pattern", _set("services.0.envs.0.key", "STRAVA-ID"), "does not match '^[_A-Za-z][_A-Za-z0-9]*$'"),
    ("name too long", _set("databases.0.name", "c" * 33), "is longer than 32"),
    ("below minimum", _set("services.0.instance_count", 0), "$.services[0].instance_count: 0 is below the minimum 1"),
    ("above maximum", _set("services.0.liveness_health_check.failure_threshold", 51), "is above the maximum 50"),
    ("above maximum", _set("services.0.termination.grace_period_seconds", 601), "is above the maximum 600"),
    ("port range", _set("services.0.http_port", 70000), "$.services[0].http_port: 70000 is above the maximum 65535"),
    ("type", _set("services.0.http_port", "8080"), "$.services[0].http_port: expected integer, got str '8080'"),
    ("bool is no integer", _set("services.0.instance_count", True), "expected integer, got bool True"),
    ("unquoted env value", _set("services.0.envs.7.value", 5), "$.services[0].envs[7].value: expected string"),
    ("type", _set("databases.0.production", "yes"), "$.databases[0].production: expected boolean"),
]


@pytest.mark.parametrize(("mutate", "expected"), [m[1:] for m in MUTATIONS], ids=[m[0] for m in MUTATIONS])
def test_a_broken_spec_is_rejected(models: Models, mutate: Callable[[dict[str, Any]], None], expected: str) -> None:
    spec = scaled()
    mutate(spec)
    errors = models.validate(spec).errors
    assert any(expected in error for error in errors), f"{expected!r} not in {errors}"


def test_deprecated_fields_are_reported(models: Models) -> None:
    spec = scaled()
    spec["services"][0]["instance_size_slug"] = "basic-xxs"
    spec["services"][0]["routes"] = [{"path": "/"}]
    report = models.validate(spec)
    assert report.errors == []
    assert [entry.split(":")[0] for entry in report.deprecated] == [
        "$.services[0].instance_size_slug",
        "$.services[0].routes",
    ]


# --- instance sizes -------------------------------------------------------------------------------------------------


def test_size_facts_name_sizes_the_schema_knows(models: Models, sizes: dict[str, Size]) -> None:
    spec = scaled()
    for slug in sizes:
        spec["services"][0]["instance_size_slug"] = slug
        assert models.validate(spec).errors == [], slug


def test_scaled_spec_uses_a_size_that_allows_more_than_one_instance(sizes: dict[str, Size]) -> None:
    (service,) = scaled()["services"]
    size = sizes[service["instance_size_slug"]]
    assert service["instance_count"] >= 2
    assert not size.single_instance_only
    assert size.more_than_one_allowed
    # The cheapest size that can: anything bigger only costs more for a cache-served feed.
    multi = [s for s in sizes.values() if not s.single_instance_only and s.slug.startswith("apps-s-")]
    assert size.usd_per_month == min(s.usd_per_month for s in multi)


def test_default_spec_uses_the_cheapest_single_instance_size(sizes: dict[str, Size]) -> None:
    (service,) = load_spec(SPECS["default"].read_text())["services"]
    size = sizes[service["instance_size_slug"]]
    assert service["instance_count"] == 1
    assert size.single_instance_only, "the default spec is meant to stay single-instance"
    assert size.usd_per_month == min(s.usd_per_month for s in sizes.values())


# --- the validator on schemas of its own ----------------------------------------------------------------------------


def write_models(folder: Path, files: dict[str, Any]) -> Models:
    for name, schema in files.items():
        (folder / name).write_text(yaml.safe_dump(schema))
    return Models(folder)


@pytest.fixture
def tiny(tmp_path: Path) -> Models:
    return write_models(
        tmp_path,
        {
            "root.yml": {
                "type": "object",
                "required": ["a"],
                "properties": {
                    "a": {"$ref": "part.yml"},
                    "b": {"$ref": "defs.yml#/size"},
                    "c": {"type": "string", "nullable": True, "maxLength": 3},
                    "tags": {"type": "object", "additionalProperties": {"type": "integer", "format": "int32"}},
                },
            },
            "part.yml": {
                "allOf": [
                    {"type": "object", "properties": {"x": {"type": "integer", "minimum": 0}}},
                    {"type": "object", "properties": {"y": {"type": "boolean"}}, "required": ["y"]},
                ]
            },
            "defs.yml": {
                "size": {"oneOf": [{"type": "string", "enum": ["s", "m"]}, {"type": "string", "pattern": "^m"}]}
            },
        },
    )


@pytest.mark.parametrize(
    ("instance", "errors"),
    [
        ({"a": {"x": 1, "y": True}, "b": "s", "c": None, "tags": {"n": 1}}, []),
        # allOf members are closed together: x and y are both known, z is not.
        ({"a": {"x": 1, "y": True, "z": 0}}, ["$.a: unknown property 'z'"]),
        ({"a": {"x": -1}}, ["$.a.x: -1 is below the minimum 0", "$.a: missing required property 'y'"]),
        ({"a": {"y": 1}}, ["$.a.y: expected boolean, got int 1"]),
        ({}, ["$: missing required property 'a'"]),
        ({"a": {"y": True}, "c": "abcd"}, ["$.c: 'abcd' is longer than 3"]),
        ({"a": {"y": True}, "tags": {"n": 2**31}}, ["$.tags.n: 2147483648 is out of range for int32"]),
        ({"a": {"y": True}, "tags": {"n": False}}, ["$.tags.n: expected integer, got bool False"]),
        # oneOf means exactly one: "m" matches both branches.
        ({"a": {"y": True}, "b": "m"}, ["$.b: 'm' matches 2 branches of oneOf, not exactly one"]),
        ({"a": {"y": True}, "b": "mx"}, []),
    ],
)
def test_validator_on_a_small_schema(tiny: Models, instance: dict[str, Any], errors: list[str]) -> None:
    assert tiny.validate(instance, "root.yml").errors == errors


def test_validator_reports_no_branch_of_one_of(tiny: Models) -> None:
    (error,) = tiny.validate({"a": {"y": True}, "b": "x"}, "root.yml").errors
    assert error.startswith("$.b: 'x' matches no branch of oneOf")


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ({"anyOf": [{"type": "string"}]}, "unsupported keywords ['anyOf']"),
        ({"type": "null"}, "unsupported type 'null'"),
        ({"type": "string", "format": "ipv4"}, "unsupported format 'ipv4'"),
        ({"$ref": "../outside.yml"}, "not a file under"),
        ({"$ref": "missing.yml"}, "not a file under"),
        ({"$ref": "root.yml"}, "$ref cycle"),
    ],
)
def test_validator_refuses_what_it_does_not_understand(tmp_path: Path, schema: dict[str, Any], message: str) -> None:
    (tmp_path / "outside.yml").write_text("type: string\n")
    folder = tmp_path / "models"
    folder.mkdir()
    models = write_models(folder, {"root.yml": schema})
    with pytest.raises(SchemaError, match=re.escape(message)):
        models.validate("x", "root.yml")
    with pytest.raises(SchemaError, match=re.escape(message)):
        models.reachable("root.yml")


def test_validator_patches_a_gap_only_where_it_is_missing(tmp_path: Path) -> None:
    files = {"root.yml": {"type": "object", "properties": {"a": {"type": "string"}}}}
    patch = {"root.yml": {"a": {"type": "integer"}, "b": {"type": "integer"}}}
    write_models(tmp_path, files)
    models = Models(tmp_path, patches=patch)
    assert models.validate({"a": "text", "b": 1}, "root.yml").errors == []
    assert models.validate({"b": "1"}, "root.yml").errors == ["$.b: expected integer, got str '1'"]
    assert Models(tmp_path).validate({"b": 1}, "root.yml").errors == ["$: unknown property 'b'"]
