"""The common credit on PostgreSQL: one statement, one round trip, its own transaction.

A paid callback for a pending top-up is nearly every credit, and every credit to a merchant
updates the same wallet row: the row stays locked from that UPDATE to the COMMIT, so whatever
the worker does in between sets the pace of all credits (make bench, "Crediting one hot
wallet"). The generic path (``topups._settle_success``) sent 13 statements for a credit, most
built by Peewee, with the lock held across five client round trips. Here the conditional
top-up UPDATE, the orphan resolution, the wallet UPDATE, the ledger entry, the top-up's
history, the ``wallet.top_up`` event, its webhook deliveries and (for a callback) the
callback's ``applied_at`` are one statement of writable CTEs, sent in autocommit: the
statement is the transaction, so they are all committed together or not at all, and the
wallet's lock is held only while the server runs it.

Nothing here decides an unusual case. The top-up is read first, outside any transaction; the
statement then acts only if the top-up's status is still the one read (a conditional UPDATE,
as everywhere in the ledger), and each later CTE reads the rows the one before it returned.
When the statement credits nothing (another worker settled it meanwhile, the status moved)
or fails on a constraint (the receipt credited something else, more webhook endpoints than
ids), nothing was written and :func:`credit` returns None: the caller then runs the generic
path, which gives the same answers as before (duplicate, receipt filled, receipt conflict,
orphan …). The unique indexes that make a CheckoutRequestID, a receipt and a top-up credit
at most once are the same for both paths.
"""
from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from types import SimpleNamespace

import peewee as pw

from ledger import events, prepared
from ledger.db import database
from ledger.ids import new_id
from ledger.models import PENDING, SUCCEEDED, UNKNOWN, utcnow
from ledger.phones import mask

SETTLEABLE = (PENDING, UNKNOWN)


@dataclass(frozen=True)
class Credited:
    """What the worker needs after a credit (the phone lock, the credit-time metric)."""
    topup_id: str
    phone: str
    pushed_at: dt.datetime | None
    completed_at: dt.datetime
    balance_cents: int


def usable() -> bool:
    """The one-statement credit applies: PostgreSQL, and no caller's transaction open (the
    statement must be its own transaction, and a failed one must not abort the caller's)."""
    db = database.obj
    return isinstance(db, pw.PostgresqlDatabase) and not database.in_transaction()


# The top-up's columns the credit needs, in the order credit() unpacks them; the count of the
# account's live endpoints says how many delivery ids to make.
TOPUP_COLUMNS = ("t.id, t.account_id, t.provider, t.status, t.amount, t.phone, t.reference,"
                 " t.metadata, t.failure_code, t.failure_reason, t.created_at, t.pushed_at,"
                 " (SELECT count(*) FROM webhook_endpoint e"
                 " WHERE e.account_id = t.account_id AND e.deleted_at IS NULL)")


def _read_sql(db) -> str:
    return f"SELECT {TOPUP_COLUMNS} FROM top_up t WHERE t.checkout_request_id = %s"


_CREDIT = """
WITH t AS (
    UPDATE top_up SET status = 'succeeded', mpesa_receipt = %(receipt)s,
           credited_cents = %(credit)s, flagged = %(flagged)s, completed_at = %(now)s,
           updated_at = %(now)s, next_query_at = NULL
     WHERE id = %(topup)s AND status = %(status)s
    RETURNING id, account_id
), o AS (
    UPDATE orphan_payment SET resolved_topup_id = t.id, resolved_at = %(now)s FROM t
     WHERE orphan_payment.checkout_request_id = %(checkout)s
       AND orphan_payment.resolved_topup_id IS NULL
), w AS (
    UPDATE wallet SET balance_cents = wallet.balance_cents + %(credit)s, updated_at = %(now)s
      FROM t WHERE wallet.account_id = t.account_id
    RETURNING wallet.id, wallet.balance_cents, wallet.currency
), tw AS (
    -- LEFT JOIN: a top-up settled without a wallet fails the ledger entry's NOT NULL, and
    -- with it the whole statement, as the generic path raises Wallet.DoesNotExist
    SELECT t.id AS topup_id, w.id AS wallet_id, w.balance_cents, w.currency
      FROM t LEFT JOIN w ON true
), le AS (
    INSERT INTO ledger_entry (id, wallet_id, type, amount_cents, balance_after_cents,
                              topup_id, mpesa_receipt, description, source, created_at)
    SELECT %(entry)s, wallet_id, 'top_up', %(credit)s, balance_cents, topup_id, %(receipt)s,
           %(description)s, %(source)s, %(now)s FROM tw
), te AS (
    INSERT INTO topup_event (topup_id, kind, detail, created_at)
    SELECT topup_id, 'credited', %(history_head)s || balance_cents::text || %(history_tail)s,
           %(now)s FROM tw
), ev AS (
    INSERT INTO event (id, account_id, type, topup_id, data, created_at)
    SELECT %(event)s, %(account)s, 'wallet.top_up', topup_id,
           %(event_head)s || to_json(currency)::text
           || ',"balance":"' || (balance_cents / 100)::text || '.'
           || lpad((balance_cents %% 100)::text, 2, '0')
           || '","balance_cents":' || balance_cents::text || '}',
           %(now)s FROM tw
    RETURNING id
), d AS (
    -- one id made in Python per live endpoint read before; an endpoint added since finds no
    -- id, fails the NOT NULL and sends the credit down the generic path
    INSERT INTO webhook_delivery (id, event_id, endpoint_id, status, attempts, next_attempt_at,
                                  enqueued_at, created_at, updated_at)
    SELECT (%(delivery_ids)s::text[])[row_number() OVER (ORDER BY e.seq)], ev.id, e.id,
           'pending', 0, %(now)s, %(enqueued_at)s, %(now)s, %(now)s
      FROM ev JOIN webhook_endpoint e ON e.account_id = %(account)s
       AND e.deleted_at IS NULL AND e.events::jsonb ? 'wallet.top_up'
    RETURNING id
){mark_applied}
SELECT balance_cents, ARRAY(SELECT id FROM d) FROM tw
"""

