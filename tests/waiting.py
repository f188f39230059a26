"""Waiting in tests: poll for what the user would see, with a deadline, never a bare sleep."""
from __future__ import annotations

import time


class WaitTimedOut(AssertionError):
    """A wait that ran past its deadline: a failed assertion."""


def wait_until(predicate, timeout: float = 10.0, *, interval: float = 0.05,
               message: str = "the condition"):
    """Poll ``predicate`` until it returns something truthy (returned), or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise WaitTimedOut(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)
