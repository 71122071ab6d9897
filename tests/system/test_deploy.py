"""The operator's deployment files: the compose file, its Dockerfile and the systemd units name
settings that exist and wire the parts together as the guide says."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from openclore.config import Settings

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = {f"OPENCLORE_{name.upper()}" for name in Settings.model_fields}


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return loaded


def test_compose_runs_postgresql_two_replicas_and_the_gateway() -> None:
    services = compose()["services"]
    assert {"db", "api-1", "api-2", "gateway"} <= set(services)
    assert services["db"]["image"].startswith("postgres:")
    assert "healthcheck" in services["db"]
    for name in ("api-1", "api-2", "gateway"):
        service = services[name]
        assert service["build"] == "."  # the images build from the repository's Dockerfile
        assert service["depends_on"]["db"]["condition"] == "service_healthy"
        env = service["environment"]
        assert env["OPENCLORE_DATABASE_URL"].startswith("postgresql://")
        assert "@db:5432/" in env["OPENCLORE_DATABASE_URL"]
        unknown = {k for k in env if k.startswith("OPENCLORE_")} - SETTINGS
        assert not unknown, f"{name}: no such settings {unknown}"
    # the replicas serve the API only; `openclore gateway` runs the access gateway
    assert services["api-1"]["environment"]["OPENCLORE_GATEWAY"] == "false"
    assert services["api-2"]["environment"]["OPENCLORE_GATEWAY"] == "false"
    assert services["gateway"]["command"] == ["gateway"]
    assert services["gateway"]["environment"]["OPENCLORE_GATEWAY_BIND"] == "0.0.0.0"
    gateway_port = Settings.model_fields["gateway_ssh_port"].default
    assert f"{gateway_port}:{gateway_port}" in services["gateway"]["ports"]
    assert _command_exists(services["gateway"]["command"][0])
    lb = " ".join(services["lb"]["command"].split())
    assert "--to api-1:8000 --to api-2:8000" in lb
    assert (ROOT / "Dockerfile").is_file()


def _command_exists(name: str) -> bool:
    from typer.main import get_command

    from openclore.cli.main import app

    group: Any = get_command(app)
    return name in group.commands


def test_the_dockerfile_serves_with_known_settings() -> None:
    text = (ROOT / "Dockerfile").read_text()
    named = set(re.findall(r"\b(OPENCLORE_[A-Z_]+)=", text))
    assert named and named <= SETTINGS
    assert 'ENTRYPOINT ["openclore"]' in text and 'CMD ["serve"]' in text
    assert "/readyz" in text and "PROMETHEUS_MULTIPROC_DIR" in text


@pytest.mark.parametrize("unit", ["openclore.service", "openclore-agent.service"])
def test_systemd_units(unit: str) -> None:
    text = (ROOT / "deploy" / unit).read_text()
    assert re.search(r"^ExecStart=/opt/openclore/venv/bin/openclore (serve|agent)", text, re.M)
    assert "[Install]" in text and "WantedBy=multi-user.target" in text
    if unit == "openclore.service":
        named = set(re.findall(r"\b(OPENCLORE_[A-Z_]+)=", text))
        assert named and named <= SETTINGS
        assert "PROMETHEUS_MULTIPROC_DIR=/run/openclore/metrics" in text


def test_docker_compose_accepts_the_file() -> None:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("docker is not installed")
    version = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30)
    if version.returncode != 0:
        pytest.skip("the docker compose plugin is not installed")
    env = {"OPENCLORE_DB_PASSWORD": "x", "OPENCLORE_ADDRESS_SECRET": "y", "PATH": "/usr/bin:/bin"}
    checked = subprocess.run(
        [docker, "compose", "-f", str(ROOT / "compose.yaml"), "config", "-q"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stderr
