"""The deployment files: the compose file is valid Compose (checked against the specification's JSON schema, no
Docker engine needed); each of its services' entry points and health checks runs as declared, as processes, and
stops cleanly on SIGTERM within its grace period; stop timeouts follow each process's drain time; the image is
multi-stage and unprivileged; the lock file pins every dependency with hashes."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from configparser import ConfigParser
from pathlib import Path

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement

from kit.settings import Settings
from tests.conftest import cli_env
from tests.support.chaos import free_port

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy" / "compose.yaml"
CRM = str(Path(sys.executable).with_name("crm"))  # the entry point the image's ENTRYPOINT names
PROCESSES = {"api": "api", "scheduler": "scheduler", "dispatcher": "dispatcher", "journeys": "journeys"}


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)s", value)
    assert match, value
    return float(match.group(1))


def test_the_compose_file_is_valid_compose():
    schema = json.loads((ROOT / "tests" / "support" / "compose-spec.json").read_text())
    jsonschema.Draft7Validator(schema).validate(_compose())  # the spec's schema is draft-07 (its $schema URL lacks '#')
    services = _compose()["services"]
    assert set(services) == {"postgres", "migrate", "api", "scheduler", "dispatcher", "journeys"}
    for name in PROCESSES:
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert services[name]["healthcheck"]["test"][0] == "CMD"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_stop_timeouts_follow_each_processs_drain_time():
    drains = Settings(secret_key="x").drain_seconds()
    services = _compose()["services"]
    for name, process in PROCESSES.items():
        expected = math.ceil(drains[process]) + 5  # a margin for the process to exit once drained
        assert _seconds(services[name]["stop_grace_period"]) == expected, name
        unit = ConfigParser(interpolation=None, strict=False)
        unit.read(ROOT / "deploy" / "systemd" / f"crm-{name}.service")
        assert int(unit["Service"]["TimeoutStopSec"]) == expected, name
        assert unit["Service"]["User"] == "crm" and unit["Service"]["KillSignal"] == "SIGTERM"


def test_the_image_is_multi_stage_unprivileged_and_checks_its_health():
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)\s+AS\s+(\w+)", dockerfile, re.M)
    assert len(stages) >= 2 and stages[-1][1] == "run"
    final = dockerfile.split(f"AS {stages[-1][1]}", 1)[1]
    users = re.findall(r"^USER\s+(\S+)", final, re.M)
    assert users and users[-1] not in ("root", "0")
    assert "HEALTHCHECK" in final and 'ENTRYPOINT ["crm"]' in final
    assert "--require-hashes -r /tmp/requirements.lock" in dockerfile


def test_the_lock_file_pins_every_dependency_with_hashes():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for lock_name in ("requirements.lock", "requirements-dev.lock"):
        text = (ROOT / lock_name).read_text()
        pinned = {m.group(1).lower().replace("_", "-"): m.group(2)
                  for m in re.finditer(r"^([A-Za-z0-9_.\-]+)==([^\s;\\]+)", text, re.M)}
        assert pinned, lock_name
        for line in declared:
            wanted = Requirement(line)
            name = wanted.name.lower().replace("_", "-")
            assert name in pinned, f"{lock_name} lacks {name}"
            assert wanted.specifier.contains(pinned[name], prereleases=True), (lock_name, name, pinned[name])
        assert text.count("--hash=sha256:") >= len(pinned), f"{lock_name}: every pin carries its hashes"


def _environment(service: dict, scratch_url: str, tmp_path: Path, port: int) -> dict[str, str]:
    """The service's environment as compose gives it, pointed at this test's database, port and directories."""
    env = cli_env(scratch_url, tmp_path)
    env |= {k: str(v) for k, v in service.get("environment", {}).items()}
    return env | {"CRM_DATABASE_URL": scratch_url, "CRM_DATA_DIR": str(tmp_path), "CRM_API_PORT": str(port),
                  "CRM_METRICS_DIR": str(tmp_path / "metrics")}


def _healthy(check: list[str], env: dict, within: float) -> subprocess.CompletedProcess:
    deadline = time.monotonic() + within
    while True:
        answer = subprocess.run(check, env=env, capture_output=True, text=True, timeout=60)
        if answer.returncode == 0 or time.monotonic() > deadline:
            return answer
        time.sleep(0.5)


def test_each_service_runs_and_passes_its_health_check_as_declared(scratch_url, tmp_path):
    services = _compose()["services"]
    port = free_port()
    envs = {name: _environment(services[name], scratch_url, tmp_path, port) for name in ("migrate", *PROCESSES)}
    migrate = subprocess.run([CRM, *services["migrate"]["command"]], env=envs["migrate"], capture_output=True,
                             text=True, timeout=300)
    assert migrate.returncode == 0, migrate.stderr
    running: dict[str, subprocess.Popen] = {}
    logs = {name: (tmp_path / f"{name}.log").open("wb") for name in PROCESSES}
    try:
        for name in PROCESSES:
            running[name] = subprocess.Popen([CRM, *services[name]["command"]], env=envs[name], stdout=logs[name],
                                             stderr=subprocess.STDOUT)
        for name in PROCESSES:
            declared = services[name]["healthcheck"]
            check = declared["test"][1:]  # CMD form: the command itself, as the image runs it
            check = [CRM if part == "crm" else part for part in check]
            within = _seconds(declared["start_period"]) + 60
            answer = _healthy(check, envs[name], within)
            assert answer.returncode == 0, (name, answer.stdout, answer.stderr,
                                            (tmp_path / f"{name}.log").read_text(errors="replace")[-1500:])
            assert running[name].poll() is None, f"{name} exited"
    finally:
        for process in running.values():
            process.send_signal(signal.SIGTERM)
        for name, process in running.items():
            grace = _seconds(services[name]["stop_grace_period"])
            try:
                code = process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                process.kill()
                pytest.fail(f"{name} did not stop within its grace period of {grace:g} s")
            assert code == 0, (name, code, (tmp_path / f"{name}.log").read_text(errors="replace")[-1500:])
        for log in logs.values():
            log.close()
    for name in PROCESSES:  # every process logged JSON lines only
        lines = [line for line in (tmp_path / f"{name}.log").read_text(errors="replace").splitlines() if line]
        assert lines and all(line.startswith("{") and json.loads(line)["process"] == PROCESSES[name]
                             for line in lines), (name, [line for line in lines if not line.startswith("{")][:3])
    assert os.path.isdir(tmp_path / "metrics")
