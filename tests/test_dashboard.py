"""The Grafana dashboard is well formed, and it and the alert rules only query metrics the service exports.

The metric names are pulled out of PromQL by a small tokenizer (`promql_metric_names`) and compared with the
metric families of a real scrape of the sandbox service.
"""

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "observability" / "grafana" / "siteapi-dashboard.json"
ALERTS = ROOT / "observability" / "prometheus" / "alerts.yml"

# Series Prometheus makes up itself; no service exports them.
SYNTHETIC_METRICS = frozenset({"up"})

AGGREGATIONS = frozenset(
    {
        "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
        "bottomk", "topk", "quantile", "limitk", "limit_ratio",
    }
)  # fmt: skip
FUNCTIONS = frozenset(
    {
        "abs", "absent", "absent_over_time", "acos", "acosh", "asin", "asinh", "atan", "atanh", "avg_over_time",
        "ceil", "changes", "clamp", "clamp_max", "clamp_min", "cos", "cosh", "count_over_time", "day_of_month",
        "day_of_week", "day_of_year", "days_in_month", "deg", "delta", "deriv", "double_exponential_smoothing",
        "end", "exp", "floor", "histogram_avg", "histogram_count", "histogram_fraction", "histogram_quantile",
        "histogram_stddev", "histogram_stdvar", "histogram_sum", "holt_winters", "hour", "idelta", "increase",
        "info", "irate", "label_join", "label_replace", "last_over_time", "ln", "log10", "log2", "mad_over_time",
        "max_over_time", "min_over_time", "minute", "month", "pi", "predict_linear", "present_over_time",
        "quantile_over_time", "rad", "rate", "resets", "round", "scalar", "sgn", "sin", "sinh", "sort",
        "sort_by_label", "sort_by_label_desc", "sort_desc", "sqrt", "start", "stddev_over_time",
        "stdvar_over_time", "sum_over_time", "tan", "tanh", "time", "timestamp", "vector", "year",
    }
)  # fmt: skip
# Keywords followed by a parenthesised list of label names (optional for group_left/group_right).
LABEL_LIST_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
KEYWORDS = LABEL_LIST_KEYWORDS | {"bool", "offset", "and", "or", "unless", "atan2", "inf", "nan"}

_IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
# Numbers, hex numbers and durations (5m, 1h30m, 1.5e3) are one token, so `m` in `5m` is no identifier.
_NUMBER = re.compile(r"0[xX][0-9a-fA-F]+|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?[a-zA-Z0-9_]*")
_MATCHER = re.compile(r"""\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)""")


def _read_string(expr: str, i: int) -> int:
    """Index just past the string literal that starts at `i`."""
    quote = expr[i]
    j = i + 1
    while j < len(expr):
        if expr[j] == "\\" and quote != "`":
            j += 2
            continue
        if expr[j] == quote:
            return j + 1
        j += 1
    raise ValueError(f"unterminated string at {i} in {expr!r}")


def _read_group(expr: str, i: int, close: str) -> int:
    """Index just past the `close` that ends the `{...}` or `[...]` starting at `i`; strings inside are skipped."""
    j = i + 1
    while j < len(expr):
        if expr[j] in "\"'`":
            j = _read_string(expr, j)
        elif expr[j] == close:
            return j + 1
        else:
            j += 1
    raise ValueError(f"unbalanced {expr[i]!r} at {i} in {expr!r}")


def _tokens(expr: str) -> Iterator[tuple[str, str]]:
    """(kind, text) pairs: ident, string, number, matchers (the text between braces), range, op."""
    i = 0
    while i < len(expr):
        ch = expr[i]
        if ch.isspace():
            i += 1
        elif ch == "#":
            end = expr.find("\n", i)
            i = len(expr) if end == -1 else end
        elif ch in "\"'`":
            end = _read_string(expr, i)
            yield "string", expr[i:end]
            i = end
        elif ch == "{":
            end = _read_group(expr, i, "}")
            yield "matchers", expr[i + 1 : end - 1]
            i = end
        elif ch == "[":
            end = _read_group(expr, i, "]")
            yield "range", expr[i + 1 : end - 1]
            i = end
        elif m := _NUMBER.match(expr, i):
            yield "number", m.group()
            i = m.end()
        elif m := _IDENT.match(expr, i):
            yield "ident", m.group()
            i = m.end()
        else:
            yield "op", ch
            i += 1


