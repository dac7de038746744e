"""bench/ still works: its CLI starts, it reads wrk's output, and its baseline replays the service's bytes.

No timings are asserted here; measuring belongs to `python bench/run.py`.
"""

from __future__ import annotations

import subprocess
import sys

import httpx

from bench.bare_app import create_app, recorded
from bench.run import COMPARISONS, Comparison, choose_route, pair_ratios, parse_wrk
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
    assert "--loop" in done.stdout and "--json" in done.stdout and "--compare" in done.stdout


def test_unknown_comparison_is_refused() -> None:
    done = subprocess.run(
        [sys.executable, "bench/run.py", "--compare", "nonsense"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2 and "--compare" in done.stderr


def test_ratios_are_taken_per_pair_in_both_halves_of_a_round() -> None:
    """A-B-B-A: each half of a round gives one candidate/baseline pair; the median is over the pairs."""
    pair = {"pair": "service/bare"}
    runs = [
        {"run": 1, "half": 0, "server": "bare", "rps": 100.0, **pair},
        {"run": 1, "half": 0, "server": "service", "rps": 90.0, **pair},
        {"run": 1, "half": 1, "server": "service", "rps": 40.0, **pair},  # the machine slowed down: both sides
        {"run": 1, "half": 1, "server": "bare", "rps": 50.0, **pair},  # of this pair alike, the ratio still reads
        {"run": 1, "half": 0, "server": "bare", "rps": 1.0, "pair": "gzip/service"},  # another comparison's block
        {"run": 2, "half": 0, "server": "bare", "rps": 100.0, **pair},
        {"run": 2, "half": 0, "server": "service", "rps": 85.0, **pair},
    ]
    ratios = pair_ratios(runs, Comparison("service", "bare", 0.8, None, "test"), "rps")
    assert ratios == [0.9, 0.8, 0.85]
    assert set(COMPARISONS) == {"baselines", "redis", "gzip"}


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
