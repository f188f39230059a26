"""Per-message resources: a worker thread keeps its database connection from one message to
the next, and drops it when the database failed it.

Handing a connection back after every message made Peewee's pool check it (``SELECT 1``) on
the next one: a round trip per message, five per top-up (``make bench``). A thread's
connection is opened by its first query (Peewee connects on demand: opening it up front, in
``before_process_message``, turned a database outage into a CRITICAL line from Dramatiq's
middleware runner for every message). After a restart or a failover the kept connection is
dead: the message that finds it so fails with a database error, which its actor retries, and
the connection is closed for good here so that the retry connects afresh.
"""
from __future__ import annotations

import dramatiq

from ledger import db


class DatabaseConnections(dramatiq.Middleware):
    def after_process_message(self, broker, message, *, result=None, exception=None):
        if isinstance(exception, db.DATABASE_ERRORS) or self._left_in_transaction():
            db.discard_connection()

    def before_worker_thread_shutdown(self, broker, thread):
        if db.database.obj is not None and not db.database.is_closed():
            db.database.close()

    @staticmethod
    def _left_in_transaction() -> bool:
        # every transaction is an atomic() block, which ends with its block: a connection
        # still inside one was left by a bug, and must not carry it into the next message
        return (db.database.obj is not None and not db.database.is_closed()
                and db.database.in_transaction())