def _names_from_matchers(matchers: str) -> set[str]:
    """`{__name__="x"}` selects metric x."""
    return {value[1:-1] for label, op, value in _MATCHER.findall(matchers) if label == "__name__" and op == "="}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names selected by a PromQL expression.

    Skips function and aggregation names, keywords, label names in `by/without/on/ignoring/group_*(...)`,
    label matchers, ranges/durations and string literals. Raises ValueError on an unknown function, so a typo
    such as `rat(x[5m])` fails instead of passing silently.
    """
    tokens = list(_tokens(expr))
    names: set[str] = set()
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        following = tokens[i + 1] if i + 1 < len(tokens) else ("", "")
        if kind == "matchers":
            names |= _names_from_matchers(text)
        elif kind == "ident":
            word = text.lower()
            if word in LABEL_LIST_KEYWORDS:
                if following == ("op", "("):
                    while i < len(tokens) and tokens[i] != ("op", ")"):
                        i += 1
            elif following == ("op", "("):
                if word not in FUNCTIONS and word not in AGGREGATIONS:
                    raise ValueError(f"unknown PromQL function {text!r} in {expr!r}")
            elif word in AGGREGATIONS and following[0] == "ident" and following[1].lower() in ("by", "without"):
                pass
            elif word not in KEYWORDS:
                names.add(text)
        i += 1
    return names


def exported_families(exposition: str) -> dict[str, str]:
    """Metric family name -> type, from the `# TYPE` lines of a scrape (present even for families without samples)."""
    families = {}
    for line in exposition.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[:2] == ["#", "TYPE"]:
            families[parts[2]] = parts[3]
    return families


_SUFFIX_TYPES = (
    ("_bucket", {"histogram", "gaugehistogram"}),
    ("_sum", {"histogram", "summary"}),
    ("_count", {"histogram", "summary"}),
    ("_total", {"counter"}),  # OpenMetrics names the counter family without _total.
)


def family_of(name: str, families: dict[str, str]) -> str | None:
    """The exported family that a series name belongs to, or None."""
    if name in families:
        return name
    for suffix, types in _SUFFIX_TYPES:
        base = name.removesuffix(suffix)
        if base != name and families.get(base) in types:
            return base
    return None


def dashboard_panels(dashboard: dict) -> Iterator[dict]:
    """Every panel, including those nested in (collapsed) rows."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_exprs(dashboard: dict) -> list[str]:
    """Every PromQL expression of the dashboard: panel targets and the selector of label_values() variables."""
    exprs = [target["expr"] for panel in dashboard_panels(dashboard) for target in panel.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        query = query.get("query", "") if isinstance(query, dict) else query or ""
        if m := re.fullmatch(r"\s*label_values\((.*),\s*[a-zA-Z_][a-zA-Z0-9_]*\s*\)\s*", query):
            exprs.append(m.group(1))
    return exprs


def alert_exprs(rules: dict) -> list[str]:
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


@pytest.fixture(scope="module")
def rules() -> dict:
    return yaml.safe_load(ALERTS.read_text())


# --- the tokenizer --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        (
            'sum by (le, route) (rate(foo_seconds_bucket{route!="/metrics", le=~"0.5|1"}[5m]))',
            {"foo_seconds_bucket"},
        ),
        ("rate(a_total[5m] offset 1h) / on (job) group_left (version) b_info", {"a_total", "b_info"}),
        ("a / ignoring(code) group_left b", {"a", "b"}),
        ('label_replace(up{job="x"}, "dst", "$1", "src", "(sum)") and count without (instance) (c)', {"up", "c"}),
        ('{__name__="d_total", job="x"}', {"d_total"}),
        ('{__name__=~"d_.*"} + e', {"e"}),
        ("max(x) by (job) > bool 1", {"x"}),
        ("histogram_quantile(0.95, sum(rate(h_bucket[$__rate_interval])) by (le))", {"h_bucket"}),
        ("sum(rate(z[5m:1m])) @ end() - y @ 1609746000", {"z", "y"}),
        ("topk(3, y) unless on(instance) w or vector(0)", {"y", "w"}),
        ("x # a comment naming not_a_metric\n + 1e3 * 0x1f", {"x"}),
        ('m{path="}{", quote="a\\"b"} - label_replace(v, "a", "}{[", "b", "")', {"m", "v"}),
        ("SUM BY (job) (rate(k[1h30m])) AND Inf", {"k"}),
        ('quantile(0.9, count_values("v", build_info)) - time()', {"build_info"}),
        ("siteapi:http_requests:rate5m > 0", {"siteapi:http_requests:rate5m"}),
    ],
)
def test_promql_metric_names(expr: str, expected: set[str]) -> None:
    assert promql_metric_names(expr) == expected


