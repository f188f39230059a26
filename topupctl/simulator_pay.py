"""``topupctl simulator pay ACCOUNT_NUMBER AMOUNT [--phone PHONE] [--simulator URL]``: pay a
wallet from the simulator's phone as a customer would (Pay Bill → the paybill → the account
number → the amount). The simulator asks the registered validation URL, then posts the
confirmation (``simulator/README.md``, "Paybill payments"); run ``topupctl daraja
register-urls`` once first. Prints the simulator's answer: the receipt, and what validation
and confirmation did.
"""
from __future__ import annotations

import json
import sys

DEFAULT_PHONE = "254708374149"   # the sandbox's test phone


def add_parser(simulator) -> None:
    sub = simulator.add_subparsers(dest="simulator_command")
    pay = sub.add_parser("pay", help="pay a paybill account as a customer would (C2B)")
    pay.add_argument("account_number", metavar="ACCOUNT_NUMBER",
                     help="what the customer types as the account number")
    pay.add_argument("amount", metavar="AMOUNT", help="in shillings, e.g. 100 or 99.50")
    pay.add_argument("--phone", default=DEFAULT_PHONE,
                     help="the paying phone, in any usual form (default the sandbox's test "
                          "phone)")
    pay.add_argument("--simulator", default=None, metavar="URL",
                     help="the simulator's address (default DARAJA_BASE_URL)")
    pay.add_argument("--shortcode", default=None,
                     help="the paybill (default DARAJA_C2B_SHORTCODE)")
    pay.set_defaults(func=cmd_pay, needs=None)


def cmd_pay(args) -> None:
    import requests

    import settings as settings_module
    try:
        configured = settings_module.load(need_callback_token=False)
    except settings_module.ConfigError as exc:
        sys.exit(f"topupctl: configuration error: {exc}")
    from ledger.phones import InvalidPhone, normalize_kenyan_mobile
    try:
        phone = normalize_kenyan_mobile(args.phone)
    except InvalidPhone:
        sys.exit("topupctl: --phone must be a Kenyan mobile number (07…, 2547…, +254…)")
    url = (args.simulator or configured.daraja_base_url).rstrip("/") + "/__sim/c2b/pay"
    body = {"account_number": args.account_number, "amount": args.amount, "phone": phone,
            "shortcode": args.shortcode or configured.daraja_c2b_shortcode}
    try:
        answer = requests.post(url, json=body, timeout=30)
    except requests.RequestException as exc:
        sys.exit(f"topupctl: the simulator at {url} cannot be reached: {type(exc).__name__}")
    if answer.status_code != 200:
        sys.exit(f"topupctl: the simulator refused: {answer.text.strip()[:300]}")
    print(json.dumps(answer.json()))
