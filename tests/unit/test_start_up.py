"""Start-up you can see: importing the gateway does nothing, and one bootstrap configures a
process, the same way for the API, the workers, topupctl and the tests."""
from __future__ import annotations

import dataclasses
import importlib
import json
import os
import pkgutil
import subprocess
import sys
import textwrap

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker

import bootstrap
import settings as settings_module
import workers
from ledger import db, events
from topupctl import cli
from workers import broker as worker_broker, runtime
from tests.names_read import NamesRead

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGES = ("app", "bootstrap", "daraja", "ledger", "settings", "telemetry", "topupctl",
            "workers")
# running these is what they are for: `python -m topupctl`
ENTRY_SCRIPTS = ("topupctl.__main__",)


def the_gateways_variables() -> set[str]:
    """Every name the settings read from the environment."""
    environ = NamesRead({"DARAJA_CALLBACK_TOKEN": "c0ffee" * 6})
    settings_module.load(environ)
    return environ.read | {"PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir"}


def run(tmp_path, code: str, env: dict, *, program: str) -> dict:
    """``code`` in a fresh interpreter that looks like a ``program`` process, its temporary
    directory ``tmp_path``; what it prints, as JSON."""
    script = (f"import sys\nsys.argv[0] = {program!r}\n" + textwrap.dedent(code))
    environment = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": ROOT,
                   "TMPDIR": str(tmp_path), **env}
    result = subprocess.run([sys.executable, "-c", script], env=environment, cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def test_importing_every_module_of_the_gateway_reads_no_setting_and_touches_nothing(tmp_path):
    ledger_dir = tmp_path / "ledger-dir"
    env = {"DATABASE_URL": f"sqlite:///{ledger_dir}/ledger.db",
           "REDIS_URL": "redis://127.0.0.1:9/0",
           "DARAJA_CALLBACK_TOKEN": "not a hex token: a start-up would refuse it"}
    seen = run(tmp_path, f"""
        import importlib, json, os, pkgutil
        from tests.names_read import NamesRead   # imports nothing of the gateway
        os.environ = NamesRead(os.environ)
        modules = []
        for package in {PACKAGES!r}:
            root = importlib.import_module(package)
            modules.append(package)
            for found in pkgutil.walk_packages(getattr(root, "__path__", []), package + "."):
                if found.name not in {ENTRY_SCRIPTS!r} and ".migrations" not in found.name:
                    importlib.import_module(found.name)
                    modules.append(found.name)
        import dramatiq
        from ledger import db, events
        from workers import runtime
        try:
            runtime.get()
            configured = True
        except RuntimeError:
            configured = False
        print(json.dumps({{
            "modules": modules, "read": sorted(os.environ.read),
            "prometheus_client": "prometheus_client" in sys.modules,
            "runtime": configured, "database": db.database.obj is not None,
            "notifier": events.has_notifier(),
            "middleware": [type(m).__name__ for m in dramatiq.get_broker().middleware]}}))
    """, env, program="/usr/local/bin/gunicorn")   # a server process: metrics would be shared

    assert {"app", "bootstrap", "workers.actors", "ledger.settlement", "telemetry.metrics",
            "topupctl.cli"} <= set(seen["modules"])
    assert set(seen["read"]) & the_gateways_variables() == set()
    assert not seen["prometheus_client"]
    assert not (seen["runtime"] or seen["database"] or seen["notifier"])
    assert "LogContext" not in seen["middleware"]   # the actors wait on Dramatiq's default
    assert os.listdir(tmp_path) == []   # no ledger directory, no metrics directory


def test_a_process_the_dramatiq_command_started_is_configured_by_importing_workers(tmp_path):
    env = {"DATABASE_URL": f"sqlite:///{tmp_path}/ledger.db", "REDIS_URL": "redis://127.0.0.1:9/0",
           "DARAJA_CALLBACK_TOKEN": "c0ffee" * 6}
    seen = run(tmp_path, """
        import json, multiprocessing
        multiprocessing.current_process().name = "Process-1"   # a child of `dramatiq`
        import workers   # what `dramatiq workers` does first in each process it starts
        import dramatiq
        from ledger import db, events
        from telemetry import metrics
        from workers import actors, runtime
        broker = dramatiq.get_broker()
        print(json.dumps({
            "broker": type(broker).__name__,
            "middleware": [type(m).__name__ for m in broker.middleware],
            "actors": sorted(broker.actors), "sends_to_it": actors.push_topup.broker is broker,
            "runtime_broker": runtime.get().broker is broker,
            "database": db.database.obj.database, "notifier": events.has_notifier(),
            "metrics_directory": metrics.directory()}))
    """, env, program="/srv/venv/bin/dramatiq")

    assert seen["broker"] == "RedisBroker"
    assert seen["middleware"] == ["TimeLimit", "Retries", "DatabaseConnections", "LogContext",
                                  "Metrics", "DeadLetterNotes"]
    assert seen["actors"] == ["apply_c2b", "apply_callback", "deliver_webhook", "pull_transactions",
                              "push_topup", "query_topup", "record_push_outcome"]
    assert seen["sends_to_it"] and seen["runtime_broker"] and seen["notifier"]
    assert seen["database"] == f"{tmp_path}/ledger.db"
    assert seen["metrics_directory"].startswith(str(tmp_path))


def test_a_worker_process_with_a_bad_setting_refuses_to_start_naming_it(tmp_path):
    script = ("import sys, multiprocessing\nsys.argv[0] = '/srv/venv/bin/dramatiq'\n"
              "multiprocessing.current_process().name = 'Process-1'\nimport workers\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, timeout=60,
                            env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": ROOT,
                                 "TMPDIR": str(tmp_path), "DARAJA_CALLBACK_TOKEN": "c0ffee" * 6,
                                 "STK_QUERY_AFTER_S": "soon"},
                            capture_output=True, text=True)
    assert result.returncode != 0
    assert "ConfigError: STK_QUERY_AFTER_S must be a whole number, got 'soon'" in result.stderr


