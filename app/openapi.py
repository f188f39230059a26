"""``GET /openapi.json``: the API as OpenAPI 3.1, every endpoint, body and error.

Written by hand beside the views (the contract is the source, not the code). A unit test
checks that the document is valid and that every route the app serves is in it; a fuzz test
checks that no answer falls outside it. Paths are listed only when the app serves them, so
an operations route (``/metrics``, ``/ops/queues``) appears once it exists.
"""
from __future__ import annotations

import copy
import re

from flask import Blueprint, Flask, current_app, jsonify

from ledger.debits import MAX_DEBIT_CENTS
from ledger.events import EVENT_TYPES

bp = Blueprint("openapi", __name__)

_ID = {"type": "string", "maxLength": 64}
_TIME = {"type": "string", "format": "date-time"}
_NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}


def _nullable(kind="string"):
    return {"type": [kind, "null"]}


def _ref(name):
    return {"$ref": f"#/components/schemas/{name}"}


def _list_of(name):
    return {"type": "object", "required": ["object", "data", "has_more"],
            "properties": {"object": {"const": "list"},
                           "data": {"type": "array", "items": _ref(name)},
                           "has_more": {"type": "boolean"}}}


TOPUP = {
    "type": "object",
    "required": ["id", "object", "provider", "status", "amount", "currency", "phone",
                 "reference", "metadata", "checkout_request_id", "mpesa_receipt",
                 "failure_code", "failure_reason", "channel", "flagged", "created_at",
                 "updated_at", "completed_at"],
    "properties": {
        "id": {"type": "string", "pattern": "^tu_"}, "object": {"const": "topup"},
        "provider": {"const": "mpesa"},
        "status": {"enum": ["pending", "succeeded", "failed", "unknown"]},
        "amount": {"type": "integer", "description": "whole shillings"},
        "currency": {"const": "KES"},
        "phone": {"type": "string", "pattern": "^[0-9* ]{0,32}$",
                  "description": "stk_push: 2547XXXXXXXX or 2541XXXXXXXX; c2b: as Daraja gave "
                                 "it, masked (2547 ***** 126)"},
        "reference": {"type": "string", "description": "the AccountReference of a push; the "
                                                       "account number of a c2b top-up"},
        "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
        "checkout_request_id": _nullable(), "mpesa_receipt": _nullable(),
        "failure_code": _nullable(), "failure_reason": _nullable(),
        "channel": {"enum": ["stk_push", "c2b"], "description": "how the money came: a "
                    "prompt the client asked for (stk_push), or a paybill payment the customer "
                    "made from the phone's menu (c2b: created succeeded)"},
        "flagged": {**_nullable(), "description": "null, or why the credit was unusual: an "
                    "amount other than the one asked, a push whose answer was lost, two "
                    "receipts"},
        "created_at": _TIME, "updated_at": _TIME, "completed_at": _NULLABLE_TIME,
    },
}

