"""Logs: one JSON object a line, with phones masked and secrets removed.

Every line carries ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message`` and
``service`` (``api``, ``workers``, ``topupctl``…), any ``extra={…}`` fields, and the context
bound with :func:`bound` / :func:`bind`: a worker binds ``topup_id`` and
``checkout_request_id`` while it handles a message about a top-up, so every line logged
meanwhile, by any library, names the top-up.

Redaction runs on the whole line (message, extras, tracebacks, the keys of nested fields,
and whatever an unusual object turns into on the way to JSON), so a caller that forgets to
mask a phone still writes ``2547****5678``.

Each entrypoint configures its process once:

- ``gunicorn "app:create_app()"``: :func:`configure` from the app factory (root and
  gunicorn's own loggers in the worker processes);
- ``dramatiq workers``: Dramatiq sets up logging before it imports ``workers``, so importing
  ``workers`` calls :func:`configure` with ``add_handler=False``, which only reformats the
  plain stream handlers Dramatiq installed on the root logger;
- ``topupctl``: :func:`configure` in ``main()``.
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import select
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


# --- lines of `dramatiq workers` processes ----------------------------------------------------

class StderrLines:
    """The stream of a log handler in a process started by ``dramatiq`` (a worker or a fork),
    writing each line straight to the standard error it shares with its parent.

    Dramatiq hands its child processes a pipe instead: the parent reads every line from it
    and writes it to its standard error (``dramatiq.cli.watch_logs``), about 0.1 ms of the
    parent's CPU per line (~0.3 ms per top-up, ``make bench``), only so that lines from
    several processes never mix. A line of at most ``PIPE_BUF`` bytes written in one
    ``write`` cannot mix with another writer's either (POSIX, for pipes; appends to a file
    are not split on Linux), so such lines go straight out. A longer one (a line with a
    traceback) still goes through the parent, which may write it a moment after shorter
    lines this process logged later; so does a line whose direct write fails.
    """

    def __init__(self, relay, fd: int = 2):
        self.relay = relay
        self.fd = fd
        self.limit = select.PIPE_BUF

    def write(self, text: str) -> None:
        data = text.encode("utf-8", errors="replace")
        if len(data) <= self.limit:
            written = 0
            try:
                while written < len(data):   # once, but for a file that took only a part
                    written += os.write(self.fd, data[written:])
                return
            except OSError:   # closed, or non-blocking and full: the line goes the old way
                if written:
                    return
        self.relay.write(text)

    def flush(self) -> None:
        pass

    def fileno(self) -> int:
        return self.fd

    def isatty(self) -> bool:
        return False


def _dramatiq_relays_to_stderr() -> bool:
    """Whether the ``dramatiq`` command this process belongs to writes the lines it relays to
    its standard error (not to a ``--log-file``): read from the command line it was given."""
    try:
        from dramatiq.cli import make_argument_parser
        parser = make_argument_parser()

        def refuse(message):
            raise ValueError(message)
        parser.error = refuse   # never print a usage message or exit from here
        args, _ = parser.parse_known_args(sys.argv[1:])
    except Exception:
        return False
    return getattr(args, "log_file", None) is None


def _write_around_dramatiqs_relay(handler: logging.Handler) -> None:
    """Give a handler writing into Dramatiq's pipe to its parent a :class:`StderrLines`."""
    if "dramatiq" not in sys.modules or not isinstance(handler, logging.StreamHandler):
        return
    try:
        from dramatiq.compat import StreamablePipe
    except ImportError:  # pragma: no cover (a Dramatiq without it relays no lines)
        return
    if isinstance(handler.stream, StreamablePipe) and _dramatiq_relays_to_stderr():
        handler.setStream(StderrLines(relay=handler.stream))


def _reformat(handler: logging.Handler, formatter: logging.Formatter, keep: bool) -> bool:
    if type(handler) not in _PLAIN_HANDLERS:
        return False
    if keep and isinstance(handler.formatter, GatewayJsonFormatter):
        return True  # the entrypoint configured it already: its service name stays
    handler.setFormatter(formatter)
    return True


def configure(service: str, *, secrets: Iterable[str | None] = (), level: int | str | None = None,
              add_handler: bool = True, stream=None) -> logging.Formatter:
    """Make this process write JSON lines. Safe to call again (it only reformats).

    - the plain stream and file handlers already on the root logger and on gunicorn's
      loggers get the JSON formatter (with ``add_handler=False``, as a library import does,
      one that an entrypoint set up already is left as it is);
    - with ``add_handler`` and no handler at all on the root logger, one writing to
      ``stream`` (standard error) is added, at ``level`` (INFO unless given).
    """
    add_secrets(secrets)
    formatter = GatewayJsonFormatter(service)
    root = logging.getLogger()
    for handler in root.handlers:
        if _reformat(handler, formatter, keep=not add_handler):
            _write_around_dramatiqs_relay(handler)
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
