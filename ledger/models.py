"""The ledger's tables.

Every "at most once" is a unique index here, not a check in Python:
- a CheckoutRequestID belongs to one top-up (``topup.checkout_request_id``);
- an M-Pesa receipt credits once, across top-ups and orphans (``ledger_entry.mpesa_receipt``),
  whichever way it arrives (an STK callback, a C2B confirmation, a Pull Transactions row, a
  statement);
- a top-up is credited once (``ledger_entry.topup``);
- an idempotency key names one request per account (``topup.account, idempotency_key``).
NULLs never collide in a unique index (PostgreSQL and SQLite alike), so a top-up still
waiting for its receipt does not block another.
"""
from __future__ import annotations

import datetime as dt

import peewee as pw

from ledger.db import database


def utcnow() -> dt.datetime:
    """Naive UTC: the ledger stores UTC everywhere; East Africa Time exists only at Daraja."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class BaseModel(pw.Model):
    class Meta:
        database = database
        legacy_table_names = False


class Account(BaseModel):
    id = pw.CharField(max_length=40, primary_key=True)
    name = pw.CharField(max_length=200)
    created_at = pw.DateTimeField(default=utcnow)
    # what a customer types after the paybill (ledger.account_numbers); every account has one
    # (migration 005 gave the older ones theirs)
    account_number = pw.CharField(max_length=10, null=True, unique=True)


class ApiKey(BaseModel):
    id = pw.CharField(max_length=40, primary_key=True)
    account = pw.ForeignKeyField(Account, backref="api_keys", on_delete="CASCADE")
    prefix = pw.CharField(max_length=16)          # shown in listings: "sk_ab12cd34"
    key_hash = pw.CharField(max_length=64, unique=True)  # sha256 hex of the whole key
    created_at = pw.DateTimeField(default=utcnow)
    revoked_at = pw.DateTimeField(null=True)


class Wallet(BaseModel):
    account = pw.ForeignKeyField(Account, backref="wallets", unique=True, on_delete="CASCADE")
    currency = pw.CharField(max_length=3, default="KES")
    balance_cents = pw.BigIntegerField(default=0,
                                       constraints=[pw.Check("balance_cents >= 0")])
    updated_at = pw.DateTimeField(default=utcnow)


# Top-up statuses (contract §3). Only forward moves are written, each one guarded by a
# conditional UPDATE on the current status.
PENDING, SUCCEEDED, FAILED, UNKNOWN = "pending", "succeeded", "failed", "unknown"

# Where the STK push stands. Only QUEUED may be claimed for sending: a push that may have
# reached Daraja (SENDING left by a killed worker, AMBIGUOUS after a lost answer) is never
# sent again, because a second prompt could charge the customer twice.
PUSH_QUEUED, PUSH_SENDING, PUSH_SENT = "queued", "sending", "sent"
PUSH_AMBIGUOUS, PUSH_REFUSED = "ambiguous", "refused"
# No STK push at all: a payment the customer made from the phone's menu (C2B), or one a
# person assigned to an account (ledger.assignments).
PUSH_NONE = "none"

# How the money came: a prompt the client asked for, or a paybill payment (contract §6).
STK_PUSH, C2B = "stk_push", "c2b"


class TopUp(BaseModel):
    seq = pw.BigAutoField()                       # listing order and cursor
    id = pw.CharField(max_length=40, unique=True)
    account = pw.ForeignKeyField(Account, backref="topups", on_delete="CASCADE")
    provider = pw.CharField(max_length=16, default="mpesa")
    status = pw.CharField(max_length=16, default=PENDING, index=True)
    amount = pw.IntegerField()                    # whole shillings, as pushed
    # 2547XXXXXXXX for a push; for a paybill payment, as Daraja gave it ("2547 ***** 126")
    phone = pw.CharField(max_length=32, index=True)
    reference = pw.CharField(max_length=12, index=True)  # a C2B confirmation names it too
    metadata = pw.TextField(default="{}")         # JSON object
    idempotency_key = pw.CharField(max_length=255, null=True)
    request_fingerprint = pw.CharField(max_length=64, null=True)
    checkout_request_id = pw.CharField(max_length=128, null=True, unique=True)
    merchant_request_id = pw.CharField(max_length=128, null=True)
    mpesa_receipt = pw.CharField(max_length=32, null=True, unique=True)
    credited_cents = pw.BigIntegerField(null=True)  # what M-Pesa confirmed, when it differs
    flagged = pw.CharField(max_length=200, null=True)  # e.g. amount or phone mismatch
    failure_code = pw.CharField(max_length=32, null=True)
    failure_reason = pw.CharField(max_length=255, null=True)
    push_state = pw.CharField(max_length=16, default=PUSH_QUEUED, index=True)
    push_attempts = pw.IntegerField(default=0)
    push_started_at = pw.DateTimeField(null=True)
    pushed_at = pw.DateTimeField(null=True)
    next_query_at = pw.DateTimeField(null=True, index=True)
    query_attempts = pw.IntegerField(default=0)
    created_at = pw.DateTimeField(default=utcnow)
    updated_at = pw.DateTimeField(default=utcnow)
    completed_at = pw.DateTimeField(null=True)
    channel = pw.CharField(max_length=16, null=True, default=STK_PUSH)  # STK_PUSH | C2B

    class Meta:
        indexes = ((("account", "idempotency_key"), True),)


class LedgerEntry(BaseModel):
    seq = pw.BigAutoField()
    id = pw.CharField(max_length=40, unique=True)
    wallet = pw.ForeignKeyField(Wallet, backref="entries", on_delete="CASCADE")
    type = pw.CharField(max_length=16)            # "top_up" | "debit"
    amount_cents = pw.BigIntegerField()           # debits are negative
    balance_after_cents = pw.BigIntegerField()
    topup = pw.ForeignKeyField(TopUp, field="id", null=True, unique=True, on_delete="RESTRICT")
    mpesa_receipt = pw.CharField(max_length=32, null=True, unique=True)
    description = pw.CharField(max_length=255, default="")
    # callback | query | statement | api | c2b | pull
    source = pw.CharField(max_length=16, default="callback")
    created_at = pw.DateTimeField(default=utcnow)

    class Meta:
        table_name = "ledger_entry"


class Callback(BaseModel):
    """A Daraja callback exactly as received, stored before it is acknowledged."""
    seq = pw.BigAutoField()
    received_at = pw.DateTimeField(default=utcnow)
    remote_addr = pw.CharField(max_length=64, null=True)
    body = pw.TextField()
    checkout_request_id = pw.CharField(max_length=128, null=True, index=True)
    result_code = pw.CharField(max_length=32, null=True)
    well_formed = pw.BooleanField(default=True)
    applied_at = pw.DateTimeField(null=True, index=True)
    outcome = pw.CharField(max_length=64, null=True)  # what applying it did


class OrphanPayment(BaseModel):
    """Money M-Pesa says moved that no top-up or account claims: kept, never dropped.

    An STK callback's for a CheckoutRequestID no top-up knows; or a paybill payment (C2B)
    whose account number no account has (no CheckoutRequestID then: ``bill_ref_number`` holds
    what the customer typed)."""
    seq = pw.BigAutoField()
    checkout_request_id = pw.CharField(max_length=128, null=True, unique=True)
    mpesa_receipt = pw.CharField(max_length=32, null=True, unique=True)
    amount_cents = pw.BigIntegerField(null=True)
    phone = pw.CharField(max_length=32, null=True)
    callback = pw.ForeignKeyField(Callback, null=True, on_delete="SET NULL")
    created_at = pw.DateTimeField(default=utcnow)
    resolved_topup = pw.ForeignKeyField(TopUp, field="id", null=True, on_delete="SET NULL")
    resolved_at = pw.DateTimeField(null=True)
    bill_ref_number = pw.CharField(max_length=64, null=True)   # C2B: the account number typed
    reason = pw.CharField(max_length=200, null=True)           # C2B: why no account took it
    c2b_confirmation = pw.BigIntegerField(null=True)           # C2B: its c2b_confirmation row

    class Meta:
        table_name = "orphan_payment"


class TopUpEvent(BaseModel):
    """A top-up's history, in order: request, push and answer, callbacks, queries, credit."""
    seq = pw.BigAutoField()
    topup = pw.ForeignKeyField(TopUp, field="id", backref="history", on_delete="CASCADE")
    kind = pw.CharField(max_length=32)
    detail = pw.TextField(default="{}")           # JSON, never a secret, phones masked
    created_at = pw.DateTimeField(default=utcnow)

    class Meta:
        table_name = "topup_event"