SCHEMAS = {
    "Problem": {
        "type": "object", "required": ["type", "title", "status", "detail", "code"],
        "description": "RFC 9457 problem details, with the contract's error code.",
        "properties": {
            "type": {"type": "string"}, "title": {"type": "string"},
            "status": {"type": "integer"}, "detail": {"type": "string"},
            "code": {"type": "string", "enum": [
                "invalid_json", "unauthorized", "insufficient_funds", "forbidden", "not_found",
                "method_not_allowed", "idempotency_conflict", "payload_too_large",
                "unsupported_media_type", "validation_failed", "rate_limited",
                "service_unavailable"]},
            "errors": {"type": "array", "items": {
                "type": "object", "required": ["field", "message"],
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}}}},
        },
    },
    "TopUpRequest": {
        "type": "object", "required": ["provider", "amount", "phone"],
        "additionalProperties": False,
        "properties": {
            "provider": {"const": "mpesa"},
            "amount": {"type": "integer", "minimum": 1, "maximum": 250000,
                       "description": "whole shillings"},
            "phone": {"type": "string", "examples": ["0712 345 678", "+254712345678"],
                      "description": "a Kenyan mobile number in any usual form"},
            "reference": {"type": ["string", "null"], "pattern": "^[A-Za-z0-9]{1,12}$"},
            "metadata": {"type": ["object", "null"], "maxProperties": 20,
                         "propertyNames": {"minLength": 1, "maxLength": 40},
                         "additionalProperties": {"type": "string", "maxLength": 500}},
        },
    },
    "TopUp": TOPUP,
    "TopUpList": _list_of("TopUp"),
    "Wallet": {
        "type": "object",
        "required": ["object", "currency", "balance", "balance_cents", "paybill",
                     "account_number", "updated_at"],
        "properties": {"object": {"const": "wallet"}, "currency": {"const": "KES"},
                       "balance": {"type": "string", "pattern": r"^[0-9]+\.[0-9]{2}$"},
                       "balance_cents": {"type": "integer", "minimum": 0},
                       "paybill": {"type": "string", "pattern": "^[0-9]{5,7}$",
                                   "description": "the paybill a customer pays into "
                                                  "(DARAJA_C2B_SHORTCODE)"},
                       "account_number": {"type": "string", "pattern": "^[0-9A-Z]{6,10}$",
                                          "description": "what the customer types as the "
                                                         "account number to fund this wallet"},
                       "updated_at": _TIME},
    },
    "LedgerEntry": {
        "type": "object",
        "required": ["id", "object", "type", "amount_cents", "balance_after_cents", "topup",
                     "mpesa_receipt", "description", "created_at"],
        "properties": {"id": {"type": "string", "pattern": "^le_"},
                       "object": {"const": "ledger_entry"},
                       "type": {"enum": ["top_up", "debit"]},
                       "amount_cents": {"type": "integer", "description": "debits are negative"},
                       "balance_after_cents": {"type": "integer", "minimum": 0},
                       "topup": _nullable(), "mpesa_receipt": _nullable(),
                       "description": {"type": "string"}, "created_at": _TIME},
    },
    "LedgerEntryList": _list_of("LedgerEntry"),
    "DebitRequest": {
        "type": "object", "required": ["amount_cents"], "additionalProperties": False,
        "properties": {"amount_cents": {"type": "integer", "minimum": 1,
                                        "maximum": MAX_DEBIT_CENTS},
                       "description": {"type": ["string", "null"], "maxLength": 255}},
    },
    "WebhookEndpointRequest": {
        "type": "object", "required": ["url", "events"], "additionalProperties": False,
        "properties": {
            "url": {"type": "string", "format": "uri", "maxLength": 2048,
                    "description": "http(s); refused if its host resolves to a loopback, "
                                   "private or link-local address (unless "
                                   "WEBHOOK_ALLOW_PRIVATE=1)"},
            "events": {"type": "array", "minItems": 1,
                       "items": {"enum": list(EVENT_TYPES)}},
        },
    },
    "WebhookEndpoint": {
        "type": "object", "required": ["id", "object", "url", "events", "created_at"],
        "properties": {"id": {"type": "string", "pattern": "^we_"},
                       "object": {"const": "webhook_endpoint"},
                       "url": {"type": "string"},
                       "events": {"type": "array", "items": {"enum": list(EVENT_TYPES)}},
                       "created_at": _TIME},
    },
    "WebhookEndpointCreated": {
        "allOf": [_ref("WebhookEndpoint"), {
            "type": "object", "required": ["secret"],
            "properties": {"secret": {
                "type": "string", "pattern": "^whsec_[A-Za-z0-9+/=]+$",
                "description": "Standard Webhooks signing secret; shown only in this answer "
                               "(and in a replay of it under the same Idempotency-Key)"}}}],
    },
    "WebhookEndpointList": _list_of("WebhookEndpoint"),
    "WebhookEndpointDeleted": {
        "type": "object", "required": ["id", "object", "deleted"],
        "properties": {"id": {"type": "string"}, "object": {"const": "webhook_endpoint"},
                       "deleted": {"const": True}},
    },
    "Event": {
        "type": "object", "required": ["id", "object", "type", "created_at", "data"],
        "properties": {
            "id": {"type": "string", "pattern": "^evt_"}, "object": {"const": "event"},
            "type": {"enum": list(EVENT_TYPES)}, "created_at": _TIME,
            "data": {"type": "object", "required": ["topup"],
                     "description": "wallet.top_up: the top-up and the balance after the "
                                    "credit; topup.failed: the top-up",
                     "properties": {"topup": _ref("TopUp"),
                                    "ledger_entry": {"type": "string"},
                                    "amount_cents": {"type": "integer"},
                                    "currency": {"const": "KES"},
                                    "balance": {"type": "string"},
                                    "balance_cents": {"type": "integer"}}},
        },
    },
    "EventList": _list_of("Event"),
    "CallbackAccepted": {
        "type": "object", "required": ["ResultCode", "ResultDesc"],
        "properties": {"ResultCode": {"const": 0}, "ResultDesc": {"const": "Accepted"}},
    },
    "C2BPayment": {
        "type": "object", "required": ["TransID", "TransAmount"],
        "description": "Daraja's C2B validation and confirmation body: every value a string, "
                       "MSISDN masked in C2B v2",
        "properties": {name: {"type": "string"} for name in (
            "TransactionType", "TransID", "TransTime", "TransAmount", "BusinessShortCode",
            "BillRefNumber", "InvoiceNumber", "OrgAccountBalance", "ThirdPartyTransID",
            "MSISDN", "FirstName", "MiddleName", "LastName")},
    },
    "C2BVerdict": {
        "type": "object", "required": ["ResultCode", "ResultDesc"],
        "properties": {"ResultCode": {"enum": ["0", "C2B00012", "C2B00013", "C2B00016"],
                                      "description": "0: accepted; C2B00012: no account has "
                                                     "this account number; C2B00013: amount "
                                                     "out of range; C2B00016: not a payment"},
                       "ResultDesc": {"type": "string"}},
    },
    "Health": {"type": "object", "required": ["status"],
               "properties": {"status": {"type": "string"},
                              "down": {"type": "array", "items": {"type": "string"}}}},
}

