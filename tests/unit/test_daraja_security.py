"""daraja.security and daraja.config: Password, Timestamp, masking, no secrets in repr."""
from __future__ import annotations

import base64
from datetime import datetime, timezone

import pytest

from daraja import DarajaConfig
from daraja.security import Scrubber, mask_phone, nairobi_timestamp, stk_password

SANDBOX_PASSKEY = "bfb279f9aa9bdbcf158e97dd71a467cd2e0c893059b10f78e6b72ada1ed2c919"
DOCS_PASSWORD = ("MTc0Mzc5YmZiMjc5ZjlhYTliZGJjZjE1OGU5N2RkNzFhNDY3Y2QyZTBjODkzMDU5YjEwZjc4ZTZiNzJh"
                 "ZGExZWQyYzkxOTIwMjEwNjI4MDkyNDA4")


def test_the_password_of_the_sandbox_example_is_the_one_in_the_docs():
    assert stk_password("174379", SANDBOX_PASSKEY, "20210628092408") == DOCS_PASSWORD
    assert stk_password(174379, SANDBOX_PASSKEY, "20210628092408") == DOCS_PASSWORD


def test_the_password_decodes_to_shortcode_passkey_and_timestamp():
    decoded = base64.b64decode(stk_password("600000", "pk", "20260101000000")).decode()
    assert decoded == "600000pk20260101000000"


def test_the_timestamp_is_nairobi_time_three_hours_ahead_of_utc():
    assert nairobi_timestamp(0) == "19700101030000"
    # 21:30 UTC on New Year's Eve is already the next day, month and year in Nairobi
    moment = datetime(2025, 12, 31, 21, 30, 5, tzinfo=timezone.utc)
    assert nairobi_timestamp(moment) == "20260101003005"
    assert nairobi_timestamp(moment.timestamp()) == "20260101003005"


def test_a_naive_datetime_is_taken_as_utc():
    assert nairobi_timestamp(datetime(2021, 6, 28, 6, 24, 8)) == "20210628092408"


def test_the_timestamp_is_fourteen_digits():
    stamp = nairobi_timestamp()
    assert len(stamp) == 14 and stamp.isdigit()


@pytest.mark.parametrize("phone, masked", [
    ("254712345678", "2547****5678"),
    ("254112345678", "2541****5678"),
    ("12345", "****"),
    (None, None),
])
def test_phone_numbers_are_masked_for_logs(phone, masked):
    assert mask_phone(phone) == masked


def test_the_scrubber_replaces_every_known_secret():
    scrub = Scrubber("secret-one", "tiny").with_secrets("token-two")
    assert scrub("a secret-one and token-two, tiny") == "a *** and ***, tiny"


def test_the_config_repr_shows_no_secret():
    cfg = DarajaConfig(base_url="http://127.0.0.1:8900/", consumer_key="key",
                       consumer_secret="the-consumer-secret", shortcode="174379",
                       passkey=SANDBOX_PASSKEY, callback_url="https://pay.example/cb/abc")
    assert "the-consumer-secret" not in repr(cfg)
    assert SANDBOX_PASSKEY not in repr(cfg)
    assert cfg.base_url == "http://127.0.0.1:8900"
    assert cfg.business_party_b == "174379"


def test_sandbox_and_production_credentials_get_different_token_scopes():
    common = dict(consumer_key="key", consumer_secret="secret", shortcode="174379", passkey="pk")
    sandbox = DarajaConfig(base_url="https://sandbox.safaricom.co.ke", **common)
    production = DarajaConfig(base_url="https://api.safaricom.co.ke", **common)
    other_app = DarajaConfig(base_url="https://api.safaricom.co.ke",
                             **{**common, "consumer_key": "other"})
    assert len({sandbox.token_scope, production.token_scope, other_app.token_scope}) == 3
    assert "key" not in sandbox.token_scope


@pytest.mark.parametrize("bad", [
    {"base_url": "ftp://x"}, {"shortcode": "17a379"}, {"transaction_type": "Other"},
    {"party_b": "till-1"}, {"read_timeout": 0}, {"passkey": ""},
])
def test_a_malformed_config_is_refused_at_construction(bad):
    fields = dict(base_url="http://127.0.0.1:8900", consumer_key="key", consumer_secret="secret",
                  shortcode="174379", passkey="pk")
    with pytest.raises(ValueError):
        DarajaConfig(**{**fields, **bad})
