"""``topupctl``: the operator's commands (contract §1 and §5)."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import NamedTuple

import settings as settings_module


class Needs(NamedTuple):
    """What a command needs of the start-up (:func:`bootstrap.configure`)."""
    database: bool
    workers: bool = False          # the broker and the actors: the queues
    callback_token: bool = False   # only what builds callback URLs needs it


LEDGER = Needs(database=True)
QUEUES = Needs(database=False, workers=True)
EVERYTHING = Needs(database=True, workers=True, callback_token=True)


def start_up(needs: Needs) -> settings_module.Settings:
    """Configure this process for a command: once, before the command runs. The settings
    loaded, for the command."""
    import bootstrap  # here: `--help` and the simulator need none of the gateway loaded
    try:
        loaded = settings_module.load(need_callback_token=needs.callback_token)
    except settings_module.ConfigError as exc:
        sys.exit(f"topupctl: configuration error: {exc}")
    bootstrap.configure("topupctl", loaded, database=needs.database, workers=needs.workers)
    return loaded


def cmd_db_upgrade(args):
    from ledger import db, migrate
    with db.connection():
        applied = migrate.upgrade()
    print(json.dumps({"applied": applied}))


def cmd_accounts_create(args):
    from ledger import accounts, db
    with db.connection():
        account, key = accounts.create_account(args.name)
    # what a customer types to fund it from the phone: Pay Bill, the paybill, the account number
    print(json.dumps({"account": account.id, "api_key": key,
                      "account_number": account.account_number,
                      "paybill": args.settings.daraja_c2b_shortcode}))


def cmd_orphans(args):
    from ledger import db
    from ledger.models import OrphanPayment
    from ledger.phones import mask
    with db.connection():
        query = OrphanPayment.select().order_by(OrphanPayment.seq)
        if not args.all:
            query = query.where(OrphanPayment.resolved_at.is_null())
        rows = [{"checkout_request_id": o.checkout_request_id, "mpesa_receipt": o.mpesa_receipt,
                 "amount_cents": o.amount_cents, "phone": mask(o.phone),
                 "received_at": o.created_at.isoformat() + "Z",
                 "resolved_topup": o.resolved_topup_id,
                 # a paybill payment (C2B) has no CheckoutRequestID: what was typed, and why
                 # no account took it
                 "bill_ref_number": o.bill_ref_number, "reason": o.reason} for o in query]
    if args.json:
        print(json.dumps({"object": "list", "data": rows}))
        return
    if not rows:
        print("no orphan payments" + ("" if args.all else " waiting"))
    for row in rows:
        source = row["checkout_request_id"] or f"paybill A/C {row['bill_ref_number'] or '-'!r}"
        print(f"{row['received_at']}  {row['mpesa_receipt'] or '-':<10}  "
              f"KES {((row['amount_cents'] or 0) / 100):>10.2f}  {row['phone'] or '-':<12}  "
              f"{source}  {row['resolved_topup'] or 'unresolved'}"
              + (f"  ({row['reason']})" if row["reason"] else ""))


def cmd_orphans_assign(args):
    """Credit an orphan payment to an account, once; refused (exit 1) otherwise."""
    import getpass

    from ledger import assignments, db
    try:
        who = f"topupctl ({getpass.getuser()})"
    except (KeyError, OSError):   # no name for this uid (a container's)
        who = "topupctl"
    with db.connection():
        try:
            done = assignments.assign(args.receipt, args.account, reason=args.reason,
                                      assigned_by=who)
        except assignments.AssignmentRefused as exc:
            sys.exit(f"topupctl: not assigned: {exc}")
    print(json.dumps(done.as_dict()))


def cmd_callbacks_quarantined(args):
    from ledger import db, settlement
    with db.connection():
        rows = [{"callback": c.seq, "received_at": c.received_at.isoformat() + "Z",
                 "checkout_request_id": c.checkout_request_id,
                 "reason": c.outcome[len(settlement.QUARANTINED):]}
                for c in settlement.quarantined_callbacks()]
    if args.json:
        print(json.dumps({"object": "list", "data": rows}))
        return
    if not rows:
        print("no quarantined callbacks")
    for row in rows:
        print(f"{row['received_at']}  callback {row['callback']:<8}  "
              f"{row['checkout_request_id'] or '-'}  {row['reason']}")


def cmd_simulator(args):
    from simulator.server import SimulatorConfig, serve
    _simulator_logs()
    config = SimulatorConfig(unclaimed_phones=args.phones)
    if args.callback_delay is not None:
        config = dataclasses.replace(config, callback_delay_s=args.callback_delay)
    serve(host=args.host, port=args.port, config=config)


def _simulator_logs() -> None:
    """The simulator stands in for Safaricom: it needs none of the gateway's start-up, only
    JSON logs, without the gateway's secrets when its environment has them (the callback URLs
    it posts to carry the callback token)."""
    from telemetry import logs
    try:
        secrets = logs.secrets_of(settings_module.load(need_callback_token=False))
    except settings_module.ConfigError:
        secrets = []
    logs.configure("topupctl", secrets=secrets)


def cmd_scheduler(args):
    from workers import runtime, scheduler, sweeps
    configured = runtime.get()
    settings = configured.settings
    scheduler.run(configured.redis, give_up_after_s=settings.stk_give_up_after_s,
                  interval_s=args.interval,
                  thresholds=sweeps.Thresholds.from_settings(settings),
                  pull_every_s=settings.daraja_pull_every_s if settings.daraja_pull else None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="topupctl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    dbp = sub.add_parser("db", help="the ledger's schema").add_subparsers(dest="db_command",
                                                                          required=True)
    dbp.add_parser("upgrade", help="create or migrate the schema (safe to run again)"
                   ).set_defaults(func=cmd_db_upgrade, needs=LEDGER)

    acc = sub.add_parser("accounts", help="accounts").add_subparsers(dest="accounts_command",
                                                                     required=True)
    create = acc.add_parser("create", help="create an account; prints its API key once")
    create.add_argument("name")
    create.set_defaults(func=cmd_accounts_create, needs=LEDGER)

    from topupctl import keys  # keys create|list|revoke
    keys.add_parser(sub)

    orph = sub.add_parser("orphans", help="payments M-Pesa confirmed that no top-up knows")
    orph.add_argument("--json", action="store_true")
    orph.add_argument("--all", action="store_true", help="include resolved ones")
    orph.set_defaults(func=cmd_orphans, needs=LEDGER)
    assign = orph.add_subparsers(dest="orphans_command").add_parser(
        "assign", help="credit an orphan payment to an account, once, with the reason")
    assign.add_argument("receipt", metavar="RECEIPT", help="the payment's M-Pesa receipt")
    assign.add_argument("account", metavar="ACCOUNT_ID")
    assign.add_argument("--reason", required=True, help="why: kept with the assignment")
    assign.set_defaults(func=cmd_orphans_assign, needs=LEDGER)

    cbs = sub.add_parser("callbacks", help="stored Daraja callbacks").add_subparsers(
        dest="callbacks_command", required=True)
    quarantined = cbs.add_parser("quarantined", help="paid callbacks that cannot be applied, "
                                 "kept with their reason for an operator")
    quarantined.add_argument("--json", action="store_true")
    quarantined.set_defaults(func=cmd_callbacks_quarantined, needs=LEDGER)

    from topupctl import ops  # queues [dead], topups show
    ops.register(sub)

    sim = sub.add_parser("simulator", help="a local emulation of Daraja; `simulator pay` pays "
                         "a paybill account as a customer would")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8900)
    sim.add_argument("--callback-delay", type=float, default=None,
                     help="seconds between the push's answer and its callback")
    sim.add_argument("--phones", choices=("pay", "wait"), default="pay",
                     help="phones no magic number claims: pay at once (the default), or wait "
                          "for a person to answer their prompt on GET /phone")
    sim.set_defaults(func=cmd_simulator, needs=None)
    from topupctl import simulator_pay  # simulator pay ACCOUNT_NUMBER AMOUNT [--phone …]
    simulator_pay.add_parser(sim)

    sch = sub.add_parser("scheduler", help="periodic sweeps: lost pushes, callbacks, queries")
    sch.add_argument("--interval", type=float, default=5.0)
    sch.set_defaults(func=cmd_scheduler, needs=EVERYTHING)

    from topupctl import reconcile as reconcile_cmd  # reconcile STATEMENT.csv [--apply] …
    reconcile_cmd.add_parser(sub)

    from topupctl import daraja  # daraja register-urls|register-pull|pull
    daraja.add_parser(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)  # --help and usage errors end here, untouched
    if args.needs is not None:
        args.settings = start_up(args.needs)  # and its logs: JSON lines on standard error
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
