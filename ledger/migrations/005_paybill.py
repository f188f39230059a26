"""Paybill payments (C2B): an account number for every account, a top-up's channel, orphan
payments without a CheckoutRequestID, the C2B confirmations and the Pull Transactions runs.

Written by hand (the generator proposes rebuilding every table whose column changes): on
SQLite a column change rebuilds the table, and rebuilding ``account`` or ``top_up``, which
other tables refer to with ON DELETE CASCADE, would empty those tables under
``foreign_keys=1``. So every change here is one SQLite makes in place (a nullable column with
a default, an index) except ``orphan_payment``'s, which no table refers to:

- ``account.account_number``, unique, nullable in the schema (the application always sets
  it), given to every existing account here;
- ``top_up.channel`` (``stk_push`` for the existing top-ups) and an index on
  ``top_up.reference`` (a confirmation names a push by its AccountReference);
- ``top_up.phone`` and ``orphan_payment.phone`` widened to 32 characters for the phone as
  Daraja gives it in a C2B confirmation (``2547 ***** 126``): on PostgreSQL only, SQLite
  enforces no length;
- ``orphan_payment.checkout_request_id`` nullable (a paybill payment has none), and three
  columns for a paybill orphan;
- the ``c2b_confirmation`` and ``c2b_pull`` tables."""

import peewee as pw
from peewee_migrate import Migrator


def _give_every_account_a_number(database: pw.Database) -> None:
    from ledger.account_numbers import generate
    p = database.param
    taken = {row[0] for row in database.execute_sql(
        "SELECT account_number FROM account WHERE account_number IS NOT NULL").fetchall()}
    for (account_id,) in database.execute_sql(
            "SELECT id FROM account WHERE account_number IS NULL ORDER BY created_at").fetchall():
        number = generate()
        while number in taken:
            number = generate()
        taken.add(number)
        database.execute_sql(f"UPDATE account SET account_number = {p} WHERE id = {p}",
                             (number, account_id))


def migrate(migrator: Migrator, database: pw.Database, *, fake=False):
    """Add the columns, number the accounts, create the two tables."""
    # unique at once (the index takes any number of NULLs), then given to every account
    migrator.add_fields('account', account_number=pw.CharField(max_length=10, null=True,
                                                               unique=True))
    migrator.run(_give_every_account_a_number, database)

    migrator.add_fields('top_up', channel=pw.CharField(max_length=16, null=True,
                                                       default='stk_push'))
    migrator.add_index('top_up', 'reference')
    if isinstance(database, pw.PostgresqlDatabase):
        migrator.sql("ALTER TABLE top_up ALTER COLUMN phone TYPE VARCHAR(32)")
        migrator.sql("ALTER TABLE orphan_payment ALTER COLUMN phone TYPE VARCHAR(32)")

    migrator.drop_not_null('orphan_payment', 'checkout_request_id')
    migrator.add_fields('orphan_payment',
                        bill_ref_number=pw.CharField(max_length=64, null=True),
                        reason=pw.CharField(max_length=200, null=True),
                        c2b_confirmation=pw.BigIntegerField(null=True))

    @migrator.create_model
    class C2BConfirmation(pw.Model):
        seq = pw.BigAutoField()
        received_at = pw.DateTimeField()
        source = pw.CharField(max_length=16, default='c2b')
        remote_addr = pw.CharField(max_length=64, null=True)
        body = pw.TextField()
        trans_id = pw.CharField(index=True, max_length=32, null=True)
        well_formed = pw.BooleanField(default=True)
        applied_at = pw.DateTimeField(index=True, null=True)
        outcome = pw.CharField(max_length=64, null=True)
        topup_id = pw.CharField(index=True, max_length=40, null=True)

        class Meta:
            table_name = "c2b_confirmation"

    @migrator.create_model
    class PullRun(pw.Model):
        seq = pw.BigAutoField()
        started_at = pw.DateTimeField()
        finished_at = pw.DateTimeField(index=True, null=True)
        window_start = pw.DateTimeField()
        window_end = pw.DateTimeField()
        pages = pw.IntegerField(default=0)
        transactions = pw.IntegerField(default=0)
        fed = pw.IntegerField(default=0)
        error = pw.CharField(max_length=255, null=True)

        class Meta:
            table_name = "c2b_pull"


def rollback(migrator: Migrator, database: pw.Database, *, fake=False):
    """Drop the two tables and the new columns (a paybill orphan, which has no
    CheckoutRequestID, stops the NOT NULL from coming back: remove those first)."""
    migrator.remove_model('c2b_pull')
    migrator.remove_model('c2b_confirmation')
    migrator.remove_fields('orphan_payment', 'bill_ref_number', 'reason', 'c2b_confirmation')
    migrator.add_not_null('orphan_payment', 'checkout_request_id')
    migrator.drop_index('top_up', 'reference')
    migrator.remove_fields('top_up', 'channel')
    migrator.remove_fields('account', 'account_number')
