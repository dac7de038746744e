"""The bounded parse memo (service/memo.py)."""

from __future__ import annotations

import pytest

from service.memo import RawMemo


def test_a_query_is_parsed_once_then_remembered() -> None:
    calls: list[bytes] = []

    def parse(raw: bytes) -> str:
        calls.append(raw)
        return raw.decode().upper()

    memo = RawMemo(parse)
    assert memo(b"w=1") == "W=1" and memo(b"w=1") == "W=1"
    assert calls == [b"w=1"] and memo.entries == {b"w=1": "W=1"}


def test_a_long_key_is_answered_each_time_and_never_kept() -> None:
    calls: list[bytes] = []

    def parse(raw: bytes) -> int:
        calls.append(raw)
        return len(raw)

    memo = RawMemo(parse, max_key=8)
    assert memo(b"12345678") == 8 and b"12345678" in memo.entries  # at the bound: kept
    padded = b"w=1" + b"&" * 100
    assert memo(padded) == 103 and memo(padded) == 103
    assert calls.count(padded) == 2 and padded not in memo.entries


def test_what_raises_is_not_kept_and_the_entries_are_bounded() -> None:
    def parse(raw: bytes) -> bytes:
        if raw == b"bad":
            raise ValueError(raw)
        return raw

    memo = RawMemo(parse, max_entries=4)
    with pytest.raises(ValueError):
        memo(b"bad")
    assert b"bad" not in memo.entries
    for i in range(20):
        assert memo(str(i).encode()) == str(i).encode()
        assert len(memo.entries) <= 4
