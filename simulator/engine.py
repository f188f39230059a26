"""The simulated Daraja: tokens, transactions, queued faults and counters, in memory.

:class:`Daraja` knows nothing of HTTP: each endpoint is a method taking the few request parts
it needs and returning a :class:`Reply` (status, body, and how long the answer must be held
back). All state sits behind one lock, held only for dictionary work; callbacks are POSTed by
the :class:`~simulator.callbacks.Scheduler`'s threads, never by the caller's.
"""
from __future__ import annotations

import hmac
import json
import logging
import math
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Callable
from urllib.parse import parse_qs

from . import ids, rules
from .callbacks import Scheduler, post_json
from .config import SimulatorConfig, updated
from .rules import DarajaError

log = logging.getLogger("simulator")

DUPLICATE_SPACING_S = 0.05   # between copies of one callback
QUERY_PENDING_TIMES = 5      # for the query_pending behaviours
STAT_NAMES = ("oauth", "stkpush", "stkquery", "callbacks_sent", "callbacks_failed",
              "tokens_issued")
MAX_SCRIPT_RESULT_CODE = 99_999
JSON = "application/json"


@dataclass(slots=True)
class Reply:
    """An answer for the HTTP layer: hold it ``hold_s`` seconds, or until ``wait_for`` is
    set (at most ``wait_timeout_s``), then send it."""
    status: int
    body: bytes
    content_type: str | None = JSON
    hold_s: float = 0.0
    wait_for: threading.Event | None = None
    wait_timeout_s: float = 0.0
    headers: dict | None = None


def json_reply(status: int, payload) -> Reply:
    return Reply(status, json.dumps(payload).encode())


@dataclass(slots=True, eq=False)
class Transaction:
    checkout_request_id: str
    merchant_request_id: str
    phone: str
    amount: int
    account_reference: str
    transaction_type: str
    callback_url: str
    result_code: int | None     # None while a person has not answered the prompt
    result_desc: str
    receipt: str | None
    callback_amount: int
    decimal_amount: bool
    transaction_date: int       # YYYYMMDDHHmmss, EAT, when the outcome became final
    created_at: str             # ISO 8601 UTC
    created_mono: float
    final_mono: float
    behaviour: str | None
    decisions: dict
    callbacks_planned: int
    pending_left: int
    pending_form: str
    first_callback_in: float    # seconds after creation of the first callback POST
    generation: int
    callbacks_delivered: int = 0
    callback_failures: int = 0
    last_callback: str | None = None
    queries: int = 0
    waiting: bool = False        # a prompt on the phone, for a person to answer (GET /phone)
    deadline_mono: float = 0.0   # ... until then, when it times out (1037)
    answer: str | None = None    # what the person (or the prompt's timeout) did
    _body: bytes | None = field(default=None, repr=False)

    def callback_body(self) -> bytes:
        if self._body is None:
            self._body = rules.callback_body(
                self.merchant_request_id, self.checkout_request_id, self.result_code,
                self.result_desc, self.callback_amount, self.decimal_amount, self.receipt,
                self.transaction_date, self.phone)
        return self._body

    def is_final(self, now: float) -> bool:
        return now >= self.final_mono

    def to_json(self, now: float) -> dict:
        return {
            "checkout_request_id": self.checkout_request_id,
            "merchant_request_id": self.merchant_request_id,
            "phone": self.phone,
            "amount": self.amount,
            "account_reference": self.account_reference,
            "transaction_type": self.transaction_type,
            "result_code": self.result_code,
            "result_desc": self.result_desc,
            "receipt": self.receipt,
            "paid": self.result_code == 0,
            "final": self.is_final(now),
            "callback_url": self.callback_url,
            "callback_amount": self.callback_amount,
            "callbacks_planned": self.callbacks_planned,
            "callbacks_delivered": self.callbacks_delivered,
            "callback_failures": self.callback_failures,
            "last_callback": self.last_callback,
            "queries": self.queries,
            "pending_queries_left": self.pending_left,
            "behaviour": self.behaviour,
            "decisions": dict(self.decisions),
            "created_at": self.created_at,
            "waiting": self.waiting,
            "answer": self.answer,
        }