_PROBLEM = {"application/problem+json": {"schema": _ref("Problem")}}
RESPONSES = {
    "InvalidJson": {"description": "invalid_json: the body is not a JSON object",
                    "content": _PROBLEM},
    "Unauthorized": {"description": "unauthorized: no valid API key",
                     "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
                     "content": _PROBLEM},
    "InsufficientFunds": {"description": "insufficient_funds: nothing was taken",
                          "content": _PROBLEM},
    "Forbidden": {"description": "forbidden", "content": _PROBLEM},
    "NotFound": {"description": "not_found (another account's ids too)", "content": _PROBLEM},
    "IdempotencyConflict": {"description": "idempotency_conflict: the key was used with "
                                           "another body", "content": _PROBLEM},
    "PayloadTooLarge": {"description": "payload_too_large (over 64 KiB)", "content": _PROBLEM},
    "UnsupportedMediaType": {"description": "unsupported_media_type: send application/json",
                             "content": _PROBLEM},
    "ValidationFailed": {"description": "validation_failed, with `errors` naming each field",
                         "content": _PROBLEM},
    "RateLimited": {"description": "rate_limited: too many writes with this API key, or too "
                                   "many failed authentications from this address",
                    "headers": {"Retry-After": {"required": True,
                                                "schema": {"type": "string",
                                                           "pattern": "^[0-9]+$"}}},
                    "content": _PROBLEM},
    "Unavailable": {"description": "service_unavailable: the database or Redis is down; retry",
                    "headers": {"Retry-After": {"schema": {"type": "string"}}},
                    "content": _PROBLEM},
}

