"""Start-up you can see: the one place a process of the gateway is configured.

Importing any module of the gateway does nothing: no I/O, no environment read. Each entry
point calls :func:`configure` once, before it does anything else:

- the API: ``create_app`` (``gunicorn "app:create_app()"``);
- the workers: the ``workers`` package, when the ``dramatiq`` command imports it (below);
- ``topupctl``: ``main()``, for the commands that use the ledger or the queues;
- the tests: a fixture, for every test, with the test's own settings, a StubBroker and
  fakeredis.

In that order, :func:`configure` loads the settings from the environment unless it is given
them (a bad one raises :class:`settings.ConfigError`, which names the variable), makes the
process's logs JSON with the settings' secrets removed, chooses where its metrics are counted
(:mod:`telemetry.metrics`), binds the ledger to the database, builds the broker (unless it is
given one) with the same middleware as every other, installs it as Dramatiq's global broker,
declares the workers' actors on it, installs the webhook notifier, and builds the Daraja client
and the rest of :class:`workers.runtime.Runtime`. Calling it again configures the process
again: tests do, with other settings.

How ``dramatiq workers`` is configured. The contract's command names the ``workers`` package
as Dramatiq's broker module: each worker process imports it, then runs the actors declared on
Dramatiq's global broker. That import is the only moment Dramatiq gives (``dramatiq
workers:configure`` would have it call a function, but that is another command). So the
package's ``__init__`` calls ``configure("workers")`` itself, and only in a process the
``dramatiq`` command started, which the command line tells
(:func:`telemetry.metrics.server_kind`, which the metrics storage is chosen by too). The API,
``topupctl`` and the tests import ``workers.actors`` and the rest for what they define, and
configure themselves. Keeping the call unconditional would have meant moving every module out
of the ``workers`` package (a subpackage's import runs its parent's ``__init__``), changing
every import path and the ``logger`` of every line the workers log. The fork that serves the
workers' ``/metrics`` (:func:`workers.observability.serve_metrics`) is a process of the
command too, and is configured by the same import.

Actors are declared by ``@dramatiq.actor`` when their module is imported, on Dramatiq's global
broker as it then is (Dramatiq's own default, in memory, if none was installed);
:func:`configure` declares them again on the broker it installs (``actor.broker``,
``Broker.declare_actor``), as often as it is called.
"""
from __future__ import annotations

import os

import dramatiq
import redis as redis_lib

import settings as settings_module
from daraja import DarajaClient, DarajaConfig, RedisTokenCache
from ledger import db, events
from settings import Settings
from telemetry import logs, metrics
from workers import actors, broker as worker_broker, c2b, runtime, webhooks
from workers.runtime import Runtime

# The modules whose actors the workers run.
ACTOR_MODULES = (actors, webhooks, c2b)


def configure(service: str, settings: Settings | None = None, *,
              broker: dramatiq.Broker | None = None, redis: redis_lib.Redis | None = None,
              daraja: DarajaClient | None = None, database: bool = True, workers: bool = True,
              logging: bool = True) -> Runtime | None:
    """Configure this process as ``service`` (``"api"``, ``"workers"``, ``"topupctl"``…).

    - ``settings``: instead of the environment's;
    - ``broker``, ``redis``, ``daraja``: instead of the ones the settings name (a StubBroker,
      fakeredis, a client with short timeouts in tests); ``redis`` is the client the actors
      use (phone locks, the Daraja token cache);
    - ``database=False``: leave the ledger bound as it is;
    - ``workers=False``: no broker, actors, notifier or Daraja client (``topupctl``'s ledger
      commands need none), and None is returned;
    - ``logging=False``: leave the logs as they are (tests: pytest captures them).
    """
    settings = settings if settings is not None else settings_module.load()
    if logging:
        # `dramatiq workers` sets up its processes' logging before it imports the workers:
        # the handlers it installed write into its pipe, and are reformatted, not replaced.
        logs.configure(service, secrets=logs.secrets_of(settings),
                       add_handler=service != "workers")
    metrics.choose_storage(os.environ)
    if database:
        db.bind(settings.database_url)
    if not workers:
        return None
    broker = _install_broker(broker if broker is not None else worker_broker.build(
        settings.redis_url))
    events.set_notifier(webhooks.enqueue)
    redis = redis if redis is not None else redis_lib.Redis.from_url(
        settings.redis_url, socket_timeout=5, socket_connect_timeout=3, health_check_interval=30)
    if daraja is None:
        daraja = DarajaClient(daraja_config(settings), token_cache=RedisTokenCache(redis),
                              on_call=metrics.daraja_call)
    return runtime.install(Runtime(settings=settings, broker=broker, daraja=daraja, redis=redis))


def _install_broker(broker: dramatiq.Broker) -> dramatiq.Broker:
    """Make ``broker`` the one every actor sends to and is consumed from."""
    worker_broker.equip(broker)
    dramatiq.set_broker(broker)
    for actor in declared_actors():
        actor.broker = broker
        broker.declare_actor(actor)
    return broker


def declared_actors() -> list[dramatiq.Actor]:
    """Every actor the workers' modules declare."""
    return [value for module in ACTOR_MODULES for value in vars(module).values()
            if isinstance(value, dramatiq.Actor)]


def daraja_config(settings: Settings) -> DarajaConfig:
    return DarajaConfig(
        base_url=settings.daraja_base_url,
        consumer_key=settings.daraja_consumer_key,
        consumer_secret=settings.daraja_consumer_secret,
        shortcode=settings.daraja_shortcode,
        passkey=settings.daraja_passkey,
        transaction_type=settings.daraja_transaction_type,
        party_b=settings.daraja_party_b,
        callback_url=settings.callback_url,
        # far below Dramatiq's 10-minute TimeLimit, which would interrupt mid-transaction
        connect_timeout=3.05, read_timeout=15.0,
    )
