"""The console's actions: each is a POST that first shows what it would do and asks for a
reason (the confirmation page), and acts only when posted again from that page with the
reason and ``confirmed``. Every action is recorded (``ledger.operators``) with its time,
the session, the reason and what came of it; each calls the code the commands call:

- assign an orphan payment to an account: ``ledger.assignments`` (``topupctl orphans assign``);
- requeue or purge dead letters: ``telemetry.queues`` (``topupctl queues dead``);
- send a failing webhook delivery again now: ``ledger.webhooks.send_again_now``;
- upload a statement, see its reconciliation, apply it: ``ledger.reconcile``
  (``topupctl reconcile [--apply]``).
"""
from __future__ import annotations

import hashlib

from flask import abort, flash, redirect, render_template, request, url_for

from app.console import bp
from app.console.auth import session_id
from app.console.forms import AssignForm, ApplyForm, DeadLettersForm, ResendForm, StatementForm
from app.console.views import queues
from app.enqueue import after_commit
from app.ops import declared_queues
from ledger import assignments, operators, reconcile, webhooks
from ledger.db import write_transaction
from ledger.ids import new_id
from ledger.models import (
    Account, OrphanPayment, StatementUpload, Wallet, WebhookDelivery, utcnow,
)
from ledger.phones import mask

STATEMENT_MAX_BYTES = 10 * 1024 * 1024
LARGE_UPLOADS = {"console.upload_statement": STATEMENT_MAX_BYTES}


def confirm(title: str, action_url: str, facts: list[tuple[str, str]], form, *,
            button: str, warning: str | None = None, status: int = 200):
    """The confirmation page: what will happen, the reason to give, the button that does it."""
    return render_template("console/confirm.html", title=title, action_url=action_url,
                           facts=facts, form=form, button=button, warning=warning), status


def reason_of(form) -> str:
    return " ".join((form.reason.data or "").split())


# --- orphan payments ---------------------------------------------------------------------------

@bp.route("/orphans/<receipt>/assign", methods=["GET", "POST"])
def assign_orphan(receipt):
    orphan = OrphanPayment.get_or_none(OrphanPayment.mpesa_receipt == receipt.upper())
    if orphan is None:
        abort(404, "No orphan payment has this receipt.")
    form = AssignForm()
    if request.method == "GET":
        return render_template("console/assign.html", orphan=orphan, form=form)
    if not form.validate():
        return render_template("console/assign.html", orphan=orphan, form=form), 422
    account = Account.get_or_none(Account.id == form.account.data.strip())
    if account is None:
        form.account.errors = ["No account has this id."]
        return render_template("console/assign.html", orphan=orphan, form=form), 422
    if not form.is_confirmed():
        wallet = Wallet.get_or_none(Wallet.account == account.id)
        return confirm(
            f"Assign payment {orphan.mpesa_receipt}", request.path,
            [("Payment", f"{orphan.mpesa_receipt}, {_kes(orphan.amount_cents)} from "
                         f"{mask(orphan.phone) or 'an unknown phone'}"),
             ("CheckoutRequestID", orphan.checkout_request_id or "-"),
             ("To account", f"{account.id} ({account.name})"),
             ("Its balance now", _kes(wallet.balance_cents if wallet else None))],
            form, button="Credit this payment to the account",
            warning="The wallet is credited at once and the client is sent wallet.top_up. "
                    "A payment is assigned once: this cannot be undone here.")
    try:
        done = assignments.assign(orphan.mpesa_receipt, account.id, reason=reason_of(form),
                                  assigned_by=f"console {session_id()}")
    except assignments.AssignmentRefused as exc:
        operators.record("orphan_assign", session=session_id(), target=orphan.mpesa_receipt,
                         reason=reason_of(form), outcome="refused", account=account.id,
                         refusal=str(exc))
        return render_template("console/error.html", status=409, title="Not assigned",
                               message=f"Nothing was changed: {exc}."), 409
    operators.record("orphan_assign", session=session_id(), target=orphan.mpesa_receipt,
                     reason=reason_of(form), outcome="credited", account=account.id,
                     topup=done.topup_id, amount_cents=done.amount_cents)
    flash(f"{orphan.mpesa_receipt} credited to {account.id}: "
          f"{_kes(done.amount_cents)}, balance now {_kes(done.balance_after_cents)}.")
    return redirect(url_for("console.topup", topup_id=done.topup_id), 303)


# --- dead letters ------------------------------------------------------------------------------

