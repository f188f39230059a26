"""POST /daraja/callback/{token}: stored durably, acknowledged, handed to a worker."""
import dataclasses
import ipaddress
import json

import pytest

from app import create_app
from ledger import db
from ledger.models import Callback
from tests import databases
from tests.unit.conftest import CALLBACK_TOKEN, FakeRedis

pytestmark = pytest.mark.both_databases

BODY = {"Body": {"stkCallback": {"MerchantRequestID": "m", "CheckoutRequestID": "ws_CO_9",
                                 "ResultCode": 1032, "ResultDesc": "Request cancelled by user"}}}


def stored():
    with db.connection():
        return list(Callback.select())


def test_a_well_formed_callback_is_stored_then_acknowledged_and_queued(client, stub_broker):
    with client.post(f"/daraja/callback/{CALLBACK_TOKEN}", json=BODY) as response:
        assert response.status_code == 200
        assert response.get_json() == {"ResultCode": 0, "ResultDesc": "Accepted"}
        rows = stored()
        assert [(r.checkout_request_id, r.result_code) for r in rows] == [("ws_CO_9", "1032")]
        assert json.loads(rows[0].body) == BODY
        # the answer does not wait on Redis: the message goes once the answer is sent
        assert stub_broker.queues["callbacks"].qsize() == 0
    assert stub_broker.queues["callbacks"].qsize() == 1


def test_a_callback_whose_enqueue_fails_is_still_acknowledged_and_left_for_the_sweep(
        client, stub_broker, monkeypatch):
    from workers import actors

    def redis_down(*args, **kwargs):
        raise ConnectionError("Redis is down")
    monkeypatch.setattr(actors.apply_callback, "send", redis_down)
    with client.post(f"/daraja/callback/{CALLBACK_TOKEN}", json=BODY) as response:
        assert response.status_code == 200
    assert [r.applied_at for r in stored()] == [None]   # what the unapplied sweep re-drives
    assert stub_broker.queues["callbacks"].qsize() == 0


def test_a_wrong_token_answers_404_and_stores_nothing(client):
    response = client.post("/daraja/callback/" + "0" * 36, json=BODY)
    assert response.status_code == 404
    assert stored() == []


def test_a_malformed_callback_answers_400_but_is_kept_for_an_operator(client, stub_broker):
    response = client.post(f"/daraja/callback/{CALLBACK_TOKEN}", data="<html>",
                           content_type="text/html")
    assert response.status_code == 400
    assert [r.body for r in stored()] == ["<html>"]
    assert stub_broker.queues["callbacks"].qsize() == 0


def test_a_callback_nested_deeper_than_any_parser_goes_is_kept_as_malformed(client, stub_broker):
    body = "[" * 3_000 + "]" * 3_000   # small enough to be read, too deep to be parsed
    response = client.post(f"/daraja/callback/{CALLBACK_TOKEN}", data=body,
                           content_type="application/json")
    assert response.status_code == 400
    assert [(r.well_formed, r.outcome) for r in stored()] == [(False, "malformed")]
    assert stub_broker.queues["callbacks"].qsize() == 0


@pytest.fixture
def guarded_client(settings, database, stub_broker):
    guarded = dataclasses.replace(
        settings, daraja_callback_allowed_ips=(ipaddress.ip_network("196.201.212.0/24"),),
        trusted_proxy_count=1)
    app = create_app({"SETTINGS": guarded, "BROKER": stub_broker, "REDIS": FakeRedis(),
                      "BIND_DATABASE": False})
    return app.test_client()


def test_an_address_outside_the_allowlist_answers_403(guarded_client):
    response = guarded_client.post(f"/daraja/callback/{CALLBACK_TOKEN}", json=BODY,
                                   headers={"X-Forwarded-For": "10.1.1.1"})
    assert response.status_code == 403
    assert stored() == []


def test_an_allowed_address_behind_a_trusted_proxy_is_accepted(guarded_client):
    response = guarded_client.post(f"/daraja/callback/{CALLBACK_TOKEN}", json=BODY,
                                   headers={"X-Forwarded-For": "1.1.1.1, ::ffff:196.201.212.69"})
    assert response.status_code == 200


def test_an_untrusted_forwarded_for_hop_is_ignored(guarded_client):
    # the client wrote the left-most hop itself; only the proxy's own hop counts
    response = guarded_client.post(f"/daraja/callback/{CALLBACK_TOKEN}", json=BODY,
                                   headers={"X-Forwarded-For": "196.201.212.69, 10.0.0.1"})
    assert response.status_code == 403


