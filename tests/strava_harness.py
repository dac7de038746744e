"""Shared set-up for the end-to-end strava-integration tests: the simulator, the service, and leak checks.

Two ways to run the service against the simulator, both over real HTTP on 127.0.0.1:

- `running_stack()`: `python -m service` as a subprocess, as the operator runs it (JSON logs on
  disk, restarts). The simulator uses the distinctive values of `tests.support.SECRETS` as its
  client secret and initial refresh token, so a leak of either is recognisable.
- `running_inprocess()`: `create_app(...)` in a uvicorn thread with a `FakeClock` it shares with
  the simulator, for what needs time travel (TTLs, rate-limit windows, OAuth state expiry).

Every stack remembers the service's responses and every token it learns of (the simulator's
current refresh token, the token file's access and refresh tokens, OAuth codes); on exit it
checks that none of them, nor any `SECRETS` value, appears in a log line, a response header or a
response body.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import structlog

from observability.redact import Redactor
from service.app import create_app
from service.projects.strava_integration import PROJECT
from service.projects.strava_integration.simulator import SimulatorConfig, SimulatorState, create_simulator
from service.settings import load_settings
from tests.support import IN_PROCESS_LOG, SECRETS, ServiceProcess, serve_in_thread, wait_until

PREFIX = "/api/strava-integration"
CLIENT_ID = "siteapi-e2e"
ADMIN_KEY = SECRETS["STRAVA_ADMIN_API_KEY"]
ADMIN = {"X-API-Key": ADMIN_KEY}
VERIFY_TOKEN = SECRETS["STRAVA_WEBHOOK_VERIFY_TOKEN"]
METRICS_AUTH = {"Authorization": f"Bearer {SECRETS['METRICS_BEARER_TOKEN']}"}
LIST_CALL = "GET /api/v3/athlete/activities"
DETAIL_CALL = "GET /api/v3/activities/{id}"
STATS_CALL = "GET /api/v3/athletes/{id}/stats"
TOKEN_CALL = "POST /oauth/token"


def sim_config(**overrides: Any) -> SimulatorConfig:
    values: dict[str, Any] = {
        "client_id": CLIENT_ID,
        "client_secret": SECRETS["STRAVA_CLIENT_SECRET"],
        "initial_refresh_token": SECRETS["STRAVA_REFRESH_TOKEN"],
    }
    values.update(overrides)
    return SimulatorConfig(**values)


class Sim:
    """The simulator as a test sees it: its control API over HTTP, and its state object."""

    def __init__(self, url: str, state: SimulatorState) -> None:
        self.url = url
        self.state = state
        self.http = httpx.Client(base_url=url, timeout=5.0)
        self.tokens_seen: set[str] = set()

    def stats(self) -> dict[str, Any]:
        stats = self.http.get("/_sim/stats").json()
        if stats["refresh_token"]:
            self.tokens_seen.add(stats["refresh_token"])
        return stats

    def calls(self, key: str = LIST_CALL) -> int:
        return self.stats()["calls"].get(key, 0)

    def control(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        response = self.http.post(f"/_sim/{path}", json=body or {})
        assert response.status_code == 200, response.text
        return response.json()

    def fault(self, kind: str, **options: Any) -> None:
        self.control("fault", {"kind": kind, **options})

    def revoke_grant(self, webhook_url: str | None = None) -> dict[str, Any]:
        """The athlete revokes the app on strava.com: every token dies; optionally Strava's event is posted."""
        return self.control("revoke_grant", {"webhook_url": webhook_url} if webhook_url else {})

    def dead_refresh_presented(self) -> int:
        """Refresh attempts with a token that once worked (rotated away or revoked): 0 for a straight chain."""
        return int(self.stats()["dead_refresh_presented"])

    def upsert(self, **fields: Any) -> dict[str, Any]:
        return self.control("activities", fields)

    def delete(self, activity_id: int) -> None:
        assert self.http.delete(f"/_sim/activities/{activity_id}").status_code == 204

    def raw_activities(self) -> list[dict[str, Any]]:
        with self.state._lock:
            return [dict(a) for a in self.state.activities.values()]

    def public_ids(self) -> set[int]:
        return {a["id"] for a in self.raw_activities() if a["private"] is False and a["visibility"] == "everyone"}

    def hidden_ids(self) -> set[int]:
        return {a["id"] for a in self.raw_activities()} - self.public_ids()

    def save_tokens_as_a_refresh_would(self, token_file: Path) -> None:
        """Redeem the current refresh token and write the set as the service saves it after a refresh."""
        issued = self.refresh_with(self.stats()["refresh_token"]).json()
        record = {k: issued[k] for k in ("access_token", "refresh_token", "expires_at")}
        token_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        token_file.write_bytes(orjson.dumps({**record, "athlete_id": None, "scope": None}))
        token_file.chmod(0o600)
        self.tokens_seen |= {issued["access_token"], issued["refresh_token"]}

    def refresh_with(self, refresh_token: str) -> httpx.Response:
        """What Strava says to a direct refresh with `refresh_token` (used to prove a token is dead)."""
        form = {
            "client_id": self.state.config.client_id,
            "client_secret": self.state.config.client_secret,
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
        }
        return self.http.post("/oauth/token", data=form)


