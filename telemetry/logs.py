"""Logs: one JSON object a line, with phones masked and secrets removed.

Every line carries ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message`` and
``service`` (``api``, ``workers``, ``topupctl``…), any ``extra={…}`` fields, and the context
bound with :func:`bound` / :func:`bind`: a worker binds ``topup_id`` and
``checkout_request_id`` while it handles a message about a top-up, so every line logged
meanwhile, by any library, names the top-up.

Redaction runs on the whole line (message, extras, tracebacks, the keys of nested fields,
and whatever an unusual object turns into on the way to JSON), so a caller that forgets to
mask a phone still writes ``2547****5678``.

Each process's start-up (:func:`bootstrap.configure`) calls :func:`configure` once:

- ``gunicorn "app:create_app()"``: from the app factory (root and gunicorn's own loggers in
  the worker processes);
- ``dramatiq workers``: Dramatiq sets up logging before it imports ``workers``, so the
  start-up that import runs calls :func:`configure` with ``add_handler=False``, which only
  reformats the plain stream handlers Dramatiq installed on the root logger. A worker
  process's handler writes into Dramatiq's pipe to the ``dramatiq`` parent, which writes each
  line whole to its standard error (or its ``--log-file``), so lines of several processes
  never mix;
- ``topupctl``: in ``main()``.
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
from typing import Iterable

from pythonjsonlogger.json import JsonEncoder, JsonFormatter

from telemetry.redact import Redactor

_context: contextvars.ContextVar[dict] = contextvars.ContextVar(
    "telemetry_log_context", default={})

# Handlers whose output we own and may reformat: exactly these classes, never a subclass
# (pytest's capture handlers subclass them and must be left alone).
_PLAIN_HANDLERS = (logging.StreamHandler, logging.FileHandler)
try:
    from logging.handlers import WatchedFileHandler
    _PLAIN_HANDLERS += (WatchedFileHandler,)
except ImportError:  # pragma: no cover
    pass

# Loggers that do not propagate to the root and write lines of their own.
SERVER_LOGGERS = ("gunicorn.error", "gunicorn.access")

_redactor = Redactor()
_ENCODER = JsonEncoder()


def add_secrets(secrets: Iterable[str | None]) -> None:
    """Values never to be written, wherever they appear in a line."""
    _redactor.add_secrets(secrets)


def redactor() -> Redactor:
    return _redactor


SETTINGS_SECRETS = ("daraja_consumer_key", "daraja_consumer_secret", "daraja_passkey",
                    "daraja_callback_token", "ops_token")


def secrets_of(settings) -> list[str]:
    """The secret values a Settings object holds (read by name; no import of settings)."""
    return [v for v in (getattr(settings, name, None) for name in SETTINGS_SECRETS) if v]


# --- context ---------------------------------------------------------------------------------

def bind(**fields) -> contextvars.Token:
    """Add fields to every line this thread (or task) logs until :func:`unbind`."""
    current = _context.get()
    return _context.set({**current, **{k: v for k, v in fields.items() if v is not None}})


def unbind(token: contextvars.Token) -> None:
    _context.reset(token)


def amend(**fields) -> None:
    """Add fields to the context already bound here, until that binding is undone.

    For what is learnt once the work has started: a worker binds a message's fields before
    its task runs, and the task adds the top-up's ``checkout_request_id`` once it has read
    its row, instead of the message's middleware reading the row a second time. Outside any
    bound context (a task called directly) it does nothing: nothing would undo it. A field
    added inside a nested :func:`bound` block ends with that block.
    """
    current = _context.get()
    if current:
        _context.set({**current, **{k: v for k, v in fields.items() if v is not None}})


@contextlib.contextmanager
def bound(**fields):
    token = bind(**fields)
    try:
        yield
    finally:
        unbind(token)


def context() -> dict:
    return dict(_context.get())


# --- the formatter ---------------------------------------------------------------------------

_FIRST = ("time", "level", "logger", "message", "service", "topup_id", "checkout_request_id")


class GatewayJsonFormatter(JsonFormatter):
    """python-json-logger's formatter, configured through its public hooks.

    The library builds each line (``rename_fields`` for ``level`` and ``logger``,
    ``static_fields`` for ``service``, ``timestamp`` for ``time``, the record's extras and
    ``exc_info`` / ``stack_info``); :meth:`add_fields` adds the bound context and ``pid``;
    :meth:`process_log_record` writes ``time`` as UTC ISO 8601 with milliseconds, puts the
    fields people read first at the front and redacts the whole line; ``json_default`` turns
    what JSON cannot hold into something redacted too. Fields, in order: ``time``, ``level``,
    ``logger``, ``message``, ``service``, ``topup_id``, ``checkout_request_id``, then the rest
    as the library added them. An extra wins over the context of the same name; ``time`` is
    always the record's.
    """

    def __init__(self, service: str | None = None, redact: Redactor | None = None):
        self.redactor = redact or _redactor
        super().__init__(
            "%(levelname)s %(name)s %(message)s",
            rename_fields={"levelname": "level", "name": "logger"},
            timestamp="time",
            static_fields={"service": service} if service else None,
            json_ensure_ascii=False,
            json_default=self.json_value,
        )

    def add_fields(self, log_data, record, message_dict):
        super().add_fields(log_data, record, message_dict)
        for key, value in _context.get().items():
            log_data.setdefault(key, value)
        log_data.setdefault("pid", record.process)

    def process_log_record(self, log_data):
        time = log_data.get("time")
        if hasattr(time, "isoformat"):
            log_data["time"] = time.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        ordered = {key: log_data[key] for key in _FIRST if key in log_data}
        ordered.update((key, value) for key, value in log_data.items() if key not in ordered)
        # Field by field, before encoding: in the finished JSON text a phone number sent as a
        # number could not be told from any other number.
        return self.redactor.fields(ordered)

    def json_value(self, value):
        """What JSON cannot hold as it is (an exception, an address, bytes, a dataclass) as
        python-json-logger's encoder writes it, redacted like the rest of the line."""
        return self.redactor.value(_ENCODER.default(value))