def test_an_acknowledged_callback_is_already_committed_for_every_other_connection(client,
                                                                                  settings):
    response = client.post(f"/daraja/callback/{CALLBACK_TOKEN}", json=BODY,
                           environ_base={"REMOTE_ADDR": "196.201.214.200"})
    assert response.status_code == 200
    with databases.another_connection(settings.database_url) as other:
        count, = other.execute_sql("SELECT count(*) FROM callback").fetchone()
    assert count == 1
    row, = stored()
    assert (row.remote_addr, row.well_formed, row.applied_at, row.outcome) == (
        "196.201.214.200", True, None, None)
    assert row.received_at is not None and row.received_at.year >= 2026


def test_a_callback_the_database_cannot_store_answers_503_and_is_not_queued(
        client, settings, database, stub_broker, tmp_path):
    db.database.initialize(db.open_database(databases.unreachable(settings.database_url,
                                                                  tmp_path)))
    try:   # the database is down: every INSERT fails
        response = client.post(f"/daraja/callback/{CALLBACK_TOKEN}", json=BODY)
    finally:
        db.database.initialize(database)
    assert response.status_code == 503
    assert stored() == []
    assert stub_broker.queues["callbacks"].qsize() == 0


def test_the_acknowledgement_is_darajas_expected_answer_byte_for_byte(client):
    with client.post(f"/daraja/callback/{CALLBACK_TOKEN}", json=BODY) as response:
        assert response.status == "200 OK"
        assert response.get_data() == b'{"ResultCode":0,"ResultDesc":"Accepted"}\n'
        assert sorted(response.headers.items()) == [("Content-Length", "41"),
                                                    ("Content-Type", "application/json")]


def test_a_malformed_callbacks_answer_is_the_problem_document_byte_for_byte(client):
    response = client.post(f"/daraja/callback/{CALLBACK_TOKEN}", data="<html>",
                           content_type="text/html")
    assert response.status == "400 BAD REQUEST"
    assert response.get_data() == (
        b'{"type":"https://docs.topup-gateway.dev/errors/invalid_json","title":"Invalid JSON",'
        b'"status":400,"detail":"Not an STK callback body.","code":"invalid_json"}\n')
    assert response.headers["Content-Type"] == "application/problem+json"


def wsgi_call(wsgi_app, environ):
    status, headers = [], []

    def start_response(s, h, exc_info=None):
        status.append(s)
        headers.extend(h)
    answer = wsgi_app(environ, start_response)
    try:
        body = b"".join(answer)
    finally:
        if hasattr(answer, "close"):
            answer.close()
    return status[0], headers, body


def callback_environ(body: bytes, **extra):
    from werkzeug.test import EnvironBuilder
    environ = EnvironBuilder(path=f"/daraja/callback/{CALLBACK_TOKEN}", method="POST",
                             data=body, content_type="application/json").get_environ()
    environ.update(extra)
    return environ


def test_a_chunked_callback_without_a_length_is_stored_and_acknowledged(app, stub_broker):
    import io
    body = json.dumps(BODY).encode()
    environ = callback_environ(body, HTTP_TRANSFER_ENCODING="chunked")
    del environ["CONTENT_LENGTH"]
    environ["wsgi.input"], environ["wsgi.input_terminated"] = io.BytesIO(body), True
    status, _, answer = wsgi_call(app.wsgi_app, environ)
    assert (status, json.loads(answer)) == ("200 OK", {"ResultCode": 0, "ResultDesc": "Accepted"})
    assert [r.checkout_request_id for r in stored()] == ["ws_CO_9"]
    assert stub_broker.queues["callbacks"].qsize() == 1


def test_an_oversize_callback_answers_413_and_stores_nothing(client, stub_broker):
    response = client.post(f"/daraja/callback/{CALLBACK_TOKEN}", data=b"x" * (64 * 1024 + 1),
                           content_type="application/json")
    assert response.status_code == 413
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["code"] == "payload_too_large"
    assert stored() == []
    assert stub_broker.queues["callbacks"].qsize() == 0


def test_another_method_answers_405_with_allow(client):
    response = client.put(f"/daraja/callback/{CALLBACK_TOKEN}", json=BODY)
    assert response.status_code == 405
    assert response.mimetype == "application/problem+json"
    assert "POST" in response.headers["Allow"]
    assert stored() == []


def test_a_token_with_a_trailing_segment_answers_404(client):
    response = client.post(f"/daraja/callback/{CALLBACK_TOKEN}/x", json=BODY)
    assert response.status_code == 404
    assert response.get_json()["code"] == "not_found"
    assert stored() == []


def test_a_body_with_a_nul_byte_is_kept_as_malformed_and_answers_400(client, stub_broker):
    response = client.post(f"/daraja/callback/{CALLBACK_TOKEN}", data=b'{"Body": \x00}',
                           content_type="application/json")
    assert response.status_code == 400
    assert [(r.well_formed, r.outcome) for r in stored()] == [(False, "malformed")]
    assert stub_broker.queues["callbacks"].qsize() == 0
