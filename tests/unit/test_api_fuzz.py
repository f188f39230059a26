"""Schemathesis against /openapi.json, in-process over WSGI: thousands of generated requests,
valid and invalid, find no 5xx and no answer that the document does not describe.

Each operation gets a fresh ledger and an account with money, a webhook endpoint and events
in it, so generated requests reach the code behind validation too. About a minute on two
cores; ``TOPUP_FUZZ_EXAMPLES`` sets the number of cases per operation and generation mode.

(Schemathesis's own pytest loader does not run on pytest 9 yet, so the cases are drawn from
its strategies with Hypothesis directly.)
"""
import dataclasses
import os
import shutil
import tempfile

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings as hypothesis_settings, strategies as st
from schemathesis import GenerationMode

from app.openapi import DOCUMENT
from tests.unit.contract_support import (  # noqa: F401
    FUZZ_CHECKS, credit, dev_settings, fail, make_app, post_json,
)

EXAMPLES = int(os.environ.get("TOPUP_FUZZ_EXAMPLES", "120"))
# Operations routes (/metrics, /ops/queues) are the operations lead's and fuzzed only if served.
OPERATIONS = [(path, method) for path, ops in DOCUMENT["paths"].items() for method in ops]


@pytest.fixture
def settings(settings):
    """The ledger in memory-backed files when the machine has them: thousands of committed
    writes should measure the API, not the disk's fsync."""
    if not os.path.isdir("/dev/shm"):
        yield settings
        return
    folder = tempfile.mkdtemp(prefix="topup-fuzz-", dir="/dev/shm")
    yield dataclasses.replace(settings, database_url=f"sqlite:///{folder}/ledger.db")
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def fuzzed(dev_settings, database, stub_broker, account):
    app = make_app(dev_settings, stub_broker, RATELIMIT_WRITES="100000 per second")
    client = app.test_client()
    credit(account["id"], 500)
    fail(account["id"])
    post_json(client, "/v1/webhook_endpoints",
              {"url": "https://hooks.example.com/x", "events": ["wallet.top_up"]},
              account["auth"])
    return app


@pytest.mark.parametrize("path,method", OPERATIONS,
                         ids=[f"{m.upper()} {p}" for p, m in OPERATIONS])
def test_no_generated_request_gets_a_5xx_or_an_answer_outside_the_document(
        fuzzed, account, path, method):
    schema = schemathesis.openapi.from_wsgi("/openapi.json", fuzzed)
    if path not in schema.raw_schema["paths"]:
        pytest.skip(f"{path} is not served by this app")
    operation = schema[path][method.upper()]
    cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE),
                      operation.as_strategy(GenerationMode.NEGATIVE))
    auth = {"Authorization": account["auth"]["Authorization"]}

    @given(cases)
    @hypothesis_settings(max_examples=2 * EXAMPLES, deadline=None, derandomize=True, database=None,
                         suppress_health_check=list(HealthCheck))
    def no_surprise(case):
        case.call_and_validate(headers=auth, checks=FUZZ_CHECKS)

    no_surprise()
