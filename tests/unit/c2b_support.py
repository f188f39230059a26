"""What the paybill's unit tests share: a C2B body as Daraja sends it, posting it to the
gateway's two URLs, and running the worker that applies it."""
from __future__ import annotations

import json

from ledger import db
from ledger.models import Account, C2BConfirmation, LedgerEntry, OrphanPayment, TopUp, Wallet
from tests.unit.conftest import CALLBACK_TOKEN

CONFIRMATION = f"/daraja/c2b/confirmation/{CALLBACK_TOKEN}"
VALIDATION = f"/daraja/c2b/validation/{CALLBACK_TOKEN}"


def c2b_body(receipt: str, bill_ref: str, amount="100.00", *, shortcode="174379",
             msisdn="2547 ***** 126") -> bytes:
    """A C2B v2 validation or confirmation body: every value a string, the phone masked."""
    return json.dumps({
        "TransactionType": "Pay Bill", "TransID": receipt, "TransTime": "20261207101500",
        "TransAmount": amount, "BusinessShortCode": shortcode, "BillRefNumber": bill_ref,
        "InvoiceNumber": "", "OrgAccountBalance": "25.00", "ThirdPartyTransID": "",
        "MSISDN": msisdn, "FirstName": "NICHOLAS", "MiddleName": "", "LastName": ""}).encode()


def account_number(account_id: str) -> str:
    with db.connection():
        return Account.get_by_id(account_id).account_number


def confirm(client, body: bytes):
    """POST a confirmation and close the answer (its message is sent then)."""
    with client.post(CONFIRMATION, data=body, content_type="application/json") as response:
        return response.status_code, response.get_json()


def applied(stub_broker, stub_worker) -> None:
    stub_broker.join("callbacks")
    stub_worker.join()


def balance(account_id: str) -> int:
    with db.connection():
        return Wallet.get(Wallet.account == account_id).balance_cents


def credits_of(receipt: str) -> int:
    with db.connection():
        return LedgerEntry.select().where(LedgerEntry.mpesa_receipt == receipt).count()


def c2b_topups(account_id: str) -> list[TopUp]:
    with db.connection():
        return list(TopUp.select().where((TopUp.account == account_id) & (TopUp.channel == "c2b")))


def orphans() -> list[OrphanPayment]:
    with db.connection():
        return list(OrphanPayment.select().order_by(OrphanPayment.seq))


def stored() -> list[C2BConfirmation]:
    with db.connection():
        return list(C2BConfirmation.select().order_by(C2BConfirmation.seq))