PARAMETERS = {
    "IdempotencyKey": {
        "name": "Idempotency-Key", "in": "header", "required": False,
        "description": "The same key and body answer the first answer again (kept at least "
                       "24 hours), with the header Idempotent-Replayed: true; the same key "
                       "with another body answers 409.",
        "schema": {"type": "string", "pattern": "^[\\x21-\\x7e]{1,255}$"}},
    "Limit": {"name": "limit", "in": "query", "required": False,
              "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}},
    "StartingAfter": {"name": "starting_after", "in": "query", "required": False,
                      "description": "an id from the previous page: the next page, older",
                      "schema": {"type": "string"}},
}


def _p(name):
    return {"$ref": f"#/components/parameters/{name}"}


def _r(name):
    return {"$ref": f"#/components/responses/{name}"}


def _json(name, description):
    return {"description": description,
            "content": {"application/json": {"schema": _ref(name)}}}


def _path_id(name, description):
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "string"}}


_READ_ERRORS = {"401": _r("Unauthorized"), "429": _r("RateLimited"), "503": _r("Unavailable")}
_LIST_ERRORS = {**_READ_ERRORS, "404": _r("NotFound"), "422": _r("ValidationFailed")}
_BODY_ERRORS = {"400": _r("InvalidJson"), "401": _r("Unauthorized"),
                "413": _r("PayloadTooLarge"), "415": _r("UnsupportedMediaType"),
                "422": _r("ValidationFailed"), "429": _r("RateLimited"),
                "503": _r("Unavailable")}
_SECURED = [{"apiKey": []}]


def _body(name):
    return {"required": True, "content": {"application/json": {"schema": _ref(name)}}}


def _list_op(op_id, summary, schema, extra_params=()):
    return {"operationId": op_id, "summary": summary, "security": _SECURED,
            "parameters": [_p("Limit"), _p("StartingAfter"), *extra_params],
            "responses": {"200": _json(schema, "a page, newest first"), **_LIST_ERRORS}}


