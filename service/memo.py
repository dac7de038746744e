"""A parser of raw request bytes, memoized: bounded in entries and in the length of what it keeps."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

MAX_ENTRIES = 1024
MAX_KEY = 256  # bytes; every valid query of ours fits in a good deal less


class RawMemo(Generic[T]):
    """`parse(raw)`, remembered by `raw`: a site sends the same few queries all day.

    What raises is not kept. A key longer than `max_key` is parsed each time and never kept: a
    valid query padded with `&` parses fine at any length the server accepts, and must not make
    the memo hold megabytes (`max_entries * max_key` bytes of keys at most). When full it starts
    again from empty, which costs the hot path nothing, and the few queries in use refill it at once.
    """

    __slots__ = ("entries", "max_entries", "max_key", "parse")

    def __init__(self, parse: Callable[[bytes], T], *, max_entries: int = MAX_ENTRIES, max_key: int = MAX_KEY) -> None:
        self.parse = parse
        self.max_entries = max_entries
        self.max_key = max_key
        self.entries: dict[bytes, T] = {}

    def __call__(self, raw: bytes) -> T:
        value = self.entries.get(raw)
        if value is None:
            value = self.parse(raw)
            if len(raw) <= self.max_key:
                if len(self.entries) >= self.max_entries:
                    self.entries.clear()
                self.entries[raw] = value
        return value
