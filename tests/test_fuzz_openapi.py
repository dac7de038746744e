"""Schema fuzzing: schemathesis drives every operation of the live /openapi.json.

The real server (`python -m service --sandbox`) answers cases generated from its own spec by
schemathesis' engine (what `schemathesis run` uses): the coverage phase's boundary values (it
also sends undeclared methods and drops required headers) and the fuzzing phase's random ones,
schema-valid and schema-violating. Admin operations run twice: as generated (no key, or a
random one) and with the real `X-API-Key`.

Per response: schemathesis' conformance checks, plus the project's contract (`project_contract`):
never a 5xx, a sane `x-request-id` on every response, every JSON error shaped
`{"error", "message", "request_id"}`.

A few failures the schema cannot express are dropped by `filter_failure`, each narrowly and with
its reason. Server bugs it found have regression tests at the end.

(The engine rather than `schemathesis.pytest.from_fixture`: the lazy pytest loader of
schemathesis 4.32.5 sets `Node._nodeid`, which pytest 9.2 no longer has.)
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import strategies as st
from schemathesis.core.failures import Failure
from schemathesis.engine import Status, events
from schemathesis.schemas import BaseSchema

from service.projects.strava_integration.params import parse_time
from tests.figures import record
from tests.support import SECRETS, ServiceProcess

ADMIN_KEY = SECRETS["STRAVA_ADMIN_API_KEY"]
WEBHOOK = "/api/strava-integration/webhook"
REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
WEBHOOK_INTS = ("object_id", "owner_id", "subscription_id", "event_time")
# Schemathesis' stable failure codes ("never renumbered or reused").
ACCEPTED_NEGATIVE = "ST201"  # schema-violating request accepted
REJECTED_POSITIVE = "ST202"  # schema-valid request rejected
CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "positive_data_acceptance",
    "negative_data_rejection",
    "missing_required_header",
    "unsupported_method",
    "allow_header_conformance",
    "project_contract",
]
# Per operation and pass, on top of the coverage phase's boundary cases: about 1,200 requests in
# all, in 15-20 s on 2 cores (operations without parameters stop early: there is little to vary).
MAX_EXAMPLES = 100


@schemathesis.check
def project_contract(ctx: schemathesis.CheckContext, response: schemathesis.Response, case: Any) -> bool | None:
    """The project's promises, beyond what the spec says."""
    assert response.status_code < 500, f"{response.status_code}: {response.text[:300]}"
    request_id = _header(response, "x-request-id")
    assert request_id is not None and REQUEST_ID.fullmatch(request_id), f"bad x-request-id {request_id!r}"
    content_type = _header(response, "content-type") or ""
    if response.status_code >= 400 and content_type.startswith("application/json"):
        body = json.loads(response.content)
        assert isinstance(body, dict), f"error body is not an object: {body!r}"
        for key in ("error", "message", "request_id"):
            assert isinstance(body.get(key), str), f"error body without a string {key!r}: {body!r}"
        assert body["request_id"] == request_id, "error body and header disagree on the request id"
    return None


def _header(response: schemathesis.Response, name: str) -> str | None:
    values = response.headers.get(name.lower())
    return values[0] if values else None


# ---- known failures the schema cannot express, dropped narrowly ----


def _epoch(case: schemathesis.Case, name: str) -> int | None:
    """The time a feed parameter stands for (epoch seconds, a date or a date-time), as the server reads it."""
    value = (case.query or {}).get(name)
    if isinstance(value, str):
        return parse_time(value, round_up=name == "before")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _error_of(response: schemathesis.Response) -> dict[str, Any]:
    try:
        body = json.loads(response.content)
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def known_reason(failure: Failure, case: schemathesis.Case, response: schemathesis.Response) -> str | None:
    """Why this failure is expected, or None: it is a real one."""
    path = case.operation.path
    error = _error_of(response)
    if failure.code == REJECTED_POSITIVE:
        if path.endswith("/feed"):
            # `before` must be later than `after`: a rule across two parameters, answered 422.
            after, before = _epoch(case, "after"), _epoch(case, "before")
            if after is not None and before is not None and after >= before:
                return "feed: before <= after"
        if path.endswith("/auth/callback") and error.get("error") in ("invalid_state", "authorization_denied"):
            # Only a state this server signed (from /auth/start) passes; a schema cannot make one.
            return "auth/callback: unsigned state"
    return None


