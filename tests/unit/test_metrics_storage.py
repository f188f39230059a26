"""A server process's metrics go where a scrape of any of its siblings finds them, or the
process refuses to start."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# What an entry point does first: the process's start-up, with settings of its own.
START_UP = """
import bootstrap, settings
bootstrap.configure("api", settings.load({"DARAJA_CALLBACK_TOKEN": "c0ffee" * 6}),
                    database=False, workers=False, logging=False)
"""


def run(tmp_path, code: str, *, program: str | None = None) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter (that looks like a ``program`` process to the start-up,
    if given), its temporary directory ``tmp_path``."""
    env = {k: v for k, v in os.environ.items() if k.lower() != "prometheus_multiproc_dir"}
    env.update(TMPDIR=str(tmp_path), PYTHONPATH=ROOT)
    script = textwrap.dedent(code)
    if program:
        script = f"import sys\nsys.argv[0] = {program!r}\n" + script
    return subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_a_server_process_counts_into_the_directory_its_siblings_share(tmp_path):
    result = run(tmp_path, START_UP + """
from telemetry import metrics
metrics.daraja_call("stkpush", "ok", 0.2)
print(metrics.directory())
print(metrics.render().decode())
""", program="/usr/local/bin/gunicorn")
    assert result.returncode == 0, result.stderr
    directory, exposition = result.stdout.split("\n", 1)
    assert directory.startswith(str(tmp_path)) and os.listdir(directory)
    assert 'topup_daraja_calls_total{endpoint="stkpush",outcome="ok"} 1.0' in exposition


def test_a_server_process_that_imported_prometheus_client_first_refuses_to_start(tmp_path):
    result = run(tmp_path, "import prometheus_client\n" + START_UP,
                 program="/usr/local/bin/gunicorn")
    assert result.returncode != 0
    assert "before anything imports prometheus_client" in result.stderr


@pytest.mark.parametrize("first", ["import prometheus_client", "pass"])
def test_outside_a_server_the_metrics_stay_in_the_process_whatever_came_first(tmp_path, first):
    result = run(tmp_path, f"{first}\n{START_UP}\n"
                 "from telemetry import metrics\nprint(metrics.directory())")
    assert (result.returncode, result.stdout.strip()) == (0, "None"), result.stderr
