"""Shutdown under load: SIGTERM while wrk and an async client keep the Strava feed busy.

The real service (`python -m service`) talks to the Strava simulator; once the feed is warm (so a
refresh has rotated and persisted the token set) wrk and an httpx client with ~20 requests in
flight drive the feed, and SIGTERM arrives mid-load. One such run (a module fixture) feeds the
tests below. What must hold:

- `/readyz` says 503 on fresh connections for the whole drain, while the feed keeps answering 200;
- only after the drain ends, and the listener closes, are new connections refused;
- the process exits 0 within drain + graceful timeout + a small margin;
- the token file is intact: valid JSON, 0600, holding the refresh token Strava now accepts;
- no request that reached an established connection is lost: each gets a complete 200. (It did
  not hold on uvicorn's own shutdown, which resets keep-alive connections with a request on its
  way and the accept queue; `DrainingServer.shutdown` in service/launcher.py fixes both.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from service.projects.strava_integration.simulator import SimulatorConfig, SimulatorState, create_simulator
from tests.figures import record
from tests.support import SECRETS, ServiceProcess, serve_in_thread

FEED = "/api/strava-integration/feed?limit=10"
DRAIN_S = 2.0
GRACEFUL_S = 10.0
EXIT_MARGIN_S = 3.0
LOAD_BEFORE_SIGTERM_S = 1.5
IN_FLIGHT = 20
WRK_SECONDS = 6
REQUEST_TIMEOUT_S = 5.0
# Distinctive credentials, so the session's secret scan also covers this service's log.
SIM = SimulatorConfig(
    client_secret=SECRETS["STRAVA_CLIENT_SECRET"], initial_refresh_token=SECRETS["STRAVA_REFRESH_TOKEN"]
)


@dataclass(frozen=True, slots=True)
class Outcome:
    started: float  # monotonic
    ended: float
    kind: str  # "ok", "refused" (never got a connection) or "failed" (sent, no complete 200)
    detail: str = ""


# ---- wrk ----


@dataclass(frozen=True, slots=True)
class WrkResult:
    requests: int
    connect: int = 0
    read: int = 0
    write: int = 0
    timeout: int = 0
    non_2xx: int = 0

    @property
    def failed_in_flight(self) -> int:
        # wrk 4.1 (epoll) connects without blocking (EINPROGRESS) and learns of a refusal only
        # when its first write() fails, so a closed listener shows up as *write* errors, not
        # connect errors (under strace every one is `write() = -1 ECONNREFUSED`); connect errors
        # count only when connect() itself fails. Either way no request left wrk: "refused",
        # expected once the drain is over (wrk retries at once, so this count is large). A read
        # error means the request was written and the connection was then reset or closed before
        # a complete response; a timeout, that no response came in time; a non-2xx, a wrong
        # answer. Those three are requests the service lost.
        return self.read + self.timeout + self.non_2xx

    @property
    def refused(self) -> int:
        return self.connect + self.write


_WRK_REQUESTS = re.compile(r"^\s*(\d+) requests in ", re.MULTILINE)
_WRK_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_WRK_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")


def parse_wrk(output: str) -> WrkResult:
    """The counters of wrk's summary; "Socket errors" and "Non-2xx" lines appear only when non-zero."""
    requests = _WRK_REQUESTS.search(output)
    if requests is None:
        raise ValueError(f"not a wrk summary: {output[-500:]!r}")
    socket = _WRK_SOCKET.search(output)
    connect, read, write, timeout = (int(g) for g in socket.groups()) if socket else (0, 0, 0, 0)
    non_2xx = _WRK_NON_2XX.search(output)
    return WrkResult(int(requests.group(1)), connect, read, write, timeout, int(non_2xx.group(1)) if non_2xx else 0)


def test_parse_wrk_reads_the_counters() -> None:
    clean = "Running 6s test @ http://x\n  12345 requests in 6.00s, 1.00MB read\nRequests/sec: 2057.50\n"
    assert parse_wrk(clean) == WrkResult(12345)
    noisy = (
        "  735 requests in 3.01s, 2.47MB read\n"
        "  Socket errors: connect 1, read 4, write 42516, timeout 2\n"
        "  Non-2xx or 3xx responses: 7\n"
    )
    result = parse_wrk(noisy)
    assert result == WrkResult(735, connect=1, read=4, write=42516, timeout=2, non_2xx=7)
    assert (result.failed_in_flight, result.refused) == (13, 42517)
    with pytest.raises(ValueError):
        parse_wrk("unable to connect to 127.0.0.1:1 Connection refused")


# ---- the async client and the readiness poller ----


