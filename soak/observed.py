"""What a run left behind, as plain records: the ledger's rows and the simulator's word.

:func:`read` takes them from the gateway's database and the simulator once the system has
settled; the invariants (:mod:`soak.invariants`) are pure functions over these records, so
that each can be tested on a crafted violation without running anything.
"""
from __future__ import annotations

from dataclasses import dataclass, field

FORGED_MARK = "FORGED"   # every forged receipt starts with it (soak.plan.PlannedTopUp)


@dataclass(frozen=True)
class TopUpRow:
    id: str
    account: str
    reference: str
    status: str
    amount: int
    failure_code: str | None
    receipt: str | None
    checkout_request_id: str | None
    push_state: str
    settled_after_s: float | None = None   # request to final status (None while pending)


@dataclass(frozen=True)
class EntryRow:
    id: str
    account: str
    topup: str | None
    amount_cents: int
    receipt: str | None


@dataclass(frozen=True)
class SimTransaction:
    """A prompt the simulator sent (one per push it accepted), and what became of it."""
    checkout_request_id: str
    reference: str
    amount: int
    result_code: int
    receipt: str | None
    callbacks_planned: int
    callbacks_delivered: int
    callback_failures: int

    @property
    def paid(self) -> bool:
        return self.result_code == 0


@dataclass(frozen=True)
class SimRefusal:
    """A push the simulator answered without a prompt, and what it said."""
    reference: str
    error_code: str
    source: str


@dataclass(frozen=True)
class Submission:
    """One planned top-up as the client saw it: the API's top-up id once accepted (202),
    else why not; and how many answers before the 202 were refusals (503, lost)."""
    reference: str
    topup_id: str | None
    error: str | None = None
    retries: int = 0


@dataclass(frozen=True)
class Forgery:
    """A forged success callback POSTed without the callback token, and the answer."""
    reference: str
    form: str
    checkout_request_id: str
    receipt: str
    status: int | str          # the HTTP status, or the error's name


@dataclass
class Observed:
    topups: list[TopUpRow] = field(default_factory=list)
    entries: list[EntryRow] = field(default_factory=list)
    balances: dict[str, int] = field(default_factory=dict)        # account -> cents
    transactions: list[SimTransaction] = field(default_factory=list)
    refusals: list[SimRefusal] = field(default_factory=list)
    # where a forged receipt was found in the ledger: "callback 12", "top_up tu_…", …
    forged_found: list[str] = field(default_factory=list)
    submissions: list[Submission] = field(default_factory=list)
    forgeries: list[Forgery] = field(default_factory=list)


def read(daraja, *, submissions: list[Submission], forgeries: list[Forgery]) -> Observed:
    """The ledger (through this process's binding, ``ledger.db``) and the simulator's engine
    (``SimulatorServer.daraja``), read once everything has settled."""
    from ledger import db
    from ledger.models import Callback, LedgerEntry, OrphanPayment, TopUp, Wallet

    with db.connection():
        topups = [TopUpRow(t.id, t.account_id, t.reference, t.status, t.amount, t.failure_code,
                           t.mpesa_receipt, t.checkout_request_id, t.push_state,
                           _settled_after(t))
                  for t in TopUp.select().order_by(TopUp.seq)]
        wallets = list(Wallet.select())
        account_of_wallet = {w.id: w.account_id for w in wallets}
        entries = [EntryRow(e.id, account_of_wallet[e.wallet_id], e.topup_id, e.amount_cents,
                            e.mpesa_receipt)
                   for e in LedgerEntry.select().order_by(LedgerEntry.seq)]
        forged_found = (
            [f"callback {c.seq}" for c in Callback.select(Callback.seq)
             .where(Callback.body.contains(FORGED_MARK))]
            + [f"top_up {t.id}" for t in TopUp.select(TopUp.id)
               .where(TopUp.mpesa_receipt.startswith(FORGED_MARK))]
            + [f"ledger_entry {e.id}" for e in LedgerEntry.select(LedgerEntry.id)
               .where(LedgerEntry.mpesa_receipt.startswith(FORGED_MARK))]
            + [f"orphan_payment {o.seq}" for o in OrphanPayment.select(OrphanPayment.seq)
               .where(OrphanPayment.mpesa_receipt.startswith(FORGED_MARK))])
    transactions = [SimTransaction(t["checkout_request_id"], t["account_reference"],
                                   t["amount"], t["result_code"], t["receipt"],
                                   t["callbacks_planned"], t["callbacks_delivered"],
                                   t["callback_failures"])
                    for t in daraja.transactions()]
    refusals = [SimRefusal(r["account_reference"], r["error_code"], r["source"])
                for r in daraja.refusals()]
    return Observed(topups=topups, entries=entries,
                    balances={w.account_id: w.balance_cents for w in wallets},
                    transactions=transactions, refusals=refusals, forged_found=forged_found,
                    submissions=list(submissions), forgeries=list(forgeries))


def _settled_after(topup) -> float | None:
    """Seconds from the request to its final status: ``completed_at`` for a success or a
    failure, the last change for ``unknown`` (given up), None while pending."""
    if topup.status == "pending":
        return None
    ended = topup.completed_at or topup.updated_at
    return (ended - topup.created_at).total_seconds()


def history(references) -> dict[str, dict]:
    """The ledger's whole story of some top-ups, for the findings file: the row and every
    event, in order (phones masked, as the events store them)."""
    import json

    from ledger import db
    from ledger.models import TopUp, TopUpEvent

    found = {}
    with db.connection():
        for topup in TopUp.select().where(TopUp.reference.in_(list(references))):
            found[topup.reference] = {
                "topup": {"id": topup.id, "account": topup.account_id, "status": topup.status,
                          "amount": topup.amount, "push_state": topup.push_state,
                          "push_attempts": topup.push_attempts,
                          "checkout_request_id": topup.checkout_request_id,
                          "failure_code": topup.failure_code, "receipt": topup.mpesa_receipt,
                          "created_at": str(topup.created_at),
                          "completed_at": str(topup.completed_at)},
                "events": [{"at": str(e.created_at), "kind": e.kind,
                            "detail": json.loads(e.detail)}
                           for e in TopUpEvent.select().where(TopUpEvent.topup == topup.id)
                           .order_by(TopUpEvent.seq)]}
    return found
