"""The service against bare Starlette baselines, and against itself with REDIS_URL or gzip.

Both run under uvicorn (one worker, httptools, the same event loop) pinned to one CPU; wrk runs
pinned to the other. The service runs as in production (`python -m service --sandbox`): metrics
on, JSON access log at info level (to a file in a temporary directory), request ids. Each round
measures every comparison A-B-B-A (the sides of a pair back to back, the second pair mirrored),
so drift on the machine hits both sides of a pair alike; ratios are the medians of the per-pair
ratios, shown beside the server's CPU time per request (from /proc/<pid>/stat). `--compare`
picks what is compared: both baselines (bare Starlette with the same bytes and headers, plain
Starlette with only the route's), the service with REDIS_URL against the embedded state, or gzip
against identity. Exit status: 0 targets met, 1 a target missed, 3 a run was broken (socket
errors, non-2xx responses, a server died or served different bytes).

    python bench/run.py --loop asyncio --nice -10   # the real run, about 8 minutes
    python bench/run.py --runs 2 --duration 3       # a quick check
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.bare_app import SECURITY_HEADER_NAMES, recorded  # noqa: E402

HOST = "127.0.0.1"
FEED_PATH = "/api/strava-integration/feed?limit=30"
FALLBACK_PATH = "/"
EXCLUDED = "/livez,/readyz,/metrics"  # the service's default; never the benchmarked route
MIN_RPS_RATIO = 0.80
MAX_P99_RATIO = 1.5
EXIT_TARGET_MISSED = 1
EXIT_BROKEN = 3
NOISY = 0.10  # a run where other processes took more than this share of the server's CPU

# Never through a proxy: every request of this script goes to 127.0.0.1.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class BenchError(Exception):
    """A broken run: the numbers would mean nothing."""


# --- wrk -----------------------------------------------------------------------------------


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p75_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    requests: int
    socket_errors: dict[str, int] = field(default_factory=dict)
    non_2xx: int = 0

    @property
    def broken(self) -> bool:
        return self.non_2xx > 0 or any(self.socket_errors.values())


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_DURATION = r"([\d.]+)(us|ms|s|m|h)"


def _ms(value: str, unit: str) -> float:
    return float(value) * _UNITS_MS[unit]


def parse_wrk(output: str) -> WrkResult:
    """Parse `wrk --latency` output; raises BenchError if a required line is missing."""

    def need(pattern: str) -> re.Match[str]:
        match = re.search(pattern, output, re.MULTILINE)
        if match is None:
            raise BenchError(f"wrk output has no line matching {pattern!r}:\n{output}")
        return match

    percentiles = {p: _ms(*need(rf"^\s*{p}%\s+{_DURATION}\s*$").groups()) for p in ("50", "75", "90", "99")}
    latency_max = need(rf"^\s*Latency\s+{_DURATION}\s+{_DURATION}\s+{_DURATION}").groups()[4:6]
    errors: dict[str, int] = {}
    match = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if match:
        errors = dict(zip(("connect", "read", "write", "timeout"), map(int, match.groups()), strict=True))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return WrkResult(
        rps=float(need(r"^Requests/sec:\s+([\d.]+)").group(1)),
        p50_ms=percentiles["50"],
        p75_ms=percentiles["75"],
        p90_ms=percentiles["90"],
        p99_ms=percentiles["99"],
        max_ms=_ms(*latency_max),
        requests=int(need(r"^\s*(\d+) requests in").group(1)),
        socket_errors=errors,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
    )


def pinned(cpu: int, args: argparse.Namespace) -> list[str]:
    """The command prefix that pins a process to one CPU, at the requested niceness."""
    nice = ["nice", "-n", str(args.nice)] if args.nice else []
    return [*nice, "taskset", "-c", str(cpu)]


def prioritize(pid: int, nice: int) -> None:
    """With autogroup scheduling, niceness counts only inside a session: set the session's too.

    Every process started here has its own session, so this touches nothing but our own.
    """
    if nice:
        with contextlib.suppress(OSError):
            Path(f"/proc/{pid}/autogroup").write_text(str(nice))


def run_wrk(url: str, seconds: int, args: argparse.Namespace, headers: Sequence[str] = ()) -> tuple[WrkResult, str]:
    extra = [arg for header in headers for arg in ("-H", header)]
    cmd = [
        *pinned(args.wrk_cpu, args),
        "wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{seconds}s", "--latency", *extra, url,
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    prioritize(proc.pid, args.nice)
    try:
        out, err = proc.communicate(timeout=seconds + 30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise BenchError(f"wrk did not finish within {seconds + 30} s") from None
    if proc.returncode != 0:
        raise BenchError(f"wrk exited {proc.returncode}: {err.strip() or out.strip()}")
    return parse_wrk(out), out


# --- other load on the machine ---------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_busy() -> dict[int, tuple[float, float]]:
    """Per CPU: (user and system seconds, steal seconds) since boot.

    Interrupt time is left out: on loopback most of it is the benchmark's own traffic.
    """
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu") and line[3].isdigit():
            name, *ticks = line.split()
            t = [int(x) for x in ticks]
            user, nice, system, steal = t[0], t[1], t[2], t[7]
            out[int(name[3:])] = ((user + nice + system) / _TICK, steal / _TICK)
    return out


def _process_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime: all threads


class LoadMeter:
    """CPU time on the server's CPU that the server did not use: someone else's.

    The machine may be shared; a run where something else took the server's CPU measures that
    something, not the server.
    """

    def __init__(self, server_pid: int, cpu: int) -> None:
        self.pid = server_pid
        self.cpu = cpu
        self.start = time.monotonic()
        self.busy0, self.steal0 = _cpu_busy()[cpu]
        self.server0 = _process_seconds(server_pid)

    def stop(self) -> tuple[float, float, float]:
        """(other load, steal) as fractions of the server's CPU over the run, and the server's CPU seconds."""
        elapsed = max(time.monotonic() - self.start, 1e-6)
        busy, steal = _cpu_busy()[self.cpu]
        server = _process_seconds(self.pid) - self.server0
        other = max(0.0, (busy - self.busy0) - server) / elapsed
        return other, (steal - self.steal0) / elapsed, server


def wait_for_quiet(cpu: int, limit: float) -> float:
    """Wait (at most `limit` seconds) until other processes leave `cpu` mostly idle.

    Called between runs, when both servers are idle, so anything busy on the CPU is someone
    else. Returns the last measured share; the run goes ahead either way.
    """
    deadline = time.monotonic() + limit
    while True:
        before = _cpu_busy()[cpu][0]
        time.sleep(1.0)
        busy = _cpu_busy()[cpu][0] - before
        if busy <= NOISY or time.monotonic() >= deadline:
            return busy


# --- servers -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def fetch(url: str, timeout: float = 5.0, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """GET `url`; the body as sent (urllib does not decompress, so a gzip body stays gzip)."""
    try:
        with _opener.open(urllib.request.Request(url, headers=headers or {}), timeout=timeout) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


class Server:
    """One server process pinned to a CPU, stdout and stderr to a file, stopped in `stop`."""

    def __init__(
        self, name: str, cmd: Sequence[str], env: dict[str, str], log_path: Path, port: int, nice: int = 0
    ) -> None:
        self.name = name
        self.nice = nice
        self.cmd = list(cmd)
        self.env = env
        self.log_path = log_path
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, path: str) -> str:
        return f"http://{HOST}:{self.port}{path}"

    def start(self, ready_path: str, timeout: float = 30.0) -> None:
        with open(self.log_path, "wb") as log:
            # Own session: a Ctrl-C reaches this script, which stops the server in `finally`.
            self.proc = subprocess.Popen(
                self.cmd, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        prioritize(self.proc.pid, self.nice)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            with contextlib.suppress(OSError):
                if fetch(self.url(ready_path), timeout=1.0)[0] == 200:
                    return
            time.sleep(0.1)
        raise BenchError(f"{self.name} did not answer {ready_path} within {timeout:g} s; see {self.log_path}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            tail = self.log_path.read_bytes()[-2000:].decode("utf-8", "replace")
            raise BenchError(f"{self.name} exited with {self.proc.returncode}:\n{tail}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def service_server(
    loop: str, tmp: Path, args: argparse.Namespace, *, name: str = "service", extra_env: dict[str, str] | None = None
) -> Server:
    port = free_port()
    inherited = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LOG_", "METRICS_", "SHUTDOWN_", "HOST", "PORT", "REDIS_"))
    }
    env = {
        **inherited,
        "HOST": HOST,
        "PORT": str(port),
        "LOG_LEVEL": "info",
        "LOG_FORMAT": "json",
        "METRICS_EXCLUDE_PATHS": EXCLUDED,
        "SHUTDOWN_DRAIN_SECONDS": "0",
        "SHUTDOWN_TIMEOUT_SECONDS": "5",
        **(extra_env or {}),
    }
    cmd = [*pinned(args.server_cpu, args), sys.executable, "-m", "service", "--sandbox", "--loop", loop]
    return Server(name, cmd, env, tmp / f"{name}.log", port, args.nice)


def bare_server(loop: str, tmp: Path, args: argparse.Namespace, response_file: Path, *, name: str = "bare") -> Server:
    port = free_port()
    cmd = [
        *pinned(args.server_cpu, args), sys.executable, "-m", "bench.bare_app",
        "--response", str(response_file), "--port", str(port), "--loop", loop,
    ]  # fmt: skip
    return Server(name, cmd, dict(os.environ), tmp / f"{name}.log", port, args.nice)


class RedisServer:
    """A throwaway redis-server on loopback for `--compare redis`, on the wrk CPU (off the server's)."""

    def __init__(self, tmp: Path, args: argparse.Namespace) -> None:
        self.port = free_port()
        self.cmd = [
            *pinned(args.wrk_cpu, args), "redis-server", "--port", str(self.port), "--bind", HOST,
            "--save", "", "--appendonly", "no", "--dir", str(tmp),
        ]  # fmt: skip
        self.log_path = tmp / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"redis-server exited with {self.proc.returncode}; see {self.log_path}")
            with contextlib.suppress(OSError), socket.create_connection((HOST, self.port), timeout=0.5) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    return
            time.sleep(0.05)
        raise BenchError(f"redis-server did not answer within {timeout:g} s")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def choose_route(base_url: str, warm_seconds: float = 15.0) -> tuple[str, int, dict[str, str], bytes]:
    """The feed once it answers 200 (warmed: later hits come from its cache), else `/`.

    Returns the path and the response that the bare app will replay.
    """
    deadline = time.monotonic() + warm_seconds
    status = 0
    while time.monotonic() < deadline:
        status, _, _ = fetch(base_url + FEED_PATH)
        if status in (200, 404):  # 404: this build has no feed; waiting will not help
            break
        time.sleep(0.5)
    path = FEED_PATH if status == 200 else FALLBACK_PATH
    if path == FALLBACK_PATH:
        print(f"  feed answered {status}; falling back to GET {FALLBACK_PATH}")
    for _ in range(3):  # the first hits fill the caches and any lazy state
        fetch(base_url + path)
    status, headers, body = fetch(base_url + path)
    if status != 200:
        raise BenchError(f"GET {path} answered {status}")
    return path, status, headers, body


