"""``topupctl keys create|list|revoke``: an account's API keys.

A new key is printed once, in the one JSON object ``create`` prints; only its hash is kept.
``list`` shows the prefix (``sk_`` and 8 characters) that identifies a key without being it.
"""
from __future__ import annotations

import json
import sys

from topupctl.cli import LEDGER


def _iso(value):
    return value.replace(microsecond=0).isoformat() + "Z" if value else None


def cmd_create(args):
    from ledger import accounts, db
    from ledger.models import Account
    with db.connection():
        if Account.get_or_none(Account.id == args.account) is None:
            sys.exit(f"topupctl: no account {args.account!r}")
        row, key = accounts.create_api_key(args.account)
    print(json.dumps({"id": row.id, "account": args.account, "prefix": row.prefix,
                      "api_key": key}))


def cmd_list(args):
    from ledger import accounts, db
    from ledger.models import Account
    with db.connection():
        if Account.get_or_none(Account.id == args.account) is None:
            sys.exit(f"topupctl: no account {args.account!r}")
        rows = [{"id": k.id, "prefix": k.prefix, "created_at": _iso(k.created_at),
                 "revoked_at": _iso(k.revoked_at)} for k in accounts.list_api_keys(args.account)]
    if args.json:
        print(json.dumps({"object": "list", "data": rows}))
        return
    for row in rows:
        state = f"revoked {row['revoked_at']}" if row["revoked_at"] else "active"
        print(f"{row['id']}  {row['prefix']}…  created {row['created_at']}  {state}")


def cmd_revoke(args):
    from ledger import accounts, db
    from ledger.models import ApiKey
    with db.connection():
        if accounts.revoke_api_key(args.key_id):
            print(json.dumps({"id": args.key_id, "revoked": True}))
            return
        known = ApiKey.get_or_none(ApiKey.id == args.key_id)
    sys.exit(f"topupctl: key {args.key_id!r} is already revoked" if known
             else f"topupctl: no key {args.key_id!r}")


def add_parser(sub) -> None:
    keys = sub.add_parser("keys", help="API keys: create, list, revoke").add_subparsers(
        dest="keys_command", required=True)
    create = keys.add_parser("create", help="a new API key for ACCOUNT; printed this once")
    create.add_argument("account")
    create.set_defaults(func=cmd_create, needs=LEDGER)
    listing = keys.add_parser("list", help="ACCOUNT's keys by prefix (never the key)")
    listing.add_argument("account")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_list, needs=LEDGER)
    revoke = keys.add_parser("revoke", help="stop a key working at once")
    revoke.add_argument("key_id")
    revoke.set_defaults(func=cmd_revoke, needs=LEDGER)
