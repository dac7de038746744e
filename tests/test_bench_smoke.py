"""bench/ still works: its CLI starts, it reads wrk's output, and its baseline replays the service's bytes.

No timings are asserted here; measuring belongs to `python bench/run.py`.
"""

from __future__ import annotations

import subprocess
import sys

import httpx

from bench.bare_app import create_app, recorded
from bench.run import choose_route, parse_wrk
from tests.support import ROOT, ServiceProcess

WRK_OUTPUT = """\
Running 10s test @ http://127.0.0.1:8081/
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     3.05ms  812.44us  41.20ms   93.10%
    Req/Sec    21.05k     1.10k   23.01k    78.00%
  Latency Distribution
     50%    2.93ms
     75%    3.10ms
     90%    3.51ms
     99%    6.72ms
  209411 requests in 10.00s, 2.55GB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 5
Requests/sec:  20940.12
Transfer/sec:    261.10MB
"""


def test_run_help_works() -> None:
    done = subprocess.run(
        [sys.executable, "bench/run.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "--loop" in done.stdout and "--json" in done.stdout


def test_parse_wrk_reads_every_figure_and_error() -> None:
    result = parse_wrk(WRK_OUTPUT)
    assert result.rps == 20940.12
    assert (result.p50_ms, result.p99_ms, result.max_ms) == (2.93, 6.72, 41.2)
    assert result.requests == 209411
    assert result.socket_errors == {"connect": 0, "read": 2, "write": 0, "timeout": 1}
    assert result.non_2xx == 5
    assert result.broken


def test_parse_wrk_clean_run_is_not_broken() -> None:
    clean = WRK_OUTPUT.replace("  Socket errors: connect 0, read 2, write 0, timeout 1\n", "").replace(
        "  Non-2xx or 3xx responses: 5\n", ""
    )
    result = parse_wrk(clean)
    assert result.socket_errors == {} and result.non_2xx == 0
    assert not result.broken


async def test_bare_app_replays_the_benchmarked_route(sandbox_service: ServiceProcess) -> None:
    path, status, headers, body = choose_route(sandbox_service.base_url)
    bare = create_app(recorded(path, status, headers, body))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=bare), base_url="http://bare") as client:
        replayed = await client.get(path)
    assert replayed.status_code == status == 200
    assert replayed.content == body
    assert replayed.headers["content-type"] == headers["content-type"]
    assert replayed.headers.get("etag") == headers.get("etag")
    # By default the baseline sends the same bytes but the one header observability adds.
    assert "x-request-id" in headers and "x-request-id" not in replayed.headers
    for name in ("x-content-type-options", "referrer-policy", "x-frame-options"):
        assert replayed.headers[name] == headers[name]
    # `--bare-headers route`: only the route's own headers, the stricter comparison.
    strict = create_app(recorded(path, status, headers, body, security_headers=False))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=strict), base_url="http://bare") as client:
        route_only = await client.get(path)
    assert route_only.content == body and route_only.headers["etag"] == headers["etag"]
    assert "x-frame-options" not in route_only.headers and "x-request-id" not in route_only.headers
