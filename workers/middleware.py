"""Per-message resources: each message gets a database connection and gives it back."""
from __future__ import annotations

import dramatiq

from ledger import db


class DatabaseConnections(dramatiq.Middleware):
    def before_process_message(self, broker, message):
        if db.database.obj is not None:
            db.database.connect(reuse_if_open=True)

    def after_process_message(self, broker, message, *, result=None, exception=None):
        self._close()

    def after_skip_message(self, broker, message):
        self._close()

    @staticmethod
    def _close():
        if db.database.obj is not None and not db.database.is_closed():
            db.database.close()
