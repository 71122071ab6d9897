"""The agent's state directory: its credential, kept after the one-time registration.

``<state dir>/agent.json`` (mode 0600 in a 0700 directory) holds the server URL, the server id,
the agent's long-lived credential and a random agent id that labels its containers. The
init_token itself is never stored: it is spent by the registration.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

STATE_FILE = "agent.json"


class RegistrationRefused(Exception):
    """The server refused the init_token (unknown, or already spent)."""


@dataclass
class AgentState:
    server_url: str
    server_id: int
    agent_token: str
    agent_id: str
    name: str = ""
    registered_at: int = 0


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "openclore-agent"


def load_state(state_dir: Path) -> AgentState | None:
    path = state_dir / STATE_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    return AgentState(
        server_url=str(data["server_url"]),
        server_id=int(data["server_id"]),
        agent_token=str(data["agent_token"]),
        agent_id=str(data["agent_id"]),
        name=str(data.get("name", "")),
        registered_at=int(data.get("registered_at", 0)),
    )


def save_state(state_dir: Path, state: AgentState) -> Path:
    """Write atomically, readable by the owner only."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(state_dir, 0o700)
    path = state_dir / STATE_FILE
    tmp = state_dir / f".{STATE_FILE}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, (json.dumps(asdict(state), indent=2) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path


def register(server_url: str, init_token: str, state_dir: Path, timeout: float = 30) -> AgentState:
    """Spend ``init_token`` at the market and keep the credential it returns."""
    url = server_url.rstrip("/") + "/agent/v1/register"
    response = httpx.post(url, json={"init_token": init_token}, timeout=timeout)
    if response.status_code in (400, 401, 403, 409):
        try:
            reason = response.json().get("error", response.text)
        except ValueError:
            reason = response.text
        raise RegistrationRefused(str(reason))
    response.raise_for_status()
    body = response.json()
    state = AgentState(
        server_url=server_url.rstrip("/"),
        server_id=int(body["server_id"]),
        agent_token=str(body["agent_token"]),
        agent_id=secrets.token_hex(8),
        name=str(body.get("name", "")),
        registered_at=int(time.time()),
    )
    save_state(state_dir, state)
    return state