@bp.post("/dead-letters")
def act_on_dead_letters():
    form = DeadLettersForm()
    if not form.validate() or form.action.data not in ("requeue", "purge"):
        abort(400, "Say what to do (requeue or purge) and with which queue.")
    queue, action, letter_id = form.queue.data, form.action.data, form.letter.data or None
    if queue not in declared_queues():
        abort(400, "No such queue.")
    letters = [letter for letter in queues().dead_letters(queue=queue)
               if letter_id is None or letter.redis_id == letter_id]
    if not letters:
        flash(f"No dead letter to {action} in {queue} any more: nothing was changed.")
        return redirect(url_for("console.dead_letters"), 303)
    if not form.is_confirmed():
        what = (f"the message {letters[0].message_id} ({letters[0].actor})" if letter_id
                else f"all {len(letters)} dead letters of {queue}")
        return confirm(
            f"{action.capitalize()} {what}", request.path,
            [("Queue", queue), ("Messages", str(len(letters))),
             ("Actors", ", ".join(sorted({letter.actor or "?" for letter in letters}))),
             ("Latest error", letters[-1].error or "-")],
            form, button=f"{action.capitalize()} {len(letters)} "
                         f"message{'s' if len(letters) != 1 else ''}",
            warning=("Back on their queue with their retries reset: fix what killed them "
                     "first." if action == "requeue" else
                     "Deleted for good. The sweeps re-drive the rows the messages were for."))
    done = queues().requeue(letters) if action == "requeue" else queues().purge(letters)
    verb = "requeued" if action == "requeue" else "purged"
    operators.record(f"dead_letters_{action}", session=session_id(), target=queue,
                     reason=reason_of(form), outcome=f"{verb} {done}",
                     messages=[letter.message_id for letter in letters])
    flash(f"{verb.capitalize()} {done} dead letter{'s' if done != 1 else ''} of {queue}.")
    return redirect(url_for("console.dead_letters"), 303)


# --- webhooks ----------------------------------------------------------------------------------

@bp.post("/webhooks/<delivery_id>/resend")
def resend_webhook(delivery_id):
    delivery = WebhookDelivery.get_or_none(WebhookDelivery.id == delivery_id)
    if delivery is None:
        abort(404, "No such webhook delivery.")
    form = ResendForm()
    if not form.validate():
        abort(400, "The reason is too long.")
    if not form.is_confirmed():
        return confirm(
            f"Send delivery {delivery.id} again now", request.path,
            [("Event", f"{delivery.event_id}"), ("Endpoint", delivery.endpoint.url),
             ("Status", f"{delivery.status} after {delivery.attempts} attempt(s)"),
             ("Last answer", str(delivery.last_status_code or delivery.last_error or "-"))],
            form, button="Send it again now")
    sent = webhooks.send_again_now(delivery.id)
    if sent:
        from workers.webhooks import deliver_webhook
        after_commit(deliver_webhook, delivery.id, delivery=delivery.id)
    operators.record("webhook_resend", session=session_id(), target=delivery.id,
                     reason=reason_of(form), outcome="sent" if sent else "not_resendable")
    flash(f"Delivery {delivery.id} is being sent again now." if sent else
          f"Delivery {delivery.id} was delivered or cancelled meanwhile: nothing was sent.")
    return redirect(url_for("console.webhooks"), 303)


# --- reconciliation ----------------------------------------------------------------------------

@bp.post("/reconcile")
def upload_statement():
    """The statement held against the ledger, nothing applied: the run's page shows it."""
    form = StatementForm()
    if not form.validate():
        return render_template("console/error.html", status=400, title="No statement",
                               message="Choose the statement's CSV file."), 400
    upload = form.statement.data
    data = upload.read(STATEMENT_MAX_BYTES + 1)
    name = (upload.filename or "statement.csv")[:255]
    try:
        statement = reconcile.parse(data, name)
    except reconcile.MalformedStatement as exc:
        operators.record("reconcile_upload", session=session_id(), target=name,
                         outcome="malformed", error=str(exc))
        return render_template("console/error.html", status=422, title="Statement refused",
                               message=f"{name}: {exc}. Nothing was read or changed."), 422
    with write_transaction():
        kept = StatementUpload.create(id=new_id("su"), session=session_id(), name=name,
                                      sha256=hashlib.sha256(data).hexdigest(), body=data,
                                      uploaded_at=utcnow())
    report = reconcile.run(statement, apply_safe=False)
    operators.record("reconcile_upload", session=session_id(), target=name,
                     outcome=f"run {report['id']}", upload=kept.id, summary=report["summary"])
    return redirect(url_for("console.reconciliation", run_id=report["id"]), 303)


@bp.post("/reconcile/uploads/<upload_id>/apply")
def apply_statement(upload_id):
    kept = StatementUpload.get_or_none(StatementUpload.id == upload_id)
    if kept is None:
        abort(404, "No such statement upload.")
    form = ApplyForm()
    if not form.validate():
        abort(400, "The reason is too long.")
    statement = reconcile.parse(bytes(kept.body), kept.name)
    found = reconcile.find(statement)
    if not form.is_confirmed():
        facts = [("Statement", f"{kept.name} (sha256 {kept.sha256[:12]}…)"),
                 ("Safe to settle", str(len(found.plans)))]
        facts += [(f"Line {plan.row.line}", f"{plan.row.receipt}: {_kes(plan.row.paid_in_cents)} "
                                            f"to top-up {plan.topup_id}")
                  for plan in found.plans[:50]]
        return confirm(f"Apply {kept.name}", request.path, facts, form,
                       button=f"Credit {len(found.plans)} payment(s) from the statement",
                       warning=None if found.plans else "Nothing is safe to settle.")
    report = reconcile.run(statement, apply_safe=True)
    operators.record("reconcile_apply", session=session_id(), target=kept.name,
                     reason=reason_of(form), outcome=f"applied {report['summary']['applied']}",
                     run=report["id"], upload=kept.id)
    flash(f"Applied: {report['summary']['applied']} payment(s) credited from {kept.name}.")
    return redirect(url_for("console.reconciliation", run_id=report["id"]), 303)


def _kes(cents) -> str:
    return "-" if cents is None else f"KES {cents / 100:,.2f}"