class Daraja:
    """The simulated Daraja API. ``start()`` the callback threads before use, ``stop()`` after."""

    def __init__(self, config: SimulatorConfig | None = None, *,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time):
        self._initial = config or SimulatorConfig()
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()
        self.scheduler = Scheduler(workers=self._initial.callback_workers, clock=clock)
        self._seq = 0                  # never reset: ids stay unique across resets
        self._receipts: set[str] = set()
        self._generation = 0
        self._clear(self._initial)

    def _clear(self, config: SimulatorConfig) -> None:
        """Back to a fresh start with ``config`` (the caller holds the lock, or is __init__)."""
        self._config = config
        self._rng = random.Random(config.seed)
        self._tokens: dict[str, float] = {}
        self._transactions: dict[str, Transaction] = {}
        self._by_phone: dict[str, Transaction] = {}
        self._faults: deque[list] = deque()   # [name, kind, value, remaining]
        # AccountReference -> (PhonePlan, fault name or None): a script chosen per push
        self._scripts: dict[str, tuple[rules.PhonePlan, str | None]] = {}
        # pushes answered without a transaction, oldest first (as many as transactions kept)
        self._refusals: deque[dict] = deque(maxlen=config.max_transactions)
        self._stats = dict.fromkeys(STAT_NAMES, 0)
        self._decimal_next = False
        self._generation += 1

    # --- life cycle -----------------------------------------------------------------------

    def start(self) -> "Daraja":
        self.scheduler.start()
        return self

    def stop(self) -> None:
        self.scheduler.stop()

    @property
    def config(self) -> SimulatorConfig:
        return self._config

    # --- helpers --------------------------------------------------------------------------

    def error_reply(self, error: DarajaError) -> Reply:
        """Daraja's error body for ``error``, with a fresh requestId."""
        with self._lock:
            self._seq += 1
            seq = self._seq
        return json_reply(error.status, {"requestId": ids.request_id(seq),
                                         "errorCode": error.code,
                                         "errorMessage": error.message})

    def _token_valid(self, authorization: str | None, now: float) -> bool:
        """Called with the lock held."""
        token = rules.bearer_token(authorization)
        if token is None:
            return False
        expires = self._tokens.get(token)
        if expires is None:
            return False
        if now >= expires:
            del self._tokens[token]
            return False
        return True

    def _now_eat(self) -> datetime:
        return datetime.fromtimestamp(self._wall(), rules.EAT)

    def _take_fault(self) -> None:
        """Use up one count of the first queued fault (lock held)."""
        entry = self._faults[0]
        entry[3] -= 1
        if entry[3] <= 0:
            self._faults.popleft()

    def _new_receipt(self) -> str:
        while True:
            receipt = ids.receipt()
            if receipt not in self._receipts:
                self._receipts.add(receipt)
                return receipt

    # --- OAuth ----------------------------------------------------------------------------

    def oauth(self, query: str, authorization: str | None) -> Reply:
        """GET /oauth/v1/generate?grant_type=client_credentials"""
        now = self._clock()
        with self._lock:
            self._stats["oauth"] += 1
            config = self._config
        if parse_qs(query).get("grant_type") != ["client_credentials"]:
            return self.error_reply(rules.INVALID_GRANT_TYPE)
        credentials = rules.basic_credentials(authorization)
        if credentials is None:
            return self.error_reply(rules.INVALID_AUTH_TYPE)
        key, secret = credentials
        if not (_same(key, config.consumer_key) & _same(secret, config.consumer_secret)):
            return Reply(400, b"", None)  # Daraja: bad credentials, empty body
        token = ids.access_token()
        with self._lock:
            if self._config.new_token_revokes_old:
                self._tokens.clear()
            elif len(self._tokens) >= 10_000:
                self._tokens = {t: e for t, e in self._tokens.items() if e > now}
            self._tokens[token] = now + config.token_ttl_s
            self._stats["tokens_issued"] += 1
        return json_reply(200, {"access_token": token,
                                "expires_in": f"{config.token_ttl_s:g}"})

    def expire_tokens(self) -> int:
        """Every token issued so far stops working now."""
        with self._lock:
            count = len(self._tokens)
            self._tokens.clear()
        return count

    # --- STK push -------------------------------------------------------------------------

    def stk_push(self, authorization: str | None, content_type: str | None,
                 body: bytes) -> Reply:
        """POST /mpesa/stkpush/v1/processrequest"""
        reply = self._stk_push(authorization, content_type, body)
        latency = self._config.push_latency_s
        if latency:
            reply.hold_s += latency
        return reply

    def _stk_push(self, authorization, content_type, body) -> Reply:
        now = self._clock()
        with self._lock:
            self._stats["stkpush"] += 1
            config = self._config
            token_ok = self._token_valid(authorization, now)
        if not token_ok:
            return self.error_reply(rules.INVALID_TOKEN)
        try:
            push = rules.validate_push(rules.parse_json_object(content_type, body),
                                       config.require_https_callback)
            rules.check_credentials(push.shortcode, push.password, push.timestamp,
                                    push.timestamp_at, config.shortcode, config.passkey,
                                    self._now_eat())
        except DarajaError as error:
            return self.error_reply(error)

        plan = rules.plan_for_phone(push.phone)
        behaviour, refusal, source = plan.behaviour, plan.refusal, "phone"
        with self._lock:
            config = self._config
            scripted = self._scripts.get(push.account_reference)
            if scripted is not None:  # a script wins over the phone, a queued fault over both
                plan, source = scripted[0], "script"
                behaviour, refusal = plan.behaviour, plan.refusal
            queued = self._faults[0] if self._faults else None  # [name, kind, value, left]
            if queued is not None and (queued[1] == "refuse" or queued[2] == "gateway_fault"):
                # a queued refusal strikes before the subscriber lock, as the gateway would
                self._take_fault()
                source = f"fault:{queued[0]}"
                behaviour, refusal = ((None, queued[2]) if queued[1] == "refuse"
                                      else ("gateway_fault", None))
                queued = None
            if refusal is None and behaviour != "gateway_fault":
                busy = self._by_phone.get(push.phone)
                if config.lock_subscriber and busy is not None and not busy.is_final(now):
                    refusal, source = rules.SUBSCRIBER_LOCKED, "lock_subscriber"
                else:
                    if queued is not None:  # a queued behaviour waits for a push that passes
                        self._take_fault()
                        source, behaviour = f"fault:{queued[0]}", queued[2]
                    txn = self._create(push, plan, behaviour, source, config, now)
        if refusal is not None:
            log.debug("push for %s refused (%s): %s %s", rules.mask_phone(push.phone), source,
                      refusal.code, refusal.message)
            self._record_refusal(push, source, refusal.code, refusal.message)
            return self.error_reply(refusal)
        if behaviour == "gateway_fault":
            log.debug("push for %s answered with a gateway fault", rules.mask_phone(push.phone))
            self._record_refusal(push, source, "gateway_fault",
                                 rules.GATEWAY_FAULT["fault"]["faultstring"])
            return json_reply(500, rules.GATEWAY_FAULT)

        done = self._schedule(txn, behaviour)
        log.debug("push %s for %s accepted: KES %d, result %s, behaviour %s, %d callback(s)",
                  txn.checkout_request_id, rules.mask_phone(txn.phone), txn.amount,
                  txn.result_code, behaviour or "-", txn.callbacks_planned)

        if behaviour == "html_answer":
            return Reply(200, rules.HTML_PAGE, "text/html; charset=utf-8")
        if behaviour == "internal_error":
            return self.error_reply(rules.INTERNAL_ERROR)
        reply = json_reply(200, {"MerchantRequestID": txn.merchant_request_id,
                                 "CheckoutRequestID": txn.checkout_request_id,
                                 "ResponseCode": "0",
                                 "ResponseDescription": rules.ACCEPTED,
                                 "CustomerMessage": rules.ACCEPTED})
        if behaviour == "slow_answer":
            reply.hold_s = config.slow_answer_s
        if done is not None:
            reply.wait_for, reply.wait_timeout_s = done, config.callback_timeout_s + 1.0
        return reply

    def _record_refusal(self, push: rules.Push, source: str, code: str, message: str) -> None:
        """Keep what a push answered without a transaction was told (``refusals()``)."""
        with self._lock:
            self._refusals.append({
                "account_reference": push.account_reference, "phone": push.phone,
                "amount": push.amount, "error_code": code, "error_message": message,
                "source": source,
                "at": datetime.fromtimestamp(self._wall(), timezone.utc)
                .isoformat(timespec="milliseconds").replace("+00:00", "Z")})

    def _create(self, push: rules.Push, plan: rules.PhonePlan, behaviour: str | None,
                source: str, config: SimulatorConfig, now: float) -> Transaction:
        """Decide the outcome and record the transaction (lock held)."""
        # Five draws per transaction whatever the rates, so that a seed gives the same
        # decisions to the same sequence of pushes under any setting.
        fail_draw, code_draw, drop_draw, dup_draw, late_draw = (
            self._rng.random() for _ in range(5))
        decisions = {"source": source if (behaviour or plan.magic) else None,
                     "failure": False, "drop": False, "duplicate": False, "late": False}
        result_code = plan.result_code
        waiting = (behaviour is None and not plan.magic and config.unclaimed_phones == "wait"
                   and push.phone != rules.TEST_PHONE)
        if waiting:
            decisions["source"] = "person"
        elif behaviour is None and not plan.magic and fail_draw < config.failure_rate:
            decisions["failure"] = True
            result_code = rules.RANDOM_FAILURE_CODES[int(code_draw * 4) % 4]

        copies, first_in, final_in, pending_left, pending_form = _callback_plan(
            behaviour, waiting, config, decisions, drop_draw, dup_draw, late_draw)
        if waiting:
            result_code = None   # nothing is decided until a person answers on GET /phone

        self._seq += 1
        wall = self._wall()
        created = datetime.fromtimestamp(wall, timezone.utc)
        checkout_id = ids.checkout_request_id(created.astimezone(rules.EAT), self._seq)
        while checkout_id in self._transactions:  # 100 000 pushes in one millisecond
            self._seq += 1
            checkout_id = ids.checkout_request_id(created.astimezone(rules.EAT), self._seq)
        paid = result_code == 0 and not waiting
        decimal = False
        if paid:
            decimal, self._decimal_next = self._decimal_next, not self._decimal_next
        txn = Transaction(
            checkout_request_id=checkout_id,
            merchant_request_id=ids.merchant_request_id(self._seq),
            phone=push.phone, amount=push.amount, account_reference=push.account_reference,
            transaction_type=push.transaction_type, callback_url=push.callback_url,
            result_code=result_code,
            result_desc=rules.result_desc(result_code) if result_code is not None else "",
            receipt=self._new_receipt() if paid else None,
            callback_amount=push.amount - 1 if behaviour == "amount_mismatch" else push.amount,
            decimal_amount=decimal,
            transaction_date=rules.eat_stamp(created + timedelta(seconds=final_in)),
            created_at=created.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            created_mono=now, final_mono=math.inf if waiting else now + final_in,
            behaviour=behaviour, decisions=decisions, callbacks_planned=copies,
            pending_left=pending_left, pending_form=pending_form,
            first_callback_in=first_in, generation=self._generation, waiting=waiting,
            deadline_mono=now + final_in if waiting else 0.0)
        self._transactions[checkout_id] = txn
        self._by_phone[push.phone] = txn
        while len(self._transactions) > config.max_transactions:
            oldest = self._transactions.pop(next(iter(self._transactions)))
            if self._by_phone.get(oldest.phone) is oldest:
                del self._by_phone[oldest.phone]
        return txn

    def _schedule(self, txn: Transaction, behaviour: str | None) -> threading.Event | None:
        """Plan the callback POSTs; for callback_before_answer, the Event set once the first
        POST has returned."""
        done = threading.Event() if behaviour == "callback_before_answer" else None
        if txn.waiting:
            self.scheduler.call_at(txn.deadline_mono,
                                   lambda: self.answer_prompt(txn.checkout_request_id,
                                                              "timeout", by="timeout"))
        for copy in range(txn.callbacks_planned):
            due = txn.created_mono + txn.first_callback_in + copy * DUPLICATE_SPACING_S
            self.scheduler.call_at(due, lambda first=(copy == 0): self._deliver(
                txn, done if first else None))
        return done

    def _deliver(self, txn: Transaction, done: threading.Event | None) -> None:
        """One callback POST, on a scheduler thread: the outcome is recorded, never raised."""
        try:
            ok, detail = post_json(txn.callback_url, txn.callback_body(),
                                   self._config.callback_timeout_s)
            with self._lock:
                current = txn.generation == self._generation
                if ok:
                    txn.callbacks_delivered += 1
                else:
                    txn.callback_failures += 1
                txn.last_callback = detail
                if current:
                    self._stats["callbacks_sent" if ok else "callbacks_failed"] += 1
            if not ok:
                log.warning("callback %s for %s to %s failed: %s", txn.checkout_request_id,
                            rules.mask_phone(txn.phone), rules.origin(txn.callback_url), detail)
        finally:
            if done is not None:
                done.set()

    # --- the phone (GET /phone): prompts a person answers --------------------------------

    def answer_prompt(self, checkout_request_id: str, action: str, pin: str | None = None,
                      *, by: str = "person") -> str | None:
        """What the customer does with a prompt waiting on the phone: ``pay`` (with a 4-digit
        PIN), ``cancel``, ``wrong_pin``, ``timeout`` or ``no_money``. The outcome is final and
        called back ``callback_delay_s`` later. Returns None, or why nothing was done."""
        if action not in rules.PROMPT_ANSWERS:
            return f"no such answer: {action}"
        if action == "pay" and not rules.valid_pin(pin):
            return "Enter your 4-digit M-PESA PIN."
        now = self._clock()
        with self._lock:
            txn = self._transactions.get(checkout_request_id)
            if txn is None or txn.generation != self._generation:
                return "No such prompt."
            if not txn.waiting:
                return f"This prompt was answered already ({txn.answer})."
            code = rules.PROMPT_ANSWERS[action]
            txn.waiting, txn.answer = False, f"{action} ({by})"
            txn.result_code, txn.result_desc = code, rules.result_desc(code)
            if code == 0:
                txn.receipt = self._new_receipt()
                txn.decimal_amount, self._decimal_next = self._decimal_next, not self._decimal_next
            delay = self._config.callback_delay_s
            txn.final_mono = now + delay
            txn.first_callback_in = txn.final_mono - txn.created_mono
            txn.transaction_date = rules.eat_stamp(
                datetime.fromtimestamp(self._wall() + delay, timezone.utc))
            txn.callbacks_planned = 1
            txn._body = None
        self.scheduler.call_at(txn.final_mono, lambda: self._deliver(txn, None))
        log.debug("prompt %s for %s answered: %s", checkout_request_id,
                  rules.mask_phone(txn.phone), txn.answer)
        return None

    def prompts(self) -> list[dict]:
        """The prompts waiting on a phone, oldest first, each with the seconds it has left."""
        now = self._clock()
        with self._lock:
            return [{**t.to_json(now), "seconds_left": max(0, int(t.deadline_mono - now))}
                    for t in self._transactions.values() if t.waiting]

    def answered_prompts(self, limit: int = 10) -> list[dict]:
        """The prompts a person (or the timeout) answered last, newest first."""
        now = self._clock()
        with self._lock:
            answered = [t for t in self._transactions.values() if t.answer is not None]
            return [t.to_json(now) for t in reversed(answered[-limit:])]

    # --- STK query ------------------------------------------------------------------------

    def stk_query(self, authorization: str | None, content_type: str | None,
                  body: bytes) -> Reply:
        """POST /mpesa/stkpushquery/v1/query"""
        now = self._clock()
        with self._lock:
            self._stats["stkquery"] += 1
            config = self._config
            token_ok = self._token_valid(authorization, now)
        if not token_ok:
            return self.error_reply(rules.INVALID_TOKEN)
        try:
            payload = rules.parse_json_object(content_type, body)
            shortcode = rules.parse_shortcode(payload.get("BusinessShortCode"))
            if shortcode is None:
                raise rules.bad_request("BusinessShortCode")
            stamp = rules.parse_timestamp(payload.get("Timestamp"))
            if stamp is None:
                raise rules.bad_request("Timestamp")
            checkout_id = payload.get("CheckoutRequestID")
            if not isinstance(checkout_id, str) or not checkout_id:
                raise rules.bad_request("CheckoutRequestID")
            rules.check_credentials(shortcode, payload.get("Password"), stamp[0], stamp[1],
                                    config.shortcode, config.passkey, self._now_eat())
        except DarajaError as error:
            return self.error_reply(error)
        with self._lock:
            txn = self._transactions.get(checkout_id)
            if txn is not None:
                txn.queries += 1
                pending = not txn.is_final(now) or txn.pending_left > 0
                if pending and txn.pending_left > 0:
                    txn.pending_left -= 1
        if txn is None:
            return self.error_reply(rules.bad_request("CheckoutRequestID"))
        if pending and txn.pending_form == "500":
            return json_reply(500, {"requestId": txn.checkout_request_id,
                                    "errorCode": "500.001.1001",
                                    "errorMessage": rules.PENDING_500})
        code, desc = ((rules.PENDING_CODE, rules.PENDING_DESC) if pending
                      else (str(txn.result_code), txn.result_desc))
        return json_reply(200, {"ResponseCode": "0",
                                "ResponseDescription": rules.QUERY_ACCEPTED,
                                "MerchantRequestID": txn.merchant_request_id,
                                "CheckoutRequestID": txn.checkout_request_id,
                                "ResultCode": code, "ResultDesc": desc})

    # --- control (/__sim/*) ---------------------------------------------------------------

    def stats(self) -> dict:
        with self._lock:
            stats = dict(self._stats)
            stats["transactions"] = len(self._transactions)
        stats["callbacks_due"] = self.scheduler.pending()
        return stats

    def reset(self) -> None:
        """Transactions, tokens, counters, queued faults and runtime settings back to the
        start; callbacks not yet sent are dropped."""
        with self._lock:
            self.scheduler.clear()
            self._clear(self._initial)

    def update_config(self, changes: dict) -> SimulatorConfig:
        """Apply runtime settings (ValueError names a bad one); a given seed re-seeds."""
        with self._lock:
            self._config = updated(self._config, changes)
            if "seed" in changes:
                self._rng = random.Random(self._config.seed)
            return self._config

    def queue_fault(self, name, count=1) -> list[dict]:
        """The next ``count`` accepted-looking pushes fail as ``name`` says (ValueError if
        unknown); ``expire_token_early`` expires every token at once instead."""
        if name == "expire_token_early":
            self.expire_tokens()
            return self.faults()
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 1_000_000:
            raise ValueError("count must be an integer from 1 to 1000000")
        kind, value = rules.parse_fault(name)
        with self._lock:
            self._faults.append([name, kind, value, count])
        return self.faults()

    def add_scripts(self, scripts) -> int:
        """Script the pushes of some AccountReferences: ``{reference: {"result_code": n,
        "fault": NAME}}``, both optional (0 and none: paid, called back once). NAME is any
        name ``queue_fault`` takes but ``expire_token_early``; a refusal answers every push
        with that reference, a behaviour shapes every transaction. ValueError names the first
        bad entry, and then nothing is added. Returns how many references are scripted."""
        if not isinstance(scripts, dict):
            raise ValueError("scripts must be an object of AccountReference to script")
        parsed = {}
        for reference, script in scripts.items():
            if (not isinstance(reference, str)
                    or not 1 <= len(reference) <= rules.MAX_ACCOUNT_REFERENCE):
                raise ValueError(f"{reference!r}: an AccountReference has 1 to "
                                 f"{rules.MAX_ACCOUNT_REFERENCE} characters")
            if not isinstance(script, dict) or set(script) - {"result_code", "fault"}:
                raise ValueError(f"{reference}: a script has only result_code and fault")
            code = script.get("result_code", 0)
            if (isinstance(code, bool) or not isinstance(code, int)
                    or not 0 <= code <= MAX_SCRIPT_RESULT_CODE):
                raise ValueError(f"{reference}: result_code must be an integer from 0 to "
                                 f"{MAX_SCRIPT_RESULT_CODE}")
            behaviour = refusal = None
            if script.get("fault") is not None:
                try:
                    kind, value = rules.parse_fault(script["fault"])
                except ValueError as exc:
                    raise ValueError(f"{reference}: {exc}") from None
                behaviour, refusal = (value, None) if kind == "behaviour" else (None, value)
            parsed[reference] = (rules.PhonePlan(result_code=code, behaviour=behaviour,
                                                 refusal=refusal, magic=True),
                                 script.get("fault"))
        with self._lock:
            self._scripts.update(parsed)
            return len(self._scripts)

    def scripts(self) -> dict[str, dict]:
        with self._lock:
            return {reference: {"result_code": plan.result_code, "fault": fault}
                    for reference, (plan, fault) in self._scripts.items()}

    def refusals(self, account_reference: str | None = None) -> list[dict]:
        """Pushes answered without a transaction (a refusal or a gateway fault), oldest
        first: what each was told, and why (``source``: phone, script, fault:NAME,
        lock_subscriber)."""
        with self._lock:
            return [dict(r) for r in self._refusals
                    if account_reference is None or r["account_reference"] == account_reference]

    def faults(self) -> list[dict]:
        with self._lock:
            return [{"fault": name, "remaining": remaining}
                    for name, _, _, remaining in self._faults]

    def transactions(self, phone: str | None = None, limit: int | None = None) -> list[dict]:
        now = self._clock()
        with self._lock:
            found = [t for t in self._transactions.values() if phone is None or t.phone == phone]
            if limit is not None:
                found = found[-limit:] if limit > 0 else []
            return [t.to_json(now) for t in found]

    def paid_transactions(self) -> list[Transaction]:
        """Every paid transaction whose outcome is final, whatever became of its callbacks:
        what the organisation-portal statement shows (``simulator.statement``)."""
        now = self._clock()
        with self._lock:
            return [t for t in self._transactions.values()
                    if t.result_code == 0 and t.is_final(now)]

    def transaction(self, checkout_request_id: str) -> dict | None:
        now = self._clock()
        with self._lock:
            txn = self._transactions.get(checkout_request_id)
            return txn.to_json(now) if txn is not None else None


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def _callback_plan(behaviour: str | None, waiting: bool, config: SimulatorConfig,
                   decisions: dict, drop_draw: float, dup_draw: float, late_draw: float):
    """When the callbacks of a new transaction go out: ``(copies, first_in, final_in,
    pending_left, pending_form)``, by its magic behaviour, a person's answer on the phone
    page, or the configured rates (which note what they decided in ``decisions``)."""
    delay = config.callback_delay_s
    copies, first_in, final_in = 1, delay, delay
    pending_left, pending_form = config.query_pending_times, config.query_pending_form
    if behaviour in ("no_callback", "query_pending", "query_pending_500"):
        copies = 0
        if behaviour != "no_callback":
            pending_left = QUERY_PENDING_TIMES
            pending_form = "500" if behaviour == "query_pending_500" else "4999"
    elif behaviour == "duplicate_callback":
        copies = 2
    elif behaviour == "callback_five_times":
        copies = 5
    elif behaviour == "late_callback":
        first_in = config.late_delay_s
    elif behaviour == "callback_before_answer":
        first_in = final_in = 0.0
    elif waiting:
        # nothing goes out until a person answers on GET /phone, or the prompt times out
        copies, first_in = 0, config.prompt_timeout_s
        final_in = config.prompt_timeout_s
    elif behaviour is None:
        if drop_draw < config.drop_callback_rate:
            decisions["drop"] = True
            copies = 0
        else:
            if dup_draw < config.duplicate_callback_rate:
                decisions["duplicate"] = True
                copies = 2
            if late_draw < config.late_callback_rate:
                decisions["late"] = True
                first_in = config.late_delay_s
    return copies, first_in, final_in, pending_left, pending_form
