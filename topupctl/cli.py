"""``topupctl``: the operator's commands (contract §1 and §5)."""
from __future__ import annotations

import argparse
import json
import sys

import settings as settings_module


def _settings(need_callback_token=False):
    try:
        return settings_module.load(need_callback_token=need_callback_token)
    except settings_module.ConfigError as exc:
        sys.exit(f"topupctl: configuration error: {exc}")


def _bind():
    from ledger import db
    db.bind(_settings().database_url)
    return db


def cmd_db_upgrade(args):
    from ledger import migrate
    db = _bind()
    with db.connection():
        applied = migrate.upgrade()
    print(json.dumps({"applied": applied}))


def cmd_accounts_create(args):
    from ledger import accounts
    db = _bind()
    with db.connection():
        account, key = accounts.create_account(args.name)
    print(json.dumps({"account": account.id, "api_key": key}))


def cmd_orphans(args):
    from ledger.models import OrphanPayment
    from ledger.phones import mask
    db = _bind()
    with db.connection():
        query = OrphanPayment.select().order_by(OrphanPayment.seq)
        if not args.all:
            query = query.where(OrphanPayment.resolved_at.is_null())
        rows = [{"checkout_request_id": o.checkout_request_id, "mpesa_receipt": o.mpesa_receipt,
                 "amount_cents": o.amount_cents, "phone": mask(o.phone),
                 "received_at": o.created_at.isoformat() + "Z",
                 "resolved_topup": o.resolved_topup_id} for o in query]
    if args.json:
        print(json.dumps({"object": "list", "data": rows}))
        return
    if not rows:
        print("no orphan payments" + ("" if args.all else " waiting"))
    for row in rows:
        print(f"{row['received_at']}  {row['mpesa_receipt'] or '-':<10}  "
              f"KES {((row['amount_cents'] or 0) / 100):>10.2f}  {row['phone'] or '-':<12}  "
              f"{row['checkout_request_id']}  {row['resolved_topup'] or 'unresolved'}")


def cmd_callbacks_quarantined(args):
    from ledger import settlement
    db = _bind()
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
    config = SimulatorConfig()
    if args.callback_delay is not None:
        config = SimulatorConfig(callback_delay_s=args.callback_delay)
    serve(host=args.host, port=args.port, config=config)


def cmd_scheduler(args):
    import redis

    # the scheduler enqueues onto the workers' broker: importing them configures it
    import workers  # noqa: F401
    from workers import scheduler, sweeps
    settings = _settings(need_callback_token=True)
    scheduler.run(redis.Redis.from_url(settings.redis_url, socket_timeout=5,
                                       socket_connect_timeout=3),
                  give_up_after_s=settings.stk_give_up_after_s, interval_s=args.interval,
                  thresholds=sweeps.Thresholds.from_settings(settings))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="topupctl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    dbp = sub.add_parser("db", help="the ledger's schema").add_subparsers(dest="db_command",
                                                                          required=True)
    dbp.add_parser("upgrade", help="create or migrate the schema (safe to run again)"
                   ).set_defaults(func=cmd_db_upgrade)

    acc = sub.add_parser("accounts", help="accounts").add_subparsers(dest="accounts_command",
                                                                     required=True)
    create = acc.add_parser("create", help="create an account; prints its API key once")
    create.add_argument("name")
    create.set_defaults(func=cmd_accounts_create)

    from topupctl import keys  # keys create|list|revoke
    keys.add_parser(sub, _bind)

    orph = sub.add_parser("orphans", help="payments M-Pesa confirmed that no top-up knows")
    orph.add_argument("--json", action="store_true")
    orph.add_argument("--all", action="store_true", help="include resolved ones")
    orph.set_defaults(func=cmd_orphans)

    cbs = sub.add_parser("callbacks", help="stored Daraja callbacks").add_subparsers(
        dest="callbacks_command", required=True)
    quarantined = cbs.add_parser("quarantined", help="paid callbacks that cannot be applied, "
                                 "kept with their reason for an operator")
    quarantined.add_argument("--json", action="store_true")
    quarantined.set_defaults(func=cmd_callbacks_quarantined)

    from topupctl import ops  # queues [dead], topups show
    ops.register(sub)

    sim = sub.add_parser("simulator", help="a local emulation of Daraja")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8900)
    sim.add_argument("--callback-delay", type=float, default=None,
                     help="seconds between the push's answer and its callback")
    sim.set_defaults(func=cmd_simulator)

    sch = sub.add_parser("scheduler", help="periodic sweeps: lost pushes, callbacks, queries")
    sch.add_argument("--interval", type=float, default=5.0)
    sch.set_defaults(func=cmd_scheduler)

    from topupctl import reconcile as reconcile_cmd  # reconcile STATEMENT.csv [--apply] …
    reconcile_cmd.add_parser(sub, _bind)
    return parser


def main(argv=None) -> int:
    from topupctl import ops
    ops.configure_logging()  # JSON lines on standard error
    args = build_parser().parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