async def keep_in_flight(client: httpx.AsyncClient, stop: asyncio.Event, outcomes: list[Outcome]) -> None:
    """One of IN_FLIGHT workers: request the feed back to back until `stop`."""
    while not stop.is_set():
        started = time.monotonic()
        try:
            response = await client.get(FEED)
            body = response.json() if response.status_code == 200 else None
        except httpx.ConnectError as exc:
            # No connection, so nothing was sent: expected once the listener has closed.
            outcomes.append(Outcome(started, time.monotonic(), "refused", type(exc).__name__))
            await asyncio.sleep(0.05)  # don't spin on a closed port
            continue
        except (httpx.HTTPError, ValueError) as exc:
            # Read/write errors, "server disconnected", timeouts, a truncated body: sent and lost.
            outcomes.append(Outcome(started, time.monotonic(), "failed", f"{type(exc).__name__}: {exc}"))
            continue
        ok = response.status_code == 200 and isinstance(body, dict) and isinstance(body.get("activities"), list)
        outcomes.append(Outcome(started, time.monotonic(), "ok" if ok else "failed", str(response.status_code)))


async def poll_readiness(base_url: str, stop: asyncio.Event, seen: list[tuple[float, int | str]]) -> None:
    """`/readyz` on a fresh connection every 50 ms until the listener refuses one (or `stop`)."""
    async with httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=0), timeout=2.0) as fresh:
        while not stop.is_set():
            try:
                status: int | str = (await fresh.get(base_url + "/readyz")).status_code
            except httpx.ConnectError:
                seen.append((time.monotonic(), "refused"))
                return
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            seen.append((time.monotonic(), status))
            await asyncio.sleep(0.05)


# ---- one load run, shared by the tests below ----


@dataclass(slots=True)
class LoadRun:
    sigterm_at: float
    exited_at: float
    exit_code: int | None
    outcomes: list[Outcome]
    readiness: list[tuple[float, int | str]]
    wrk: WrkResult
    wrk_output: str
    token_file: Path
    accepted_refresh_token: str | None  # what the simulator accepts once the service is gone
    log_tail: str

    @property
    def drain_end(self) -> float:
        return self.sigterm_at + DRAIN_S

    def of_kind(self, kind: str) -> list[Outcome]:
        return [o for o in self.outcomes if o.kind == kind]

    def figures(self) -> dict[str, object]:
        ok, failed, refused = self.of_kind("ok"), self.of_kind("failed"), self.of_kind("refused")
        return {
            "requests_ok": len(ok) + self.wrk.requests - self.wrk.non_2xx,
            "httpx_ok": len(ok),
            "httpx_ok_in_drain": sum(self.sigterm_at <= o.started and o.ended <= self.drain_end for o in ok),
            "wrk_requests": self.wrk.requests,
            "failed_in_flight": len(failed) + self.wrk.failed_in_flight,
            "refused_after_close": len(refused) + self.wrk.refused,
            "readyz_503": sum(s == 503 for _, s in self.readiness),
            "exit_code": self.exit_code,
            "seconds_to_exit": round(self.exited_at - self.sigterm_at, 2),
        }


def service_env(simulator_url: str, token_file: Path) -> dict[str, str]:
    return {
        "STRAVA_CLIENT_ID": SIM.client_id,
        "STRAVA_CLIENT_SECRET": SIM.client_secret,
        "STRAVA_REFRESH_TOKEN": SIM.initial_refresh_token,
        "STRAVA_API_URL": f"{simulator_url}/api/v3",
        "STRAVA_OAUTH_URL": f"{simulator_url}/oauth",
        "STRAVA_TOKEN_FILE": str(token_file),
        "SHUTDOWN_DRAIN_SECONDS": str(DRAIN_S),
        "SHUTDOWN_TIMEOUT_SECONDS": str(GRACEFUL_S),
        "LOG_LEVEL": "info",
    }


