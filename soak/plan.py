"""The soak's plan: every top-up and every fault of a run, drawn from its seed alone.

``make_plan(seed, n)`` is a pure function: the same arguments give the same plan, so a seed
that failed names the same top-ups, outcomes, callback behaviours and fault schedule when it
is run again. (The interleaving of real processes is not in the plan and never repeats
exactly; what the plan decides does.)

Each top-up's outcome is the simulator's to give, and the plan tells the simulator: the
top-up's ``reference`` becomes Daraja's AccountReference, and the simulator is given a script
per reference (``POST /__sim/scripts``). Phones are ordinary numbers, so that no outcome
needs a magic phone whose pushes would queue behind each other.
"""
from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

from simulator.rules import RESULT_DESCS

ACCOUNTS = 5
DEFAULT_N = 300
DEFAULT_RATE = 10.0        # top-ups a second
WORKER_GROUPS = ("workers-a", "workers-b")   # two `dramatiq workers`: one may die, one goes on
FAULT_KINDS = ("worker_kill", "worker_stop", "redis_restart", "postgres_restart")

# What Daraja says of a prompt. "refused": the push itself is refused, with one of these
# (neither is retried by the gateway; both are a failure on Daraja's word).
OUTCOMES = (("paid", 0.72), ("failed", 0.25), ("refused", 0.03))
FAILURE_CODES = tuple(sorted(code for code in RESULT_DESCS if code != 0))
REFUSALS = ("400.002.02:Bad Request - Invalid Amount",
            "400.002.02:Bad Request - Invalid PhoneNumber")

# How the answer reaches the gateway, and the simulator's behaviour for it (name: share,
# [(behaviour, weight), …]). "answer_lost": the push is processed but answered with an error
# or an HTML page, so the gateway never learns its CheckoutRequestID and must match the
# payment by phone and amount: drawn for payments only.
CALLBACKS = {
    "normal": (0.50, [(None, 1)]),
    "dropped": (0.14, [("no_callback", 5), ("query_pending", 1)]),
    "duplicated": (0.12, [("duplicate_callback", 4), ("callback_five_times", 1)]),
    "late": (0.10, [("late_callback", 1)]),
    "early": (0.10, [("callback_before_answer", 1)]),
    "answer_lost": (0.04, [("internal_error", 1), ("html_answer", 1)]),
}
FORGED_SHARE = 0.03
# A forged callback is POSTed without the callback token: a stranger's token, the token with
# one digit changed, or none at all.
FORGERIES = ("stranger", "near_miss", "missing")
# Phones: ordinary Safaricom numbers (none of the simulator's 25470000/1/2 magic prefixes),
# about four top-ups each; most of an account's top-ups come from its own customers' phones,
# some from another account's (a phone paying into two wallets).
PHONE_PREFIXES = ("25471", "25472", "25479")
TOPUPS_PER_PHONE = 4
FOREIGN_PHONE_SHARE = 0.1
MIN_AMOUNT, MAX_AMOUNT = 10, 25_000

# Faults: one per slot of the load's window, early in its slot; one that would begin before
# the previous one is over (a long stop) waits for it, and a few seconds more.
WORKER_STOP_S = (2.0, 25.0)       # past SWEEP_ABANDONED_PUSH_AFTER_S (20 s) now and then
SERVER_DOWN_S = (0.5, 4.0)
FAULT_GAP_S = 3.0
CRASH_SHARE = 0.5                 # a restart is a crash (SIGKILL) or a clean stop


def default_faults(n: int) -> int:
    """One fault per 300 top-ups, and at least one of each kind."""
    return max(len(FAULT_KINDS), round(n / 300))


