"""``topupctl daraja register-urls|register-pull|pull``: the paybill's one-time set-up with
Daraja, and reading Pull Transactions by hand (contract §6).

- ``register-urls [--response-type Completed|Cancelled]`` registers the C2B confirmation and
  validation URLs (``PUBLIC_BASE_URL/daraja/c2b/…/DARAJA_CALLBACK_TOKEN``) for
  ``DARAJA_C2B_SHORTCODE`` with C2B register URL v2. A URL with a word Daraja refuses is
  refused here, naming the word, and nothing is sent (exit status 2).
- ``register-pull --nominated-number PHONE`` registers the paybill for Pull Transactions (once;
  Daraja says so when it was done before), with the confirmation URL as its CallBackURL.
- ``pull [--since DATE]`` reads Pull Transactions for the window since the last complete
  pull (or since DATE, Nairobi time unless it carries an offset) and credits every receipt
  the ledger lacks, as a confirmation would; prints what it did as one JSON object.

A Daraja error is printed with what to do, exit status 1.
"""
from __future__ import annotations

import argparse
import json
import sys

from topupctl.cli import EVERYTHING, Needs

# the Daraja client and the ledger, no callback URL
PULLING = Needs(database=True, workers=True)


def add_parser(sub) -> None:
    daraja = sub.add_parser("daraja", help="the paybill's set-up with Daraja, Pull Transactions"
                            ).add_subparsers(dest="daraja_command", required=True)
    urls = daraja.add_parser("register-urls", help="register the C2B confirmation and "
                             "validation URLs for DARAJA_C2B_SHORTCODE")
    urls.add_argument("--response-type", choices=("Completed", "Cancelled"), default="Completed",
                      help="what Daraja does with a payment when the validation URL cannot be "
                           "reached (default %(default)s)")
    urls.set_defaults(func=cmd_register_urls, needs=EVERYTHING)

    pull_reg = daraja.add_parser("register-pull", help="register the paybill for Pull "
                                 "Transactions (once)")
    pull_reg.add_argument("--nominated-number", required=True, metavar="PHONE",
                          help="the phone Safaricom sends the registration's confirmation to")
    pull_reg.set_defaults(func=cmd_register_pull, needs=EVERYTHING)

    pull = daraja.add_parser("pull", help="read Pull Transactions and credit what the ledger "
                             "lacks")
    pull.add_argument("--since", type=_since, default=None, metavar="ISO8601",
                      help="from this date or time (Nairobi time unless it has an offset); "
                           "by default from the last complete pull, less an overlap")
    pull.set_defaults(func=cmd_pull, needs=PULLING)


def _since(text):
    from ledger.reconcile import parse_bound
    try:
        return parse_bound(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _failed(exc) -> None:
    from daraja import errors
    print(f"topupctl: Daraja: {type(exc).__name__}: {exc}", file=sys.stderr)
    sys.exit(2 if isinstance(exc, errors.InvalidRequest) else 1)


def _shown(url: str, token: str) -> str:
    """A URL for the terminal: the callback token is a secret."""
    return url.replace(token, "{DARAJA_CALLBACK_TOKEN}") if token else url


def cmd_register_urls(args):
    from daraja import errors
    from workers import runtime
    rt = runtime.get()
    settings = rt.settings
    try:
        registered = rt.daraja.register_c2b_urls(
            shortcode=settings.daraja_c2b_shortcode, response_type=args.response_type,
            confirmation_url=settings.c2b_confirmation_url,
            validation_url=settings.c2b_validation_url)
    except errors.DarajaError as exc:
        _failed(exc)
    token = settings.daraja_callback_token
    print(json.dumps({
        "registered": True, "shortcode": settings.daraja_c2b_shortcode,
        "response_type": args.response_type,
        "confirmation_url": _shown(settings.c2b_confirmation_url, token),
        "validation_url": _shown(settings.c2b_validation_url, token),
        "originator_conversation_id": registered.originator_conversation_id,
        "response_description": registered.response_description}))


def cmd_register_pull(args):
    from daraja import errors
    from ledger.phones import InvalidPhone, normalize_kenyan_mobile
    from workers import runtime
    try:
        phone = normalize_kenyan_mobile(args.nominated_number)
    except InvalidPhone:
        print("topupctl: --nominated-number must be a Kenyan mobile number (07…, 2547…, "
              "+254…)", file=sys.stderr)
        sys.exit(2)
    rt = runtime.get()
    settings = rt.settings
    try:
        registered = rt.daraja.register_pull(shortcode=settings.daraja_c2b_shortcode,
                                             nominated_number=phone,
                                             callback_url=settings.c2b_confirmation_url)
    except errors.DarajaError as exc:
        _failed(exc)
    print(json.dumps({"registered": True, "already": registered.already,
                      "shortcode": settings.daraja_c2b_shortcode,
                      "response_description": registered.response_description}))


def cmd_pull(args):
    from daraja import errors
    from ledger import db
    from workers import pull, runtime
    rt = runtime.get()
    try:
        with db.connection():
            pulled = pull.pull(rt.daraja, shortcode=rt.settings.daraja_c2b_shortcode,
                               since=args.since)
    except errors.DarajaError as exc:
        _failed(exc)
    print(json.dumps({"since": pulled.window_start.isoformat() + "Z",
                      "until": pulled.window_end.isoformat() + "Z", "pages": pulled.pages,
                      "transactions": pulled.transactions, "fed": pulled.fed,
                      "outcomes": pulled.outcomes}))
