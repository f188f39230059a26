"""The soak's invariants: pure functions over the plan and what the run left behind.

Each returns a :class:`Verdict`: what it checked, how many, and every violation found (empty:
it holds). The simulator's record is Daraja's word: a prompt it sent (a transaction, with
the result it decided and the callbacks it made) or a push it refused.

One thing is allowed to stay open, and each check says where: a top-up whose push answer was
lost (the gateway never learnt its CheckoutRequestID) and from whose prompt no paid callback
arrived (none came, or it was a failure, which names no phone or amount to match it by), or
that never reached Daraja at all. Daraja's word never reached the gateway: the top-up ends
``unknown`` at the give-up deadline (until then it is ``pending``, push ``ambiguous``), for
reconciliation against the M-Pesa statement to settle.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

from soak.observed import Observed, TopUpRow
from soak.plan import Plan

NOT_SENT = "not_sent"   # the gateway's failure_code for a push it never sent before giving up


@dataclass(frozen=True)
class Verdict:
    name: str
    checked: int
    detail: str
    violations: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.violations


def _kes(cents: int) -> str:
    return f"KES {cents // 100:,}.{cents % 100:02d}"


class _Index:
    """The observed records by reference and by top-up, built once per check."""

    def __init__(self, plan: Plan, observed: Observed):
        self.planned = plan.by_reference()
        self.topups: dict[str, list[TopUpRow]] = defaultdict(list)
        for topup in observed.topups:
            self.topups[topup.reference].append(topup)
        self.topup_by_id = {t.id: t for t in observed.topups}
        self.transactions = defaultdict(list)
        for txn in observed.transactions:
            self.transactions[txn.reference].append(txn)
        self.refusals = defaultdict(list)
        for refusal in observed.refusals:
            self.refusals[refusal.reference].append(refusal)
        self.entries = defaultdict(list)
        for entry in observed.entries:
            self.entries[entry.topup].append(entry)

    def left_open(self, topup: TopUpRow) -> bool:
        """``unknown``, or still ``pending`` with its push ambiguous, where Daraja's word never
        reached the gateway: only the give-up deadline, or reconciliation, can settle it."""
        return ((topup.status == "unknown"
                 or (topup.status == "pending" and topup.push_state == "ambiguous"))
                and self.word_never_reached_the_gateway(topup))

    def word_never_reached_the_gateway(self, topup: TopUpRow) -> bool:
        """No prompt at all, or a prompt whose push answer was lost and from which no paid
        callback arrived (a failure callback names no phone or amount to match it by)."""
        prompts = self.transactions[topup.reference]
        return not prompts or (topup.checkout_request_id is None and not any(
            t.paid and t.callbacks_delivered for t in prompts))


def payments_credited_once(plan: Plan, observed: Observed, account_ids: list[str]) -> Verdict:
    """Every payment the simulator confirmed is credited exactly once, to the account whose
    top-up asked for it, for the amount paid; nothing is credited that was not paid."""
    index = _Index(plan, observed)
    violations: list[str] = []
    paid = [t for t in observed.transactions if t.paid]
    paid_references = {t.reference for t in paid}
    credited = open_for_reconciliation = 0
    for txn in paid:
        planned = index.planned.get(txn.reference)
        rows = index.topups[txn.reference]
        if planned is None:
            violations.append(f"{txn.reference}: paid {_kes(txn.amount * 100)} for a top-up "
                              "the soak never asked for")
            continue
        if len(rows) != 1:
            violations.append(f"{txn.reference}: paid {_kes(txn.amount * 100)}, and "
                              f"{len(rows)} top-ups have this reference")
            continue
        topup, asked = rows[0], account_ids[planned.account]
        entries = index.entries[topup.id]
        if topup.status == "succeeded":
            if len(entries) != 1:
                violations.append(f"{txn.reference}: paid once, credited {len(entries)} times")
            for entry in entries:
                if entry.account != asked:
                    violations.append(f"{txn.reference}: credited to {entry.account}, asked "
                                      f"for by {asked}")
                if entry.amount_cents != txn.amount * 100:
                    violations.append(f"{txn.reference}: paid {_kes(txn.amount * 100)}, "
                                      f"credited {_kes(entry.amount_cents)}")
            credited += len(entries) == 1
        elif index.left_open(topup):
            open_for_reconciliation += 1
        else:
            violations.append(f"{txn.reference}: Daraja confirmed {_kes(txn.amount * 100)} "
                              f"({txn.checkout_request_id}) but the top-up is {topup.status}"
                              f" with {len(entries)} ledger entries")
    for entry in observed.entries:
        topup = index.topup_by_id.get(entry.topup)
        if topup is None or topup.reference not in paid_references:
            violations.append(f"ledger entry {entry.id} credits {_kes(entry.amount_cents)} "
                              f"to {entry.account} for {topup.reference if topup else 'nothing'}"
                              ", which Daraja never confirmed paid")
    for topup in observed.topups:
        if topup.status == "succeeded" and topup.reference not in paid_references:
            violations.append(f"{topup.reference}: succeeded, but Daraja confirmed no payment")
    detail = f"{len(paid)} payments, {credited} credited once"
    if open_for_reconciliation:
        detail += (f", {open_for_reconciliation} left open: push answer and callback both "
                   "lost, for reconciliation")
    return Verdict("every payment Daraja confirmed credited exactly once, to the account "
                   "that asked", len(paid), detail, tuple(violations))


def balances_equal_entries(observed: Observed) -> Verdict:
    """Each wallet's balance is the sum of its ledger entries, and so are the totals."""
    sums: Counter = Counter()
    for entry in observed.entries:
        sums[entry.account] += entry.amount_cents
    violations = [f"{account}: balance {_kes(observed.balances.get(account, 0))}, ledger "
                  f"entries {_kes(sums.get(account, 0))}"
                  for account in sorted(set(observed.balances) | set(sums))
                  if observed.balances.get(account, 0) != sums.get(account, 0)]
    total_balances, total_entries = sum(observed.balances.values()), sum(sums.values())
    if total_balances != total_entries and not violations:
        violations.append(f"Σ balances {_kes(total_balances)} ≠ Σ entries {_kes(total_entries)}")
    return Verdict("Σ balances = Σ ledger entries", len(observed.balances),
                   f"{len(observed.balances)} wallets, Σ balances {_kes(total_balances)} = "
                   f"Σ {len(observed.entries)} ledger entries {_kes(total_entries)}"
                   if not violations else f"{len(observed.balances)} wallets",
                   tuple(violations))


