"""What a store operation raises. Callers catch `StoreError` and then skip the guarded work."""

from __future__ import annotations


class StoreError(Exception):
    """A store operation did not happen. Messages never carry a credential."""


class StoreUnavailable(StoreError):
    """The store could not be reached in time (down, hung, or refusing us)."""


class LockUnavailable(StoreError):
    """Another owner held the lock for the whole wait."""