# --- the client's contract: idempotent requests, events and their webhook deliveries ----------

class IdempotencyRecord(BaseModel):
    """The first answer to a request sent with an Idempotency-Key, written in the same
    transaction as the work it describes: a retry finds it and gets the same answer."""
    seq = pw.BigAutoField()
    account = pw.ForeignKeyField(Account, on_delete="CASCADE")
    endpoint = pw.CharField(max_length=64)        # "POST /v1/wallet/debits"
    key = pw.CharField(max_length=255)
    request_fingerprint = pw.CharField(max_length=64)
    status_code = pw.IntegerField(default=0)
    response_body = pw.TextField(default="")      # JSON, exactly as first answered
    created_at = pw.DateTimeField(default=utcnow, index=True)

    class Meta:
        table_name = "idempotency_record"
        indexes = ((("account", "endpoint", "key"), True),)


class WebhookEndpoint(BaseModel):
    seq = pw.BigAutoField()
    id = pw.CharField(max_length=40, unique=True)
    account = pw.ForeignKeyField(Account, backref="webhook_endpoints", on_delete="CASCADE")
    url = pw.TextField()
    events = pw.TextField()                       # JSON list of event types
    # Shown once, kept in clear: an HMAC key is needed as is to sign every delivery.
    secret = pw.CharField(max_length=100)
    created_at = pw.DateTimeField(default=utcnow)
    deleted_at = pw.DateTimeField(null=True)

    class Meta:
        table_name = "webhook_endpoint"