@dataclass(frozen=True)
class PlannedTopUp:
    index: int
    at_s: float                  # when it is submitted, from the start of the load
    account: int                 # index into the run's accounts
    phone: str
    amount: int
    reference: str               # unique in the run: Daraja's AccountReference
    outcome: str                 # paid | failed | refused
    result_code: int             # 0 when paid
    refusal: str | None          # "errorCode:errorMessage" when refused
    callback: str                # a CALLBACKS name ("normal" when refused)
    behaviour: str | None        # the simulator's behaviour for it
    forgery: str | None          # a FORGERIES name, when a forged callback is sent for it
    forgery_salt: int            # decides the stranger's token or the digit changed

    def simulator_script(self) -> dict:
        fault = f"refuse:{self.refusal}" if self.refusal else self.behaviour
        return {"result_code": self.result_code, "fault": fault}

    @property
    def forged_receipt(self) -> str:
        # never one of the simulator's receipts: those are 10 characters
        return f"FORGED{self.index:07d}"


@dataclass(frozen=True)
class PlannedFault:
    at_s: float
    kind: str                    # a FAULT_KINDS name
    target: str | None           # the worker group, for worker faults
    duration_s: float            # how long a worker stays stopped, or a server down
    crash: bool                  # a restart by SIGKILL rather than a clean stop

    def describe(self) -> str:
        if self.kind == "worker_kill":
            return f"worker_kill {self.target}"
        if self.kind == "worker_stop":
            return f"worker_stop {self.target} for {self.duration_s:.1f}s"
        how = "crash" if self.crash else "clean stop"
        return f"{self.kind} ({how}, down {self.duration_s:.1f}s)"


@dataclass(frozen=True)
class Plan:
    seed: int
    n: int
    rate: float
    accounts: int
    topups: tuple[PlannedTopUp, ...]
    faults: tuple[PlannedFault, ...]
    fault_kinds: tuple[str, ...] = FAULT_KINDS
    left_out: tuple[str, ...] = ()

    @property
    def load_s(self) -> float:
        return self.n / self.rate

    def simulator_scripts(self) -> dict[str, dict]:
        return {t.reference: t.simulator_script() for t in self.topups}

    def by_reference(self) -> dict[str, PlannedTopUp]:
        return {t.reference: t for t in self.topups}

    def counts(self) -> dict[str, Counter]:
        """How many top-ups of each outcome, callback and forgery, and faults of each kind."""
        return {"outcome": Counter(t.outcome for t in self.topups),
                "callback": Counter(t.callback for t in self.topups if t.outcome != "refused"),
                "forgery": Counter(t.forgery for t in self.topups if t.forgery),
                "fault": Counter(f.kind for f in self.faults)}


