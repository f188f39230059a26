"""The console's pages that only read: the overview, finding a top-up and its timeline,
accounts, orphan payments, dead letters, failing webhook deliveries, reconciliation runs and
the operators' own actions. Phones are masked wherever a list shows them."""
from __future__ import annotations

import datetime as dt
import json

from flask import abort, current_app, redirect, render_template, request, url_for

from app.console import bp, overview
from app.console.forms import DeadLettersForm, ResendForm, StatementForm
from app.ops import declared_queues
from ledger import accounts, history, operators
from ledger.models import (
    DELIVERY_FAILED, DELIVERY_PENDING, Account, Event, LedgerEntry, OrphanAssignment,
    OrphanPayment, Reconciliation, StatementUpload, TopUp, Wallet, WebhookDelivery,
    WebhookEndpoint,
)
from ledger.phones import mask
from telemetry import logs
from telemetry.queues import Queues

LIST_LIMIT = 50
STATUSES = ("pending", "succeeded", "failed", "unknown")


# --- what the templates share ------------------------------------------------------------------

@bp.app_template_filter("kes")
def kes(cents) -> str:
    if cents is None:
        return "-"
    sign = "-" if cents < 0 else ""
    return f"{sign}KES {abs(cents) / 100:,.2f}"


@bp.app_template_filter("when")
def when(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, (int, float)):
        value = dt.datetime.fromtimestamp(value, dt.timezone.utc).replace(tzinfo=None)
    return value.strftime("%Y-%m-%d %H:%M:%S") + " UTC"


@bp.app_template_filter("masked")
def masked(phone) -> str:
    return mask(phone) or "-"


def queues() -> Queues:
    return Queues(current_app.config["REDIS"], redactor=logs.redactor())


# --- the overview ------------------------------------------------------------------------------

@bp.get("", endpoint="overview")
@bp.get("/", endpoint="overview_slash")
def overview_page():
    hours = overview.hourly()
    try:
        counts = queues().counts(declared_queues())
        redis_error = None
    except Exception as exc:   # Redis away: the rest of the page still helps
        counts, redis_error = [], type(exc).__name__
    return render_template("console/overview.html", hours=hours, statuses=overview.STATUSES,
                           peak=max([h.total for h in hours] + [1]),
                           people=overview.needs_a_person(),
                           dead=sum(q.dead for q in counts), queues=counts,
                           redis_error=redis_error, daraja=overview.daraja_errors())


# --- finding a top-up ----------------------------------------------------------------------------

@bp.get("/topups")
def topups():
    """``q``: a top-up id, CheckoutRequestID, M-Pesa receipt, phone (any usual form), account
    id or account number; one top-up found by its own key opens its page. Without ``q``, the newest
    top-ups (``status`` filters them)."""
    q = (request.args.get("q") or "").strip()[:100]
    status = request.args.get("status") if request.args.get("status") in STATUSES else None
    if not q:
        query = TopUp.select().order_by(TopUp.seq.desc()).limit(LIST_LIMIT)
        if status:
            query = query.where(TopUp.status == status)
        return render_template("console/topups.html", q=q, status=status, rows=list(query),
                               heading=f"Newest {status or ''} top-ups".replace("  ", " "))
    account = Account.get_or_none(Account.id == q) or accounts.find_by_account_number(q)
    if account is not None:
        rows = list(TopUp.select().where(TopUp.account == account.id)
                    .order_by(TopUp.seq.desc()).limit(LIST_LIMIT))
        return render_template("console/topups.html", q=q, rows=rows, account=account,
                               heading=f"Top-ups of account {account.id}")
    found = history.find(q)
    if found.topup is not None and found.matched_by in ("id", "checkout_request_id",
                                                        "mpesa_receipt", "orphan_payment"):
        return redirect(url_for("console.topup", topup_id=found.topup.id), 303)
    if found.topup is not None:
        return render_template("console/topups.html", q=q, rows=[found.topup, *found.others],
                               heading="Top-ups for this phone, newest first")
    if found.orphan is not None:
        return render_template("console/topups.html", q=q, rows=[], orphan=found.orphan,
                               heading="A payment no top-up claims")
    return render_template("console/topups.html", q=q, rows=[], heading="Nothing found",
                           nothing=True)