class Event(BaseModel):
    """``wallet.top_up`` / ``topup.failed``: written in the transaction that made it true."""
    seq = pw.BigAutoField()
    id = pw.CharField(max_length=40, unique=True)
    account = pw.ForeignKeyField(Account, backref="events", on_delete="CASCADE")
    type = pw.CharField(max_length=32)
    topup = pw.ForeignKeyField(TopUp, field="id", null=True, index=True, on_delete="CASCADE")
    data = pw.TextField()                         # JSON snapshot taken at that moment
    created_at = pw.DateTimeField(default=utcnow)

    class Meta:
        table_name = "event"


# Where a delivery stands. PENDING ones have a next_attempt_at that the sweep honours.
DELIVERY_PENDING, DELIVERY_DELIVERED = "pending", "delivered"
DELIVERY_FAILED, DELIVERY_CANCELLED = "failed", "cancelled"


class WebhookDelivery(BaseModel):
    """One event for one endpoint, until a 2xx or the retry schedule runs out."""
    seq = pw.BigAutoField()
    id = pw.CharField(max_length=40, unique=True)
    event = pw.ForeignKeyField(Event, field="id", backref="deliveries", on_delete="CASCADE")
    endpoint = pw.ForeignKeyField(WebhookEndpoint, field="id", backref="deliveries",
                                  on_delete="CASCADE")
    status = pw.CharField(max_length=16, default=DELIVERY_PENDING, index=True)
    attempts = pw.IntegerField(default=0)
    next_attempt_at = pw.DateTimeField(null=True, index=True)
    enqueued_at = pw.DateTimeField(null=True)     # last time a message was sent for it
    last_status_code = pw.IntegerField(null=True)
    last_error = pw.CharField(max_length=255, null=True)
    delivered_at = pw.DateTimeField(null=True)
    created_at = pw.DateTimeField(default=utcnow)
    updated_at = pw.DateTimeField(default=utcnow)

    class Meta:
        table_name = "webhook_delivery"
        indexes = ((("event", "endpoint"), True),)


class WebhookAttempt(BaseModel):
    """Every POST of a delivery: when, what came back, how long it took."""
    seq = pw.BigAutoField()
    delivery = pw.ForeignKeyField(WebhookDelivery, field="id", backref="attempt_log",
                                  on_delete="CASCADE")
    number = pw.IntegerField()
    attempted_at = pw.DateTimeField(default=utcnow)
    status_code = pw.IntegerField(null=True)
    error = pw.CharField(max_length=255, null=True)
    duration_ms = pw.IntegerField(default=0)

    class Meta:
        table_name = "webhook_attempt"


ALL_MODELS = [Account, ApiKey, Wallet, TopUp, LedgerEntry, Callback, OrphanPayment, TopUpEvent,
              IdempotencyRecord, WebhookEndpoint, Event, WebhookDelivery, WebhookAttempt]


class Reconciliation(BaseModel):
    """One ``topupctl reconcile`` run: the statement it read (name and sha256), the period, what
    it found (``summary`` counts, ``findings`` without the matched rows) and what it applied."""
    seq = pw.BigAutoField()
    id = pw.CharField(max_length=40, unique=True)
    started_at = pw.DateTimeField(default=utcnow, index=True)
    finished_at = pw.DateTimeField(null=True)
    statement_name = pw.CharField(max_length=255)
    statement_sha256 = pw.CharField(max_length=64, index=True)
    since = pw.DateTimeField(null=True)
    until = pw.DateTimeField(null=True)
    apply = pw.BooleanField(default=False)
    summary = pw.TextField(default="{}")          # JSON: counts per category
    findings = pw.TextField(default="{}")         # JSON: the report, less the matched rows
    applied = pw.TextField(default="[]")          # JSON: every settlement made, and its outcome
    applied_count = pw.IntegerField(default=0)

    class Meta:
        table_name = "reconciliation"