PATHS = {
    "/v1/topups": {
        "post": {"operationId": "createTopUp", "summary": "Ask for an M-Pesa top-up",
                 "security": _SECURED, "parameters": [_p("IdempotencyKey")],
                 "requestBody": _body("TopUpRequest"),
                 "responses": {"202": _json("TopUp", "the top-up, pending; the push follows"),
                               "409": _r("IdempotencyConflict"), **_BODY_ERRORS}},
        "get": _list_op("listTopUps", "List top-ups", "TopUpList", [
            {"name": "status", "in": "query", "required": False,
             "schema": {"enum": ["pending", "succeeded", "failed", "unknown"]}}]),
    },
    "/v1/topups/{topup_id}": {
        "get": {"operationId": "getTopUp", "summary": "One top-up", "security": _SECURED,
                "parameters": [_path_id("topup_id", "tu_…")],
                "responses": {"200": _json("TopUp", "the top-up"), "404": _r("NotFound"),
                              **_READ_ERRORS}},
    },
    "/v1/wallet": {
        "get": {"operationId": "getWallet", "summary": "The wallet's balance",
                "security": _SECURED,
                "responses": {"200": _json("Wallet", "the wallet"), **_READ_ERRORS}},
    },
    "/v1/wallet/transactions": {
        "get": _list_op("listLedgerEntries", "The wallet's ledger entries", "LedgerEntryList"),
    },
    "/v1/wallet/debits": {
        "post": {"operationId": "createDebit", "summary": "Spend from the wallet, in cents",
                 "description": "The balance never goes below zero, however many debits race.",
                 "security": _SECURED, "parameters": [_p("IdempotencyKey")],
                 "requestBody": _body("DebitRequest"),
                 "responses": {"201": _json("LedgerEntry", "the debit's ledger entry"),
                               "402": _r("InsufficientFunds"),
                               "409": _r("IdempotencyConflict"), **_BODY_ERRORS}},
    },
    "/v1/webhook_endpoints": {
        "post": {"operationId": "createWebhookEndpoint",
                 "summary": "Register a URL for events; its secret is shown once",
                 "security": _SECURED, "parameters": [_p("IdempotencyKey")],
                 "requestBody": _body("WebhookEndpointRequest"),
                 "responses": {"201": _json("WebhookEndpointCreated",
                                            "the endpoint with its signing secret"),
                               "409": _r("IdempotencyConflict"), **_BODY_ERRORS}},
        "get": _list_op("listWebhookEndpoints", "List webhook endpoints",
                        "WebhookEndpointList"),
    },
    "/v1/webhook_endpoints/{endpoint_id}": {
        "get": {"operationId": "getWebhookEndpoint", "summary": "One webhook endpoint",
                "security": _SECURED, "parameters": [_path_id("endpoint_id", "we_…")],
                "responses": {"200": _json("WebhookEndpoint", "the endpoint (no secret)"),
                              "404": _r("NotFound"), **_READ_ERRORS}},
        "delete": {"operationId": "deleteWebhookEndpoint",
                   "summary": "Stop sending events to an endpoint", "security": _SECURED,
                   "parameters": [_path_id("endpoint_id", "we_…")],
                   "responses": {"200": _json("WebhookEndpointDeleted", "deleted"),
                                 "404": _r("NotFound"), **_READ_ERRORS}},
    },
    "/v1/events": {
        "get": _list_op("listEvents", "List events", "EventList", [
            {"name": "type", "in": "query", "required": False,
             "schema": {"enum": list(EVENT_TYPES)}}]),
    },
    "/v1/events/{event_id}": {
        "get": {"operationId": "getEvent", "summary": "One event", "security": _SECURED,
                "parameters": [_path_id("event_id", "evt_…")],
                "responses": {"200": _json("Event", "the event"), "404": _r("NotFound"),
                              **_READ_ERRORS}},
    },
    "/daraja/callback/{token}": {
        "post": {"operationId": "darajaCallback",
                 "summary": "Daraja's STK callback: stored, acknowledged, applied by a worker",
                 "parameters": [_path_id("token", "DARAJA_CALLBACK_TOKEN")],
                 "requestBody": {"required": True,
                                 "content": {"application/json": {"schema": {
                                     "type": "object"}}}},
                 "responses": {"200": _json("CallbackAccepted", "stored"),
                               "400": _r("InvalidJson"), "403": _r("Forbidden"),
                               "404": _r("NotFound"), "413": _r("PayloadTooLarge"),
                               "503": _r("Unavailable")}},
    },
    "/daraja/c2b/validation/{token}": {
        "post": {"operationId": "darajaC2BValidation",
                 "summary": "Daraja's C2B validation: a paybill payment about to be made, "
                            "accepted or refused from the ledger alone",
                 "parameters": [_path_id("token", "DARAJA_CALLBACK_TOKEN")],
                 "requestBody": {"required": True, "content": {"application/json": {
                     "schema": _ref("C2BPayment")}}},
                 "responses": {"200": _json("C2BVerdict", "the verdict, whatever the body"),
                               "403": _r("Forbidden"), "404": _r("NotFound"),
                               "413": _r("PayloadTooLarge"), "503": _r("Unavailable")}},
    },
    "/daraja/c2b/confirmation/{token}": {
        "post": {"operationId": "darajaC2BConfirmation",
                 "summary": "Daraja's C2B confirmation: a paybill payment made; stored, "
                            "acknowledged, credited by a worker",
                 "parameters": [_path_id("token", "DARAJA_CALLBACK_TOKEN")],
                 "requestBody": {"required": True, "content": {"application/json": {
                     "schema": _ref("C2BPayment")}}},
                 "responses": {"200": _json("CallbackAccepted", "stored"),
                               "400": _r("InvalidJson"), "403": _r("Forbidden"),
                               "404": _r("NotFound"), "413": _r("PayloadTooLarge"),
                               "503": _r("Unavailable")}},
    },
    "/healthz": {"get": {"operationId": "healthz", "summary": "200 while the process lives",
                         "responses": {"200": _json("Health", "alive")}}},
    "/readyz": {"get": {"operationId": "readyz",
                        "summary": "200 when the database and Redis answer",
                        "responses": {"200": _json("Health", "ready"),
                                      "503": _json("Health", "naming what is down")}}},
    "/openapi.json": {"get": {"operationId": "openapi", "summary": "This document",
                              "responses": {"200": {"description": "OpenAPI 3.1",
                                                    "content": {"application/json": {
                                                        "schema": {"type": "object"}}}}}}},
    # Operations (contract §5): listed once the app serves them.
    "/metrics": {"get": {"operationId": "metrics", "summary": "Prometheus text format",
                         "responses": {"200": {"description": "metrics", "content": {
                             "text/plain": {"schema": {"type": "string"}}}}}}},
    "/ops/queues": {"get": {
        "operationId": "opsQueues", "summary": "Every queue's messages (bearer OPS_TOKEN)",
        "security": [{"opsToken": []}],
        "responses": {"200": {"description": "the queues", "content": {"application/json": {
            "schema": {"type": "object"}}}},
            "401": _r("Unauthorized"), "403": _r("Forbidden"), "404": _r("NotFound"),
            "503": _r("Unavailable")}}},
    "/ops/reconciliations": {"get": {
        "operationId": "opsReconciliations",
        "summary": "Recorded `topupctl reconcile` runs, newest first (bearer OPS_TOKEN)",
        "security": [{"opsToken": []}], "parameters": [_p("Limit"), _p("StartingAfter")],
        "responses": {"200": {"description": "a page of runs", "content": {"application/json": {
            "schema": {"type": "object"}}}},
            "401": _r("Unauthorized"), "404": _r("NotFound"), "422": _r("ValidationFailed"),
            "503": _r("Unavailable")}}},
    "/ops/reconciliations/{run_id}": {"get": {
        "operationId": "opsReconciliation",
        "summary": "One reconciliation run, its findings and what it applied (bearer OPS_TOKEN)",
        "security": [{"opsToken": []}],
        "parameters": [_path_id("run_id", "the run's id, rc_…")],
        "responses": {"200": {"description": "the run", "content": {"application/json": {
            "schema": {"type": "object"}}}},
            "401": _r("Unauthorized"), "404": _r("NotFound"), "503": _r("Unavailable")}}},
}