def requests_by_status(service: Server) -> dict[int, float]:
    """The service's own request counter, summed per status over every route it counts."""
    status, _, body = fetch(service.url("/metrics"))
    if status != 200:
        raise BenchError(f"GET /metrics answered {status}")
    totals: dict[int, float] = {}
    for line in body.decode().splitlines():
        if line.startswith("siteapi_http_requests_total{"):
            labels, value = line.rsplit(" ", 1)
            code = int(re.search(r'status="(\d+)"', labels).group(1))  # type: ignore[union-attr]
            totals[code] = totals.get(code, 0.0) + float(value)
    return totals


def count_access_lines(path: Path) -> int:
    count = 0
    with open(path, "rb") as f:
        for line in f:
            if b'"event":"request"' in line:
                count += 1
    return count


# --- one comparison ------------------------------------------------------------------------


@dataclass
class Variant:
    """What one measurement hits: a server, and the request headers wrk sends it."""

    name: str
    server: Server
    headers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Comparison:
    candidate: str
    baseline: str
    min_rps_ratio: float
    max_p99_ratio: float | None
    what: str


GZIP = "Accept-Encoding: gzip"
COMPARISONS = {
    "baselines": (
        Comparison("service", "bare", MIN_RPS_RATIO, MAX_P99_RATIO, "bare Starlette, the same bytes and headers"),
        Comparison("service", "plain", MIN_RPS_RATIO, MAX_P99_RATIO, "plain Starlette, only the route's headers"),
    ),
    "redis": (Comparison("redis", "service", 0.95, None, "REDIS_URL set against the embedded state"),),
    "gzip": (Comparison("gzip", "service", 1.0, None, "Accept-Encoding: gzip against none"),),
}