ALL_MODELS.append(Reconciliation)


# --- people acting on the ledger: orphan assignments, the console's sessions and actions ------

class OrphanAssignment(BaseModel):
    """An orphan payment credited to an account by a person (``topupctl orphans assign``, the
    console): who, when and why. Keyed on the M-Pesa receipt, which every kind of orphan
    payment has, so that one payment is assigned once (the unique index), to one account."""
    seq = pw.BigAutoField()
    mpesa_receipt = pw.CharField(max_length=32, unique=True)
    account = pw.ForeignKeyField(Account, on_delete="RESTRICT")
    topup = pw.ForeignKeyField(TopUp, field="id", on_delete="RESTRICT")
    amount_cents = pw.BigIntegerField()
    assigned_by = pw.CharField(max_length=100)    # "topupctl (user alice)", "console cs_…"
    reason = pw.TextField()
    assigned_at = pw.DateTimeField(default=utcnow)

    class Meta:
        table_name = "orphan_assignment"


class ConsoleSession(BaseModel):
    """A sign-in to the operator's console. The cookie carries only this row's id (signed);
    signing out ends the row, so the old cookie opens nothing any more."""
    seq = pw.BigAutoField()
    id = pw.CharField(max_length=64, unique=True)
    created_at = pw.DateTimeField(default=utcnow)
    expires_at = pw.DateTimeField(index=True)
    ended_at = pw.DateTimeField(null=True)
    remote_addr = pw.CharField(max_length=64, null=True)
    user_agent = pw.CharField(max_length=200, null=True)

    class Meta:
        table_name = "console_session"


class OperatorAction(BaseModel):
    """What a person did through the console: when, from which session, what to which
    object, the reason given and what came of it."""
    seq = pw.BigAutoField()
    at = pw.DateTimeField(default=utcnow, index=True)
    session = pw.CharField(max_length=64, null=True, index=True)   # a ConsoleSession's id
    action = pw.CharField(max_length=40)
    target = pw.CharField(max_length=200, default="")
    reason = pw.TextField(default="")
    outcome = pw.CharField(max_length=64, default="")
    detail = pw.TextField(default="{}")           # JSON, phones masked, never a secret

    class Meta:
        table_name = "operator_action"


class StatementUpload(BaseModel):
    """An M-Pesa statement uploaded through the console, kept between the reconciliation a
    person looks at and the one they apply, so that what is applied is what was shown."""
    seq = pw.BigAutoField()
    id = pw.CharField(max_length=40, unique=True)
    session = pw.CharField(max_length=64, null=True)
    name = pw.CharField(max_length=255)
    sha256 = pw.CharField(max_length=64)
    body = pw.BlobField()
    uploaded_at = pw.DateTimeField(default=utcnow)

    class Meta:
        table_name = "statement_upload"


ALL_MODELS += [OrphanAssignment, ConsoleSession, OperatorAction, StatementUpload]


# --- paybill payments (C2B) -------------------------------------------------------------------

class C2BConfirmation(BaseModel):
    """A paybill payment as Daraja reported it, stored before it is acknowledged and applied by
    a worker: a C2B confirmation exactly as received (``source`` ``c2b``), or a Pull
    Transactions row no confirmation brought (``pull``), its item as read."""
    seq = pw.BigAutoField()
    received_at = pw.DateTimeField(default=utcnow)
    source = pw.CharField(max_length=16, default="c2b")
    remote_addr = pw.CharField(max_length=64, null=True)
    body = pw.TextField()
    trans_id = pw.CharField(max_length=32, null=True, index=True)   # the M-Pesa receipt
    well_formed = pw.BooleanField(default=True)
    applied_at = pw.DateTimeField(null=True, index=True)
    outcome = pw.CharField(max_length=64, null=True)   # what applying it did
    topup_id = pw.CharField(max_length=40, null=True, index=True)  # the top-up it credited

    class Meta:
        table_name = "c2b_confirmation"


class PullRun(BaseModel):
    """One read of Daraja's Pull Transactions: the window asked for (naive UTC) and what came
    of it. The next run starts where the last complete one ended, less an overlap."""
    seq = pw.BigAutoField()
    started_at = pw.DateTimeField(default=utcnow)
    finished_at = pw.DateTimeField(null=True, index=True)
    window_start = pw.DateTimeField()
    window_end = pw.DateTimeField()
    pages = pw.IntegerField(default=0)
    transactions = pw.IntegerField(default=0)   # rows Daraja gave
    fed = pw.IntegerField(default=0)            # rows the ledger did not know, applied
    error = pw.CharField(max_length=255, null=True)

    class Meta:
        table_name = "c2b_pull"


ALL_MODELS += [C2BConfirmation, PullRun]