DOCUMENT = {
    "openapi": "3.1.0",
    "info": {"title": "topup-gateway", "version": "1",
             "description": "Prepaid KES wallet top-ups over M-Pesa: STK push, and paybill "
                            "payments (C2B) to each wallet's account number. Every error is "
                            "application/problem+json."},
    "servers": [{"url": "/"}],
    "paths": PATHS,
    "components": {
        "securitySchemes": {
            "apiKey": {"type": "http", "scheme": "bearer", "description": "sk_… API key"},
            "opsToken": {"type": "http", "scheme": "bearer", "description": "OPS_TOKEN"},
        },
        "schemas": SCHEMAS, "responses": RESPONSES, "parameters": PARAMETERS,
    },
}


def openapi_path(rule: str) -> str:
    """``/v1/topups/<topup_id>`` → ``/v1/topups/{topup_id}``."""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def served_routes(app: Flask) -> set[tuple[str, str]]:
    """(path, method) for every route the app serves, as the document spells them."""
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            routes.add((openapi_path(rule.rule), method.lower()))
    return routes


def document(app: Flask) -> dict:
    doc = copy.deepcopy(DOCUMENT)
    served = {path for path, _ in served_routes(app)}
    doc["paths"] = {path: ops for path, ops in doc["paths"].items() if path in served}
    return doc


@bp.get("/openapi.json")
def openapi_json():
    cached = current_app.extensions.get("openapi_document")
    if cached is None:
        cached = current_app.extensions["openapi_document"] = document(current_app)
    return jsonify(cached)
