"""A process refuses to start on a missing or malformed setting, and names the variable."""
import pytest

import settings

TOKEN = {"DARAJA_CALLBACK_TOKEN": "ab" * 16}


def test_the_defaults_run_against_the_simulator_on_embedded_sqlite():
    s = settings.load(TOKEN)
    assert s.database_url == "sqlite:///var/topup.db"
    assert s.daraja_base_url == "http://127.0.0.1:8900"
    assert s.callback_url == "http://127.0.0.1:8000/daraja/callback/" + "ab" * 16
    assert s.stk_query_after_s == 60 and s.stk_give_up_after_s == 86400


@pytest.mark.parametrize("name,value", [
    ("DARAJA_CALLBACK_TOKEN", ""), ("DARAJA_CALLBACK_TOKEN", "not-hex-at-all-really"),
    ("DATABASE_URL", "mysql://x"), ("REDIS_URL", "http://x"), ("STK_QUERY_AFTER_S", "soon"),
    ("DARAJA_CONFIRM_BY_QUERY", "maybe"), ("DARAJA_CALLBACK_ALLOWED_IPS", "1.2.3.4,nope"),
    ("DARAJA_SHORTCODE", "12"), ("DARAJA_TRANSACTION_TYPE", "Paybill"),
    ("PUBLIC_BASE_URL", "https://mpesa.example.com"), ("TRUSTED_PROXY_COUNT", "-1"),
])
def test_a_bad_setting_is_refused_by_name(name, value):
    with pytest.raises(settings.ConfigError, match=name):
        settings.load({**TOKEN, name: value})


def test_a_till_needs_its_party_b():
    with pytest.raises(settings.ConfigError, match="DARAJA_PARTY_B"):
        settings.load({**TOKEN, "DARAJA_TRANSACTION_TYPE": "CustomerBuyGoodsOnline"})


def test_secrets_do_not_show_in_the_settings_repr():
    text = repr(settings.load({**TOKEN, "DARAJA_CONSUMER_SECRET": "s3cr3t", "OPS_TOKEN": "opsops"}))
    assert "s3cr3t" not in text and "opsops" not in text and TOKEN["DARAJA_CALLBACK_TOKEN"] not in text
