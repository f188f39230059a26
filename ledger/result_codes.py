"""What a Daraja ResultCode means for a top-up (callback and STK Query).

Only a code Daraja documents as "no money moved" fails a top-up. Anything else that is not
0 or the query's 4999 is *unknown*: settled later by query or reconciliation, never failed.
"""
PAID = "0"
STILL_PROCESSING = "4999"

FAILED_CODES = frozenset({
    "1",            # insufficient balance (incl. Fuliza)
    "2", "3", "4", "8",   # below minimum / above maximum / daily limit / merchant balance limit
    "17",           # same amount to the same customer within 2 minutes
    "1001",         # unable to lock subscriber: another prompt open
    "1019",         # transaction expired
    "1025", "9999",  # error sending the push
    "1031", "1032",  # cancelled by the user
    "1036",         # SMSC ACK timeout
    "1037",         # DS timeout, user cannot be reached
    "2001",         # wrong PIN
    "2028", "SFC_IC0003",  # wrong TransactionType / PartyB for the product
    "8006",         # security credential locked
    "E3008",        # sandbox: bad debt contract
})


def classify(code) -> str:
    """``"paid"``, ``"failed"``, ``"pending"`` or ``"unknown"``."""
    text = str(code).strip() if code is not None else ""
    if text == PAID:
        return "paid"
    if text in FAILED_CODES:
        return "failed"
    if text == STILL_PROCESSING:
        return "pending"
    return "unknown"
