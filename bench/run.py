"""Observability overhead: the full service against a bare Starlette app, same bytes, same server.

Both run under uvicorn (one worker, httptools, the same event loop) pinned to one CPU; wrk runs
pinned to the other. The service runs as in production (`python -m service --sandbox`): metrics
on, JSON access log at info level (to a file in a temporary directory), request ids. Runs are
interleaved (bare, service, bare, service, ...) so drift on the machine hits both alike, and the
table shows medians. Exit status: 0 targets met, 1 a target missed, 3 a run was broken (socket
errors, non-2xx responses, a server died or served different bytes).

    python bench/run.py --loop both --nice -10      # the real run, about 5-6 minutes
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


def run_wrk(url: str, seconds: int, args: argparse.Namespace) -> tuple[WrkResult, str]:
    cmd = [
        *pinned(args.wrk_cpu, args),
        "wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{seconds}s", "--latency", url,
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

    def stop(self) -> tuple[float, float]:
        """(other load, steal), each as a fraction of the server's CPU over the run."""
        elapsed = max(time.monotonic() - self.start, 1e-6)
        busy, steal = _cpu_busy()[self.cpu]
        server = _process_seconds(self.pid) - self.server0
        other = max(0.0, (busy - self.busy0) - server) / elapsed
        return other, (steal - self.steal0) / elapsed


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