def receipts_unique(plan: Plan, observed: Observed) -> Verdict:
    """No M-Pesa receipt twice in the ledger, and each one is Daraja's receipt for the
    top-up that carries it."""
    index = _Index(plan, observed)
    violations = []
    for what, receipts in (("ledger entries", [e.receipt for e in observed.entries]),
                           ("top-ups", [t.receipt for t in observed.topups])):
        twice = {r: n for r, n in Counter(r for r in receipts if r).items() if n > 1}
        violations += [f"receipt {r} on {n} {what}" for r, n in sorted(twice.items())]
    for topup in observed.topups:
        if topup.receipt is None:
            continue
        issued = {t.receipt for t in index.transactions[topup.reference] if t.receipt}
        if topup.receipt not in issued:
            violations.append(f"{topup.reference}: receipt {topup.receipt} is not Daraja's "
                              "receipt for its payment")
        if any(e.receipt != topup.receipt for e in index.entries[topup.id]):
            violations.append(f"{topup.reference}: its ledger entry and the top-up carry "
                              "different receipts")
    count = sum(1 for e in observed.entries if e.receipt)
    return Verdict("receipts unique", count,
                   f"{count} receipts in the ledger, each once, each Daraja's for its payment",
                   tuple(violations))


def no_failure_without_darajas_word(plan: Plan, observed: Observed) -> Verdict:
    """A top-up is ``failed`` only with a code the simulator gave for it: a failure
    ResultCode of its prompt (callback or query), the errorCode of a refused push, or
    ``not_sent`` when no push of it ever reached the simulator."""
    index = _Index(plan, observed)
    violations = []
    failed = [t for t in observed.topups if t.status == "failed"]
    sources: Counter = Counter()
    for topup in failed:
        prompts = index.transactions[topup.reference]
        results = {str(t.result_code) for t in prompts if not t.paid}
        refusals = {r.error_code for r in index.refusals[topup.reference]}
        if topup.failure_code in results:
            sources["result code"] += 1
        elif topup.failure_code in refusals:
            sources["push refused"] += 1
        elif topup.failure_code == NOT_SENT and not prompts:
            sources["never sent"] += 1
        else:
            said = sorted(results | refusals) or ["nothing"]
            paid = " and was paid" if any(t.paid for t in prompts) else ""
            violations.append(f"{topup.reference}: failed with {topup.failure_code!r}, but "
                              f"Daraja said {', '.join(said)}{paid}")
    detail = f"{len(failed)} failed: " + (
        ", ".join(f"{n} {source}" for source, n in sorted(sources.items())) or "none")
    return Verdict("no failure without Daraja's word", len(failed), detail, tuple(violations))


