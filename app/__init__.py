"""The thin front door: ``gunicorn "app:create_app()"``."""
from __future__ import annotations

import redis
from flask import Flask

import bootstrap
from ledger import db


def create_app(test_config: dict | None = None) -> Flask:
    """Build the API, configuring this process first (:func:`bootstrap.configure`).

    ``test_config`` may carry ``SETTINGS`` (a Settings), ``REDIS`` and ``BROKER`` to use
    instead of the ones the environment names, ``BIND_DATABASE`` (False: the ledger is bound
    already) and ``CONFIGURE_LOGGING`` (off by default when there is a test_config)."""
    test_config = test_config or {}
    settings = bootstrap.configure(
        "api", test_config.get("SETTINGS"), broker=test_config.get("BROKER"),
        redis=test_config.get("REDIS"), database=test_config.get("BIND_DATABASE", True),
        logging=test_config.get("CONFIGURE_LOGGING", not test_config)).settings

    app = Flask(__name__)
    app.config["SETTINGS"] = settings
    app.config["MAX_CONTENT_LENGTH"] = 64 * 1024
    app.config["JSON_SORT_KEYS"] = False
    app.json.sort_keys = False
    # the request path's own client: a lost Redis must not hold a request for long
    app.config["REDIS"] = test_config.get("REDIS") or redis.Redis.from_url(
        settings.redis_url, socket_timeout=2, socket_connect_timeout=2)
    app.config.update({k: v for k, v in test_config.items() if k not in ("SETTINGS",)})

    from app import ops
    ops.init_app(app)  # /metrics, /ops/queues, callback acknowledgement latency

    # Peewee connects on a request thread's first query, and the thread keeps the connection
    # for its next requests (ledger.db); the error handlers drop one the database failed.
    @app.teardown_request
    def _drop_a_connection_left_in_a_transaction(exc):
        # every transaction is an atomic() block that ends with its block: one still open
        # here was left by a bug, and must not carry into the thread's next request
        if not db.database.is_closed() and db.database.in_transaction():
            db.discard_connection()

    from app import c2b, daraja_callback, errors, health, v1
    errors.register(app)
    app.register_blueprint(health.bp)
    app.register_blueprint(v1.bp)
    app.register_blueprint(daraja_callback.bp)
    app.register_blueprint(c2b.bp)

    # The client's contract: debits, webhook endpoints, events, rate limits, the OpenAPI document.
    from app import events, openapi, ratelimit, wallet_debits, webhooks
    if settings.ops_token:   # the operator's console (contract §7): off without OPS_TOKEN
        from app import console
        console.init_app(app)
    ratelimit.init(app, settings.redis_url)
    app.register_blueprint(wallet_debits.bp)
    app.register_blueprint(webhooks.bp)
    app.register_blueprint(events.bp)
    app.register_blueprint(openapi.bp)
    return app