# ---- the server, its schema, and one engine run per pass ----


class Tally:
    """What the fuzz runs saw, for the totals test and the figures."""

    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()
        self.statuses: dict[tuple[str, str], Counter[int]] = {}
        self.failures: list[str] = []
        self.dropped: Counter[str] = Counter()  # known failures `filter_failure` dropped, by reason


TALLY = Tally()


@pytest.fixture(scope="module")
def fuzz_service() -> Iterator[ServiceProcess]:
    env = {k: v for k, v in SECRETS.items() if k != "METRICS_BEARER_TOKEN"}
    with ServiceProcess(env=env, args=("--sandbox",)) as service:
        yield service


@pytest.fixture(scope="module")
def public_ids(fuzz_service: ServiceProcess) -> list[int]:
    feed = httpx.get(fuzz_service.base_url + "/api/strava-integration/feed?limit=200", timeout=10).json()
    ids = [a["id"] for a in feed["activities"]]
    assert ids, "the sandbox feed is empty"
    return ids


def load_schema(service: ServiceProcess, public_ids: list[int], headers: dict[str, str]) -> BaseSchema:
    config = schemathesis.Config.from_dict(
        {
            "base-url": service.base_url,
            "seed": 20261128,
            "request-timeout": 10,
            "headers": headers,
            "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none"},
            # Reproducible runs: no generation fed by response bodies (request ids, times vary).
            "phases": {
                "fuzzing": {"extra-data-sources": {"responses": False}, "error-feedback": {"enabled": False}},
                "coverage": {"extra-data-sources": {"responses": False}},
                "examples": {"extra-data-sources": {"responses": False}},
            },
            "checks": {"enabled": False, **{name: {"enabled": True} for name in CHECKS}},
        }
    )
    # The live document, loaded as a dict: `from_url` would leave out the operation that served it.
    document = httpx.get(service.base_url + "/openapi.json", timeout=10).raise_for_status().json()
    schema = schemathesis.openapi.from_dict(document, config=config)

    @schema.hook
    def flatmap_path_parameters(context: Any, params: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
        # Random ids are all 404; mix in public ones so the detail route gets past its lookup.
        if not params or not isinstance(params.get("activity_id"), int):
            return st.just(params)
        return st.just(params) | st.sampled_from(public_ids).map(lambda i: {**params, "activity_id": i})

    @schema.hook
    def filter_failure(context: Any, failure: Failure, case: schemathesis.Case, response: Any) -> bool:
        reason = known_reason(failure, case, response)
        if reason is not None:
            TALLY.dropped[reason] += 1
        return reason is None

    return schema


def is_admin_operation(ctx: Any) -> bool:
    return any(p["name"] == "X-API-Key" for p in ctx.operation.definition.raw.get("parameters", []))


def run(variant: str, schema: BaseSchema) -> None:
    """One engine run; every request and every failing check lands in TALLY."""
    problems: list[str] = []
    for event in schemathesis.engine.from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            recorder = event.recorder
            for interaction in recorder.interactions.values():
                if interaction.response is None:
                    continue
                label = f"{interaction.request.method.upper()} {recorder.label.split(' ', 1)[1]}"
                TALLY.requests[variant] += 1
                TALLY.statuses.setdefault((variant, label), Counter())[interaction.response.status_code] += 1
            for case_id, checks in recorder.checks.items():
                for check in checks:
                    if check.status == Status.FAILURE and check.failure_info is not None:
                        failure = check.failure_info.failure
                        problems.append(f"{recorder.label} [{check.name}] {failure.title}: {failure.message}")
                        failed = recorder.interactions.get(case_id)
                        if failed is not None and failed.response is not None:
                            answer = failed.response
                            problems.append(f"    answered {answer.status_code}: {answer.content[:300]!r}")
                        problems.append(f"    {check.failure_info.code_sample[:2000]}")
        elif isinstance(event, events.NonFatalError):
            problems.append(f"{event.label}: error {event.info.title}: {event.info.message}")
        elif isinstance(event, events.FatalError):
            problems.append(f"fatal: {event.exception!r}")
    TALLY.failures.extend(problems)
    assert not problems, "\n".join(problems[:40])


def test_fuzz_every_operation(fuzz_service: ServiceProcess, public_ids: list[int]) -> None:
    run("anonymous", load_schema(fuzz_service, public_ids, {}))


def reconnect_sandbox(service: ServiceProcess) -> None:
    """Authorize again, as the owner would: the admin run's `auth/disconnect` ended the sandbox's grant."""
    with httpx.Client(base_url=service.base_url, timeout=10, trust_env=False) as http:
        start = http.get("/api/strava-integration/auth/start", headers={"X-API-Key": ADMIN_KEY})
        approve = http.get(start.headers["location"])  # the simulator's consent screen approves at once
        connected = http.get(approve.headers["location"])  # back to our callback with a code
        assert connected.status_code == 200, connected.text
        assert http.get("/api/strava-integration/feed").status_code == 200


def test_fuzz_admin_operations_with_key(fuzz_service: ServiceProcess, public_ids: list[int]) -> None:
    schema = load_schema(fuzz_service, public_ids, {"X-API-Key": ADMIN_KEY}).include(is_admin_operation)
    try:
        run("admin", schema)
    finally:
        reconnect_sandbox(fuzz_service)


def test_fuzz_totals(fuzz_service: ServiceProcess) -> None:
    """Every operation was fuzzed, admin ones both locked out and let in; several hundred cases."""
    spec = httpx.get(fuzz_service.base_url + "/openapi.json", timeout=10).json()
    operations = {f"{m.upper()} {p}" for p, item in spec["paths"].items() for m in item}
    admin_ops = {
        f"{m.upper()} {p}"
        for p, item in spec["paths"].items()
        for m, op in item.items()
        if any(x["name"] == "X-API-Key" for x in op["parameters"])
    }
    seen = {label for (variant, label) in TALLY.statuses if variant == "anonymous"}
    assert operations <= seen, operations - seen
    assert admin_ops, "no admin operations in the spec"
    for label in admin_ops:
        locked_out = TALLY.statuses.get(("anonymous", label), Counter())
        let_in = TALLY.statuses.get(("admin", label), Counter())
        assert locked_out[401] and locked_out[403], (label, locked_out)
        assert any(200 <= s < 400 for s in let_in), (label, let_in)
    total = sum(TALLY.requests.values())
    print("\nstatuses:", {f"{v} {k}": dict(c) for (v, k), c in sorted(TALLY.statuses.items())})
    record(
        "schema fuzzing",
        cases=total,
        routes=len(operations),
        paths=len(spec["paths"]),
        failures=len(TALLY.failures),
        known_dropped=dict(TALLY.dropped),
        **TALLY.requests,
    )
    assert not TALLY.failures
    assert total >= 300, total


# ---- regression tests for what the fuzzing found ----


def test_405_allow_names_every_method_on_the_path(fuzz_service: ServiceProcess) -> None:
    """GET and POST /webhook are two routes; Starlette's 405 named only the first one's methods."""
    for method in ("PUT", "OPTIONS", "DELETE"):
        r = httpx.request(method, fuzz_service.base_url + WEBHOOK, timeout=5)
        assert r.status_code == 405
        assert r.headers["allow"] == "GET, HEAD, POST"
        assert r.json()["error"] == "method_not_allowed"
    r = httpx.put(fuzz_service.base_url + "/livez", timeout=5)
    assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"
    r = httpx.get(fuzz_service.base_url + "/api/strava-integration/refresh", timeout=5)
    assert r.status_code == 405 and r.headers["allow"] == "POST"


def test_spec_says_what_the_webhook_validation_accepts(fuzz_service: ServiceProcess) -> None:
    """`hub.challenge`: the handler refuses an empty or unprintable one, and now so does the spec."""
    spec = httpx.get(fuzz_service.base_url + "/openapi.json", timeout=5).json()
    params = spec["paths"][WEBHOOK]["get"]["parameters"]
    pattern = re.compile(next(p for p in params if p["name"] == "hub.challenge")["schema"]["pattern"])
    for challenge, status in (("", 400), ("a\x1fb", 400), ("x" * 257, 400), ("abc 123~", 403)):
        assert bool(pattern.fullmatch(challenge)) == (status == 403), challenge
        query = {"hub.mode": "subscribe", "hub.challenge": challenge, "hub.verify_token": "wrong"}
        r = httpx.get(fuzz_service.base_url + WEBHOOK, params=query, timeout=5)
        assert r.status_code == status, (challenge, r.text)


def test_spec_says_empty_feed_parameters_mean_absent(fuzz_service: ServiceProcess) -> None:
    """The feed treats `?limit=` like no limit at all; the spec now says so (`allowEmptyValue`)."""
    spec = httpx.get(fuzz_service.base_url + "/openapi.json", timeout=5).json()
    params = {p["name"]: p for p in spec["paths"]["/api/strava-integration/feed"]["get"]["parameters"]}
    for name in ("limit", "sport_type", "after", "before"):
        assert params[name].get("allowEmptyValue") is True, name
        r = httpx.get(f"{fuzz_service.base_url}/api/strava-integration/feed?{name}=", timeout=5)
        assert r.status_code == 200 and 0 < r.json()["count"] <= 30, (name, r.text[:200])


def test_spec_bounds_webhook_integers_where_the_parser_does(fuzz_service: ServiceProcess) -> None:
    """orjson reads integers up to 2**64 - 1; the spec now says so, and a bigger one is a 400."""
    spec = httpx.get(fuzz_service.base_url + "/openapi.json", timeout=5).json()
    body = spec["paths"][WEBHOOK]["post"]["requestBody"]["content"]["application/json"]["schema"]
    for name in WEBHOOK_INTS:
        assert body["properties"][name]["maximum"] == 2**64 - 1, name
    ok = httpx.post(fuzz_service.base_url + WEBHOOK, json=_event(object_id=2**64 - 1), timeout=5)
    assert ok.status_code == 200, ok.text
    too_big = httpx.post(fuzz_service.base_url + WEBHOOK, content=big_integer_event(), timeout=5)
    assert too_big.status_code == 400, too_big.text
    assert set(too_big.json()) >= {"error", "message", "request_id"}


def big_integer_event() -> bytes:
    # Built by hand: the body must carry an integer that no 64-bit parser reads.
    return json.dumps(_event(object_id=2**64)).encode()


def _event(**changes: Any) -> dict[str, Any]:
    # An owner that is not the sandbox athlete: accepted events are ignored, nothing is refetched.
    event = {
        "object_type": "activity",
        "object_id": 1,
        "aspect_type": "update",
        "owner_id": 1,
        "subscription_id": 1,
        "event_time": 1_700_000_000,
        "updates": {},
    }
    return {**event, **changes}


@pytest.mark.parametrize("updates", [None, False, 0, "", []])
def test_webhook_rejects_non_object_updates(fuzz_service: ServiceProcess, updates: object) -> None:
    r = httpx.post(fuzz_service.base_url + WEBHOOK, json=_event(updates=updates), timeout=5)
    assert r.status_code == 400, r.text


def test_webhook_accepts_integral_floats(fuzz_service: ServiceProcess) -> None:
    r = httpx.post(fuzz_service.base_url + WEBHOOK, json=_event(owner_id=1.0, event_time=1_700_000_000.0), timeout=5)
    assert r.status_code == 200, r.text
