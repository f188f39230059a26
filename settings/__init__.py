"""The one place that reads the environment (contract §2).

A process's start-up (:func:`bootstrap.configure`, called by the Flask factory, the worker
package in a ``dramatiq`` process and ``topupctl``) calls :func:`load` once and passes what
is needed down as arguments; libraries never read ``os.environ`` themselves.
"""
from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from typing import Mapping
from urllib.parse import urlsplit

from daraja.urls import refused_word

SANDBOX_PASSKEY = "bfb279f9aa9bdbcf158e97dd71a467cd2e0c893059b10f78e6b72ada1ed2c919"
SIMULATOR_CONSUMER_KEY = "sim-consumer-key"
SIMULATOR_CONSUMER_SECRET = "sim-consumer-secret"


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    database_url: str = "sqlite:///var/topup.db"
    redis_url: str = "redis://127.0.0.1:6379/0"
    daraja_base_url: str = "http://127.0.0.1:8900"
    daraja_consumer_key: str = field(default=SIMULATOR_CONSUMER_KEY, repr=False)
    daraja_consumer_secret: str = field(default=SIMULATOR_CONSUMER_SECRET, repr=False)
    daraja_shortcode: str = "174379"
    daraja_passkey: str = field(default=SANDBOX_PASSKEY, repr=False)
    daraja_transaction_type: str = "CustomerPayBillOnline"
    daraja_party_b: str | None = None
    public_base_url: str = "http://127.0.0.1:8000"
    daraja_callback_token: str = field(default="", repr=False)
    daraja_confirm_by_query: bool = False
    daraja_callback_allowed_ips: tuple = ()
    trusted_proxy_count: int = 0
    stk_query_after_s: int = 60
    stk_give_up_after_s: int = 86400
    stk_query_backoff_s: float = 10.0
    ops_token: str | None = field(default=None, repr=False)
    console_session_s: int = 28800
    webhook_allow_private: bool = False
    # paybill payments (contract §6): the paybill customers pay into (DARAJA_SHORTCODE when
    # not set), and whether and how often the scheduler reads Pull Transactions
    daraja_c2b_shortcode: str = "174379"
    daraja_pull: bool = False
    daraja_pull_every_s: int = 600
    # not in the contract: where `dramatiq workers` serves its /metrics (0: nowhere)
    worker_metrics_port: int = 9191
    worker_metrics_host: str = "127.0.0.1"
    # not in the contract: how long a row sits before `topupctl scheduler` re-drives it
    # (workers/sweeps.py); shortened by tests that kill parts on purpose
    sweep_unsent_push_after_s: float = 30.0
    sweep_released_push_after_s: float = 360.0
    sweep_abandoned_push_after_s: float = 180.0
    sweep_unapplied_callback_after_s: float = 30.0
    sweep_query_grace_s: float = 60.0
    sweep_redrive_every_s: float = 300.0

    @property
    def callback_url(self) -> str:
        return f"{self.public_base_url.rstrip('/')}/daraja/callback/{self.daraja_callback_token}"

    @property
    def c2b_validation_url(self) -> str:
        return (f"{self.public_base_url.rstrip('/')}/daraja/c2b/validation/"
                f"{self.daraja_callback_token}")

    @property
    def c2b_confirmation_url(self) -> str:
        return (f"{self.public_base_url.rstrip('/')}/daraja/c2b/confirmation/"
                f"{self.daraja_callback_token}")


def _text(env, name, default):
    value = env.get(name)
    if value is None or value.strip() == "":
        return default
    return value.strip()


def _flag(env, name, default=False):
    raw = _text(env, name, None)
    if raw is None:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be 0 or 1, got {raw!r}")


def _int(env, name, default, minimum=0):
    raw = _text(env, name, None)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def _float(env, name, default, minimum=0.0):
    raw = _text(env, name, None)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not value >= minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {raw}")
    return value


def _url(env, name, default, schemes):
    value = _text(env, name, default)
    parts = urlsplit(value)
    if parts.scheme not in schemes or not (parts.netloc or parts.path):
        raise ConfigError(f"{name} must be a {' or '.join(schemes)} URL, got {value!r}")
    return value


def _networks(env, name):
    raw = _text(env, name, "")
    nets = []
    for item in filter(None, (part.strip() for part in raw.split(","))):
        try:
            nets.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ConfigError(f"{name}: {item!r} is not an address or CIDR block") from None
    return tuple(nets)


