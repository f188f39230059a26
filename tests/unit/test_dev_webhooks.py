"""`make run`'s webhook receiver accepts what the gateway signs and refuses anything else."""
import datetime
import json
import urllib.error
import urllib.request

import standardwebhooks

from ledger.webhooks import new_secret
from topupctl.dev_webhooks import DevReceiver


def post(url, body: bytes, headers: dict) -> int:
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status
    except urllib.error.HTTPError as refused:
        return refused.code


def test_a_signed_delivery_is_printed_and_a_forged_one_refused():
    secret, said = new_secret(), []
    receiver = DevReceiver(0, secret, said.append).start()
    try:
        event = {"id": "evt_1", "type": "wallet.top_up", "data": {
            "topup": {"id": "tu_1", "status": "succeeded", "amount": 1000,
                      "phone": "254708374149"}, "balance": "1000.00"}}
        body = json.dumps(event).encode()
        now = datetime.datetime.now(datetime.timezone.utc)
        signature = standardwebhooks.Webhook(secret).sign("evt_1", now, body.decode())
        headers = {"webhook-id": "evt_1", "webhook-timestamp": str(int(now.timestamp())),
                   "webhook-signature": signature}
        assert post(receiver.url, body, headers) == 204
        assert post(receiver.url, body.replace(b"1000", b"9999"), headers) == 400
    finally:
        receiver.stop()
    assert said[0].startswith("webhook verified: wallet.top_up tu_1 status=succeeded")
    assert "balance=KES 1000.00" in said[0]
    assert "254708374149" not in said[0]
    assert said[1].startswith("webhook REFUSED")
