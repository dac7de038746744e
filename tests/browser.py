"""A real headless Chromium, driven over WebDriver (chromedriver) with plain HTTP.

Debian's `chromium` and `chromium-driver` packages; nothing is downloaded at run time. Every wait
is bounded, and the browser and driver always end, whatever the test does.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from tests.support import LOG_DIR, free_port, wait_until

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
# Without the background-networking flags Chromium keeps calling home, and there is no network here.
FLAGS = (
    "--headless",
    "--no-sandbox",  # tests run as root, where Chromium's sandbox cannot start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--window-size=1000,900",
)
COMMAND_TIMEOUT = 30.0  # seconds for any one WebDriver command


def available() -> bool:
    return Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()


class WebDriverError(RuntimeError):
    pass


class Browser:
    """One WebDriver session: navigate, run a script, read the console, take a screenshot."""

    def __init__(self, http: httpx.Client, session: str) -> None:
        self.http = http
        self.session = session

    def _command(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = self.http.request(method, f"/session/{self.session}{path}", json=body)
        value = response.json().get("value")
        if response.status_code != 200:
            error = value.get("error") if isinstance(value, dict) else value
            message = value.get("message", "")[:500] if isinstance(value, dict) else ""
            raise WebDriverError(f"{method} {path}: {error}: {message}")
        return value

    def get(self, url: str) -> None:
        self._command("POST", "/url", {"url": url})

    def run(self, script: str, *args: Any) -> Any:
        """`script` is a function body; `arguments[i]` are `args`."""
        return self._command("POST", "/execute/sync", {"script": script, "args": list(args)})

    def wait_for(self, script: str, *args: Any, timeout: float = 15.0) -> Any:
        """Poll `script` until it returns something truthy; raise if it never does."""
        found: list[Any] = []

        def ready() -> bool:
            value = self.run(script, *args)
            if value:
                found.append(value)
            return bool(value)

        if not wait_until(ready, timeout, interval=0.1):
            raise TimeoutError(f"browser condition not met within {timeout}s: {script[:200]}")
        return found[-1]

    def console(self) -> list[dict[str, Any]]:
        """Console entries since the last call (chromedriver's legacy log endpoint)."""
        return self._command("POST", "/se/log", {"type": "browser"}) or []

    def alert_text(self) -> str | None:
        """The open alert/confirm/prompt's text, or None when there is none."""
        response = self.http.get(f"/session/{self.session}/alert/text")
        return response.json()["value"] if response.status_code == 200 else None

    def screenshot(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(self._command("GET", "/screenshot")))
        return path


@contextlib.contextmanager
def chromium() -> Iterator[Browser]:
    """A fresh browser profile and chromedriver on a free loopback port; both gone afterwards."""
    port = free_port()
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    profile = tempfile.mkdtemp(prefix="siteapi-chromium-")
    with open(LOG_DIR / f"chromedriver-{port}.log", "wb") as log:
        driver = subprocess.Popen(
            [CHROMEDRIVER, f"--port={port}", "--allowed-ips=127.0.0.1"],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: Chromium ends with it, even if quitting failed
        )
        http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=COMMAND_TIMEOUT)
        session: str | None = None
        try:
            if not wait_until(lambda: http.get("/status", timeout=1).json()["value"]["ready"], 15):
                raise WebDriverError("chromedriver did not become ready")
            capabilities = {
                "browserName": "chrome",
                "goog:chromeOptions": {"binary": CHROMIUM, "args": [*FLAGS, f"--user-data-dir={profile}"]},
                "goog:loggingPrefs": {"browser": "ALL"},
                "unhandledPromptBehavior": "ignore",  # an alert stays open, so a test can see it
                "timeouts": {"script": 10_000, "pageLoad": 20_000, "implicit": 0},
            }
            response = http.post("/session", json={"capabilities": {"alwaysMatch": capabilities}})
            value = response.json()["value"]
            if response.status_code != 200:
                raise WebDriverError(f"no session: {value.get('message', '')[:500]}")
            session = value["sessionId"]
            yield Browser(http, session)
        finally:
            if session is not None:
                with contextlib.suppress(httpx.HTTPError):
                    http.delete(f"/session/{session}", timeout=10)  # quits Chromium
            http.close()
            _end_group(driver)
            shutil.rmtree(profile, ignore_errors=True)


def _end_group(driver: subprocess.Popen[bytes]) -> None:
    """chromedriver and whatever Chromium processes it left: TERM, then KILL after a bounded wait."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(driver.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        driver.wait(10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(driver.pid, signal.SIGKILL)
    driver.wait(5)
