"""Test-wide setup: the environment every entrypoint reads, fixed before anything imports.

Unit tests never reach a real Redis: REDIS_URL points at a port nothing listens on, and the
broker is swapped for Dramatiq's StubBroker. Integration tests build their own settings for
the real servers they start.
"""
import atexit
import os
import shutil
import tempfile

_scratch = tempfile.mkdtemp(prefix="topup-tests-")
atexit.register(shutil.rmtree, _scratch, ignore_errors=True)
os.environ["DARAJA_CALLBACK_TOKEN"] = "c0ffee" * 6
os.environ["DATABASE_URL"] = f"sqlite:///{_scratch}/import-time.db"
os.environ["REDIS_URL"] = "redis://127.0.0.1:9/0"
os.environ.setdefault("dramatiq_worker_timeout", "50")

# Every log line written during the suite is checked for phone numbers and secrets.
pytest_plugins = ("tests.log_audit",)
