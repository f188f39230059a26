"""The Dramatiq workers: ``dramatiq workers`` imports this package.

Importing it reads the settings (a worker refuses to start on a bad one), installs the
Redis broker and declares the actors.
"""
import dramatiq

import settings as _settings
from workers import broker as _broker, runtime as _runtime

_loaded = _settings.load()
dramatiq.set_broker(_broker.build(_loaded.redis_url))
_runtime.configure(_loaded)

from workers import actors  # noqa: E402,F401  (declared on the broker installed above)
from workers import webhooks  # noqa: E402,F401  (the webhook actor, and its after-commit hook)