@bp.get("/topups/<topup_id>")
def topup(topup_id):
    row = TopUp.get_or_none(TopUp.id == topup_id)
    if row is None:
        abort(404, "No such top-up.")
    deliveries = list(WebhookDelivery.select(WebhookDelivery, Event, WebhookEndpoint)
                      .join(Event).switch(WebhookDelivery).join(WebhookEndpoint)
                      .where(Event.topup == row.id).order_by(WebhookDelivery.seq))
    return render_template("console/topup.html", topup=row, summary=history.summary(row),
                           steps=history.history(row), deliveries=deliveries,
                           assignment=OrphanAssignment.get_or_none(
                               OrphanAssignment.topup == row.id),
                           resend=ResendForm())


# --- accounts ------------------------------------------------------------------------------------

@bp.get("/accounts/<account_id>")
def account(account_id):
    row = Account.get_or_none(Account.id == account_id)
    if row is None:
        abort(404, "No such account.")
    wallet = Wallet.get_or_none(Wallet.account == row.id)
    entries = (list(LedgerEntry.select().where(LedgerEntry.wallet == wallet.id)
                    .order_by(LedgerEntry.seq.desc()).limit(20)) if wallet else [])
    endpoints = list(WebhookEndpoint.select().where(WebhookEndpoint.account == row.id)
                     .order_by(WebhookEndpoint.seq.desc()))
    deliveries = list(WebhookDelivery.select(WebhookDelivery, Event, WebhookEndpoint)
                      .join(Event).switch(WebhookDelivery).join(WebhookEndpoint)
                      .where(WebhookEndpoint.account == row.id)
                      .order_by(WebhookDelivery.seq.desc()).limit(20))
    recent = list(TopUp.select().where(TopUp.account == row.id).order_by(TopUp.seq.desc())
                  .limit(10))
    return render_template("console/account.html", account=row, wallet=wallet, entries=entries,
                           endpoints=[(e, json.loads(e.events or "[]")) for e in endpoints],
                           deliveries=deliveries, topups=recent, resend=ResendForm())


# --- what needs a person -------------------------------------------------------------------------

@bp.get("/orphans")
def orphans():
    everything = request.args.get("all") == "1"
    query = OrphanPayment.select().order_by(OrphanPayment.seq.desc()).limit(200)
    if not everything:
        query = query.where(OrphanPayment.resolved_topup.is_null())
    assigned = {a.mpesa_receipt: a for a in OrphanAssignment.select().where(
        OrphanAssignment.mpesa_receipt.in_([o.mpesa_receipt for o in query if o.mpesa_receipt]))}
    return render_template("console/orphans.html", orphans=list(query), everything=everything,
                           assigned=assigned)


@bp.get("/dead-letters")
def dead_letters():
    letters = queues().dead_letters(queues=declared_queues())
    by_queue: dict[str, int] = {}
    for letter in letters:
        by_queue[letter.queue] = by_queue.get(letter.queue, 0) + 1
    return render_template("console/dead_letters.html", letters=letters, by_queue=by_queue,
                           form=DeadLettersForm())


@bp.get("/webhooks")
def webhooks():
    """Deliveries whose last attempt failed: pending a retry, or given up."""
    failing = list(WebhookDelivery.select(WebhookDelivery, Event, WebhookEndpoint)
                   .join(Event).switch(WebhookDelivery).join(WebhookEndpoint)
                   .where((WebhookDelivery.status == DELIVERY_FAILED)
                          | ((WebhookDelivery.status == DELIVERY_PENDING)
                             & (WebhookDelivery.attempts > 0)))
                   .order_by(WebhookDelivery.seq.desc()).limit(200))
    return render_template("console/webhooks.html", deliveries=failing, resend=ResendForm())


# --- reconciliation ------------------------------------------------------------------------------

@bp.get("/reconcile")
def reconcile():
    runs = list(Reconciliation.select().order_by(Reconciliation.seq.desc()).limit(20))
    return render_template("console/reconcile.html", runs=runs, form=StatementForm(),
                           summaries={r.id: json.loads(r.summary or "{}") for r in runs})


@bp.get("/reconcile/<run_id>")
def reconciliation(run_id):
    from app.console.forms import ApplyForm
    run = Reconciliation.get_or_none(Reconciliation.id == run_id)
    if run is None:
        abort(404, "No such reconciliation run.")
    findings = json.loads(run.findings or "{}")
    upload = (StatementUpload.select().where(StatementUpload.sha256 == run.statement_sha256)
              .order_by(StatementUpload.seq.desc()).first())
    return render_template("console/reconciliation.html", run=run, findings=findings,
                           summary=json.loads(run.summary or "{}"),
                           applied=json.loads(run.applied or "[]"), upload=upload,
                           form=ApplyForm())


# --- what the operators did ----------------------------------------------------------------------

@bp.get("/actions")
def actions_log():
    return render_template("console/actions.html", actions=operators.recent_actions(200))