def _reformat(handler: logging.Handler, formatter: logging.Formatter, keep: bool) -> None:
    if type(handler) not in _PLAIN_HANDLERS:
        return
    if keep and isinstance(handler.formatter, GatewayJsonFormatter):
        return  # the entrypoint configured it already: its service name stays
    handler.setFormatter(formatter)


def configure(service: str, *, secrets: Iterable[str | None] = (), level: int | str | None = None,
              add_handler: bool = True, stream=None) -> logging.Formatter:
    """Make this process write JSON lines. Safe to call again (it only reformats).

    - the plain stream and file handlers already on the root logger and on gunicorn's
      loggers get the JSON formatter (with ``add_handler=False``, as in a ``dramatiq``
      process, one that an entrypoint set up already is left as it is);
    - with ``add_handler`` and no handler at all on the root logger, one writing to
      ``stream`` (standard error) is added, at ``level`` (INFO unless given).
    """
    add_secrets(secrets)
    formatter = GatewayJsonFormatter(service)
    root = logging.getLogger()
    for handler in root.handlers:
        _reformat(handler, formatter, keep=not add_handler)
    for name in SERVER_LOGGERS:
        for handler in logging.getLogger(name).handlers:
            _reformat(handler, formatter, keep=not add_handler)
    if add_handler and not root.handlers:
        handler = logging.StreamHandler(stream or sys.stderr)
        handler.setFormatter(formatter)
        root.addHandler(handler)
        root.setLevel(level if level is not None else logging.INFO)
    elif level is not None:
        root.setLevel(level)
    # Some libraries are chatty at INFO about things an operator never needs.
    logging.getLogger("urllib3").setLevel(max(logging.getLogger("urllib3").level, logging.WARNING))
    return formatter
