"""Account numbers: what a customer types after the paybill. Short, unique, readable, matched
ignoring case, spaces, dashes and look-alike characters; shown in GET /v1/wallet with the
paybill and in `topupctl accounts create`; given to the accounts that existed before them."""
import json

import pytest
from peewee_migrate import Router

from ledger import account_numbers, accounts, db, migrate
from ledger.models import Account
from topupctl import cli


def test_a_new_number_is_six_readable_characters_never_all_digits():
    for _ in range(500):
        number = account_numbers.generate()
        assert len(number) == 6 and not number.isdigit()
        assert set(number) <= set(account_numbers.ALPHABET)
        assert not set(number) & set("OILSBZ")


@pytest.mark.parametrize("typed", ["K7QM29", "k7qm29", " k7-qm 29 ", "K7.QM.29", "k7-q-m-2-9"])
def test_case_spaces_dashes_and_dots_are_ignored(typed):
    assert account_numbers.normalize(typed) == "K7QM29"


def test_a_look_alike_letter_is_read_as_the_digit_it_resembles():
    assert account_numbers.normalize("KO1LS8") == "K01158"
    assert account_numbers.normalize("ki7b2z") == "K17822"


@pytest.mark.parametrize("typed", ["", "K7QM2", "K7QM299", "K7QM2#", "INV42", None, 42])
def test_what_cannot_be_an_account_number_is_none(typed):
    assert account_numbers.normalize(typed) is None


def test_every_account_gets_its_own_number_found_however_it_is_typed(database):
    with db.connection():
        made = [accounts.create_account(f"a{i}")[0] for i in range(30)]
        numbers = [a.account_number for a in made]
        assert len(set(numbers)) == 30
        typed = numbers[7].lower()[:2] + " - " + numbers[7][2:]
        assert accounts.find_by_account_number(typed).id == made[7].id
        assert accounts.find_by_account_number("ZZZZZZ") is None


def test_a_number_drawn_twice_is_drawn_again(database, monkeypatch):
    with db.connection():
        first, _ = accounts.create_account("first")
    draws = iter([first.account_number, first.account_number, "K7QM29"])
    monkeypatch.setattr(account_numbers, "generate", lambda: next(draws))
    with db.connection():
        second, _ = accounts.create_account("second")
        assert second.account_number == "K7QM29"
        assert Account.select().count() == 2


def test_the_wallet_shows_the_paybill_and_the_account_number(client, account):
    with db.connection():
        number = Account.get_by_id(account["id"]).account_number
    wallet = client.get("/v1/wallet", headers=account["auth"]).get_json()
    assert wallet["paybill"] == "174379" and wallet["account_number"] == number


def test_accounts_create_prints_the_account_number_and_the_paybill(settings, database,
                                                                   monkeypatch, capsys):
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setenv("DARAJA_C2B_SHORTCODE", "600984")
    cli.main(["accounts", "create", "Acme"])
    printed = json.loads(capsys.readouterr().out)
    assert set(printed) == {"account", "api_key", "account_number", "paybill"}
    assert printed["paybill"] == "600984"
    with db.connection():
        assert Account.get_by_id(printed["account"]).account_number == printed["account_number"]


def test_the_migration_numbers_the_accounts_that_existed_before(tmp_path):
    database = db.bind(f"sqlite:///{tmp_path}/old.db")
    with db.connection():
        Router(database, migrate_dir=migrate.MIGRATIONS_DIR).run("004_console")
        for name in ("old-1", "old-2", "old-3"):
            database.execute_sql("INSERT INTO account (id, name, created_at) "
                                 "VALUES (?, ?, '2026-01-01')", (f"acct_{name}", name))
        database.execute_sql(
            "INSERT INTO orphan_payment (checkout_request_id, mpesa_receipt, amount_cents, "
            "phone, created_at) VALUES ('ws_CO_old', 'OLD0000001', 100, '254712345678', "
            "'2026-01-01')")
        assert migrate.upgrade() == ["005_paybill"]
        numbers = [a.account_number for a in Account.select()]
        assert len(numbers) == 3 and len(set(numbers)) == 3
        assert all(account_numbers.normalize(n) == n for n in numbers)
        # the orphans kept before are kept still
        assert database.execute_sql("SELECT checkout_request_id FROM orphan_payment"
                                    ).fetchall() == [("ws_CO_old",)]
