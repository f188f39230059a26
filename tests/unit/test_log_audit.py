"""The log audit itself notices what it is there to notice."""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from tests.log_audit import Audit, findings


def record(name: str, message: str, *args, **extra) -> logging.LogRecord:
    made = logging.LogRecord(name, logging.INFO, __file__, 1, message, args, None)
    made.__dict__.update(extra)
    return made


def test_it_finds_phones_in_any_form_secrets_and_credentials():
    secrets = {"feedface" * 4}
    assert findings("paid from 0712 345 678", secrets)
    assert findings("paid from +254712345678", secrets)
    assert findings("url /daraja/callback/" + "feedface" * 4, secrets)
    assert findings("key sk_" + "A" * 32, secrets)
    assert findings("Authorization: Bearer abcdefghijklmnopqrstu", secrets)
    assert not findings("paid from 2547****5678 with QWE1234567, Bearer [redacted]", secrets)


def test_a_gateway_logger_that_forgets_to_mask_is_caught_before_redaction():
    audit = Audit()
    audit.emit(record("workers.tasks", "push for %s", "254712345678"))
    assert len(audit.violations) == 1
    assert "254712345678" not in audit.violations[0]  # the report masks it too


def test_a_library_line_is_judged_as_it_would_be_written():
    audit = Audit()
    audit.emit(record("urllib3.connectionpool", "GET /x?msisdn=%s", "254712345678"))
    assert audit.violations == []  # written masked by the production formatter


def test_process_log_files_are_read_line_by_line_but_not_the_servers_own():
    # outside pytest's temporary directory, which the session's own audit reads at the end
    with tempfile.TemporaryDirectory() as scratch:
        check_files_of(Path(scratch))


def check_files_of(tmp_path: Path):
    (tmp_path / "workers.log").write_text('{"message": "ok"}\nTraceback: phone 0712345678\n')
    (tmp_path / "redis.log").write_text("client 0712345678\n")
    audit = Audit()
    audit.check_files(tmp_path)
    assert audit.files == 1 and audit.file_lines == 2
    [violation] = audit.violations
    assert violation.startswith("workers.log:2")