async def drive(service: ServiceProcess) -> tuple[float, float, list[Outcome], list[tuple[float, int | str]], str]:
    """wrk and the async client on the feed; SIGTERM after LOAD_BEFORE_SIGTERM_S; until the exit."""
    assert service.proc is not None
    wrk = subprocess.Popen(
        ["wrk", "-t1", "-c16", f"-d{WRK_SECONDS}s", "--latency", "--timeout", "5s", service.base_url + FEED],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    stop = asyncio.Event()
    outcomes: list[Outcome] = []
    readiness: list[tuple[float, int | str]] = []
    limits = httpx.Limits(max_connections=IN_FLIGHT, max_keepalive_connections=IN_FLIGHT)
    try:
        async with httpx.AsyncClient(base_url=service.base_url, limits=limits, timeout=REQUEST_TIMEOUT_S) as client:
            workers = [asyncio.create_task(keep_in_flight(client, stop, outcomes)) for _ in range(IN_FLIGHT)]
            await asyncio.sleep(LOAD_BEFORE_SIGTERM_S)
            sigterm_at = time.monotonic()
            service.proc.send_signal(signal.SIGTERM)
            poller = asyncio.create_task(poll_readiness(service.base_url, stop, readiness))
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(service.proc.wait, DRAIN_S + GRACEFUL_S + EXIT_MARGIN_S)
            exited_at = time.monotonic()
            stop.set()
            await asyncio.wait_for(asyncio.gather(*workers, poller), REQUEST_TIMEOUT_S + 2)
        wrk_output, _ = await asyncio.to_thread(wrk.communicate, timeout=WRK_SECONDS + 15)
    finally:
        if wrk.poll() is None:
            wrk.kill()
            wrk.wait(5)
    return sigterm_at, exited_at, outcomes, readiness, wrk_output.decode(errors="replace")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoadRun]:
    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (.ci/run installs it)")
    token_file = tmp_path_factory.mktemp("shutdown-under-load") / "strava" / "tokens.json"
    app = create_simulator(SIM)
    sim: SimulatorState = app.state.sim
    with serve_in_thread(app) as simulator_url, ServiceProcess(env=service_env(simulator_url, token_file)) as service:
        assert httpx.get(service.base_url + FEED, timeout=REQUEST_TIMEOUT_S).status_code == 200
        assert token_file.is_file(), "the warm-up refresh did not persist the rotated token set"
        assert sim.stats()["token_refreshes"] == 1
        sigterm_at, exited_at, outcomes, readiness, wrk_output = asyncio.run(drive(service))
        assert service.proc is not None
        result = LoadRun(
            sigterm_at=sigterm_at,
            exited_at=exited_at,
            exit_code=service.proc.poll(),
            outcomes=outcomes,
            readiness=readiness,
            wrk=parse_wrk(wrk_output),
            wrk_output=wrk_output,
            token_file=token_file,
            accepted_refresh_token=sim.stats()["refresh_token"],
            log_tail=service.raw_log()[-2000:],
        )
    # Measured figures, whatever the tests below conclude from them.
    record("shutdown under load", **result.figures())
    yield result


# ---- what must hold ----


def test_readyz_says_503_on_fresh_connections_through_the_drain(run: LoadRun) -> None:
    statuses = [s for _, s in run.readiness]
    assert 503 in statuses, f"/readyz never said 503: {statuses}"
    first_503 = next(t for t, s in run.readiness if s == 503)
    assert first_503 - run.sigterm_at < 1.0
    assert any(s == 503 and t >= run.drain_end - 0.5 for t, s in run.readiness), "no 503 late in the drain"
    # Once draining, never ready again; a fresh connection is refused only after the drain.
    after = [s for t, s in run.readiness if t >= first_503]
    assert set(after) <= {503, "refused", "ReadError", "RemoteProtocolError"}, after
    refused_at = [t for t, s in run.readiness if s == "refused"]
    assert not refused_at or refused_at[0] >= run.drain_end, "the listener closed before the drain ended"


def test_the_feed_is_served_through_the_drain_and_refused_only_after_it(run: LoadRun) -> None:
    in_drain = run.figures()["httpx_ok_in_drain"]
    assert isinstance(in_drain, int) and in_drain > 0
    assert run.wrk.requests > 0 and run.wrk.non_2xx == 0, run.wrk_output
    assert not [o for o in run.outcomes if o.kind == "failed" and o.detail.isdigit()], "a non-200 answer"
    early = [round(o.ended - run.sigterm_at, 3) for o in run.of_kind("refused") if o.ended < run.drain_end]
    assert not early, f"connections refused during the drain, {early} s after SIGTERM"


def test_the_process_exits_0_within_drain_and_graceful_timeout(run: LoadRun) -> None:
    assert run.exit_code == 0, run.log_tail
    assert run.exited_at - run.sigterm_at < DRAIN_S + GRACEFUL_S + EXIT_MARGIN_S


def test_the_token_file_is_intact_private_and_current(run: LoadRun) -> None:
    data = json.loads(run.token_file.read_bytes())
    assert isinstance(data.get("refresh_token"), str) and data["refresh_token"]
    assert stat.S_IMODE(run.token_file.stat().st_mode) == 0o600
    assert data["refresh_token"] == run.accepted_refresh_token
    assert not list(run.token_file.parent.glob(".tokens-*")), "a temporary token file was left behind"


def test_no_request_sent_on_an_established_connection_is_lost(run: LoadRun) -> None:
    lost = [(round(o.started - run.sigterm_at, 3), o.detail) for o in run.of_kind("failed")[:10]]
    readyz_lost = [s for _, s in run.readiness if s not in (200, 503, "refused")]
    assert (run.figures()["failed_in_flight"], readyz_lost) == (0, []), (
        f"{run.figures()}; wrk {run.wrk}; /readyz lost {readyz_lost}; httpx lost (s after SIGTERM, why): {lost}"
    )
