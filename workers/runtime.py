"""What the actors run with: the settings, the broker they are declared on, the Daraja client
(with the fleet-wide token cache in Redis) and a Redis client. The process's start-up
(:func:`bootstrap.configure`) builds it and installs it here, where the actors find it."""
from __future__ import annotations

from dataclasses import dataclass

import dramatiq
from redis import Redis

from daraja import DarajaClient
from settings import Settings


@dataclass
class Runtime:
    settings: Settings
    broker: dramatiq.Broker
    daraja: DarajaClient
    redis: Redis


_current: Runtime | None = None


def install(runtime: Runtime) -> Runtime:
    global _current
    _current = runtime
    return runtime


def get() -> Runtime:
    if _current is None:
        raise RuntimeError("this process was not configured: bootstrap.configure() was not called")
    return _current
