"""Strava webhooks end to end: `python -m service` receives events and the feed reflects them at once.

Validation of the subscription, fast answers (Strava's 2 s contract), create/update/delete of
activities observed through the feed and the simulator's call counts, events that are not ours,
malformed and oversized bodies, and the athlete's deauthorization.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from tests.figures import record
from tests.strava_harness import (
    ADMIN,
    LIST_CALL,
    PREFIX,
    TOKEN_CALL,
    VERIFY_TOKEN,
    Stack,
    assert_error,
    metric_value,
    running_simulator,
    running_stack,
    wait_for_calls,
)
from tests.support import wait_until

SUBSCRIPTION = 4242
EVENTS = "siteapi_strava_webhook_events_total"
STRAVA_DEADLINE_S = 2.0  # Strava retries an event that is not answered 200 within two seconds


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {"STRAVA_WEBHOOK_SUBSCRIPTION_ID": str(SUBSCRIPTION)}
    with running_stack(tmp_path_factory.mktemp("webhook"), env=env) as running:
        running.subscription_id = SUBSCRIPTION
        assert running.feed().status_code == 200  # warm: the owner is known, the list is cached
        yield running


def lists_answered(stack: Stack) -> float:
    """Activity lists Strava has answered so far, as the service counts them."""
    text = stack.metrics()
    return metric_value(text, "siteapi_strava_upstream_requests_total", endpoint="activities", status="200")


def feed_ids(stack: Stack) -> list[int]:
    response = stack.feed("limit=200")
    assert response.status_code == 200, response.text
    return [a["id"] for a in response.json()["activities"]]


def saved_refresh_token(stack: Stack) -> str | None:
    try:
        return orjson.loads(stack.token_file.read_bytes())["refresh_token"]
    except (FileNotFoundError, ValueError, KeyError):
        return None


def validate(stack: Stack, **params: str | None) -> Any:
    query: dict[str, str | None] = {
        "hub.mode": "subscribe",
        "hub.challenge": "15f7d1a91c1f40f8",
        "hub.verify_token": VERIFY_TOKEN,
    }
    query.update(params)
    return stack.get(PREFIX + "/webhook", params={k: v for k, v in query.items() if v is not None})


def test_subscription_validation(stack: Stack) -> None:
    ok = validate(stack)
    assert ok.status_code == 200
    assert ok.json() == {"hub.challenge": "15f7d1a91c1f40f8"}
    assert_error(validate(stack, **{"hub.verify_token": "vtok-wrong-token"}), 403, "forbidden")
    assert_error(validate(stack, **{"hub.verify_token": None}), 403, "forbidden")
    assert_error(validate(stack, **{"hub.mode": "unsubscribe"}), 400, "invalid_challenge", "hub.mode")
    assert_error(validate(stack, **{"hub.mode": None}), 400, "invalid_challenge", "hub.mode")
    assert_error(validate(stack, **{"hub.challenge": None}), 400, "invalid_challenge", "hub.challenge")
    assert_error(validate(stack, **{"hub.challenge": "x" * 257}), 400, "invalid_challenge", "hub.challenge")


def test_update_to_private_hides_the_activity_before_any_refetch_completes(stack: Stack) -> None:
    ids = feed_ids(stack)
    target = ids[1]
    lists = stack.sim.calls(LIST_CALL)
    answered = lists_answered(stack)
    # The simulator holds the refetch the event starts until released: the feed must not wait for it.
    stack.sim.fault("timeout", count=1, delay_s=600, path_prefix="/api/v3/athlete/activities")
    stack.sim.upsert(id=target, private=True, visibility="only_me")

    event = stack.webhook(object_id=target, aspect_type="update", updates={"private": "true"})
    assert event.status_code == 200 and event.json() == {"status": "ok"}
    after = feed_ids(stack)
    assert target not in after
    assert after == [i for i in ids if i != target]
    assert_error(stack.api(f"/activities/{target}"), 404, "strava_not_found")
    wait_for_calls(stack.sim, LIST_CALL, lists + 1)  # the refetch was started ...
    assert stack.sim.state.fault is None
    assert wait_until(lambda: stack.sim.state.held == 1, 5)  # ... and is held, unanswered, so the above came first
    # Once it lands, the fresh list agrees.
    stack.sim.state.release_held()
    assert wait_until(lambda: lists_answered(stack) == answered + 1, 5)
    assert target not in feed_ids(stack)


def test_create_adds_the_activity_after_one_refetch(stack: Stack) -> None:
    lists = stack.sim.calls(LIST_CALL)
    created = stack.sim.upsert(id=19_000_000_001, name="Webhook Run", private=False, visibility="everyone")
    assert created["id"] not in feed_ids(stack)  # not known until Strava says so
    assert stack.webhook(object_id=created["id"], aspect_type="create").status_code == 200
    wait_for_calls(stack.sim, LIST_CALL, lists + 1)
    assert wait_until(lambda: feed_ids(stack)[0] == created["id"], 5)
    detail = stack.api(f"/activities/{created['id']}")
    assert detail.status_code == 200 and detail.json()["activity"]["name"] == "Webhook Run"
    time.sleep(0.2)
    assert stack.sim.calls(LIST_CALL) == lists + 1  # one event, one refetch


def test_delete_removes_the_activity_at_once(stack: Stack) -> None:
    ids = feed_ids(stack)
    target = ids[2]
    stack.sim.delete(target)
    lists = stack.sim.calls(LIST_CALL)
    assert stack.webhook(object_id=target, aspect_type="delete").status_code == 200
    assert target not in feed_ids(stack)
    assert_error(stack.api(f"/activities/{target}"), 404, "strava_not_found")
    wait_for_calls(stack.sim, LIST_CALL, lists + 1)
    assert target not in feed_ids(stack)


def test_events_for_another_owner_or_subscription_are_ignored(stack: Stack) -> None:
    ids = feed_ids(stack)
    target = ids[0]
    metrics = stack.metrics()
    ignored = metric_value(metrics, EVENTS, object_type="activity", aspect_type="delete", outcome="ignored")
    accepted = metric_value(metrics, EVENTS, object_type="activity", aspect_type="delete", outcome="accepted")
    calls = stack.sim.stats()["calls"]

    other_owner = stack.webhook(object_id=target, aspect_type="delete", owner_id=999_999)
    other_subscription = stack.webhook(object_id=target, aspect_type="delete", subscription_id=SUBSCRIPTION + 1)
    deauth_of_someone_else = stack.webhook(
        object_type="athlete", object_id=999_999, owner_id=999_999, updates={"authorized": "false"}
    )
    for response in (other_owner, other_subscription, deauth_of_someone_else):
        assert response.status_code == 200 and response.json() == {"status": "ok"}

    time.sleep(0.3)  # room for a background refetch that must not happen
    assert feed_ids(stack) == ids  # nothing was dropped
    assert stack.sim.stats()["calls"] == calls  # nothing was refetched
    assert stack.token_file.exists() and stack.status()["token"]["auth_ok"] is True
    metrics = stack.metrics()
    assert metric_value(metrics, EVENTS, object_type="activity", aspect_type="delete", outcome="ignored") == ignored + 2
    assert metric_value(metrics, EVENTS, object_type="activity", aspect_type="delete", outcome="accepted") == accepted
    assert metric_value(metrics, EVENTS, object_type="athlete", aspect_type="update", outcome="ignored") >= 1


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "malformed_json"),
        (b"", 400, "malformed_json"),
        (b"[1, 2]", 400, "invalid_event"),
        (b'{"object_type": "gear", "aspect_type": "update"}', 400, "invalid_event"),
        (orjson.dumps({"object_type": "activity", "aspect_type": "update", "object_id": -1}), 400, "invalid_event"),
        (orjson.dumps({"object_type": "activity", "pad": "x" * 9000}), 413, "payload_too_large"),  # over 8 KiB
        (b"x" * 70_000, 413, "payload_too_large"),  # over MAX_BODY_BYTES: refused before the handler
    ],
)
def test_malformed_and_oversized_events_get_json_errors(stack: Stack, body: bytes, status: int, code: str) -> None:
    calls = stack.sim.stats()["total_api_calls"]
    response = stack.post(PREFIX + "/webhook", content=body, headers={"Content-Type": "application/json"})
    assert_error(response, status, code)
    assert stack.sim.stats()["total_api_calls"] == calls


def test_invalid_events_are_counted(stack: Stack) -> None:
    before = metric_value(stack.metrics(), EVENTS, object_type="invalid", aspect_type="invalid", outcome="invalid")
    stack.post(PREFIX + "/webhook", content=b"{oops", headers={"Content-Type": "application/json"})
    after = metric_value(stack.metrics(), EVENTS, object_type="invalid", aspect_type="invalid", outcome="invalid")
    assert after == before + 1


def test_events_are_answered_without_waiting_on_strava(stack: Stack) -> None:
    ids = feed_ids(stack)
    # Strava does not answer at all right now (the simulator holds every API request): the
    # refetches the events start must not hold up the answers Strava wants within 2 s.
    stack.sim.fault("timeout", delay_s=600, path_prefix="/api/v3")
    latencies = []
    try:
        for n in range(20):
            started = time.perf_counter()
            response = stack.webhook(object_id=ids[n % 5], aspect_type="update", updates={"title": f"t{n}"})
            latencies.append(time.perf_counter() - started)
            assert response.status_code == 200
        assert wait_until(lambda: stack.sim.state.held >= 1, 5)  # a refetch went out and is still unanswered
    finally:
        stack.sim.fault("none")
        stack.sim.state.release_held()
    latencies.sort()
    worst, median = latencies[-1], latencies[len(latencies) // 2]
    # Figures for the report, beside Strava's 2 s (not a check: the held refetch above is the proof).
    record(
        "webhook latency",
        events=len(latencies),
        median_ms=round(median * 1000, 2),
        max_ms=round(worst * 1000, 2),
        strava_deadline_s=STRAVA_DEADLINE_S,
    )


# ---- deauthorization: its own service, since it ends the grant ----

STATS_CALL = "GET /api/v3/athletes/{id}/stats"


def test_deauthorization_deletes_the_tokens_and_every_cached_item(tmp_path) -> None:
    with running_stack(tmp_path) as stack:
        ids = feed_ids(stack)
        assert stack.api(f"/activities/{ids[0]}").status_code == 200
        assert stack.api("/stats").status_code == 200
        assert stack.token_file.exists()
        assert stack.status()["cache"]["entries"] >= 3
        # A refresh is in flight (Strava answers it late) when the deauthorization arrives.
        stack.sim.fault("timeout", count=1, delay_s=0.5, path_prefix="/api/v3/athlete/activities")
        lists = stack.sim.calls(LIST_CALL)
        stats_calls = stack.sim.calls(STATS_CALL)
        assert stack.post(PREFIX + "/refresh", headers=ADMIN).status_code == 202
        wait_for_calls(stack.sim, LIST_CALL, lists + 1)
        wait_for_calls(stack.sim, STATS_CALL, stats_calls + 1)  # /refresh refreshes stats too
        calls = stack.sim.stats()["calls"]

        stack.sim.state.revoke()  # as on Strava: the grant is gone before the event is sent
        event = stack.webhook(
            object_type="athlete",
            object_id=stack.sim.state.config.athlete_id,
            aspect_type="update",
            updates={"authorized": "false"},
        )
        assert event.status_code == 200
        assert wait_until(lambda: not stack.token_file.exists(), 5)

        for path in ("/feed", f"/activities/{ids[0]}", "/stats"):
            body = assert_error(stack.api(path), 503, "strava_not_configured")
            assert "/api/strava-integration/auth/start" in body["message"]
        time.sleep(0.7)  # the refresh begun before the event has landed by now, and must not have refilled
        assert_error(stack.feed(), 503, "strava_not_configured")
        status = stack.status()
        assert status["cache"]["entries"] == 0
        assert status["token"]["auth_ok"] is False
        # Nothing more was asked of Strava than the one check that the grant is really gone: a
        # refresh at the token endpoint, which costs none of the API rate budget.
        after = stack.sim.stats()["calls"]
        checks = {k: after.get(k, 0) - calls.get(k, 0) for k in set(after) | set(calls)}
        assert {k: v for k, v in checks.items() if v} == {TOKEN_CALL: 1}

        health = stack.get("/health")
        check = health.json()["checks"]["strava-integration"][0]
        assert check["status"] in ("warn", "fail")
        assert "/api/strava-integration/auth/start" in check["output"]
        assert stack.get("/readyz").status_code == 200  # Strava being gone must not take the site down
        assert stack.get(PREFIX + "/auth/start", headers=ADMIN, follow_redirects=False).status_code == 302


def test_right_after_a_restart_a_deauthorization_is_checked_against_the_connected_athlete(tmp_path) -> None:
    with running_simulator() as sim:
        # The saved token set came from a refresh, which does not say whose grant it is.
        sim.save_tokens_as_a_refresh_would(tmp_path / "strava" / "tokens.json")
        with running_stack(tmp_path, sim=sim) as stack:
            athletes = sim.calls("GET /api/v3/athlete")
            forged = stack.webhook(
                object_type="athlete", object_id=7, owner_id=7, aspect_type="update", updates={"authorized": "false"}
            )
            assert forged.status_code == 200
            wait_for_calls(sim, "GET /api/v3/athlete", athletes + 1)  # asked Strava whose grant it is
            time.sleep(0.2)
            assert stack.token_file.exists()
            assert stack.feed().status_code == 200

            sim.state.revoke()
            real = stack.webhook(
                object_type="athlete",
                object_id=sim.state.config.athlete_id,
                aspect_type="update",
                updates={"authorized": "false"},
            )
            assert real.status_code == 200
            assert wait_until(lambda: not stack.token_file.exists(), 5)
            assert_error(stack.feed(), 503, "strava_not_configured")


def test_a_forged_deauthorization_for_the_right_owner_keeps_the_grant_and_the_cache(tmp_path) -> None:
    """Strava does not sign events and athlete ids are public: Strava itself must confirm."""
    with running_stack(tmp_path) as stack:
        before = stack.feed().json()
        refreshes = stack.sim.calls(TOKEN_CALL)
        api_calls = stack.sim.stats()["total_api_calls"]
        forged = {
            "object_type": "athlete",
            "object_id": stack.sim.state.config.athlete_id,
            "aspect_type": "update",
            "updates": {"authorized": "false"},
        }
        assert stack.webhook(**forged).status_code == 200
        wait_for_calls(stack.sim, TOKEN_CALL, refreshes + 1)  # asked Strava's token endpoint: grant alive
        assert stack.feed().json() == before  # served all along, from the same cached list
        assert wait_until(lambda: saved_refresh_token(stack) == stack.sim.stats()["refresh_token"], 5)  # rotated
        for _ in range(5):  # a burst of forgeries: they share the next check
            assert stack.webhook(**forged).status_code == 200
        wait_for_calls(stack.sim, TOKEN_CALL, refreshes + 2)
        time.sleep(0.3)
        assert stack.sim.calls(TOKEN_CALL) <= refreshes + 3
        assert stack.sim.stats()["total_api_calls"] == api_calls  # no API call: the rate budget is untouched
        assert stack.feed().json() == before
        assert stack.token_file.exists()
        assert stack.status()["token"]["auth_ok"] is True