def fetch(url: str, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    try:
        with _opener.open(url, timeout=timeout) as resp:
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


def service_server(loop: str, tmp: Path, args: argparse.Namespace) -> Server:
    port = free_port()
    inherited = {
        k: v for k, v in os.environ.items() if not k.startswith(("LOG_", "METRICS_", "SHUTDOWN_", "HOST", "PORT"))
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
    }
    cmd = [*pinned(args.server_cpu, args), sys.executable, "-m", "service", "--sandbox", "--loop", loop]
    return Server("service", cmd, env, tmp / "service.log", port, args.nice)


def bare_server(loop: str, tmp: Path, args: argparse.Namespace, response_file: Path) -> Server:
    port = free_port()
    cmd = [
        *pinned(args.server_cpu, args), sys.executable, "-m", "bench.bare_app",
        "--response", str(response_file), "--port", str(port), "--loop", loop,
    ]  # fmt: skip
    return Server("bare", cmd, dict(os.environ), tmp / "bare.log", port, args.nice)


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


def measure(server: Server, path: str, run: int, args: argparse.Namespace) -> dict[str, Any]:
    """One wrk run; on a busy machine, repeated (up to --retries) and the quietest attempt kept."""
    attempts: list[dict[str, Any]] = []
    for _ in range(1 + args.retries):
        wait_for_quiet(args.server_cpu, args.quiet_wait)
        meter = LoadMeter(server.pid, args.server_cpu)
        result, raw = run_wrk(server.url(path), args.duration, args)
        other, steal = meter.stop()
        server.check_alive()
        attempts.append({**asdict(result), "other_load": other, "steal": steal, "wrk_output": raw})
        print(
            f"  run {run} {server.name:<7} {result.rps:>7.0f} req/s  p50 {result.p50_ms:6.2f} ms"
            f"  p99 {result.p99_ms:6.2f} ms  max {result.max_ms:7.2f} ms"
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
        "server": server.name,
        **kept,
        "attempts": len(attempts),
        "discarded": [a for a in attempts if a is not kept],
    }


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def compare(loop: str, args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix=f"siteapi-bench-{loop}-"))
    servers: list[Server] = []
    try:
        service = service_server(loop, tmp, args)
        servers.append(service)
        service.start("/livez")
        path, status, headers, body = choose_route(service.url(""))
        if path.split("?", 1)[0] in EXCLUDED.split(","):
            raise BenchError(f"{path} is excluded from metrics; pick another route")
        print(f"  route: GET {path} ({len(body)} bytes, {headers.get('content-type')}, etag={headers.get('etag')})")
        response_file = tmp / "response.json"
        same = args.bare_headers == "same"
        response_file.write_bytes(orjson.dumps(recorded(path, status, headers, body, security_headers=same)))

        bare = bare_server(loop, tmp, args, response_file)
        servers.append(bare)
        bare.start(path)
        b_status, b_headers, b_body = fetch(bare.url(path))
        if (b_status, b_body, b_headers.get("content-type")) != (status, body, headers.get("content-type")):
            raise BenchError("the bare app does not serve the same status, bytes and content type")
        missing = sorted(set(headers) - set(b_headers))
        expected = sorted(["x-request-id", *([] if same else SECURITY_HEADER_NAMES)])
        if missing != expected:
            raise BenchError(f"the bare app should lack only {expected} of the service's headers, it lacks {missing}")

        pair = (bare, service)
        for server in pair:
            server.check_alive()
            run_wrk(server.url(path), args.warmup, args)
        before = requests_by_status(service)

        runs: list[dict[str, Any]] = []
        for i in range(1, args.runs + 1):
            for server in pair:
                runs.append(measure(server, path, i, args))

        after = requests_by_status(service)
        counted = {code: after.get(code, 0.0) - before.get(code, 0.0) for code in after}
        counted = {code: n for code, n in counted.items() if n}
    finally:
        for server in servers:
            server.stop()

    access_lines = count_access_lines(service.log_path)
    if args.keep_tmp:
        print(f"  kept {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)

    summary: dict[str, Any] = {
        "loop": loop,
        "route": path,
        "body_bytes": len(body),
        "bare_headers": args.bare_headers,
        "runs": runs,
    }
    for name in ("bare", "service"):
        mine = [r for r in runs if r["server"] == name]
        summary[name] = {
            "rps": median([r["rps"] for r in mine]),
            "p50_ms": median([r["p50_ms"] for r in mine]),
            "p99_ms": median([r["p99_ms"] for r in mine]),
            "p99_min_ms": min(r["p99_ms"] for r in mine),
            "p99_max_ms": max(r["p99_ms"] for r in mine),
            "max_ms": max(r["max_ms"] for r in mine),
            "requests": sum(r["requests"] for r in mine),
            "other_load": median([r["other_load"] for r in mine]),
            "noisy_runs": sum(r["other_load"] > NOISY for r in mine),
            "retried_runs": sum(r["attempts"] > 1 for r in mine),
        }
    summary["rps_ratio"] = summary["service"]["rps"] / summary["bare"]["rps"]
    summary["p99_ratio"] = summary["service"]["p99_ms"] / summary["bare"]["p99_ms"]
    summary["rps_pass"] = summary["rps_ratio"] >= MIN_RPS_RATIO
    summary["p99_pass"] = summary["p99_ratio"] <= MAX_P99_RATIO
    summary["service_counted_by_status"] = {str(k): v for k, v in sorted(counted.items())}
    summary["access_log_lines"] = access_lines
    summary["broken"] = [
        f"run {r['run']} {r['server']}: socket errors {r['socket_errors']}, non-2xx {r['non_2xx']}"
        for r in runs
        if r["non_2xx"] or any(r["socket_errors"].values())
    ]
    summary["broken"] += [f"service counted {int(n)} responses with status {c}" for c, n in counted.items() if c >= 300]
    return summary


# --- report --------------------------------------------------------------------------------


def table(s: dict[str, Any], args: argparse.Namespace) -> str:
    b, v = s["bare"], s["service"]
    ok = {True: "PASS", False: "FAIL"}
    lines = [
        f"loop={s['loop']}  route=GET {s['route']} ({s['body_bytes']} bytes)  "
        f"{args.runs} runs x {args.duration} s, wrk -t{args.threads} -c{args.connections}, medians",
        "baseline: bare Starlette sending "
        + (
            "the same headers but the request id (security headers included)"
            if s["bare_headers"] == "same"
            else "only the route's own headers (no security headers)"
        ),
        "",
        "| server  |   req/s | p50 ms | p99 ms | p99 min-max ms | max ms | other load | noisy runs |",
        "|---------|--------:|-------:|-------:|---------------:|-------:|-----------:|-----------:|",
    ]
    for name, m in (("bare", b), ("service", v)):
        lines.append(
            f"| {name:<7} | {m['rps']:7.0f} | {m['p50_ms']:6.2f} | {m['p99_ms']:6.2f} "
            f"| {m['p99_min_ms']:6.2f}-{m['p99_max_ms']:<7.2f} | {m['max_ms']:6.1f} "
            f"| {m['other_load']:10.0%} | {m['noisy_runs']:>4} of {args.runs:<3} |"
        )
    lines += [
        "",
        f"service/bare req/s {s['rps_ratio']:.3f} (target >= {MIN_RPS_RATIO:.2f}) {ok[s['rps_pass']]}",
        f"service/bare p99   {s['p99_ratio']:.3f} (target <= {MAX_P99_RATIO:.2f}) {ok[s['p99_pass']]}",
        f"service counted by status during the runs: {s['service_counted_by_status']}; "
        f"access log lines written: {s['access_log_lines']}; "
        f"runs repeated because the machine was busy: bare {b['retried_runs']}, service {v['retried_runs']}",
    ]
    if b["noisy_runs"] or v["noisy_runs"]:
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
        "--bare-headers",
        choices=("same", "route"),
        default="same",
        help="the baseline sends the service's bytes but the request id header (same, default: the gap is "
        "observability), or only the route's own headers (route: the service pays for its security headers too)",
    )
    parser.add_argument("--json", type=Path, help="write raw results (every run, wrk output) here")
    parser.add_argument("--keep-tmp", action="store_true", help="keep the temporary directory with the logs")
    args = parser.parse_args(argv)
    for name in ("runs", "duration", "warmup", "connections", "threads"):
        if getattr(args, name) < 1 or getattr(args, name) > 3600:
            parser.error(f"--{name} must be between 1 and 3600")
    if args.retries < 0 or args.retries > 10 or not 0 <= args.quiet_wait <= 600:
        parser.error("--retries must be 0-10 and --quiet-wait 0-600 seconds")
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
            results.append(compare(loop, args))
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
    if len(results) > 1:
        for s in results:
            spread = s["service"]["p99_max_ms"] / s["service"]["p99_min_ms"]
            print(f"{s['loop']:<8} service p99 spread max/min {spread:.2f}, req/s {s['service']['rps']:.0f}")
    passed = all(s["rps_pass"] and s["p99_pass"] for s in results)
    print("\nbench:", "PASS" if passed else "FAIL", "against the targets")
    return 0 if passed else EXIT_TARGET_MISSED


if __name__ == "__main__":
    raise SystemExit(main())
