"""topupctl keys create|list|revoke: a key printed once, listed by prefix, revoked at once."""
import json

import pytest

from topupctl import cli

pytestmark = pytest.mark.both_databases


@pytest.fixture
def topupctl(settings, database, monkeypatch, capsys):
    monkeypatch.setenv("DATABASE_URL", settings.database_url)

    def run(*argv):
        cli.main(list(argv))
        return capsys.readouterr().out

    return run


def test_a_created_key_is_printed_once_and_works(topupctl, client, account):
    created = json.loads(topupctl("keys", "create", account["id"]))

    assert created["account"] == account["id"]
    assert created["api_key"].startswith("sk_") and created["api_key"].startswith(created["prefix"])
    headers = {"Authorization": f"Bearer {created['api_key']}"}
    assert client.get("/v1/wallet", headers=headers).status_code == 200


def test_keys_are_listed_by_prefix_and_never_shown(topupctl, account):
    created = json.loads(topupctl("keys", "create", account["id"]))

    listed = json.loads(topupctl("keys", "list", account["id"], "--json"))["data"]
    text = topupctl("keys", "list", account["id"])

    assert [k["id"] for k in listed][-1] == created["id"]
    assert {"id", "prefix", "created_at", "revoked_at"} == set(listed[-1])
    assert all(k["revoked_at"] is None for k in listed)
    assert created["prefix"] in text and "active" in text
    assert account["key"] not in text + json.dumps(listed)
    assert created["api_key"] not in text + json.dumps(listed)


def test_a_revoked_key_stops_working_and_shows_as_revoked(topupctl, client, account):
    created = json.loads(topupctl("keys", "create", account["id"]))
    headers = {"Authorization": f"Bearer {created['api_key']}"}

    assert json.loads(topupctl("keys", "revoke", created["id"])) == {"id": created["id"],
                                                                     "revoked": True}

    assert client.get("/v1/wallet", headers=headers).status_code == 401
    assert client.get("/v1/wallet", headers=account["auth"]).status_code == 200
    listed = json.loads(topupctl("keys", "list", account["id"], "--json"))["data"]
    assert [k["revoked_at"] is not None for k in listed] == [False, True]


def test_revoking_twice_or_an_unknown_key_exits_with_a_reason(topupctl, account):
    created = json.loads(topupctl("keys", "create", account["id"]))
    topupctl("keys", "revoke", created["id"])
    with pytest.raises(SystemExit, match="already revoked"):
        topupctl("keys", "revoke", created["id"])
    with pytest.raises(SystemExit, match="no key"):
        topupctl("keys", "revoke", "key_nope")


def test_an_unknown_account_exits_with_a_reason(topupctl):
    with pytest.raises(SystemExit, match="no account"):
        topupctl("keys", "create", "acct_nope")
    with pytest.raises(SystemExit, match="no account"):
        topupctl("keys", "list", "acct_nope")