def test_every_actor_of_the_workers_is_declared_on_the_broker_the_bootstrap_installs(
        stub_broker):
    found = {}
    for module in pkgutil.walk_packages(workers.__path__, "workers."):
        for value in vars(importlib.import_module(module.name)).values():
            if isinstance(value, dramatiq.Actor):
                found[value.actor_name] = value
    assert found and dramatiq.get_broker() is stub_broker
    assert all(actor.broker is stub_broker and stub_broker.actors[name] is actor
               for name, actor in found.items())


def test_a_given_broker_gets_the_same_middleware_however_often_it_is_configured(settings):
    given = StubBroker(middleware=worker_broker.dramatiq_middleware())
    for _ in range(2):
        bootstrap.configure("tests", settings, broker=given, logging=False)
    assert [type(m).__name__ for m in given.middleware] == [
        "TimeLimit", "Retries", "DatabaseConnections", "LogContext", "Metrics", "DeadLetterNotes"]
    given.close()


def test_configuring_again_with_other_settings_takes_them(settings, tmp_path):
    other = dataclasses.replace(settings, database_url=f"sqlite:///{tmp_path}/other.db",
                                stk_query_after_s=7)
    broker = StubBroker(middleware=worker_broker.dramatiq_middleware())
    configured = bootstrap.configure("tests", other, broker=broker, logging=False)

    assert runtime.get() is configured and configured.settings.stk_query_after_s == 7
    assert dramatiq.get_broker() is broker and configured.broker is broker
    assert db.database.obj.database == f"{tmp_path}/other.db"
    assert configured.daraja.config.callback_url == other.callback_url
    broker.close()


def test_a_ledger_only_start_up_leaves_the_broker_and_the_actors_as_they_are(
        settings, stub_broker, tmp_path):
    before = runtime.get()
    ledger_only = dataclasses.replace(settings, database_url=f"sqlite:///{tmp_path}/l.db")
    assert bootstrap.configure("tests", ledger_only, workers=False, logging=False) is None
    assert runtime.get() is before and dramatiq.get_broker() is stub_broker
    assert db.database.obj.database == f"{tmp_path}/l.db"
    assert events.has_notifier()


def test_topupctl_help_configures_nothing(capsys, stub_broker):
    before = runtime.get()
    with pytest.raises(SystemExit) as exited:
        cli.main(["--help"])
    assert exited.value.code == 0 and "scheduler" in capsys.readouterr().out
    assert runtime.get() is before and dramatiq.get_broker() is stub_broker
