"""Figures a reliability test produced (cases fuzzed, RSS growth, series before/after...).

Tests call `record("test name", key=value, ...)`. When `SITEAPI_FIGURES` names a file, each call
appends one JSON line to it; `python -m tests.reliability_report` runs the reliability tests with
it set and writes docs/RELIABILITY.md from the lines. Without it, figures are only printed.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import orjson

_lock = threading.Lock()


def record(test: str, **figures: Any) -> None:
    line = orjson.dumps({"test": test, **figures}, default=str)
    print(f"\n[figures] {line.decode()}")
    path = os.environ.get("SITEAPI_FIGURES")
    if path:
        with _lock, open(path, "ab") as fh:
            fh.write(line + b"\n")
