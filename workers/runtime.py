"""What a worker process needs, built once from the settings: the database binding and the
Daraja client with the fleet-wide token cache in Redis. Tests configure it explicitly."""
from __future__ import annotations

from dataclasses import dataclass

import redis

from daraja import DarajaClient, DarajaConfig, RedisTokenCache
from ledger import db
from settings import Settings
from telemetry import metrics


@dataclass
class Runtime:
    settings: Settings
    daraja: DarajaClient
    redis: redis.Redis


_current: Runtime | None = None


def daraja_config(settings: Settings) -> DarajaConfig:
    return DarajaConfig(
        base_url=settings.daraja_base_url,
        consumer_key=settings.daraja_consumer_key,
        consumer_secret=settings.daraja_consumer_secret,
        shortcode=settings.daraja_shortcode,
        passkey=settings.daraja_passkey,
        transaction_type=settings.daraja_transaction_type,
        party_b=settings.daraja_party_b,
        callback_url=settings.callback_url,
        # far below Dramatiq's 10-minute TimeLimit, which would interrupt mid-transaction
        connect_timeout=3.05, read_timeout=15.0,
    )


def configure(settings: Settings, *, daraja: DarajaClient | None = None,
              redis_client: redis.Redis | None = None, bind_database: bool = True) -> Runtime:
    global _current
    if bind_database:
        db.bind(settings.database_url)
    client = redis_client or redis.Redis.from_url(
        settings.redis_url, socket_timeout=5, socket_connect_timeout=3, health_check_interval=30)
    if daraja is None:
        daraja = DarajaClient(daraja_config(settings), token_cache=RedisTokenCache(client),
                              on_call=metrics.daraja_call)
    _current = Runtime(settings=settings, daraja=daraja, redis=client)
    return _current


def get() -> Runtime:
    if _current is None:
        raise RuntimeError("workers.runtime.configure() was not called")
    return _current
