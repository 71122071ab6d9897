"""The host agent's settings: one typed object, every value an ``OPENCLORE_AGENT_<NAME>`` variable.

``openclore agent`` maps its options onto :class:`AgentSettings` (its options read the same
variables); pydantic validates, and a value that does not fit fails with the sentence its option
has always failed with (``--runtime must be docker or simulated``). The fields are validated in
the order below, so of several wrong values the first one here is the one reported.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from openclore.agent.state import default_state_dir

ENV_PREFIX = "OPENCLORE_AGENT_"
HOST_RESERVE = 2 * 1024**3  # memory kept for the host and the agent (at most 10 % of it)


def parse_size(text: str) -> int | None:
    """``16g``, ``512m``, ``1073741824`` → bytes; empty → None."""
    text = text.strip().lower()
    if not text:
        return None
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?", text)
    if match is None:
        raise ValueError(f"not a size: {text!r} (e.g. 16g, 512m)")
    factor = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}[match.group(2)]
    return int(float(match.group(1)) * factor)


def format_size(size: int) -> str:
    """Bytes → the shortest exact ``50m``-style text (what Docker's size options read)."""
    for unit, factor in (("t", 1024**4), ("g", 1024**3), ("m", 1024**2), ("k", 1024)):
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def split_list(values: list[str] | None) -> list[str]:
    """Repeated options and environment variables alike: items separated by commas or spaces."""
    return [item for value in values or [] for item in re.split(r"[,\s]+", value) if item]


def parse_range(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", text)
    if match is None:
        raise ValueError(f"not a port range: {text!r} (e.g. 40000-40999)")
    lo, hi = int(match.group(1)), int(match.group(2))
    if not 1 <= lo <= hi <= 65535:
        raise ValueError(f"bad port range {lo}-{hi}")
    return lo, hi


Auto = Literal["auto"]


def parse_cpus(text: str) -> float | Auto | None:
    """``auto`` (every CPU of the host, found where the agent runs), a number, or ``none``."""
    text = text.strip().lower()
    if text in ("none", "0", ""):
        return None
    if text == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"--cpus: auto, none or a number, not {text!r}") from None
    if not 0 < value <= 4096:
        raise ValueError(f"--cpus: a number of CPUs above 0, not {text!r}")
    return value


def parse_memory(text: str) -> int | Auto | None:
    """``auto`` (the host's memory less a reserve, found where the agent runs), a size, ``none``."""
    text = text.strip().lower()
    if text in ("none", "0", ""):
        return None
    if text == "auto":
        return "auto"
    return parse_size(text)


def rental_cpus(value: str | float | None, host_cpus: int) -> float | None:
    """``auto``: every CPU of the host (a whole-server rental's share); a number; ``none``."""
    parsed = parse_cpus(value) if isinstance(value, str) else value
    if isinstance(parsed, str):  # auto
        return float(host_cpus)
    return parsed


def rental_memory(value: str | int | None, host_memory: int) -> int | None:
    """``auto``: the host's memory less a reserve (2 GiB, at most 10 %), so that a rental that
    fills its memory is killed by its own limit, not the host's agent or sshd; a size; ``none``."""
    parsed = parse_memory(value) if isinstance(value, str) else value
    if isinstance(parsed, str):  # auto
        keep = min(HOST_RESERVE, host_memory // 10)
        return (host_memory - keep) // 1024**2 * 1024**2
    return parsed


Size = int | None  # bytes, None: no limit


class AgentSettings(BaseSettings):
    """The host agent's settings (``OPENCLORE_AGENT_*`` variables, or ``openclore agent``'s
    options). Sizes are bytes after validation; ``cpus``/``memory`` may stay ``auto``, which
    :func:`openclore.agent.build.build_agent` resolves on the host."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    # the credential (only the first run needs the URL and the init_token)
    server_url: str | None = None
    init_token: str | None = None
    state_dir: Path | None = None  # None: ~/.local/state/openclore-agent
    # checked in this order (the order the agent has always reported them in)
    runtime: Literal["docker", "simulated"] = "docker"
    isolation: Literal["auto", "on", "off"] = "auto"
    gpus: Literal["auto", "all", "none"] = "auto"
    pids_limit: int = 4096  # 0: none
    log_max_size: int = 50 * 1024**2
    log_max_files: int = 3
    allowed_registries: Annotated[list[str], NoDecode] = []
    cap_drop: Annotated[tuple[str, ...] | None, NoDecode] = None  # None: the runtime's default
    disk_quota: Size = None
    port_range: Annotated[tuple[int, int], NoDecode] = (40000, 40999)
    cpus: float | Auto | None = "auto"
    memory: int | Auto | None = "auto"
    shm_size: Size = None
    # the rest
    public_host: Annotated[list[str], NoDecode] = []
    bind_address: str = "0.0.0.0"
    direct: bool = False
    network: str = "openclore"
    stop_timeout: float = 5.0
    net_up: float = 0.0
    net_down: float = 0.0
    country: str = ""
    allow_gpu_settings: bool = False
    disk_path: str = "/var/lib/docker"
    no_new_privileges: bool = True
    heartbeat: float | None = None  # None: the server's interval
    log_level: str = "info"

    @property
    def directory(self) -> Path:
        """Where the agent keeps its credential."""
        return self.state_dir or default_state_dir()

    @field_validator("runtime", mode="before")
    @classmethod
    def _runtime(cls, value: Any) -> Any:
        if value not in ("docker", "simulated"):
            raise ValueError("--runtime must be docker or simulated")
        return value

    @field_validator("isolation", mode="before")
    @classmethod
    def _isolation(cls, value: Any) -> Any:
        if value not in ("auto", "on", "off"):
            raise ValueError("--isolation must be auto, on or off")
        return value

    @field_validator("gpus", mode="before")
    @classmethod
    def _gpus(cls, value: Any) -> Any:
        if value not in ("auto", "all", "none"):
            raise ValueError("--gpus must be auto, all or none")
        return value

    @field_validator("pids_limit")
    @classmethod
    def _pids_limit(cls, value: int) -> int:
        if value < 0:
            raise ValueError("--pids-limit must be 0 (none) or more")
        return value

    @field_validator("log_max_size", mode="before")
    @classmethod
    def _log_max_size(cls, value: Any) -> Any:
        size = parse_size(value) if isinstance(value, str) else value
        if not size:
            raise ValueError("--log-max-size and --log-max-files must be positive")
        return size

    @field_validator("log_max_files")
    @classmethod
    def _log_max_files(cls, value: int) -> int:
        if value < 1:
            raise ValueError("--log-max-size and --log-max-files must be positive")
        return value

    @field_validator("public_host", mode="before")
    @classmethod
    def _public_host(cls, value: Any) -> Any:
        return value.split() if isinstance(value, str) else value  # a variable: space-separated

    @field_validator("allowed_registries", mode="before")
    @classmethod
    def _allowed_registries(cls, value: Any) -> Any:
        registries = split_list([value] if isinstance(value, str) else value)
        from openclore.agent.images import InvalidReference, RegistryPolicy

        try:
            RegistryPolicy(registries)
        except InvalidReference as exc:
            raise ValueError(f"--allowed-registry: not a host or host:port: {exc}") from None
        return registries

    @field_validator("cap_drop", mode="before")
    @classmethod
    def _cap_drop(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None:
            return None
        drops = split_list([value] if isinstance(value, str) else list(value))
        if info.data.get("runtime") != "docker":
            return tuple(drops)  # only Docker drops capabilities
        from openclore.agent.runtime.docker import normalize_capability

        try:
            return tuple(normalize_capability(c) for c in drops if c.lower() != "none")
        except ValueError as exc:
            raise ValueError(f"--cap-drop: {exc}") from None

    @field_validator("disk_quota", mode="before")
    @classmethod
    def _disk_quota(cls, value: Any, info: ValidationInfo) -> Any:
        if not isinstance(value, str):
            return value
        if info.data.get("runtime") != "docker":
            return None  # only Docker sets a quota
        return parse_size(value)

    @field_validator("shm_size", mode="before")
    @classmethod
    def _sizes(cls, value: Any) -> Any:
        return parse_size(value) if isinstance(value, str) else value

    @field_validator("port_range", mode="before")
    @classmethod
    def _port_range(cls, value: Any) -> Any:
        return parse_range(value) if isinstance(value, str) else value

    @field_validator("cpus", mode="before")
    @classmethod
    def _cpus(cls, value: Any) -> Any:
        return parse_cpus(value) if isinstance(value, str) else value

    @field_validator("memory", mode="before")
    @classmethod
    def _memory(cls, value: Any) -> Any:
        return parse_memory(value) if isinstance(value, str) else value


def first_problem(exc: ValidationError) -> str:
    """The first value that does not fit, as the one line its option fails with."""
    first = exc.errors(include_url=False)[0]
    cause = first.get("ctx", {}).get("error")
    if isinstance(cause, ValueError):
        return str(cause)
    where = ".".join(str(p) for p in first["loc"])
    return f"{where}: {first['msg']}"
