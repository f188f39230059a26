"""The log audit: no log line written during the test suite carries a full phone number or a
secret.

A pytest plugin (``pytest_plugins`` in tests/conftest.py), active for every run:

- every log record of the test process, at INFO and above, is written the way production
  writes it (telemetry's JSON formatter) and the line is checked;
- the records of the gateway's own loggers (``app``, ``workers``, ``ledger``, ``daraja``,
  ``telemetry``, ``topupctl``, ``settings``) are also checked *before* that formatting: the
  code masks phones itself, the formatter is only the second line of defence;
- at the end, every ``*.log`` file under this session's temporary directory (the output of
  the gunicorn, ``dramatiq`` and ``topupctl`` processes the integration tests start) is
  checked line by line, whatever wrote it (tracebacks printed outside logging included).
  The servers' own logs (redis-server, PostgreSQL) are not the gateway's and are skipped.

A phone is a Kenyan mobile number in any usual form; a secret is one of the values the tests
configure (callback tokens, Daraja's passkey and consumer secret) or anything shaped like an
API key (``sk_`` + 32), a webhook secret (``whsec_…``) or an authorization header value.
A finding fails the session and is reported with the offending text itself masked.
"""
from __future__ import annotations

import json
import logging
import re
import threading
from pathlib import Path

import pytest

PHONE = re.compile(r"(?<![\d])(?:\+?254[ -]?|0)[17]\d{2}[ -]?\d{3}[ -]?\d{3}(?![\d])")
CREDENTIALS = (
    re.compile(r"\bsk_[A-Za-z0-9]{32}\b"),
    re.compile(r"\bwhsec_[A-Za-z0-9+/=]{20,}"),
    re.compile(r"(?i)\b(?:bearer|basic)\s+(?!\[redacted\])[A-Za-z0-9._~+/=-]{16,}"),
)
OWN_LOGGERS = ("app", "workers", "ledger", "daraja", "telemetry", "topupctl", "settings")
SERVER_LOGS = ("redis", "postgres", "server", "initdb", "pg_ctl")
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
MAX_REPORTED = 20


def known_secrets() -> set[str]:
    import os

    import settings
    values = {settings.SANDBOX_PASSKEY, settings.SIMULATOR_CONSUMER_SECRET, "c0ffee" * 6,
              "feedface" * 4}
    for name in ("DARAJA_CALLBACK_TOKEN", "DARAJA_CONSUMER_SECRET", "DARAJA_PASSKEY",
                 "OPS_TOKEN"):
        if os.environ.get(name):
            values.add(os.environ[name])
    return {v for v in values if len(v) >= 8}


def findings(text: str, secrets: set[str]) -> list[str]:
    found = [m.group(0) for m in PHONE.finditer(text)]
    found += [s for s in secrets if s in text]
    for pattern in CREDENTIALS:
        found += [m.group(0) for m in pattern.finditer(text)]
    return found


def hide(text: str, found: list[str]) -> str:
    for item in found:
        text = text.replace(item, item[:4] + "…")
    return text[:300]


class Audit(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.INFO)
        from telemetry.logs import GatewayJsonFormatter
        self.setFormatter(GatewayJsonFormatter("audit"))
        self.secrets = known_secrets()
        self.records = 0
        self.files = 0
        self.file_lines = 0
        self.violations: list[str] = []
        self._lock = threading.Lock()

    def _found(self, where: str, text: str, found: list[str]) -> None:
        with self._lock:
            self.violations.append(f"{where}: {hide(text, found)}")

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.records += 1
            line = self.format(record)
            found = findings(line, self.secrets)
            if found:
                self._found(f"log line of {record.name}", line, found)
            if record.name.split(".")[0] in OWN_LOGGERS:
                extras = {k: v for k, v in vars(record).items() if k not in _STANDARD}
                raw = record.getMessage() + " " + json.dumps(extras, default=str)
                if record.exc_info:
                    raw += " " + logging.Formatter().formatException(record.exc_info)
                found = findings(raw, self.secrets)
                if found:
                    self._found(f"record of {record.name} (before redaction)", raw, found)
        except Exception:  # never break a test because of the audit itself
            self.handleError(record)

    def check_files(self, root: Path) -> None:
        for path in sorted(root.rglob("*.log")):
            if path.stem.startswith(SERVER_LOGS) or not path.is_file():
                continue
            self.files += 1
            with open(path, encoding="utf-8", errors="replace") as f:
                for number, line in enumerate(f, 1):
                    self.file_lines += 1
                    found = findings(line, self.secrets)
                    if found:
                        self._found(f"{path.relative_to(root)}:{number}", line.strip(), found)


_audit: Audit | None = None
_temp_root: Path | None = None   # the session's temporary folder, once a test has run


@pytest.fixture(scope="session", autouse=True)
def process_logs_audited(tmp_path_factory):
    """The session's temporary folder, where the processes the tests start write their logs:
    its ``*.log`` files are checked when the session ends."""
    global _temp_root
    _temp_root = tmp_path_factory.getbasetemp()


def pytest_configure(config):
    global _audit
    _audit = Audit()
    root = logging.getLogger()
    root.addHandler(_audit)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)  # what production writes: INFO and above


def pytest_unconfigure(config):
    if _audit is not None:
        logging.getLogger().removeHandler(_audit)


def pytest_sessionfinish(session, exitstatus):
    if _audit is None:
        return
    if _temp_root is not None:
        try:
            _audit.check_files(_temp_root)
        except OSError:
            pass
    if _audit.violations and session.exitstatus in (pytest.ExitCode.OK,
                                                    pytest.ExitCode.TESTS_FAILED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if _audit is None:
        return
    checked = (f"{_audit.records} log records, {_audit.file_lines} lines in {_audit.files} "
               f"process log files")
    if not _audit.violations:
        terminalreporter.write_line(f"log audit: {checked}: no full phone number, no secret")
        return
    terminalreporter.section("log audit: a full phone number or a secret was logged", red=True)
    for violation in _audit.violations[:MAX_REPORTED]:
        terminalreporter.write_line(violation)
    if len(_audit.violations) > MAX_REPORTED:
        terminalreporter.write_line(f"… and {len(_audit.violations) - MAX_REPORTED} more")
    terminalreporter.write_line(f"({checked})")