@contextlib.contextmanager
def running_simulator(clock: Callable[[], float] = time.time, **config: Any) -> Iterator[Sim]:
    app = create_simulator(sim_config(**config), clock=clock)
    with serve_in_thread(app) as url:
        sim = Sim(url, app.state.sim)
        try:
            yield sim
        finally:
            sim.http.close()


def service_env(sim: Sim, token_file: Path, **extra: str) -> dict[str, str]:
    env = {
        "STRAVA_CLIENT_ID": CLIENT_ID,
        "STRAVA_CLIENT_SECRET": SECRETS["STRAVA_CLIENT_SECRET"],
        "STRAVA_REFRESH_TOKEN": SECRETS["STRAVA_REFRESH_TOKEN"],
        # The API at the root, as Strava serves it from 1 June 2027 (tests/strava_upstream.py keeps /api/v3);
        # the simulator counts calls under the /api/v3 names in both layouts.
        "STRAVA_API_URL": sim.url,
        "STRAVA_OAUTH_URL": f"{sim.url}/oauth",
        "STRAVA_TOKEN_FILE": str(token_file),
        "STRAVA_ADMIN_API_KEY": ADMIN_KEY,
        "STRAVA_WEBHOOK_VERIFY_TOKEN": VERIFY_TOKEN,
        "METRICS_BEARER_TOKEN": SECRETS["METRICS_BEARER_TOKEN"],
        "SHUTDOWN_DRAIN_SECONDS": "0",  # nothing balances load here: stop at once
    }
    env.update(extra)
    return {k: v for k, v in env.items() if v != ""}  # "" drops a variable


