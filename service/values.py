"""Checks on values parsed from JSON, where Python's `bool` is an `int` and must not pass for one."""

from __future__ import annotations

from typing import TypeGuard


def is_number(value: object) -> TypeGuard[int | float]:
    """A JSON number: an int or a float, never `True` or `False`."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_int(value: object) -> TypeGuard[int]:
    """A JSON integer, never `True` or `False`."""
    return isinstance(value, int) and not isinstance(value, bool)
