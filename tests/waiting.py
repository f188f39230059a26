"""Waiting in tests: poll for what the user would see, with a deadline, never a bare sleep."""
from __future__ import annotations

from topupctl import devservers


class WaitTimedOut(AssertionError):
    """A wait that ran past its deadline: a failed assertion."""


def wait_until(predicate, timeout: float = 10.0, *, interval: float = 0.05,
               message: str = "the condition"):
    """Poll ``predicate`` until it returns something truthy (returned), or fail after ``timeout``."""
    return devservers.wait_until(predicate, timeout, interval=interval, message=message,
                                 error=WaitTimedOut)