def measure(variant: Variant, path: str, run: int, args: argparse.Namespace) -> dict[str, Any]:
    """One wrk run; on a busy machine, repeated (up to --retries) and the quietest attempt kept."""
    server = variant.server
    attempts: list[dict[str, Any]] = []
    for _ in range(1 + args.retries):
        wait_for_quiet(args.server_cpu, args.quiet_wait)
        meter = LoadMeter(server.pid, args.server_cpu)
        result, raw = run_wrk(server.url(path), args.duration, args, variant.headers)
        other, steal, cpu_s = meter.stop()
        server.check_alive()
        cpu_us = cpu_s / max(result.requests, 1) * 1e6
        attempts.append(
            {**asdict(result), "other_load": other, "steal": steal, "cpu_us_per_request": cpu_us, "wrk_output": raw}
        )
        print(
            f"  run {run} {variant.name:<7} {result.rps:>7.0f} req/s  {cpu_us:6.1f} us CPU/req"
            f"  p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.2f} ms  max {result.max_ms:7.2f} ms"
            f"  other load on cpu{args.server_cpu} {other:4.0%} steal {steal:4.0%}"
            + ("  NOISY" if other > NOISY else "")
            + ("  BROKEN" if result.broken else ""),
            flush=True,
        )
        if other <= NOISY:
            break
    kept = min(attempts, key=lambda a: a["other_load"])
    # A broken attempt breaks the run even when a quieter one is kept.
    broken = [a for a in attempts if a["non_2xx"] or any(a["socket_errors"].values())]
    if broken:
        kept = broken[0]
    return {
        "run": run,
        "server": variant.name,
        **kept,
        "attempts": len(attempts),
        "discarded": [a for a in attempts if a is not kept],
    }


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def pair_ratios(runs: list[dict[str, Any]], comparison: Comparison, key: str) -> list[float]:
    """candidate/baseline of `key` for each measured pair: both halves (A-B, then B-A) of every round."""
    ratios = []
    mine = [r for r in runs if r.get("pair") == comparison.candidate + "/" + comparison.baseline]
    for half in sorted({(r["run"], r["half"]) for r in mine}):
        by_name = {r["server"]: r for r in mine if (r["run"], r["half"]) == half}
        if comparison.candidate in by_name and comparison.baseline in by_name:
            ratios.append(by_name[comparison.candidate][key] / by_name[comparison.baseline][key])
    return ratios