def load(environ: Mapping[str, str] | None = None, *, need_callback_token: bool = True) -> Settings:
    """Build the settings from the environment, refusing anything malformed by name.

    Every API and worker process must share one callback token, so there is no random
    default outside ``make run``; operator commands that never build a callback URL pass
    ``need_callback_token=False``.
    """
    env = os.environ if environ is None else environ
    database_url = _url(env, "DATABASE_URL", Settings.database_url,
                        ("sqlite", "postgres", "postgresql"))
    redis_url = _url(env, "REDIS_URL", Settings.redis_url, ("redis", "rediss", "unix"))
    base_url = _url(env, "DARAJA_BASE_URL", Settings.daraja_base_url, ("http", "https"))
    public_base_url = _url(env, "PUBLIC_BASE_URL", Settings.public_base_url, ("http", "https"))

    token = _text(env, "DARAJA_CALLBACK_TOKEN", None)
    if token is None and not need_callback_token:
        token = ""
    elif token is None:
        raise ConfigError("DARAJA_CALLBACK_TOKEN is required (a long random hex string, "
                          "e.g. `python -c 'import secrets; print(secrets.token_hex(24))'`)")
    if token and not re.fullmatch(r"[0-9a-fA-F]{16,128}", token):
        raise ConfigError("DARAJA_CALLBACK_TOKEN must be 16 to 128 hex digits "
                          "(Daraja refuses callback URLs containing some words)")
    word = refused_word(public_base_url)
    if word is not None:
        raise ConfigError(f"PUBLIC_BASE_URL contains {word!r}, which Daraja refuses "
                          "in a CallBackURL")

    shortcode = _text(env, "DARAJA_SHORTCODE", Settings.daraja_shortcode)
    if not re.fullmatch(r"\d{5,7}", shortcode):
        raise ConfigError(f"DARAJA_SHORTCODE must be 5 to 7 digits, got {shortcode!r}")
    transaction_type = _text(env, "DARAJA_TRANSACTION_TYPE", Settings.daraja_transaction_type)
    if transaction_type not in ("CustomerPayBillOnline", "CustomerBuyGoodsOnline"):
        raise ConfigError("DARAJA_TRANSACTION_TYPE must be CustomerPayBillOnline or "
                          f"CustomerBuyGoodsOnline, got {transaction_type!r}")
    c2b_shortcode = _text(env, "DARAJA_C2B_SHORTCODE", shortcode)
    if not re.fullmatch(r"\d{5,7}", c2b_shortcode):
        raise ConfigError(f"DARAJA_C2B_SHORTCODE must be 5 to 7 digits, got {c2b_shortcode!r}")
    party_b = _text(env, "DARAJA_PARTY_B", None)
    if party_b is not None and not re.fullmatch(r"\d{5,8}", party_b):
        raise ConfigError("DARAJA_PARTY_B must be a till or paybill number (digits)")
    if transaction_type == "CustomerBuyGoodsOnline" and party_b is None:
        raise ConfigError("DARAJA_PARTY_B (the till number) is required with "
                          "DARAJA_TRANSACTION_TYPE=CustomerBuyGoodsOnline")

    return Settings(
        database_url=database_url,
        redis_url=redis_url,
        daraja_base_url=base_url.rstrip("/"),
        daraja_consumer_key=_text(env, "DARAJA_CONSUMER_KEY", SIMULATOR_CONSUMER_KEY),
        daraja_consumer_secret=_text(env, "DARAJA_CONSUMER_SECRET", SIMULATOR_CONSUMER_SECRET),
        daraja_shortcode=shortcode,
        daraja_passkey=_text(env, "DARAJA_PASSKEY", SANDBOX_PASSKEY),
        daraja_transaction_type=transaction_type,
        daraja_party_b=party_b,
        public_base_url=public_base_url.rstrip("/"),
        daraja_callback_token=token,
        daraja_confirm_by_query=_flag(env, "DARAJA_CONFIRM_BY_QUERY"),
        daraja_callback_allowed_ips=_networks(env, "DARAJA_CALLBACK_ALLOWED_IPS"),
        trusted_proxy_count=_int(env, "TRUSTED_PROXY_COUNT", 0),
        stk_query_after_s=_int(env, "STK_QUERY_AFTER_S", 60, minimum=1),
        stk_give_up_after_s=_int(env, "STK_GIVE_UP_AFTER_S", 86400, minimum=1),
        # not in the contract: the first delay between STK queries (it doubles, with jitter)
        stk_query_backoff_s=_float(env, "STK_QUERY_BACKOFF_S", 10.0, minimum=0.05),
        ops_token=_text(env, "OPS_TOKEN", None),
        console_session_s=_int(env, "CONSOLE_SESSION_S", 28800, minimum=60),
        webhook_allow_private=_flag(env, "WEBHOOK_ALLOW_PRIVATE"),
        daraja_c2b_shortcode=c2b_shortcode,
        daraja_pull=_flag(env, "DARAJA_PULL"),
        daraja_pull_every_s=_int(env, "DARAJA_PULL_EVERY_S", 600, minimum=1),
        worker_metrics_port=_int(env, "WORKER_METRICS_PORT", 9191),
        # the workers' /metrics asks for no token: this machine only unless said otherwise
        worker_metrics_host=_text(env, "WORKER_METRICS_HOST", "127.0.0.1"),
        **{name: _float(env, name.upper(), getattr(Settings, name), minimum=0.0)
           for name in ("sweep_unsent_push_after_s", "sweep_released_push_after_s",
                        "sweep_abandoned_push_after_s", "sweep_unapplied_callback_after_s",
                        "sweep_query_grace_s", "sweep_redrive_every_s")},
    )
