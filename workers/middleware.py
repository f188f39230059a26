"""Per-message resources: a message's database connection is given back when it is done.

The connection itself is opened by the message's first query (Peewee connects on demand):
opening it up front, in ``before_process_message``, turned a database outage into a CRITICAL
line from Dramatiq's middleware runner for every message, on top of the message's own error.
"""
from __future__ import annotations

import dramatiq

from ledger import db


class DatabaseConnections(dramatiq.Middleware):
    def after_process_message(self, broker, message, *, result=None, exception=None):
        self._close()

    def after_skip_message(self, broker, message):
        self._close()

    @staticmethod
    def _close():
        if db.database.obj is not None and not db.database.is_closed():
            db.database.close()