@pytest.mark.parametrize("expr", ["rat(x[5m])", 'x{job="a"', "sum(y[5m)", 'z{job="a}'])
def test_promql_metric_names_rejects_broken_expressions(expr: str) -> None:
    with pytest.raises(ValueError):
        promql_metric_names(expr)


def test_family_of_maps_series_names_to_families() -> None:
    families = exported_families(
        "# HELP h_seconds x\n# TYPE h_seconds histogram\n"
        "# TYPE c_total counter\n# TYPE om counter\n# TYPE g gauge\nc_total 1.0\n"
    )
    assert families == {"h_seconds": "histogram", "c_total": "counter", "om": "counter", "g": "gauge"}
    assert family_of("h_seconds_bucket", families) == "h_seconds"
    assert family_of("h_seconds_count", families) == "h_seconds"
    assert family_of("c_total", families) == "c_total"
    assert family_of("om_total", families) == "om"
    assert family_of("g", families) == "g"
    assert family_of("g_bucket", families) is None  # a gauge has no buckets
    assert family_of("missing", families) is None


# --- the dashboard --------------------------------------------------------------------------------------------------


def test_dashboard_metadata(dashboard: dict) -> None:
    assert dashboard["title"] == "siteapi"
    assert dashboard["uid"]
    assert dashboard["schemaVersion"] >= 39
    assert dashboard["refresh"] == "30s"
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"


def test_dashboard_panels_are_well_formed(dashboard: dict) -> None:
    panels = list(dashboard_panels(dashboard))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {ids}"
    for panel in panels:
        grid = panel["gridPos"]
        assert {"h", "w", "x", "y"} <= grid.keys(), panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["type"] in {"timeseries", "stat"}, panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, panel["title"]
        assert panel["fieldConfig"]["defaults"].get("unit"), panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]


def test_latency_panel_aggregates_buckets_by_le_and_route(dashboard: dict) -> None:
    exprs = [
        t["expr"]
        for p in dashboard_panels(dashboard)
        for t in p.get("targets", [])
        if "siteapi_http_request_duration_seconds_bucket" in t["expr"]
    ]
    assert {e.split(",")[0] for e in exprs} == {
        "histogram_quantile(0.5",
        "histogram_quantile(0.95",
        "histogram_quantile(0.99",
    }
    assert all("sum by (le, route)" in e for e in exprs)


def test_every_dashboard_and_alert_expression_parses(dashboard: dict, rules: dict) -> None:
    for expr in dashboard_exprs(dashboard) + alert_exprs(rules):
        assert promql_metric_names(expr), f"no metric in {expr!r}"


# --- against a real scrape ------------------------------------------------------------------------------------------


def test_scrape_exports_every_metric_the_dashboard_and_alerts_use(
    sandbox_service, dashboard: dict, rules: dict
) -> None:
    response = httpx.get(f"{sandbox_service.base_url}/metrics", timeout=10)
    assert response.status_code == 200
    families = exported_families(response.text)
    assert families, "the scrape has no # TYPE lines"

    used = {
        (source, name)
        for source, exprs in (("dashboard", dashboard_exprs(dashboard)), ("alerts.yml", alert_exprs(rules)))
        for expr in exprs
        for name in promql_metric_names(expr)
    }
    missing = sorted(
        (source, name) for source, name in used if name not in SYNTHETIC_METRICS and family_of(name, families) is None
    )
    assert not missing, f"used but not exported by /metrics: {missing}"


def test_store_row_shows_up_errors_latency_and_lock_waits(dashboard: dict) -> None:
    titles = [panel["title"] for panel in dashboard["panels"]]
    row = titles.index("Shared store")
    exprs = [t["expr"] for panel in dashboard["panels"][row + 1 :] for t in panel.get("targets", [])]
    used = {name for expr in exprs for name in promql_metric_names(expr)}
    assert used == {
        "siteapi_store_up",
        "siteapi_store_operation_errors_total",
        "siteapi_store_operation_duration_seconds_bucket",
        "siteapi_store_operation_duration_seconds_count",
        "siteapi_store_lock_wait_seconds_bucket",
    }
    quantiles = [e for e in exprs if e.startswith("histogram_quantile(")]
    assert {q.split(",")[0] for q in quantiles} == {"histogram_quantile(0.99"}
    assert any("sum by (le, operation)" in q for q in quantiles) and any("sum by (le, lock)" in q for q in quantiles)
