"""``openclore agent``: the host agent that puts a GPU server on the market.

First run: ``openclore agent --server-url URL --init-token TOKEN`` spends the server's init_token
and keeps the agent's own credential in the state directory; every later run is plain
``openclore agent``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import sys
from pathlib import Path
from typing import Annotated

import psutil  # type: ignore[import-untyped]
import typer

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

log = logging.getLogger("openclore.agent")


def parse_size(text: str) -> int | None:
    """``16g``, ``512m``, ``1073741824`` → bytes; empty → None."""
    text = text.strip().lower()
    if not text:
        return None
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?", text)
    if match is None:
        raise typer.BadParameter(f"not a size: {text!r} (e.g. 16g, 512m)")
    factor = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}[match.group(2)]
    return int(float(match.group(1)) * factor)


HOST_RESERVE = 2 * 1024**3  # memory kept for the host and the agent (at most 10 % of it)


def rental_cpus(text: str, host_cpus: int) -> float | None:
    """``auto``: every CPU of the host (a whole-server rental's share); a number; ``none``."""
    text = text.strip().lower()
    if text in ("none", "0", ""):
        return None
    if text == "auto":
        return float(host_cpus)
    try:
        value = float(text)
    except ValueError:
        raise typer.BadParameter(f"--cpus: auto, none or a number, not {text!r}") from None
    if not 0 < value <= 4096:
        raise typer.BadParameter(f"--cpus: a number of CPUs above 0, not {text!r}")
    return value


def rental_memory(text: str, host_memory: int) -> int | None:
    """``auto``: the host's memory less a reserve (2 GiB, at most 10 %), so that a rental that
    fills its memory is killed by its own limit, not the host's agent or sshd; a size; ``none``."""
    text = text.strip().lower()
    if text in ("none", "0", ""):
        return None
    if text == "auto":
        keep = min(HOST_RESERVE, host_memory // 10)
        return (host_memory - keep) // 1024**2 * 1024**2
    return parse_size(text)


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
        raise typer.BadParameter(f"not a port range: {text!r} (e.g. 40000-40999)")
    lo, hi = int(match.group(1)), int(match.group(2))
    if not 1 <= lo <= hi <= 65535:
        raise typer.BadParameter(f"bad port range {lo}-{hi}")
    return lo, hi


def agent(
    server_url: Annotated[
        str | None,
        typer.Option(
            envvar="OPENCLORE_AGENT_SERVER_URL", help="The market, e.g. https://market.example"
        ),
    ] = None,
    init_token: Annotated[
        str | None,
        typer.Option(
            envvar="OPENCLORE_AGENT_INIT_TOKEN",
            help="The server's 48-character init_token (first run only; it is spent)",
        ),
    ] = None,
    state_dir: Annotated[
        Path | None,
        typer.Option(
            envvar="OPENCLORE_AGENT_STATE_DIR",
            help="Where the agent keeps its credential [default: ~/.local/state/openclore-agent]",
        ),
    ] = None,
    register_only: Annotated[
        bool, typer.Option("--register-only", help="Register, save the credential and exit")
    ] = False,
    runtime: Annotated[
        str, typer.Option(envvar="OPENCLORE_AGENT_RUNTIME", help="docker | simulated")
    ] = "docker",
    public_host: Annotated[
        list[str] | None,
        typer.Option(
            envvar="OPENCLORE_AGENT_PUBLIC_HOST",
            help="Public host name renters connect to (repeatable) [default: the market's "
            "setting, else the address the agent connects from]",
        ),
    ] = None,
    port_range: Annotated[
        str, typer.Option(envvar="OPENCLORE_AGENT_PORT_RANGE", help="Host ports for renters")
    ] = "40000-40999",
    bind_address: Annotated[
        str,
        typer.Option(
            envvar="OPENCLORE_AGENT_BIND_ADDRESS",
            help="Address ports bind to when published directly (through the market's gateway "
            "they bind to 127.0.0.1)",
        ),
    ] = "0.0.0.0",
    direct: Annotated[
        bool,
        typer.Option(
            "--direct",
            envvar="OPENCLORE_AGENT_DIRECT",
            help="Publish rentals' ports on this host's own address instead of tunnelling "
            "through the market's access gateway (needs a public address and open ports)",
        ),
    ] = False,
    network: Annotated[
        str, typer.Option(envvar="OPENCLORE_AGENT_NETWORK", help="Docker network for rentals")
    ] = "openclore",
    isolation: Annotated[
        str,
        typer.Option(
            envvar="OPENCLORE_AGENT_ISOLATION",
            help="iptables isolation of rentals from private networks and the host: "
            "auto | on | off",
        ),
    ] = "auto",
    gpus: Annotated[
        str, typer.Option(envvar="OPENCLORE_AGENT_GPUS", help="auto | all | none")
    ] = "auto",
    cpus: Annotated[
        str,
        typer.Option(
            envvar="OPENCLORE_AGENT_CPUS",
            help="CPU limit per rental: auto (the host's CPUs), a number, or none",
        ),
    ] = "auto",
    memory: Annotated[
        str,
        typer.Option(
            envvar="OPENCLORE_AGENT_MEMORY",
            help="Memory limit per rental: auto (the host's memory less a reserve for the "
            "host), a size such as 48g, or none",
        ),
    ] = "auto",
    shm_size: Annotated[
        str, typer.Option(envvar="OPENCLORE_AGENT_SHM_SIZE", help="/dev/shm size, e.g. 8g")
    ] = "",
    stop_timeout: Annotated[
        float, typer.Option(help="Seconds a container gets to stop before it is killed")
    ] = 5.0,
    net_up: Annotated[
        float, typer.Option(envvar="OPENCLORE_AGENT_NET_UP", help="Upload speed, Mbit/s")
    ] = 0.0,
    net_down: Annotated[
        float, typer.Option(envvar="OPENCLORE_AGENT_NET_DOWN", help="Download speed, Mbit/s")
    ] = 0.0,
    country: Annotated[
        str, typer.Option(envvar="OPENCLORE_AGENT_COUNTRY", help="Country code, e.g. CZ")
    ] = "",
    allow_gpu_settings: Annotated[
        bool,
        typer.Option(
            envvar="OPENCLORE_AGENT_ALLOW_GPU_SETTINGS",
            help="Let GigaSPOT renters set power limits and clocks (NVML; needs root)",
        ),
    ] = False,
    disk_path: Annotated[
        str, typer.Option(envvar="OPENCLORE_AGENT_DISK_PATH", help="Disk measured for specs")
    ] = "/var/lib/docker",
    allowed_registry: Annotated[
        list[str] | None,
        typer.Option(
            envvar="OPENCLORE_AGENT_ALLOWED_REGISTRIES",
            help="Registry (host or host:port) that images may be pulled from even though it is "
            "on a private, loopback or link-local address (repeatable; the variable takes a "
            "space- or comma-separated list)",
        ),
    ] = None,
    cap_drop: Annotated[
        list[str] | None,
        typer.Option(
            envvar="OPENCLORE_AGENT_CAP_DROP",
            help="Capabilities dropped from rentals (repeatable; 'none' drops nothing) "
            "(default: NET_RAW MKNOD SETFCAP)",
        ),
    ] = None,
    no_new_privileges: Annotated[
        bool,
        typer.Option(
            "--no-new-privileges/--allow-new-privileges",
            envvar="OPENCLORE_AGENT_NO_NEW_PRIVILEGES",
            help="Run rentals with no-new-privileges (setuid binaries such as sudo do not "
            "raise privileges)",
        ),
    ] = True,
    pids_limit: Annotated[
        int,
        typer.Option(envvar="OPENCLORE_AGENT_PIDS_LIMIT", help="Processes per rental (0: none)"),
    ] = 4096,
    log_max_size: Annotated[
        str,
        typer.Option(
            envvar="OPENCLORE_AGENT_LOG_MAX_SIZE", help="Size of each rental's log file (json-file)"
        ),
    ] = "50m",
    log_max_files: Annotated[
        int,
        typer.Option(envvar="OPENCLORE_AGENT_LOG_MAX_FILES", help="Log files kept per rental"),
    ] = 3,
    disk_quota: Annotated[
        str,
        typer.Option(
            envvar="OPENCLORE_AGENT_DISK_QUOTA",
            help="Writable-layer size per rental, e.g. 200g (needs a storage driver with quotas: "
            "overlay2 on xfs with pquota, btrfs, zfs…; otherwise a warning and no quota) "
            "(default: none)",
        ),
    ] = "",
    heartbeat: Annotated[
        float | None, typer.Option(help="Heartbeat interval in seconds [default: the server's]")
    ] = None,
    log_level: Annotated[str, typer.Option(envvar="OPENCLORE_AGENT_LOG_LEVEL")] = "info",
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
    if runtime not in ("docker", "simulated"):
        raise typer.BadParameter("--runtime must be docker or simulated")
    if isolation not in ("auto", "on", "off"):
        raise typer.BadParameter("--isolation must be auto, on or off")
    if gpus not in ("auto", "all", "none"):
        raise typer.BadParameter("--gpus must be auto, all or none")
    if pids_limit < 0:
        raise typer.BadParameter("--pids-limit must be 0 (none) or more")
    log_size = parse_size(log_max_size)
    if not log_size or log_max_files < 1:
        raise typer.BadParameter("--log-max-size and --log-max-files must be positive")
    registries = split_list(allowed_registry)
    from openclore.agent.images import InvalidReference, RegistryPolicy

    try:
        RegistryPolicy(registries)
    except InvalidReference as exc:
        raise typer.BadParameter(f"--allowed-registry: not a host or host:port: {exc}") from None

    from openclore.agent.channel import Agent, AgentUnauthorized, ChannelConfig
    from openclore.agent.reconcile import Reconciler, ReconcileSettings
    from openclore.agent.runtime import Runtime, RuntimeProblem
    from openclore.agent.specs import SpecsConfig, collect

    specs = collect(
        SpecsConfig(disk_path=disk_path, net_up=net_up, net_down=net_down, country=country)
    )
    log.info("specs (%s): %s", specs.gpu_source, specs.specs)
    for note in specs.notes:
        log.info("specs: %s", note)
    use_gpus = gpus == "all" or (gpus == "auto" and bool(specs.gpu_array))
    tuner = None
    if specs.gpu_array:
        try:
            import pynvml  # type: ignore[import-untyped]

            from openclore.agent.gpu import GpuTuner

            tuner = GpuTuner(pynvml, allowed=allow_gpu_settings)
            specs.gpu_limits = tuner.limits()
        except ImportError:
            log.info("GPU settings: nvidia-ml-py is not installed")
    if tuner is not None and not allow_gpu_settings:
        tuner = None  # ranges reported, nothing ever set

    try:
        if runtime == "docker":
            from openclore.agent.runtime.docker import (
                DEFAULT_CAP_DROP,
                DockerRuntime,
                Hardening,
                normalize_capability,
            )

            drops = split_list(cap_drop)
            try:
                caps = (
                    DEFAULT_CAP_DROP
                    if cap_drop is None
                    else tuple(normalize_capability(c) for c in drops if c.lower() != "none")
                )
            except ValueError as exc:
                raise typer.BadParameter(f"--cap-drop: {exc}") from None
            hardening = Hardening(
                cap_drop=caps,
                no_new_privileges=no_new_privileges,
                pids_limit=pids_limit or None,
                log_max_size=format_size(log_size),
                log_max_files=log_max_files,
                disk_quota=parse_size(disk_quota),
            )
            container_runtime: Runtime = DockerRuntime(
                state.agent_id,
                network=network or None,
                isolation=isolation,
                hardening=hardening,
                allowed_registries=registries,
            )
        else:
            from openclore.agent.runtime.simulated import SimulatedRuntime

            container_runtime = SimulatedRuntime(state.agent_id)
        for note in container_runtime.prepare():
            log.info("runtime: %s", note)
    except RuntimeProblem as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EX_TEMPFAIL) from None

    reconciler = Reconciler(
        container_runtime,
        ReconcileSettings(
            agent_id=state.agent_id,
            port_range=parse_range(port_range),
            bind_address=bind_address,
            gpus=use_gpus,
            cpus=rental_cpus(cpus, psutil.cpu_count(logical=True) or 1),
            memory=rental_memory(memory, psutil.virtual_memory().total),
            shm_size=parse_size(shm_size),
            stop_timeout=stop_timeout,
            probe_ports=runtime == "docker",
        ),
        gpu=tuner,
    )
    the_agent = Agent(
        ChannelConfig(
            server_url=state.server_url,
            agent_token=state.agent_token,
            agent_id=state.agent_id,
            public_host=list(public_host or []),
            heartbeat_interval=heartbeat,
            tunnel=not direct,
            tunnel_key_dir=directory,
        ),
        reconciler,
        specs,
    )
    reconciler.start()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await the_agent.run(stop)

    try:
        asyncio.run(main())
    except AgentUnauthorized as exc:
        typer.echo(
            f"error: the market refused this agent's credential ({exc}); register again with a "
            f"new init_token (remove {directory / 'agent.json'})",
            err=True,
        )
        raise typer.Exit(EX_CONFIG) from None
    finally:
        reconciler.stop()
        container_runtime.close()
    log.info("agent stopped; containers keep running")


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
