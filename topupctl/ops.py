"""The operator's look into a running gateway (contract §5):

- ``topupctl queues [--json] [--watch [--interval S]]``: every Dramatiq queue's ready,
  delayed, in-progress and dead-lettered messages, the age of the oldest ready one, and the
  same per actor, read from Dramatiq's own keys in Redis (:mod:`telemetry.queues`);
- ``topupctl queues dead [--queue Q] [--actor A] [--json] [--requeue | --purge]``: the dead
  letters (actor, arguments with phones masked, the error, when), and putting them back on
  their queue or deleting them, one queue or one actor at a time;
- ``topupctl topups show KEY [--json]``: one top-up found by its id, CheckoutRequestID,
  M-Pesa receipt or phone, with its whole history in order (:mod:`ledger.history`).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
import time

from topupctl.cli import LEDGER, QUEUES

log = logging.getLogger("topupctl")


def _queues():
    import redis

    from telemetry import logs
    from telemetry.queues import Queues
    from workers import runtime
    client = redis.Redis.from_url(runtime.get().settings.redis_url, socket_timeout=10,
                                  socket_connect_timeout=5)
    return Queues(client, redactor=logs.redactor())


def declared_queues() -> set[str]:
    """The queues this code's actors use, so that an empty one is listed too."""
    from workers import runtime
    return set(runtime.get().broker.get_declared_queues())


# --- topupctl queues -------------------------------------------------------------------------

def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def format_counts(counts) -> str:
    header = f"{'queue / actor':<28}{'ready':>9}{'delayed':>9}{'in progress':>13}{'dead':>7}" \
             f"{'oldest ready':>14}"
    lines = [header]
    for q in counts:
        note = f"  ({q.held_by_dead_workers} held by stopped workers)" \
            if q.held_by_dead_workers else ""
        lines.append(f"{q.queue:<28}{q.ready:>9}{q.delayed:>9}{q.in_progress:>13}{q.dead:>7}"
                     f"{_age(q.oldest_ready_age_s):>14}{note}")
        for actor, per in (q.by_actor or {}).items():
            lines.append(f"  {actor:<26}{per['ready']:>9}{per['delayed']:>9}"
                         f"{per['in_progress']:>13}{per['dead']:>7}")
        if q.by_actor is not None and not q.by_actor_complete:
            lines.append("  (per-actor counts cover only part of this queue: it is very long)")
    if len(counts) == 0:
        lines.append("(no queues)")
    return "\n".join(lines)


def queues_document(counts) -> dict:
    return {"object": "queues",
            "generated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
            .replace("+00:00", "Z"),
            "data": [c.as_dict() for c in counts]}


def cmd_queues(args, *, out=None, iterations: int | None = None) -> int:
    out = out or sys.stdout
    queues = _queues()
    declared = declared_queues()
    shown = 0
    try:
        while True:
            counts = queues.counts(declared, by_actor=True)
            if args.json:
                out.write(json.dumps(queues_document(counts)) + "\n")
            else:
                if args.watch:
                    out.write("\033[H\033[2J")  # clear the screen, cursor home
                    out.write(time.strftime("%Y-%m-%d %H:%M:%S  (Ctrl-C to stop)\n"))
                out.write(format_counts(counts) + "\n")
            out.flush()
            shown += 1
            if not args.watch or (iterations is not None and shown >= iterations):
                return 0
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0


# --- topupctl queues dead --------------------------------------------------------------------

def _when(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).isoformat(
        timespec="seconds").replace("+00:00", "Z")


def _call(letter) -> str:
    parts = [json.dumps(a) for a in letter.args]
    parts += [f"{k}={json.dumps(v)}" for k, v in letter.kwargs.items()]
    return f"{letter.actor}({', '.join(parts)})"


def cmd_queues_dead(args, *, out=None) -> int:
    out = out or sys.stdout
    queues = _queues()
    letters = queues.dead_letters(queues=declared_queues(), queue=args.queue, actor=args.actor)
    what = " ".join(filter(None, [f"queue {args.queue}" if args.queue else None,
                                  f"actor {args.actor}" if args.actor else None])) or "all queues"
    if args.requeue or args.purge:
        done = queues.requeue(letters) if args.requeue else queues.purge(letters)
        verb = "requeued" if args.requeue else "purged"
        log.info("%s dead letters", verb, extra={"count": done, "queue": args.queue,
                                                 "actor": args.actor})
        if args.json:
            out.write(json.dumps({verb: done, "data": [d.as_dict() for d in letters]}) + "\n")
        else:
            out.write(f"{verb} {done} dead letter{'s' if done != 1 else ''} ({what})\n")
        return 0
    if args.json:
        out.write(json.dumps({"object": "list", "data": [d.as_dict() for d in letters]}) + "\n")
        return 0
    if not letters:
        out.write(f"no dead letters ({what})\n")
        return 0
    for letter in letters:
        out.write(f"{_when(letter.dead_at)}  {letter.queue:<10}  {_call(letter)}  "
                  f"retries {letter.retries}  {letter.error or '(no error recorded)'}\n")
    out.write(f"{len(letters)} dead letter{'s' if len(letters) != 1 else ''} ({what}); "
              f"--requeue puts them back, --purge deletes them\n")
    return 0


