"""GET /openapi.json: a valid OpenAPI document that names every route the app serves."""
from openapi_spec_validator import validate

from app.openapi import served_routes
from tests.unit.contract_support import dev_app, dev_settings  # noqa: F401


def document(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200 and response.mimetype == "application/json"
    return response.get_json()


def test_the_document_is_valid_openapi_3_1(dev_app):
    doc = document(dev_app.test_client())
    assert doc["openapi"].startswith("3.1")
    validate(doc)


def test_every_route_the_app_serves_is_in_the_document_and_nothing_else(dev_app):
    doc = document(dev_app.test_client())
    documented = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    assert served_routes(dev_app) - documented == set(), "served but not documented"
    assert documented - served_routes(dev_app) == set(), "documented but not served"


def test_every_client_operation_documents_its_errors_as_problem_json(dev_app):
    doc = document(dev_app.test_client())
    responses = doc["components"]["responses"]
    for path, ops in doc["paths"].items():
        if not path.startswith("/v1/"):
            continue
        for method, op in ops.items():
            codes = op["responses"]
            # 429: writes past their limit, and any request from an address past its
            # failed authentications
            assert {"401", "429", "503"} <= set(codes), (method, path)
            if "requestBody" in op:
                assert {"400", "413", "415", "422"} <= set(codes), (method, path)
            for code, answer in codes.items():
                if code.startswith(("4", "5")):
                    name = answer["$ref"].rsplit("/", 1)[-1]
                    assert "application/problem+json" in responses[name]["content"], (path, code)


def test_the_idempotent_writes_document_the_key_and_the_conflict(dev_app):
    doc = document(dev_app.test_client())
    for path in ("/v1/topups", "/v1/wallet/debits", "/v1/webhook_endpoints"):
        post = doc["paths"][path]["post"]
        assert {"$ref": "#/components/parameters/IdempotencyKey"} in post["parameters"]
        assert "409" in post["responses"]


def test_the_document_needs_no_api_key(dev_app):
    assert dev_app.test_client().get("/openapi.json").status_code == 200
