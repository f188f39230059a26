"""Schema migrations with peewee-migrate: versioned files in ``ledger/migrations``, each
applied once and recorded in the ``migratehistory`` table, so an upgrade is safe to repeat."""
from __future__ import annotations

import logging
import os

from peewee_migrate import Router

from ledger.db import database

MIGRATIONS_DIR = os.path.join(os.path.dirname(__file__), "migrations")


def _router() -> Router:
    return Router(database.obj, migrate_dir=MIGRATIONS_DIR,
                  logger=logging.getLogger("ledger.migrate"))


def upgrade() -> list[str]:
    """Apply every migration not yet applied; returns their names."""
    router = _router()
    todo = list(router.diff)
    router.run()
    return todo


def pending() -> list[str]:
    return list(_router().diff)
