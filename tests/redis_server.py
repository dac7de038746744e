"""A real `redis-server` (Debian's package) for the store tests, on a free loopback port.

No persistence, a temporary directory, 127.0.0.1 only. The helpers make it hung (SIGSTOP),
down (stopped) and back empty (started again on the same port); every wait is bounded.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.support import free_port, wait_until

EXECUTABLE = shutil.which("redis-server") or "/usr/bin/redis-server"


def require_redis_server() -> str:
    """The executable, or a skip outside CI (in CI, `.ci/run` installs it, so its absence fails)."""
    if Path(EXECUTABLE).is_file():
        return EXECUTABLE
    if os.environ.get("CI"):
        pytest.fail("redis-server not found: .ci/run installs the Debian package redis-server")
    pytest.skip("redis-server is not installed (Debian package redis-server; .ci/run installs it)")


def make_certificates(directory: Path) -> None:
    """A throwaway CA and a server certificate for 127.0.0.1 (an IP SAN, so hostname checks pass)."""
    openssl = shutil.which("openssl")
    if not openssl:
        pytest.skip("openssl is not installed (needed to make the TLS test's certificates)")
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    san = directory / "san.cnf"
    san.write_text("subjectAltName=IP:127.0.0.1\n")
    signed = ["-out", "server.pem", "-days", "2", "-extfile", str(san)]
    for args in (
        ["req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=siteapi test CA"],
        ["req", *key, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", *signed],
    ):
        subprocess.run([openssl, *args], cwd=directory, check=True, capture_output=True, timeout=30)


class RedisServer:
    def __init__(self, password: str | None = None, tls: bool = False) -> None:
        self.executable = require_redis_server()
        self.port = free_port()
        self.password = password
        self.tls = tls
        self.dir = Path(tempfile.mkdtemp(prefix="siteapi-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False
        if tls:
            make_certificates(self.dir)

    @property
    def ca_pem(self) -> str:
        return (self.dir / "ca.pem").read_text()

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"{'rediss' if self.tls else 'redis'}://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start (again) on the same port, empty."""
        args = [self.executable, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        args += ["--dir", str(self.dir), "--logfile", str(self.dir / "redis.log"), "--daemonize", "no"]
        if self.tls:
            args[1:3] = ["--port", "0", "--tls-port", str(self.port)]
            files = {"--tls-cert-file": "server.pem", "--tls-key-file": "server.key", "--tls-ca-cert-file": "ca.pem"}
            args += [part for option, name in files.items() for part in (option, str(self.dir / name))]
            args += ["--tls-auth-clients", "no"]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.paused = False
        if not wait_until(self._answers, timeout):
            self.stop()
            raise RuntimeError(f"redis-server did not start on port {self.port}")
        return self

    def _answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
        with socket.create_connection(("127.0.0.1", self.port), timeout=1) as raw:
            sock = raw
            if self.tls:
                sock = ssl.create_default_context(cadata=self.ca_pem).wrap_socket(raw, server_hostname="127.0.0.1")
            sock.sendall(b"PING\r\n")
            reply = sock.recv(64)
        return reply.startswith((b"+PONG", b"-NOAUTH"))

    def pause(self) -> None:
        """Hung: the process keeps its socket open but answers nothing."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)
        self.paused = False

    def stop(self) -> None:
        """Down: the port refuses connections."""
        if self.proc is None or self.proc.poll() is not None:
            return
        if self.paused:
            self.resume()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def restart(self) -> None:
        """Back empty: what a cache node without persistence looks like after a restart."""
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        with contextlib.suppress(OSError):
            shutil.rmtree(self.dir)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
