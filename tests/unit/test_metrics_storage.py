"""A server process's metrics go where a scrape of any of its siblings finds them, or the
process refuses to start."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_as_gunicorn_worker(tmp_path, code: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter that looks like a gunicorn worker to telemetry.metrics,
    its shared directory under ``tmp_path``."""
    env = {k: v for k, v in os.environ.items()
           if k.lower() != "prometheus_multiproc_dir"}
    env.update(TMPDIR=str(tmp_path), PYTHONPATH=ROOT)
    script = "import sys\nsys.argv[0] = '/usr/local/bin/gunicorn'\n" + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_a_server_process_counts_into_the_directory_its_siblings_share(tmp_path):
    result = run_as_gunicorn_worker(tmp_path, """
        from telemetry import metrics
        metrics.daraja_call("stkpush", "ok", 0.2)
        print(metrics.MULTIPROCESS_DIR)
        print(metrics.render().decode())
    """)
    assert result.returncode == 0, result.stderr
    directory, exposition = result.stdout.split("\n", 1)
    assert directory.startswith(str(tmp_path)) and os.listdir(directory)
    assert 'topup_daraja_calls_total{endpoint="stkpush",outcome="ok"} 1.0' in exposition


def test_a_server_process_that_imported_prometheus_client_first_refuses_to_start(tmp_path):
    result = run_as_gunicorn_worker(tmp_path, """
        import prometheus_client
        from telemetry import metrics
    """)
    assert result.returncode != 0
    assert "import telemetry.metrics first" in result.stderr


@pytest.mark.parametrize("first", ["import prometheus_client", "pass"])
def test_outside_a_server_the_metrics_stay_in_the_process_whatever_came_first(tmp_path, first):
    env = {k: v for k, v in os.environ.items() if k.lower() != "prometheus_multiproc_dir"}
    env.update(TMPDIR=str(tmp_path), PYTHONPATH=ROOT)
    script = f"{first}\nfrom telemetry import metrics\nprint(metrics.MULTIPROCESS_DIR)"
    result = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout.strip()) == (0, "None"), result.stderr