# --- topupctl topups show --------------------------------------------------------------------

def _detail_text(detail: dict) -> str:
    return "  ".join(f"{k}={v}" for k, v in detail.items() if v not in (None, "", [], {}))


def show_document(found, steps) -> dict:
    from ledger import history
    return {"matched_by": found.matched_by,
            "topup": history.summary(found.topup) if found.topup else None,
            "orphan_payment": history.orphan_summary(found.orphan) if found.orphan else None,
            "history": [s.as_dict() for s in steps],
            "other_topups_for_phone": [
                {"id": t.id, "status": t.status, "amount": t.amount,
                 "created_at": history.iso(t.created_at)} for t in found.others]}


def cmd_topups_show(args, *, out=None) -> int:
    from ledger import db, history
    from telemetry import logs
    out = out or sys.stdout
    with db.connection():
        found = history.find(args.key)
        steps = history.history(found.topup) if found.topup else []
        document = logs.redactor().value(show_document(found, steps))
    if found.topup is None and found.orphan is None:
        # the key itself may be a phone: never echo it whole
        sys.exit(f"topupctl: no top-up found for {logs.redactor().text(args.key)!r} "
                 f"(tried id, CheckoutRequestID, M-Pesa receipt and phone)")
    if args.json:
        out.write(json.dumps(document) + "\n")
        return 0
    out.write(format_show(document) + "\n")
    return 0


def format_show(document: dict) -> str:
    lines = []
    t = document["topup"]
    if t:
        lines.append(f"top-up {t['id']}  {t['status']}  KES {t['amount']:,}  {t['phone']}  "
                     f"reference {t['reference']}  account {t['account']}")
        lines.append(f"  CheckoutRequestID {t['checkout_request_id'] or '-'}   M-Pesa receipt "
                     f"{t['mpesa_receipt'] or '-'}   push {t['push_state']}")
        lines.append(f"  created {t['created_at']}   pushed {t['pushed_at'] or '-'}   "
                     f"completed {t['completed_at'] or '-'}")
        for name in ("failure_code", "failure_reason", "flagged"):
            if t.get(name):
                lines.append(f"  {name.replace('_', ' ')}: {t[name]}")
    o = document["orphan_payment"]
    if o:
        lines.append(f"orphan payment (no top-up asked for it): {o['mpesa_receipt'] or '-'}  "
                     f"{o['amount_cents']} cents from {o['phone']}  CheckoutRequestID "
                     f"{o['checkout_request_id']}  received {o['received_at']}  resolved by "
                     f"{o['resolved_topup'] or 'nothing yet'}")
    if document["history"]:
        lines.append("history:")
        for step in document["history"]:
            lines.append(f"  {step['at']}  {step['kind']:<26}{_detail_text(step['detail'])}")
    others = document["other_topups_for_phone"]
    if others:
        lines.append(f"{len(others)} other top-up(s) for this phone, newest first:")
        for other in others:
            lines.append(f"  {other['id']}  {other['status']:<10} KES {other['amount']:,}  "
                         f"{other['created_at']}")
    return "\n".join(lines)


# --- the parsers -----------------------------------------------------------------------------

def register(sub) -> None:
    """Add ``queues`` and ``topups`` to topupctl's subcommands."""
    queues = sub.add_parser("queues", help="Dramatiq's queues in Redis: counts per queue and "
                                           "actor; `queues dead` for dead letters")
    queues.add_argument("--json", action="store_true", help="one JSON object (a line per "
                                                            "refresh with --watch)")
    queues.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
    queues.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    queues.set_defaults(func=cmd_queues, needs=QUEUES)
    queues_sub = queues.add_subparsers(dest="queues_command")
    dead = queues_sub.add_parser("dead", help="dead letters: list, --requeue or --purge")
    dead.add_argument("--queue", help="only this queue")
    dead.add_argument("--actor", help="only this actor's messages")
    # either `queues --json dead` or `queues dead --json`
    dead.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    action = dead.add_mutually_exclusive_group()
    action.add_argument("--requeue", action="store_true",
                        help="put them back on their queue, retries reset")
    action.add_argument("--purge", action="store_true", help="delete them for good")
    dead.set_defaults(func=cmd_queues_dead, needs=QUEUES)

    topups = sub.add_parser("topups", help="look up top-ups").add_subparsers(
        dest="topups_command", required=True)
    show = topups.add_parser("show", help="one top-up and its whole history, found by id, "
                                          "CheckoutRequestID, M-Pesa receipt or phone")
    show.add_argument("key")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_topups_show, needs=LEDGER)