class Stack:
    """A running service plus its simulator; every service response is kept for the leak check."""

    def __init__(self, base_url: str, sim: Sim, token_file: Path, service: ServiceProcess | None = None) -> None:
        self.base_url = base_url
        self.sim = sim
        self.token_file = token_file
        self.service = service
        self.http = httpx.Client(base_url=base_url, timeout=10.0)
        self.seen: list[str] = []  # every response head and body, for the leak check
        self.secrets: set[str] = set(SECRETS.values())
        self.subscription_id = 1  # what `webhook()` sends unless told otherwise

    # ---- requests (all recorded) ----

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self.http.request(method, path, **kwargs)
        self.seen.append(f"{response.status_code} {dict(response.headers)}\n{response.text}")
        return response

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, **kwargs)

    def api(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.get(PREFIX + path, **kwargs)

    def feed(self, query: str = "", **kwargs: Any) -> httpx.Response:
        return self.api("/feed" + (f"?{query}" if query else ""), **kwargs)

    def webhook(self, **event: Any) -> httpx.Response:
        body = {
            "object_type": "activity",
            "object_id": 1,
            "aspect_type": "update",
            "owner_id": self.sim.state.config.athlete_id,
            "subscription_id": self.subscription_id,
            "event_time": int(time.time()),
            "updates": {},
        }
        body.update(event)
        return self.post(PREFIX + "/webhook", content=orjson.dumps(body), headers={"Content-Type": "application/json"})

    def health(self) -> dict[str, Any]:
        return self.get("/health").json()["checks"]["strava-integration"][0]

    def metrics(self) -> str:
        return self.get("/metrics", headers=METRICS_AUTH).text

    def status(self) -> dict[str, Any]:
        response = self.api("/status", headers=ADMIN)
        assert response.status_code == 200, response.text
        return response.json()

    # ---- secrets ----

    def learn_tokens(self) -> None:
        """Remember every token in play right now: the simulator's and the token file's."""
        self.sim.stats()
        self.secrets |= self.sim.tokens_seen
        with contextlib.suppress(FileNotFoundError, ValueError):
            saved = orjson.loads(self.token_file.read_bytes())
            self.secrets |= {saved[k] for k in ("access_token", "refresh_token") if saved.get(k)}

    def assert_no_leaks(self, log_text: str = "") -> int:
        """No secret in the log or any response; returns how many texts were scanned."""
        self.learn_tokens()
        texts = [*self.seen, log_text]
        for secret in self.secrets:
            assert len(secret) >= 8, "a short 'secret' would match by accident"
            for text in texts:
                assert secret not in text, f"secret leaked: {secret[:4]}… in {text[:200]!r}"
        return len(texts)

    def close(self) -> None:
        self.http.close()


@contextlib.contextmanager
def running_stack(
    tmp_path: Path,
    *,
    env: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
    sim: Sim | None = None,
    **sim_overrides: Any,
) -> Iterator[Stack]:
    """Simulator (unless given) + `python -m service`; on exit the service stops and logs are scanned."""
    with contextlib.ExitStack() as stack:
        if sim is None:
            sim = stack.enter_context(running_simulator(**sim_overrides))
        token_file = tmp_path / "strava" / "tokens.json"
        service = ServiceProcess(env=service_env(sim, token_file, **(env or {})), args=args).start()
        running = Stack(service.base_url, sim, token_file, service)
        try:
            yield running
        finally:
            running.learn_tokens()
            service.stop()
            running.close()
        running.assert_no_leaks(service.raw_log())


def logging_redactor() -> Redactor | None:
    """The redactor of the session's logging pipeline, which the launcher would hand to `create_app`."""
    return next((p for p in structlog.get_config()["processors"] if isinstance(p, Redactor)), None)


def inprocess_app(sim: Sim, token_file: Path, clock: Callable[[], float], **extra: str) -> Any:
    env = service_env(sim, token_file, **extra)
    settings = load_settings(env, parsers={PROJECT.name: PROJECT.parse_settings})
    return create_app(settings, redactor=logging_redactor(), clock=clock)


def _settled_log_tail(offset: int) -> str:
    """The in-process log from `offset`, once the writer thread has stopped adding to it."""
    size = -1
    for _ in range(40):
        current = IN_PROCESS_LOG.stat().st_size if IN_PROCESS_LOG.exists() else 0
        if current == size:
            break
        size = current
        time.sleep(0.05)
    if not IN_PROCESS_LOG.exists():
        return ""
    with open(IN_PROCESS_LOG, "rb") as fh:
        fh.seek(offset)
        return fh.read().decode(errors="replace")


@contextlib.contextmanager
def running_inprocess(sim: Sim, tmp_path: Path, clock: Callable[[], float], **extra: str) -> Iterator[Stack]:
    """The app in a uvicorn thread, on `clock`; its responses and log lines are checked for leaks on exit."""
    token_file = tmp_path / "strava" / "tokens.json"
    offset = IN_PROCESS_LOG.stat().st_size if IN_PROCESS_LOG.exists() else 0
    with serve_in_thread(inprocess_app(sim, token_file, clock, **extra)) as url:
        running = Stack(url, sim, token_file)
        try:
            yield running
        finally:
            running.learn_tokens()
            running.close()
    running.assert_no_leaks(_settled_log_tail(offset))


def wait_for_calls(sim: Sim, key: str, at_least: int, timeout: float = 5.0) -> int:
    assert wait_until(lambda: sim.calls(key) >= at_least, timeout), f"{key}: {sim.calls(key)} < {at_least}"
    return sim.calls(key)


def assert_error(response: httpx.Response, status: int, code: str, parameter: str | None = None) -> dict[str, Any]:
    """Our JSON error shape: stable code, message, request id; never a traceback."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["error"] == code, body
    assert isinstance(body["message"], str) and body["message"]
    assert body["request_id"] == response.headers["x-request-id"]
    assert "Traceback" not in response.text
    if parameter is not None:
        assert body["parameter"] == parameter
    return body


def metric_value(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text, 0 when absent."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        if series.split("{")[0] != name:
            continue
        found = series.partition("{")[2].rstrip("}")
        if ",".join(sorted(found.split(","))) == wanted or (not wanted and not found):
            return float(value)
    return 0.0
