"""The README's "Try it" works as written: `make run` is started, and every shell block of the
section is run in order, as a new user would paste them, in a second terminal.

Two things are adapted, and only those: the ports (free ones, so that a developer's own
`make run` does not collide with the test) and `make topupctl ARGS="…"`, run as its Makefile
recipe runs it (the test's `make run` keeps its `var/` in a scratch folder).
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from topupctl.devservers import find_free_port
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def try_it_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Try it", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", section, flags=re.S)


def as_run_here(script: str, api_port: int, sim_port: int) -> str:
    script = script.replace("http://127.0.0.1:8000", f"http://127.0.0.1:{api_port}")
    script = script.replace("http://127.0.0.1:8900", f"http://127.0.0.1:{sim_port}")
    return re.sub(r'make topupctl ARGS="([^"]*)"',
                  rf'(set -a && . ./var/run.env && set +a && {BIN}/topupctl \1)', script)


def test_every_command_of_the_readmes_try_it_works_as_written(tmp_path):
    ports = {"TOPUP_API_PORT": find_free_port(), "TOPUP_SIMULATOR_PORT": find_free_port(),
             "TOPUP_WEBHOOK_PORT": find_free_port()}
    inherited = ("DATABASE_URL", "REDIS_URL", "DARAJA_", "OPS_TOKEN")
    env = {k: v for k, v in os.environ.items() if not k.startswith(inherited)}
    env.update({name: str(port) for name, port in ports.items()}, TOPUP_EMBEDDED_REDIS="0")
    run = subprocess.Popen([sys.executable, "-m", "topupctl.devrun"], cwd=tmp_path, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           start_new_session=True)
    try:
        wait_until(lambda: (tmp_path / "var" / "run.env").exists(), timeout=60,
                   message="make run to be up")
        api = f"http://127.0.0.1:{ports['TOPUP_API_PORT']}"
        wait_until(lambda: subprocess.run(["curl", "-sf", f"{api}/healthz"],
                                          capture_output=True).returncode == 0, timeout=30,
                   message="the API")
        blocks = [as_run_here(block, ports["TOPUP_API_PORT"], ports["TOPUP_SIMULATOR_PORT"])
                  for block in try_it_blocks()]
        assert len(blocks) >= 3
        script = "set -eu\n" + "\n".join(blocks)
        done = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, text=True,
                              capture_output=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        out = done.stdout
        # every API answer is an object of the API, none of them a problem+json error
        assert '"type":"https://docs.topup-gateway.dev/errors/' not in out.replace(" ", "")
        for kind in ("topup", "wallet", "ledger_entry", "list", "queues", "webhook_endpoint"):
            assert f'"object":"{kind}"' in out.replace(" ", ""), kind
        assert "history:" in out                  # topupctl topups show
        assert "matched" in out                   # topupctl reconcile's report
        demo = json.loads((tmp_path / "var" / "demo.json").read_text())
        assert demo["api_key"].startswith("sk_")
    finally:
        os.killpg(run.pid, signal.SIGINT)
        output, _ = run.communicate(timeout=90)
    assert "stopped everything it started" in output
    assert "webhook verified: wallet.top_up" in output
    logs = "".join(p.read_text() for p in (tmp_path / "var" / "log").glob("*.log"))
    assert '"level": "ERROR"' not in logs and '"level": "CRITICAL"' not in logs
