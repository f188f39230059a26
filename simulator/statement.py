"""The organisation-portal statement of what the simulator processed.

``GET /__sim/statement.csv`` answers the CSV the M-Pesa organisation portal exports: a UTF-8
BOM, the portal's thirteen columns in the portal's order, amounts with thousands separators
(``"1,000.00"``), Completion Time as ``DD-MM-YYYY HH:MM:SS`` in Nairobi time, newest first.

Every paid transaction whose outcome is final is on it, whatever became of its callbacks
(dropped, late, failed, duplicated), and every paybill payment a customer made (Reason Type
``Pay Bill``, ``A/C No.`` the account number typed), whatever became of its confirmation:
the statement is what moved, not what was reported.
Paid In is what the customer paid (the push's Amount), even where the ``amount_mismatch``
behaviour made the callback say one shilling less. The oldest payment also carries its
business charge: a Withdrawn row with the payment's Receipt No. in Linked Transaction ID,
which is not a payment.
"""
from __future__ import annotations

import csv
import io
from datetime import datetime, timezone

from .rules import EAT, TIMESTAMP_FORMAT

COLUMNS = ("Receipt No.", "Completion Time", "Initiation Time", "Details",
           "Transaction Status", "Paid In", "Withdrawn", "Balance", "Balance Confirmed",
           "Reason Type", "Other Party Info", "Linked Transaction ID", "A/C No.")
TIME_FORMAT = "%d-%m-%Y %H:%M:%S"
CHARGE_RATE_BP = 55          # the business charge: 0.55 % of the payment …
CHARGE_CAP_CENTS = 20_000    # … at most KES 200


def money(cents: int) -> str:
    """``123456`` → ``1,234.56``; negative for a withdrawal, as the portal writes it."""
    sign = "-" if cents < 0 else ""
    whole, part = divmod(abs(cents), 100)
    return f"{sign}{whole:,}.{part:02d}"


def charge_cents(amount_cents: int) -> int:
    return min(CHARGE_CAP_CENTS, max(1, (amount_cents * CHARGE_RATE_BP + 5_000) // 10_000))


def to_csv(transactions, payments=()) -> bytes:
    """The statement of ``transactions`` (paid and final, any order) and of the customers'
    paybill ``payments`` (``simulator.c2b.Payment``, paid) as the portal's CSV."""
    entries = []   # (completion, row without the balance, change in cents)
    paid = sorted(transactions, key=lambda t: (t.transaction_date, t.created_at))
    for payment in payments:
        completed = payment.paid_at.astimezone(EAT).replace(tzinfo=None)
        party = f"{payment.phone} - SIM CUSTOMER {payment.phone[-4:]}"
        entries.append((completed, {
            "Receipt No.": payment.receipt, "Completion Time": completed.strftime(TIME_FORMAT),
            "Initiation Time": completed.strftime(TIME_FORMAT),
            "Details": f"Pay Bill from {party} Acc. {payment.bill_ref}",
            "Transaction Status": "Completed", "Paid In": money(payment.amount_cents),
            "Withdrawn": "", "Balance Confirmed": "true", "Reason Type": "Pay Bill",
            "Other Party Info": party, "Linked Transaction ID": "",
            "A/C No.": payment.bill_ref}, payment.amount_cents))
    for index, txn in enumerate(paid):
        completed = datetime.strptime(str(txn.transaction_date), TIMESTAMP_FORMAT)
        initiated = datetime.fromisoformat(txn.created_at.replace("Z", "+00:00"))
        initiated = initiated.astimezone(EAT) if initiated.tzinfo else initiated.replace(
            tzinfo=timezone.utc).astimezone(EAT)
        party = f"{txn.phone} - SIM CUSTOMER {txn.phone[-4:]}"
        online = ("Pay Bill Online" if txn.transaction_type == "CustomerPayBillOnline"
                  else "Buy Goods Online")
        amount_cents = txn.amount * 100
        common = {"Receipt No.": txn.receipt,
                  "Completion Time": completed.strftime(TIME_FORMAT),
                  "Initiation Time": initiated.strftime(TIME_FORMAT),
                  "Transaction Status": "Completed", "Balance Confirmed": "true",
                  "Other Party Info": party, "A/C No.": txn.account_reference}
        entries.append((completed, {**common, "Details": f"{online} from {party} "
                                                         f"Acc. {txn.account_reference}",
                                    "Paid In": money(amount_cents), "Withdrawn": "",
                                    "Reason Type": online, "Linked Transaction ID": ""},
                        amount_cents))
        if index == 0:
            fee = charge_cents(amount_cents)
            entries.append((completed, {**common, "Details": f"{online} Charge",
                                        "Paid In": "", "Withdrawn": money(-fee),
                                        "Reason Type": f"{online} Charge",
                                        "Linked Transaction ID": txn.receipt}, -fee))
    entries.sort(key=lambda entry: entry[0])   # stable: a charge stays after its payment
    balance = 0
    for _, row, change in entries:
        balance += change
        row["Balance"] = money(balance)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\r\n")
    writer.writeheader()
    for _, row, _ in reversed(entries):   # newest first, as the portal lists them
        writer.writerow(row)
    return ("\ufeff" + out.getvalue()).encode("utf-8")