def compare(loop: str, selected: Sequence[str], args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix=f"siteapi-bench-{loop}-"))
    servers: list[Server] = []
    redis: RedisServer | None = None
    comparisons = [c for name in selected for c in COMPARISONS[name]]
    try:
        service = service_server(loop, tmp, args)
        servers.append(service)
        service.start("/livez")
        path, status, headers, body = choose_route(service.url(""))
        if path.split("?", 1)[0] in EXCLUDED.split(","):
            raise BenchError(f"{path} is excluded from metrics; pick another route")
        print(f"  route: GET {path} ({len(body)} bytes, {headers.get('content-type')}, etag={headers.get('etag')})")
        variants = {"service": Variant("service", service)}
        sizes = {"identity": len(body)}

        if "baselines" in selected:
            for name, same in (("bare", True), ("plain", False)):
                response_file = tmp / f"{name}.json"
                response_file.write_bytes(orjson.dumps(recorded(path, status, headers, body, security_headers=same)))
                bare = bare_server(loop, tmp, args, response_file, name=name)
                servers.append(bare)
                bare.start(path)
                check_baseline(bare, path, status, headers, body, same)
                variants[name] = Variant(name, bare)
        if "redis" in selected:
            if shutil.which("redis-server") is None:
                raise BenchError("--compare redis needs redis-server")
            redis = RedisServer(tmp, args)
            redis.start()
            shared = service_server(loop, tmp, args, name="redis", extra_env={"REDIS_URL": redis.url})
            servers.append(shared)
            shared.start("/livez")
            r_path, r_status, _, r_body = choose_route(shared.url(""))
            if (r_path, r_status) != (path, status) or len(r_body) != len(body):
                raise BenchError("the service with REDIS_URL does not serve the same route and size")
            variants["redis"] = Variant("redis", shared)
        if "gzip" in selected:
            g_status, g_headers, g_body = fetch(service.url(path), headers={"Accept-Encoding": "gzip"})
            if g_status != 200 or g_headers.get("content-encoding") != "gzip":
                raise BenchError(f"GET {path} with Accept-Encoding: gzip was not compressed ({g_status})")
            sizes["gzip"] = len(g_body)
            print(f"  gzip: {len(g_body)} bytes against {len(body)} ({len(g_body) / len(body):.1%})")
            variants["gzip"] = Variant("gzip", service, (GZIP,))

        order = list(variants.values())
        for variant in order:
            variant.server.check_alive()
            run_wrk(variant.server.url(path), args.warmup, args, variant.headers)
        before = requests_by_status(service)

        # A-B-B-A per comparison: the two sides of a pair are measured back to back, and the
        # second pair in mirrored order, so a drift on the machine hits both sides alike.
        runs: list[dict[str, Any]] = []
        for i in range(1, args.runs + 1):
            for c in comparisons:
                a, b = variants[c.baseline], variants[c.candidate]
                for half, sequence in enumerate(((a, b), (b, a))):
                    for variant in sequence:
                        pair = f"{c.candidate}/{c.baseline}"
                        runs.append({**measure(variant, path, i, args), "half": half, "pair": pair})

        after = requests_by_status(service)
        counted = {code: after.get(code, 0.0) - before.get(code, 0.0) for code in after}
        counted = {code: n for code, n in counted.items() if n}
    finally:
        for server in servers:
            server.stop()
        if redis is not None:
            redis.stop()

    access_lines = count_access_lines(service.log_path)
    if args.keep_tmp:
        print(f"  kept {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)

    summary: dict[str, Any] = {"loop": loop, "route": path, "body_bytes": sizes, "runs": runs, "variants": {}}
    for name in variants:
        mine = [r for r in runs if r["server"] == name]
        summary["variants"][name] = {
            "rps": median([r["rps"] for r in mine]),
            "cpu_us_per_request": median([r["cpu_us_per_request"] for r in mine]),
            "p50_ms": median([r["p50_ms"] for r in mine]),
            "p99_ms": median([r["p99_ms"] for r in mine]),
            "p99_min_ms": min(r["p99_ms"] for r in mine),
            "p99_max_ms": max(r["p99_ms"] for r in mine),
            "max_ms": max(r["max_ms"] for r in mine),
            "requests": sum(r["requests"] for r in mine),
            "other_load": median([r["other_load"] for r in mine]),
            "noisy_runs": sum(r["other_load"] > NOISY for r in mine),
            "retried_runs": sum(r["attempts"] > 1 for r in mine),
            "measurements": len(mine),
        }
    summary["comparisons"] = []
    for c in comparisons:
        rps = pair_ratios(runs, c, "rps")
        p99 = pair_ratios(runs, c, "p99_ms")
        cpu = pair_ratios(runs, c, "cpu_us_per_request")
        result = {
            **asdict(c),
            "rps_ratio": median(rps),
            "rps_ratios": rps,
            "p99_ratio": median(p99),
            "cpu_ratio": median(cpu),
        }
        result["rps_pass"] = result["rps_ratio"] >= c.min_rps_ratio
        result["p99_pass"] = c.max_p99_ratio is None or result["p99_ratio"] <= c.max_p99_ratio
        summary["comparisons"].append(result)
    summary["service_counted_by_status"] = {str(k): v for k, v in sorted(counted.items())}
    summary["access_log_lines"] = access_lines
    summary["broken"] = [
        f"run {r['run']} {r['server']}: socket errors {r['socket_errors']}, non-2xx {r['non_2xx']}"
        for r in runs
        if r["non_2xx"] or any(r["socket_errors"].values())
    ]
    summary["broken"] += [f"service counted {int(n)} responses with status {c}" for c, n in counted.items() if c >= 300]
    return summary


def check_baseline(
    bare: Server, path: str, status: int, headers: dict[str, str], body: bytes, same_headers: bool
) -> None:
    """The baseline serves the service's status, bytes and content type, and lacks exactly what it should."""
    b_status, b_headers, b_body = fetch(bare.url(path))
    if (b_status, b_body, b_headers.get("content-type")) != (status, body, headers.get("content-type")):
        raise BenchError(f"{bare.name} does not serve the same status, bytes and content type")
    missing = sorted(set(headers) - set(b_headers))
    expected = sorted(["x-request-id", *([] if same_headers else SECURITY_HEADER_NAMES)])
    if missing != expected:
        raise BenchError(f"{bare.name} should lack only {expected} of the service's headers, it lacks {missing}")


# --- report --------------------------------------------------------------------------------


def table(s: dict[str, Any], args: argparse.Namespace) -> str:
    ok = {True: "PASS", False: "FAIL"}
    sizes = ", ".join(f"{k} {v} bytes" for k, v in s["body_bytes"].items())
    lines = [
        f"loop={s['loop']}  route=GET {s['route']} ({sizes})",
        f"{args.runs} A-B-B-A rounds x {args.duration} s per measurement, wrk -t{args.threads} -c{args.connections}; "
        "medians; ratios are medians of per-pair ratios",
        "",
        "| server  |   req/s | CPU us/req | p50 ms | p99 ms | p99 min-max ms | max ms | other load | noisy |",
        "|---------|--------:|-----------:|-------:|-------:|---------------:|-------:|-----------:|------:|",
    ]
    for name, m in s["variants"].items():
        lines.append(
            f"| {name:<7} | {m['rps']:7.0f} | {m['cpu_us_per_request']:10.1f} "
            f"| {m['p50_ms']:6.2f} | {m['p99_ms']:6.2f} | {m['p99_min_ms']:6.2f}-{m['p99_max_ms']:<7.2f} "
            f"| {m['max_ms']:6.1f} "
            f"| {m['other_load']:10.0%} | {m['noisy_runs']:>2}/{m['measurements']:<2} |"
        )
    lines.append("")
    for c in s["comparisons"]:
        spread = f"{min(c['rps_ratios']):.3f}-{max(c['rps_ratios']):.3f}"
        line = (
            f"{c['candidate']}/{c['baseline']} ({c['what']}): req/s {c['rps_ratio']:.3f} "
            f"(pairs {spread}; target >= {c['min_rps_ratio']:.2f}) {ok[c['rps_pass']]}; "
            f"CPU/req {c['cpu_ratio']:.3f}; p99 {c['p99_ratio']:.3f}"
        )
        if c["max_p99_ratio"] is not None:
            line += f" (target <= {c['max_p99_ratio']:.2f}) {ok[c['p99_pass']]}"
        lines.append(line)
    lines.append(
        f"service counted by status during the runs: {s['service_counted_by_status']}; "
        f"access log lines written: {s['access_log_lines']}; runs repeated because the machine was busy: "
        + ", ".join(f"{name} {m['retried_runs']}" for name, m in s["variants"].items())
    )
    if any(m["noisy_runs"] for m in s["variants"].values()):
        lines.append(
            f"WARNING: other processes took more than {NOISY:.0%} of cpu{args.server_cpu} in some runs; "
            "the numbers carry their noise"
        )
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"nproc": os.cpu_count(), "cpu_model": model, "python": platform.python_version()}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python bench/run.py", description="Observability overhead: the service against a bare Starlette app."
    )
    parser.add_argument("--loop", choices=("asyncio", "uvloop", "both"), default="both", help="event loop(s)")
    parser.add_argument("--runs", type=int, default=5, help="measured runs per server (default 5)")
    parser.add_argument("--duration", type=int, default=10, help="seconds per run (default 10)")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up seconds per server (default 3)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument("--server-cpu", type=int, default=0, help="CPU for the servers (default 0)")
    parser.add_argument("--wrk-cpu", type=int, default=1, help="CPU for wrk (default 1)")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=15.0,
        help="before each run, wait up to this many seconds for other processes to leave the server CPU (15)",
    )
    parser.add_argument(
        "--retries", type=int, default=2, help="repeat a run this often while it was noisy; keep the quietest (2)"
    )
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="run servers and wrk at this niceness, and their sessions' autogroups (negative needs root; default 0)",
    )
    parser.add_argument(
        "--compare",
        default="baselines",
        help="comma-separated: baselines (the service against bare Starlette with the same bytes and headers, "
        "and against plain Starlette with only the route's headers), redis (REDIS_URL set against the embedded "
        "state; needs redis-server), gzip (Accept-Encoding: gzip against none), or all (default: baselines)",
    )
    parser.add_argument("--json", type=Path, help="write raw results (every run, wrk output) here")
    parser.add_argument("--keep-tmp", action="store_true", help="keep the temporary directory with the logs")
    args = parser.parse_args(argv)
    for name in ("runs", "duration", "warmup", "connections", "threads"):
        if getattr(args, name) < 1 or getattr(args, name) > 3600:
            parser.error(f"--{name} must be between 1 and 3600")
    if args.retries < 0 or args.retries > 10 or not 0 <= args.quiet_wait <= 600:
        parser.error("--retries must be 0-10 and --quiet-wait 0-600 seconds")
    args.compare = list(COMPARISONS) if args.compare == "all" else [c.strip() for c in args.compare.split(",")]
    if not args.compare or any(c not in COMPARISONS for c in args.compare):
        parser.error("--compare takes a comma-separated list of " + ", ".join(COMPARISONS) + ", or all")
    cpus = os.sched_getaffinity(0)
    if args.server_cpu == args.wrk_cpu or not {args.server_cpu, args.wrk_cpu} <= cpus:
        parser.error(f"--server-cpu and --wrk-cpu must be two different CPUs of {sorted(cpus)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for tool in ("wrk", "taskset"):
        if shutil.which(tool) is None:
            print(f"bench: {tool} is not installed", file=sys.stderr)
            return EXIT_BROKEN
    # This script only waits on wrk; keep it off the server's CPU.
    os.sched_setaffinity(0, {args.wrk_cpu})
    loops = ("asyncio", "uvloop") if args.loop == "both" else (args.loop,)
    info = machine()
    started = dt.datetime.now(dt.UTC)
    print(f"bench: {info['nproc']} CPUs ({info['cpu_model']}), Python {info['python']}, {started:%Y-%m-%d %H:%M} UTC")
    results: list[dict[str, Any]] = []
    try:
        for loop in loops:
            print(f"\n== loop {loop} ==")
            results.append(compare(loop, args.compare, args))
    except BenchError as exc:
        print(f"\nbench: BROKEN: {exc}", file=sys.stderr)
        return EXIT_BROKEN
    finally:
        if args.json and results:
            args.json.write_bytes(
                orjson.dumps(
                    {"machine": info, "started": started.isoformat(), "args": vars(args), "loops": results},
                    default=str,
                    option=orjson.OPT_INDENT_2,
                )
            )
    print()
    for summary in results:
        print(table(summary, args), end="\n\n")
    broken = [line for s in results for line in s["broken"]]
    if broken:
        print("bench: BROKEN runs, the numbers above are not valid:", *broken, sep="\n  ", file=sys.stderr)
        return EXIT_BROKEN
    passed = all(c["rps_pass"] and c["p99_pass"] for s in results for c in s["comparisons"])
    print("\nbench:", "PASS" if passed else "FAIL", "against the targets")
    return 0 if passed else EXIT_TARGET_MISSED


if __name__ == "__main__":
    raise SystemExit(main())