def nobody_prompted_twice(plan: Plan, observed: Observed) -> Verdict:
    """The simulator sent at most one prompt per top-up, and none for a top-up nobody asked
    for."""
    planned = plan.by_reference()
    prompts = Counter(t.reference for t in observed.transactions)
    violations = [f"{reference}: prompted {n} times" for reference, n in sorted(prompts.items())
                  if n > 1]
    violations += [f"{reference}: prompted, but the soak asked for no such top-up"
                   for reference in sorted(prompts) if reference not in planned]
    return Verdict("no customer prompted twice", len(prompts),
                   f"{sum(prompts.values())} prompts for {len(prompts)} top-ups",
                   tuple(violations))


def requests_recorded_once(plan: Plan, observed: Observed) -> Verdict:
    """Every planned request was accepted (a 202, after retries with its Idempotency-Key)
    and recorded as exactly one top-up, of the account that sent it."""
    index = _Index(plan, observed)
    submitted = {s.reference: s for s in observed.submissions}
    violations = []
    for planned in plan.topups:
        submission = submitted.get(planned.reference)
        rows = index.topups[planned.reference]
        if submission is None:
            violations.append(f"{planned.reference}: never submitted")
        elif submission.topup_id is None:
            violations.append(f"{planned.reference}: not accepted: {submission.error}")
        elif [r.id for r in rows] != [submission.topup_id]:
            violations.append(f"{planned.reference}: accepted as {submission.topup_id}, "
                              f"recorded as {[r.id for r in rows]}")
    violations += [f"{t.id}: a top-up with reference {t.reference!r}, which the soak never "
                   "asked for" for t in observed.topups if t.reference not in index.planned]
    retried = sum(1 for s in observed.submissions if s.retries)
    return Verdict("every request accepted and recorded once", len(plan.topups),
                   f"{len(plan.topups)} requests, {retried} of them retried with their "
                   "Idempotency-Key", tuple(violations))


def everything_settled(plan: Plan, observed: Observed) -> Verdict:
    """No top-up is left ``pending``; one is ``unknown`` only where Daraja's word never
    reached the gateway (see the module's docstring)."""
    index = _Index(plan, observed)
    violations = []
    left_open = 0
    for topup in observed.topups:
        if index.left_open(topup):
            left_open += 1
        elif topup.status == "pending":
            violations.append(f"{topup.reference}: still pending (push {topup.push_state})")
        elif topup.status == "unknown":
            known = ("its CheckoutRequestID was known" if topup.checkout_request_id
                     else "a paid callback for it arrived")
            violations.append(f"{topup.reference}: unknown, though {known}")
    statuses = Counter(t.status for t in observed.topups)
    detail = ", ".join(f"{n} {status}" for status, n in sorted(statuses.items()))
    if left_open:
        detail += f"; {left_open} left open where Daraja's word never reached the gateway"
    return Verdict("every top-up settled, unknown only where Daraja's word never reached "
                   "the gateway", len(observed.topups), detail or "no top-ups",
                   tuple(violations))


def forgeries_changed_nothing(plan: Plan, observed: Observed) -> Verdict:
    """Every success callback forged without the token was answered 404, and no forged
    receipt is anywhere in the ledger (stored callbacks, top-ups, entries, orphans)."""
    violations = [f"{f.reference}: forged callback ({f.form}) answered {f.status}, not 404"
                  for f in observed.forgeries if f.status != 404]
    violations += [f"a forged receipt is in {where}" for where in observed.forged_found]
    planned = sum(1 for t in plan.topups if t.forgery)
    return Verdict("forged callbacks refused, nothing changed", len(observed.forgeries),
                   f"{len(observed.forgeries)} of {planned} planned forgeries sent, all 404"
                   if not violations else f"{len(observed.forgeries)} forgeries",
                   tuple(violations))


def check_all(plan: Plan, observed: Observed, account_ids: list[str]) -> list[Verdict]:
    """The issue's five invariants first, then the soak's own three."""
    return [payments_credited_once(plan, observed, account_ids),
            balances_equal_entries(observed),
            receipts_unique(plan, observed),
            no_failure_without_darajas_word(plan, observed),
            nobody_prompted_twice(plan, observed),
            requests_recorded_once(plan, observed),
            everything_settled(plan, observed),
            forgeries_changed_nothing(plan, observed)]