_MARK_APPLIED = """, c AS (
    UPDATE callback SET applied_at = %(now)s, outcome = 'credited' FROM t
     WHERE callback.seq = %(callback)s
)"""


_TYPES = {
    "receipt": "text", "credit": "bigint", "flagged": "text", "now": "timestamp",
    "topup": "text", "status": "text", "checkout": "text", "entry": "text",
    "description": "text", "source": "text", "history_head": "text", "history_tail": "text",
    "event": "text", "account": "text", "event_head": "text", "delivery_ids": "text[]",
    "enqueued_at": "timestamp", "callback": "bigint",
}


def _credit_sql(db) -> str:
    return _CREDIT.replace("{mark_applied}", "").strip()


def _credit_and_mark_sql(db) -> str:
    return _CREDIT.replace("{mark_applied}", _MARK_APPLIED).strip()


def credit(checkout_request_id: str, amount_cents: int | None, receipt: str | None,
           phone: str | None, source: str, *, mark_applied: int | None = None,
           topup_row: tuple | None = None) -> Credited | None:
    """Credit the pending top-up with this CheckoutRequestID in one statement, or None when
    nothing was written and the generic path must decide. ``mark_applied``: the stored
    callback to mark applied (outcome ``credited``) in the same statement. ``topup_row``:
    :data:`TOPUP_COLUMNS` for this CheckoutRequestID, read with the callback (all None when
    no top-up has it); read here when not given."""
    row = topup_row
    if row is None:
        row = database.execute_sql(prepared.statement(_read_sql),
                                   (checkout_request_id,)).fetchone()
    if row is None or row[0] is None or row[3] not in SETTLEABLE:
        return None  # an orphan, a lost push's payment, a duplicate: the generic path's
    (topup_id, account_id, provider, status, amount, topup_phone, reference, metadata,
     failure_code, failure_reason, created_at, pushed_at, endpoints) = row

    # The same flags, amounts and texts as topups._settle_success.
    now = utcnow()
    requested_cents = amount * 100
    credit_cents = amount_cents if amount_cents is not None else requested_cents
    flags = []
    if amount_cents is not None and amount_cents != requested_cents:
        flags.append(f"amount: requested {requested_cents} cents, M-Pesa confirmed {amount_cents}")
    if phone and phone != topup_phone:
        flags.append(f"phone: paid from {mask(phone)}")
    entry_id, event_id = new_id("le"), new_id("evt")

    # The balance is known only inside the statement: the history's and the event's JSON are
    # made here up to it, with the bytes json.dumps gives for the whole (key order included),
    # and the statement writes the balance in between.
    history = json.dumps({"amount_cents": credit_cents, "receipt": receipt, "source": source,
                          "ledger_entry": entry_id}, default=str)
    history_head = history[:-1] + ', "balance_after_cents": '
    history_tail = ', "flagged": ' + json.dumps(flags or None, default=str) + "}"
    settled = SimpleNamespace(
        id=topup_id, provider=provider, status=SUCCEEDED, amount=amount, phone=topup_phone,
        reference=reference, metadata=metadata, checkout_request_id=checkout_request_id,
        mpesa_receipt=receipt, failure_code=failure_code, failure_reason=failure_reason,
        created_at=created_at, updated_at=now, completed_at=now)
    event_head = json.dumps({"topup": events.topup_object(settled), "ledger_entry": entry_id,
                             "amount_cents": credit_cents},
                            separators=(",", ":"))[:-1] + ',"currency":'
    announced = events.has_notifier()
    params = {
        "receipt": receipt, "credit": credit_cents, "flagged": "; ".join(flags)[:200] or None,
        "now": now, "topup": topup_id, "status": status, "checkout": checkout_request_id,
        "entry": entry_id, "description": f"M-Pesa top-up {receipt or reference}",
        "source": source, "history_head": history_head, "history_tail": history_tail,
        "event": event_id, "account": account_id, "event_head": event_head,
        "delivery_ids": [new_id("whd") for _ in range(endpoints)],
        "enqueued_at": now if announced else None, "callback": mark_applied,
    }
    try:
        if mark_applied is None:
            cursor = prepared.execute_server_prepared("topup_credit", _credit_sql, _TYPES, params)
        else:
            cursor = prepared.execute_server_prepared("topup_credit_callback",
                                                      _credit_and_mark_sql, _TYPES, params)
        result = cursor.fetchone()
    except pw.IntegrityError:
        return None  # nothing was written; the generic path tells what collided
    if result is None:
        return None  # the status moved meanwhile: nothing was written
    balance_cents, delivery_ids = result
    if delivery_ids:
        events.announce(delivery_ids)
    return Credited(topup_id=topup_id, phone=topup_phone, pushed_at=pushed_at,
                    completed_at=now, balance_cents=balance_cents)
