"""The Dramatiq workers: ``dramatiq workers`` imports this package.

Importing it reads the settings (a worker refuses to start on a bad one), installs the
Redis broker and declares the actors.
"""
import dramatiq

import settings as _settings
from telemetry import logs as _logs
from workers import broker as _broker, observability as _observability, runtime as _runtime

_loaded = _settings.load()
# `dramatiq workers` set up logging before importing us: its lines become JSON from here on.
_logs.configure("workers", secrets=_logs.secrets_of(_loaded), add_handler=False)
_worker_broker = _broker.build(_loaded.redis_url)
for _middleware in _observability.middleware():  # log context, metrics, dead-letter notes
    _worker_broker.add_middleware(_middleware)
dramatiq.set_broker(_worker_broker)
_runtime.configure(_loaded)

from workers import actors  # noqa: E402,F401  (declared on the broker installed above)
from workers import webhooks  # noqa: E402,F401  (the webhook actor, and its after-commit hook)
