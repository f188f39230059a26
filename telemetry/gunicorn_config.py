"""gunicorn settings for the API:
``gunicorn -c python:telemetry.gunicorn_config "app:create_app()"``.

Optional: without it the app's own lines and gunicorn's worker lines are JSON already (the app
factory sets that up); with it the master's lines (starting, booting workers, signals) and
the access log are JSON too, and a stop waits for requests in flight.
"""
from __future__ import annotations

_JSON = {"()": "telemetry.logs.GatewayJsonFormatter", "service": "api"}

logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": _JSON},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "json",
                    "stream": "ext://sys.stdout"},
        "error_console": {"class": "logging.StreamHandler", "formatter": "json",
                          "stream": "ext://sys.stderr"},
    },
    "root": {"level": "INFO", "handlers": ["error_console"]},
    "loggers": {
        "gunicorn.error": {"level": "INFO", "handlers": ["error_console"], "propagate": False,
                           "qualname": "gunicorn.error"},
        "gunicorn.access": {"level": "INFO", "handlers": ["console"], "propagate": False,
                            "qualname": "gunicorn.access"},
    },
}

# SIGTERM: stop accepting, let requests in flight finish (a callback is stored, then answered).
graceful_timeout = 25
