"""Safaricom Daraja (M-Pesa Express / STK push) client for topup-gateway.

::

    from daraja import DarajaClient, DarajaConfig, RedisTokenCache, MemoryTokenCache, errors

    client = DarajaClient(cfg, token_cache=RedisTokenCache(redis_client))
    accepted = client.stk_push(amount=1000, phone="254712345678",
                               account_reference="INV42", description="Top-up")
    result = client.stk_query(accepted.checkout_request_id)

Imports neither Flask, Dramatiq nor peewee, and never reads the environment. How each of
Daraja's answers is read, and which error it maps to: :mod:`daraja.answers` and
:mod:`daraja.errors`.
"""
from daraja import errors
from daraja.answers import StkPushAccepted, StkQueryResult
from daraja.client import DarajaClient
from daraja.config import DarajaConfig
from daraja.tokens import MemoryTokenCache, RedisTokenCache

__all__ = [
    "DarajaClient",
    "DarajaConfig",
    "RedisTokenCache",
    "MemoryTokenCache",
    "StkPushAccepted",
    "StkQueryResult",
    "errors",
]
