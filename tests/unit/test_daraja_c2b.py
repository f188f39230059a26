"""The Daraja client's paybill calls: register URL (C2B v2), Pull Transactions' registration
and query; their answers read the way Daraja gives them, and URLs Daraja would refuse refused
before anything is sent."""
import datetime as dt
import json

import pytest
import requests

from daraja import errors
from tests.unit.test_daraja_client import (  # noqa: F401  (fixtures)
    Reply, clock, client, daraja_error, fake, http_server, make_client, redis_server,
)

URL = "https://pay.example.com/daraja/c2b/confirmation/9f2c0a"
VALIDATION_URL = "https://pay.example.com/daraja/c2b/validation/9f2c0a"
START = dt.datetime(2026, 12, 7, 5, 0, 0)    # UTC: 08:00 in Nairobi
END = dt.datetime(2026, 12, 7, 6, 30, 15)


def test_register_urls_sends_the_v2_body_and_reads_the_answer(client, fake):
    fake.queue("unknown", Reply(200, {"OriginatorCoversationID": "AG_1", "ResponseCode": "0",
                                      "ResponseDescription": "Success"}))
    registered = client.register_c2b_urls(shortcode="600984", confirmation_url=URL,
                                          validation_url=VALIDATION_URL,
                                          response_type="Cancelled")
    [call] = fake.calls("unknown")
    assert call.path == "/mpesa/c2b/v2/registerurl"
    assert call.json == {"ShortCode": "600984", "ResponseType": "Cancelled",
                         "ConfirmationURL": URL, "ValidationURL": VALIDATION_URL}
    assert call.headers["Authorization"].startswith("Bearer ")
    assert registered.originator_conversation_id == "AG_1"


@pytest.mark.parametrize("word", ["mpesa", "M-Pesa", "Safaricom", "exe", "CMD", "sql", "query"])
def test_a_url_with_a_word_daraja_refuses_is_refused_before_sending(client, fake, word):
    with pytest.raises(errors.InvalidRequest, match=word.lower()):
        client.register_c2b_urls(shortcode="600984", confirmation_url=f"https://x.example.com/"
                                 f"{word}/c2b", validation_url=VALIDATION_URL)
    assert fake.seen == []


def test_response_type_must_be_in_sentence_case(client, fake):
    with pytest.raises(errors.InvalidRequest, match="response_type"):
        client.register_c2b_urls(shortcode="600984", confirmation_url=URL,
                                 validation_url=VALIDATION_URL, response_type="completed")
    assert fake.seen == []


def test_a_register_url_refused_in_its_own_words_is_a_rejection(client, fake):
    fake.queue("unknown", Reply(200, {"ResponseCode": "1", "ResponseDescription":
                                      "Duplicate notification info"}))
    with pytest.raises(errors.RequestRejected, match="Duplicate notification info"):
        client.register_c2b_urls(shortcode="600984", confirmation_url=URL,
                                 validation_url=VALIDATION_URL)


def test_a_v1_only_app_is_told_it_lacks_the_product(client, fake):
    fake.queue("unknown", Reply(401, daraja_error(
        "401.003.01", "Error Occurred - Invalid API call as no apiproduct match found")))
    with pytest.raises(errors.ConfigurationError):
        client.register_c2b_urls(shortcode="600984", confirmation_url=URL,
                                 validation_url=VALIDATION_URL)


@pytest.mark.parametrize("status,already", [("1000", False), ("1001", True)])
def test_register_pull_reads_registered_and_registered_before(client, fake, status, already):
    fake.queue("unknown", Reply(200, {"ResponseRefID": "r", "ResponseStatus": status,
                                      "ResponseDescription": "Success"}))
    registered = client.register_pull(shortcode="600984", nominated_number="254712345678",
                                      callback_url=URL)
    assert registered.already is already
    assert fake.calls("unknown")[0].json == {"ShortCode": "600984", "RequestType": "Pull",
                                             "NominatedNumber": "254712345678",
                                             "CallBackURL": URL}


def test_a_pull_sends_nairobi_dates_and_the_offset(client, fake):
    fake.queue("unknown", Reply(200, {"ResponseCode": "1001", "Response": [[]]}))
    page = client.pull_transactions(shortcode="600984", start=START, end=END, offset=20)
    assert fake.calls("unknown")[0].json == {"ShortCode": "600984",
                                             "StartDate": "2026-12-07 08:00:00",
                                             "EndDate": "2026-12-07 09:30:15",
                                             "OffSetValue": "20"}
    assert page.transactions == []


ROW = {"transactionId": "RKL51ZDR4F", "trxDate": "2026-12-07T08:10:00Z", "msisdn": 254712345678,
       "transactiontype": "c2b-pay-bill-debit", "billreference": "K7QM29", "amount": "100.0",
       "organizationname": "ACME"}


@pytest.mark.parametrize("answer", [
    {"ResponseCode": "1000", "Response": [[ROW, {**ROW, "transactionId": "RKL51ZDR4G"}]]},
    {"ResponseCode": 1000, "Response": [ROW, {**ROW, "transactionId": "RKL51ZDR4G"}]},
    {"ResponseCode": "1000",
     "Transaction": json.dumps([[ROW, {**ROW, "transactionId": "RKL51ZDR4G"}]])},
], ids=["nested", "flat", "as a JSON string"])
def test_pulled_rows_are_read_in_every_shape_seen(client, fake, answer):
    fake.queue("unknown", Reply(200, answer))
    page = client.pull_transactions(shortcode="600984", start=START, end=END)
    assert [row["transactionId"] for row in page.transactions] == ["RKL51ZDR4F", "RKL51ZDR4G"]


@pytest.mark.parametrize("answer", [{"ResponseCode": "1001", "ResponseMessage": "No records"},
                                    {"ResponseCode": "1000", "Transaction": "[[]]"}])
def test_nothing_to_pull_is_an_empty_page(client, fake, answer):
    fake.queue("unknown", Reply(200, answer))
    assert client.pull_transactions(shortcode="600984", start=START, end=END).transactions == []


def test_a_busy_pull_is_retryable_and_an_html_page_ambiguous(client, fake):
    fake.queue("unknown", Reply(500, daraja_error("500.003.02", "System is busy")),
               Reply(200, "<html>oops</html>", content_type="text/html"))
    with pytest.raises(errors.Throttled):
        client.pull_transactions(shortcode="600984", start=START, end=END)
    with pytest.raises(errors.AmbiguousResponse):
        client.pull_transactions(shortcode="600984", start=START, end=END)


def test_the_paybill_calls_have_the_clients_timeouts(make_client, fake):
    class RecordingSession(requests.Session):
        timeouts = []

        def request(self, *args, **kwargs):
            self.timeouts.append(kwargs.get("timeout"))
            return super().request(*args, **kwargs)

    fake.queue("unknown", Reply(200, {"ResponseCode": "0"}),
               Reply(200, {"ResponseStatus": "1000"}), Reply(200, {"ResponseCode": "1001"}))
    session = RecordingSession()
    client = make_client(session=session, connect_timeout=2.5, read_timeout=7.0)
    client.register_c2b_urls(shortcode="600984", confirmation_url=URL,
                             validation_url=VALIDATION_URL)
    client.register_pull(shortcode="600984", nominated_number="254712345678", callback_url=URL)
    client.pull_transactions(shortcode="600984", start=START, end=END)
    assert session.timeouts == [(2.5, 7.0)] * 4   # oauth, then the three calls
