"""The host agent assembled from its settings: specs, GPU tuner, container runtime, reconciler
and control channel (:func:`build_agent`), then run until SIGINT or SIGTERM
(:meth:`HostAgent.run`)."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psutil  # type: ignore[import-untyped]

from openclore.agent.settings import AgentSettings, format_size, rental_cpus, rental_memory
from openclore.agent.state import AgentState

if TYPE_CHECKING:
    from openclore.agent.channel import Agent
    from openclore.agent.gpu import GpuTuner
    from openclore.agent.reconcile import Reconciler
    from openclore.agent.runtime import Runtime
    from openclore.agent.specs import Specs

log = logging.getLogger("openclore.agent")


class RuntimeUnavailable(Exception):
    """The container runtime cannot be used now (Docker down, no permission): try again later."""


@dataclass
class HostAgent:
    """A built agent: its runtime and reconciler are started by :meth:`run` and stopped after."""

    runtime: Runtime
    reconciler: Reconciler
    channel: Agent

    def run(self) -> None:
        """Keep this machine's rentals running until SIGINT or SIGTERM (the containers keep
        running after). Raises :class:`~openclore.agent.channel.AgentUnauthorized` when the market
        refuses the credential."""
        self.reconciler.start()

        async def main() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await self.channel.run(stop)

        try:
            asyncio.run(main())
        finally:
            self.reconciler.stop()
            self.runtime.close()
        log.info("agent stopped; containers keep running")


def collect_specs(settings: AgentSettings) -> tuple[Specs, GpuTuner | None]:
    """What this machine offers, and the GPU tuner (None unless renters may tune GPUs)."""
    from openclore.agent.specs import SpecsConfig, collect

    specs = collect(
        SpecsConfig(
            disk_path=settings.disk_path,
            net_up=settings.net_up,
            net_down=settings.net_down,
            country=settings.country,
        )
    )
    log.info("specs (%s): %s", specs.gpu_source, specs.specs)
    for note in specs.notes:
        log.info("specs: %s", note)
    tuner = None
    if specs.gpu_array:
        try:
            import pynvml  # type: ignore[import-untyped]

            from openclore.agent.gpu import GpuTuner

            tuner = GpuTuner(pynvml, allowed=settings.allow_gpu_settings)
            specs.gpu_limits = tuner.limits()
        except ImportError:
            log.info("GPU settings: nvidia-ml-py is not installed")
    if tuner is not None and not settings.allow_gpu_settings:
        tuner = None  # ranges reported, nothing ever set
    return specs, tuner


def container_runtime(settings: AgentSettings, agent_id: str) -> Runtime:
    """The runtime, prepared; :class:`RuntimeUnavailable` when it cannot be used now."""
    from openclore.agent.runtime import RuntimeProblem

    runtime: Runtime
    try:
        if settings.runtime == "docker":
            from openclore.agent.runtime.docker import DEFAULT_CAP_DROP, DockerRuntime, Hardening

            hardening = Hardening(
                cap_drop=DEFAULT_CAP_DROP if settings.cap_drop is None else settings.cap_drop,
                no_new_privileges=settings.no_new_privileges,
                pids_limit=settings.pids_limit or None,
                log_max_size=format_size(settings.log_max_size),
                log_max_files=settings.log_max_files,
                disk_quota=settings.disk_quota,
            )
            runtime = DockerRuntime(
                agent_id,
                network=settings.network or None,
                isolation=settings.isolation,
                hardening=hardening,
                allowed_registries=settings.allowed_registries,
            )
        else:
            from openclore.agent.runtime.simulated import SimulatedRuntime

            runtime = SimulatedRuntime(agent_id)
        for note in runtime.prepare():
            log.info("runtime: %s", note)
    except RuntimeProblem as exc:
        raise RuntimeUnavailable(str(exc)) from None
    return runtime


def build_agent(settings: AgentSettings, state: AgentState) -> HostAgent:
    """The agent ``settings`` describe, registered as ``state`` says (see
    :func:`openclore.agent.state.register` for the first run)."""
    from openclore.agent.channel import Agent, ChannelConfig
    from openclore.agent.reconcile import Reconciler, ReconcileSettings

    specs, tuner = collect_specs(settings)
    use_gpus = settings.gpus == "all" or (settings.gpus == "auto" and bool(specs.gpu_array))
    runtime = container_runtime(settings, state.agent_id)
    reconciler = Reconciler(
        runtime,
        ReconcileSettings(
            agent_id=state.agent_id,
            port_range=settings.port_range,
            bind_address=settings.bind_address,
            gpus=use_gpus,
            cpus=rental_cpus(settings.cpus, psutil.cpu_count(logical=True) or 1),
            memory=rental_memory(settings.memory, psutil.virtual_memory().total),
            shm_size=settings.shm_size,
            stop_timeout=settings.stop_timeout,
            probe_ports=settings.runtime == "docker",
        ),
        gpu=tuner,
    )
    channel = Agent(
        ChannelConfig(
            server_url=state.server_url,
            agent_token=state.agent_token,
            agent_id=state.agent_id,
            public_host=list(settings.public_host),
            heartbeat_interval=settings.heartbeat,
            tunnel=not settings.direct,
            tunnel_key_dir=settings.directory,
        ),
        reconciler,
        specs,
    )
    return HostAgent(runtime, reconciler, channel)
