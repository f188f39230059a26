"""The simulator's settings: the Daraja app it pretends to serve, and the knobs of its faults.

The first seven fields describe the Daraja app (credentials, shortcode, passkey, token
lifetime, callback delay, https rule). The rest are runtime knobs that ``POST /__sim/config``
may change while the simulator runs; ``POST /__sim/reset`` puts back the values the simulator
was started with.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

SANDBOX_SHORTCODE = "174379"
SANDBOX_PASSKEY = "bfb279f9aa9bdbcf158e97dd71a467cd2e0c893059b10f78e6b72ada1ed2c919"

# never shown by the control endpoints, never logged
SECRET_FIELDS = frozenset({"consumer_secret", "passkey"})


@dataclass(frozen=True)
class SimulatorConfig:
    consumer_key: str = "sim-consumer-key"
    consumer_secret: str = "sim-consumer-secret"
    shortcode: str = SANDBOX_SHORTCODE
    passkey: str = SANDBOX_PASSKEY
    token_ttl_s: float = 3599
    callback_delay_s: float = 0.2
    require_https_callback: bool = False

    # runtime knobs (POST /__sim/config)
    lock_subscriber: bool = True           # one open prompt per phone, as Daraja
    drop_callback_rate: float = 0.0        # fraction of transactions never called back
    duplicate_callback_rate: float = 0.0   # ... called back twice
    late_callback_rate: float = 0.0        # ... called back after late_callback_delay_s
    late_callback_delay_s: float | None = None  # None: 30 x callback_delay_s
    seed: int | None = None                # seeds the draws of the rates above
    push_latency_s: float = 0.0            # added before every STK push answer
    new_token_revokes_old: bool = False    # the FAQ's claim, off by default
    failure_rate: float = 0.0              # ordinary pushes ending in 1, 1032, 1037 or 2001
    query_pending_times: int = 0           # queries answered "pending" before the final one
    query_pending_form: str = "4999"       # "4999" (HTTP 200) or "500" (the older form)
    slow_answer_s: float = 20.0            # how long the slow_answer behaviour holds a push
    # phones no magic number claims: "pay" at once, or "wait" for a person on GET /phone
    unclaimed_phones: str = "pay"
    prompt_timeout_s: float = 60.0         # a prompt nobody answers ends in 1037 after this
    c2b_echo_stk: str | None = None        # "before"/"after": a paid push is also reported as
    #                                        a C2B confirmation, before or after its callback
    pull_page_size: int = 100              # Pull Transactions rows per page

    # plumbing (constructor only)
    callback_timeout_s: float = 5.0        # every callback POST gives up after this
    callback_workers: int = 16             # threads delivering callbacks
    max_transactions: int = 200_000        # the oldest are forgotten beyond this

    @property
    def late_delay_s(self) -> float:
        if self.late_callback_delay_s is None:
            return 30 * self.callback_delay_s
        return self.late_callback_delay_s

    def public(self) -> dict:
        """Every field but the secrets, as JSON-ready values."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in SECRET_FIELDS}


def _rate(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError("a number from 0 to 1")
    return float(value)


def _seconds(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 86400:
        raise ValueError("a number of seconds from 0 to 86400")
    return float(value)


def _optional_seconds(value):
    return None if value is None else _seconds(value)


def _flag(value):
    if not isinstance(value, bool):
        raise ValueError("true or false")
    return value


def _count(value):
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 1000:
        raise ValueError("an integer from 0 to 1000")
    return value


def _seed(value):
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError("an integer or null")
    return value


def _unclaimed(value):
    if value not in ("pay", "wait"):
        raise ValueError('"pay" or "wait"')
    return value


def _pending_form(value):
    if value not in ("4999", "500"):
        raise ValueError('"4999" or "500"')
    return value


def _echo(value):
    if value not in (None, "before", "after"):
        raise ValueError('null, "before" or "after"')
    return value


def _page_size(value):
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 10_000:
        raise ValueError("an integer from 1 to 10000")
    return value


RUNTIME_FIELDS = {
    "callback_delay_s": _seconds,
    "lock_subscriber": _flag,
    "drop_callback_rate": _rate,
    "duplicate_callback_rate": _rate,
    "late_callback_rate": _rate,
    "late_callback_delay_s": _optional_seconds,
    "seed": _seed,
    "push_latency_s": _seconds,
    "new_token_revokes_old": _flag,
    "failure_rate": _rate,
    "query_pending_times": _count,
    "query_pending_form": _pending_form,
    "slow_answer_s": _seconds,
    "require_https_callback": _flag,
    "unclaimed_phones": _unclaimed,
    "prompt_timeout_s": _seconds,
    "c2b_echo_stk": _echo,
    "pull_page_size": _page_size,
}


def updated(config: SimulatorConfig, changes: dict) -> SimulatorConfig:
    """A copy of ``config`` with ``changes`` (a JSON object) applied.

    Raises ValueError naming the first unknown or malformed field; nothing is applied then.
    """
    if not isinstance(changes, dict):
        raise ValueError("the body must be a JSON object")
    clean = {}
    for name, value in changes.items():
        check = RUNTIME_FIELDS.get(name)
        if check is None:
            raise ValueError(f"{name}: not a runtime setting (one of {', '.join(RUNTIME_FIELDS)})")
        try:
            clean[name] = check(value)
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
    return dataclasses.replace(config, **clean)
