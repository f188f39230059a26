"""Faults of Daraja's API proxy (Apigee) say where a request stopped: a 503 ServiceUnavailable
never reached M-Pesa (not sent: retry), a 504 GatewayTimeout did (ambiguous: never resend)."""
import json

import pytest

from daraja import errors
from daraja.answers import Answer, read_push


def fault(status, errorcode, faultstring):
    return Answer.parse(status, json.dumps(
        {"fault": {"faultstring": faultstring, "detail": {"errorcode": errorcode}}}))


def test_a_503_service_unavailable_fault_is_a_push_not_sent_and_retried():
    with pytest.raises(errors.Throttled) as refused:
        read_push(fault(503, "messaging.adaptors.http.flow.ServiceUnavailable",
                        "The Service is temporarily unavailable"), lambda text: text)
    assert refused.value.retryable and not refused.value.may_have_been_processed


def test_a_504_gateway_timeout_fault_stays_ambiguous():
    with pytest.raises(errors.DarajaError) as answered:
        read_push(fault(504, "messaging.adaptors.http.flow.GatewayTimeout",
                        "Gateway Timeout"), lambda text: text)
    assert answered.value.may_have_been_processed and not answered.value.retryable