def make_plan(seed: int, n: int, *, faults: int | None = None, rate: float = DEFAULT_RATE,
              fault_kinds: tuple[str, ...] = FAULT_KINDS,
              left_out: tuple[str, ...] = ()) -> Plan:
    """The plan of a run: ``n`` top-ups at ``rate`` a second and ``faults`` faults (by
    default one per 300 top-ups), their kinds taken in turn from ``fault_kinds``.
    ``left_out``: simulator behaviours not to use; where one is drawn, its class's first
    behaviour stands in (the draws, and so the rest of the plan, stay the same)."""
    if n < 1:
        raise ValueError("a soak needs at least one top-up")
    if rate <= 0:
        raise ValueError("the rate must be positive")
    fault_count = default_faults(n) if faults is None else faults
    if fault_count < 0:
        raise ValueError("the number of faults cannot be negative")
    if not fault_kinds or set(fault_kinds) - set(FAULT_KINDS):
        raise ValueError(f"fault kinds are some of {', '.join(FAULT_KINDS)}")
    substitutes = {}
    for name in left_out:
        found = [choices for _, choices in CALLBACKS.values()
                 if name in [b for b, _ in choices[1:]]]
        if not found:
            raise ValueError(f"{name!r} is not a behaviour that can be left out")
        substitutes[name] = found[0][0][0]
    rng = random.Random(seed)
    phones = _phones(rng, max(ACCOUNTS * 2, n // TOPUPS_PER_PHONE))
    home = {account: phones[account::ACCOUNTS] for account in range(ACCOUNTS)}
    amounts_used: dict[str, set[int]] = {}
    topups = tuple(_topup(rng, index, rate, phones, home, amounts_used, substitutes)
                   for index in range(n))
    return Plan(seed=seed, n=n, rate=rate, accounts=ACCOUNTS, topups=topups,
                faults=_faults(rng, fault_count, n / rate, tuple(fault_kinds)),
                fault_kinds=tuple(fault_kinds), left_out=tuple(left_out))


def _phones(rng: random.Random, count: int) -> list[str]:
    phones: list[str] = []
    seen: set[str] = set()
    while len(phones) < count:
        phone = rng.choice(PHONE_PREFIXES) + f"{rng.randrange(10_000_000):07d}"
        if phone not in seen:
            seen.add(phone)
            phones.append(phone)
    return phones


def _weighted(rng: random.Random, choices):
    names, weights = zip(*choices)
    return rng.choices(names, weights=weights)[0]


def _topup(rng, index, rate, phones, home, amounts_used, substitutes) -> PlannedTopUp:
    account = rng.randrange(ACCOUNTS)
    phone = (rng.choice(phones) if rng.random() < FOREIGN_PHONE_SHARE
             else rng.choice(home[account]))
    # Unique per phone: a payment whose push answer was lost is matched to its top-up by
    # phone and amount, and only when exactly one top-up fits.
    used = amounts_used.setdefault(phone, set())
    amount = rng.randint(MIN_AMOUNT, MAX_AMOUNT)
    while amount in used:
        amount = rng.randint(MIN_AMOUNT, MAX_AMOUNT)
    used.add(amount)

    outcome = _weighted(rng, OUTCOMES)
    callback = _weighted(rng, [(name, share) for name, (share, _) in CALLBACKS.items()])
    behaviour = _weighted(rng, CALLBACKS[callback][1])
    behaviour = substitutes.get(behaviour, behaviour)
    result_code, refusal = 0, None
    if outcome == "failed":
        result_code = rng.choice(FAILURE_CODES)
        if callback == "answer_lost":   # a failure callback names no phone: nothing to match
            callback, behaviour = "normal", None
    elif outcome == "refused":
        refusal = rng.choice(REFUSALS)
        callback, behaviour = "normal", None
    forgery = rng.choice(FORGERIES) if rng.random() < FORGED_SHARE else None
    return PlannedTopUp(
        index=index, at_s=index / rate, account=account, phone=phone, amount=amount,
        reference=f"SOAK{index:07d}", outcome=outcome, result_code=result_code,
        refusal=refusal, callback=callback, behaviour=behaviour, forgery=forgery,
        forgery_salt=rng.getrandbits(32))


def _faults(rng: random.Random, count: int, window_s: float,
            fault_kinds: tuple[str, ...]) -> tuple[PlannedFault, ...]:
    if count == 0:
        return ()
    kinds = [fault_kinds[i % len(fault_kinds)] for i in range(count)]
    rng.shuffle(kinds)
    slot = window_s / count
    planned = []
    free_at = 0.0
    for number, kind in enumerate(kinds):
        at_s = max(slot * (number + rng.uniform(0.05, 0.25)), free_at)
        target = rng.choice(WORKER_GROUPS) if kind.startswith("worker") else None
        span = WORKER_STOP_S if kind == "worker_stop" else SERVER_DOWN_S
        duration = 0.0 if kind == "worker_kill" else rng.uniform(*span)
        crash = kind.endswith("restart") and rng.random() < CRASH_SHARE
        planned.append(PlannedFault(at_s=round(at_s, 3), kind=kind, target=target,
                                    duration_s=round(duration, 3), crash=crash))
        free_at = at_s + duration + FAULT_GAP_S
    return tuple(planned)
