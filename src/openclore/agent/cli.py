"""``openclore agent``: the host agent that puts a GPU server on the market.

First run: ``openclore agent --server-url URL --init-token TOKEN`` spends the server's init_token
and keeps the agent's own credential in the state directory; every later run is plain
``openclore agent``.

The options (each also an ``OPENCLORE_AGENT_<NAME>`` variable) become an
:class:`~openclore.agent.settings.AgentSettings`, which validates them; the agent is built from
it (:func:`~openclore.agent.build.build_agent`).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from openclore.agent.settings import AgentSettings, first_problem
from openclore.agent.state import (
    AgentState,
    RegistrationRefused,
    default_state_dir,
    load_state,
    register,
    save_state,
)

EX_TEMPFAIL = 75  # try again later (systemd restarts)
EX_CONFIG = 78  # needs the host's attention (systemd: RestartPreventExitStatus=78)

# ----------------------------------------------------------------------------- options

ServerUrlOpt = Annotated[
    str | None,
    typer.Option(
        envvar="OPENCLORE_AGENT_SERVER_URL", help="The market, e.g. https://market.example"
    ),
]

InitTokenOpt = Annotated[
    str | None,
    typer.Option(
        envvar="OPENCLORE_AGENT_INIT_TOKEN",
        help="The server's 48-character init_token (first run only; it is spent)",
    ),
]

StateDirOpt = Annotated[
    Path | None,
    typer.Option(
        envvar="OPENCLORE_AGENT_STATE_DIR",
        help="Where the agent keeps its credential [default: ~/.local/state/openclore-agent]",
    ),
]

RegisterOnlyOpt = Annotated[
    bool, typer.Option("--register-only", help="Register, save the credential and exit")
]

RuntimeOpt = Annotated[
    str, typer.Option(envvar="OPENCLORE_AGENT_RUNTIME", help="docker | simulated")
]

PublicHostOpt = Annotated[
    list[str] | None,
    typer.Option(
        envvar="OPENCLORE_AGENT_PUBLIC_HOST",
        help="Public host name renters connect to (repeatable) [default: the market's "
        "setting, else the address the agent connects from]",
    ),
]

PortRangeOpt = Annotated[
    str, typer.Option(envvar="OPENCLORE_AGENT_PORT_RANGE", help="Host ports for renters")
]

BindAddressOpt = Annotated[
    str,
    typer.Option(
        envvar="OPENCLORE_AGENT_BIND_ADDRESS",
        help="Address ports bind to when published directly (through the market's gateway "
        "they bind to 127.0.0.1)",
    ),
]

DirectOpt = Annotated[
    bool,
    typer.Option(
        "--direct",
        envvar="OPENCLORE_AGENT_DIRECT",
        help="Publish rentals' ports on this host's own address instead of tunnelling "
        "through the market's access gateway (needs a public address and open ports)",
    ),
]

NetworkOpt = Annotated[
    str, typer.Option(envvar="OPENCLORE_AGENT_NETWORK", help="Docker network for rentals")
]

IsolationOpt = Annotated[
    str,
    typer.Option(
        envvar="OPENCLORE_AGENT_ISOLATION",
        help="iptables isolation of rentals from private networks and the host: auto | on | off",
    ),
]

GpusOpt = Annotated[str, typer.Option(envvar="OPENCLORE_AGENT_GPUS", help="auto | all | none")]

CpusOpt = Annotated[
    str,
    typer.Option(
        envvar="OPENCLORE_AGENT_CPUS",
        help="CPU limit per rental: auto (the host's CPUs), a number, or none",
    ),
]

MemoryOpt = Annotated[
    str,
    typer.Option(
        envvar="OPENCLORE_AGENT_MEMORY",
        help="Memory limit per rental: auto (the host's memory less a reserve for the "
        "host), a size such as 48g, or none",
    ),
]

ShmSizeOpt = Annotated[
    str, typer.Option(envvar="OPENCLORE_AGENT_SHM_SIZE", help="/dev/shm size, e.g. 8g")
]

StopTimeoutOpt = Annotated[
    float, typer.Option(help="Seconds a container gets to stop before it is killed")
]

NetUpOpt = Annotated[
    float, typer.Option(envvar="OPENCLORE_AGENT_NET_UP", help="Upload speed, Mbit/s")
]

NetDownOpt = Annotated[
    float, typer.Option(envvar="OPENCLORE_AGENT_NET_DOWN", help="Download speed, Mbit/s")
]

CountryOpt = Annotated[
    str, typer.Option(envvar="OPENCLORE_AGENT_COUNTRY", help="Country code, e.g. CZ")
]

AllowGpuSettingsOpt = Annotated[
    bool,
    typer.Option(
        envvar="OPENCLORE_AGENT_ALLOW_GPU_SETTINGS",
        help="Let GigaSPOT renters set power limits and clocks (NVML; needs root)",
    ),
]

DiskPathOpt = Annotated[
    str, typer.Option(envvar="OPENCLORE_AGENT_DISK_PATH", help="Disk measured for specs")
]

AllowedRegistryOpt = Annotated[
    list[str] | None,
    typer.Option(
        envvar="OPENCLORE_AGENT_ALLOWED_REGISTRIES",
        help="Registry (host or host:port) that images may be pulled from even though it is "
        "on a private, loopback or link-local address (repeatable; the variable takes a "
        "space- or comma-separated list)",
    ),
]

CapDropOpt = Annotated[
    list[str] | None,
    typer.Option(
        envvar="OPENCLORE_AGENT_CAP_DROP",
        help="Capabilities dropped from rentals (repeatable; 'none' drops nothing) "
        "(default: NET_RAW MKNOD SETFCAP)",
    ),
]

NoNewPrivilegesOpt = Annotated[
    bool,
    typer.Option(
        "--no-new-privileges/--allow-new-privileges",
        envvar="OPENCLORE_AGENT_NO_NEW_PRIVILEGES",
        help="Run rentals with no-new-privileges (setuid binaries such as sudo do not "
        "raise privileges)",
    ),
]

PidsLimitOpt = Annotated[
    int,
    typer.Option(envvar="OPENCLORE_AGENT_PIDS_LIMIT", help="Processes per rental (0: none)"),
]

LogMaxSizeOpt = Annotated[
    str,
    typer.Option(
        envvar="OPENCLORE_AGENT_LOG_MAX_SIZE", help="Size of each rental's log file (json-file)"
    ),
]

LogMaxFilesOpt = Annotated[
    int,
    typer.Option(envvar="OPENCLORE_AGENT_LOG_MAX_FILES", help="Log files kept per rental"),
]

DiskQuotaOpt = Annotated[
    str,
    typer.Option(
        envvar="OPENCLORE_AGENT_DISK_QUOTA",
        help="Writable-layer size per rental, e.g. 200g (needs a storage driver with quotas: "
        "overlay2 on xfs with pquota, btrfs, zfs…; otherwise a warning and no quota) "
        "(default: none)",
    ),
]

HeartbeatOpt = Annotated[
    float | None, typer.Option(help="Heartbeat interval in seconds [default: the server's]")
]

LogLevelOpt = Annotated[str, typer.Option(envvar="OPENCLORE_AGENT_LOG_LEVEL")]


# ----------------------------------------------------------------------------- the command


def agent(
    server_url: ServerUrlOpt = None,
    init_token: InitTokenOpt = None,
    state_dir: StateDirOpt = None,
    register_only: RegisterOnlyOpt = False,
    runtime: RuntimeOpt = "docker",
    public_host: PublicHostOpt = None,
    port_range: PortRangeOpt = "40000-40999",
    bind_address: BindAddressOpt = "0.0.0.0",
    direct: DirectOpt = False,
    network: NetworkOpt = "openclore",
    isolation: IsolationOpt = "auto",
    gpus: GpusOpt = "auto",
    cpus: CpusOpt = "auto",
    memory: MemoryOpt = "auto",
    shm_size: ShmSizeOpt = "",
    stop_timeout: StopTimeoutOpt = 5.0,
    net_up: NetUpOpt = 0.0,
    net_down: NetDownOpt = 0.0,
    country: CountryOpt = "",
    allow_gpu_settings: AllowGpuSettingsOpt = False,
    disk_path: DiskPathOpt = "/var/lib/docker",
    allowed_registry: AllowedRegistryOpt = None,
    cap_drop: CapDropOpt = None,
    no_new_privileges: NoNewPrivilegesOpt = True,
    pids_limit: PidsLimitOpt = 4096,
    log_max_size: LogMaxSizeOpt = "50m",
    log_max_files: LogMaxFilesOpt = 3,
    disk_quota: DiskQuotaOpt = "",
    heartbeat: HeartbeatOpt = None,
    log_level: LogLevelOpt = "info",
) -> None:
    """Run the host agent: register once, then keep this machine's rentals running."""
    logging.basicConfig(
        level=getattr(logging, log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    directory = state_dir or default_state_dir()
    state = _credential(directory, server_url, init_token)
    if register_only:
        typer.echo(f"registered as server {state.server_id}; credential in {directory}")
        return
    # the options as settings, validated by pydantic (after the credential, as always: a first
    # run registers whatever else is wrong); a value that does not fit is a usage error
    try:
        settings = AgentSettings(
            server_url=server_url,
            init_token=init_token,
            state_dir=directory,
            runtime=runtime,
            isolation=isolation,
            gpus=gpus,
            pids_limit=pids_limit,
            log_max_size=log_max_size,
            log_max_files=log_max_files,
            allowed_registries=allowed_registry or [],
            cap_drop=None if cap_drop is None else tuple(cap_drop),
            disk_quota=disk_quota,
            port_range=port_range,
            cpus=cpus,
            memory=memory,
            shm_size=shm_size,
            public_host=list(public_host or []),
            bind_address=bind_address,
            direct=direct,
            network=network,
            stop_timeout=stop_timeout,
            net_up=net_up,
            net_down=net_down,
            country=country,
            allow_gpu_settings=allow_gpu_settings,
            disk_path=disk_path,
            no_new_privileges=no_new_privileges,
            heartbeat=heartbeat,
            log_level=log_level,
        )
    except ValidationError as exc:
        raise typer.BadParameter(first_problem(exc)) from None
    run(settings, state)


def run(settings: AgentSettings, state: AgentState) -> None:
    """Build the agent and run it; what stops it early is one line and an exit status systemd
    reads (75: try again later, 78: the host must act)."""
    from openclore.agent.build import RuntimeUnavailable, build_agent
    from openclore.agent.channel import AgentUnauthorized

    try:
        host = build_agent(settings, state)
    except RuntimeUnavailable as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EX_TEMPFAIL) from None
    try:
        host.run()
    except AgentUnauthorized as exc:
        typer.echo(
            f"error: the market refused this agent's credential ({exc}); register again with a "
            f"new init_token (remove {settings.directory / 'agent.json'})",
            err=True,
        )
        raise typer.Exit(EX_CONFIG) from None


def _credential(directory: Path, server_url: str | None, init_token: str | None) -> AgentState:
    state = load_state(directory)
    if state is not None:
        if init_token:
            typer.echo(
                f"note: already registered as server {state.server_id} ({directory}); "
                "--init-token ignored",
                err=True,
            )
        if server_url and server_url.rstrip("/") != state.server_url:
            state.server_url = server_url.rstrip("/")
            save_state(directory, state)
        return state
    if not server_url or not init_token:
        typer.echo(
            f"error: not registered yet ({directory / 'agent.json'} missing): run "
            "openclore agent --server-url URL --init-token TOKEN once",
            err=True,
        )
        raise typer.Exit(EX_CONFIG)
    try:
        return register(server_url, init_token.strip(), directory)
    except RegistrationRefused as exc:
        typer.echo(f"error: registration refused: {exc}", err=True)
        raise typer.Exit(EX_CONFIG) from None
    except Exception as exc:
        typer.echo(f"error: cannot reach {server_url}: {exc}", err=True)
        raise typer.Exit(EX_TEMPFAIL) from None


if __name__ == "__main__":  # python -m openclore.agent.cli
    app = typer.Typer(add_completion=False)
    app.command()(agent)
    sys.exit(app())
