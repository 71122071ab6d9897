"""Helpers for the host-agent tests: servers registered through the agent flow, agents in
threads, and an API server that can be stopped and started again on the same port."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import uvicorn

from openclore.agent.channel import Agent, AgentThread, ChannelConfig
from openclore.agent.reconcile import Reconciler, ReconcileSettings
from openclore.agent.runtime import Runtime
from openclore.agent.runtime.simulated import SimulatedEngine, SimulatedRuntime
from openclore.agent.specs import Specs
from openclore.agent.state import AgentState, load_state, register
from openclore.api.app import create_app
from openclore.domain.money import to_units
from openclore.market.servers import add_server
from openclore.store.schema import server_prices, servers

from support import Market, free_port, ok

FAKE_SPECS = Specs(
    specs={
        "mb": "TEST-BOARD",
        "cpu": "Test CPU",
        "cpus": "4/8",
        "ram": 31.2,
        "disk": "NVMe 100.0GB",
        "disk_speed": 1000.0,
        "gpu": "2x NVIDIA GeForce RTX 4090",
        "gpuram": 24,
        "net": {"up": 100.0, "down": 500.0, "cc": "CZ"},
    },
    gpu_array=["NVIDIA GeForce RTX 4090", "NVIDIA GeForce RTX 4090"],
    gpu_source="test",
)


def wait_for(
    predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02, what: str = ""
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


def host_server(
    market: Market,
    owner_token: str,
    name: str = "rig",
    *,
    on_demand: str = "0.00001",
    spot: str = "0.000001",
    mrl: int = 72,
    currency: str = "bitcoin",
    bg_image: str | None = None,
) -> tuple[int, str]:
    """A public, priced, not yet connected server: ``(server id, init_token)``."""
    owner = market.user_id(owner_token)
    with market.db.write() as conn:
        server_id, token = add_server(conn, owner, name, market.now(), market.settings)
        values: dict[str, Any] = {"visibility": "public", "mrl_hours": mrl}
        if bg_image:
            values.update(bg_image=bg_image, bg_times_updated=1, bg_command="", bg_env=[])
        conn.execute(servers.update().where(servers.c.id == server_id).values(**values))
        conn.execute(
            server_prices.insert().values(
                server_id=server_id,
                currency=currency,
                on_demand=to_units(Decimal(on_demand)),
                spot=to_units(Decimal(spot)),
            )
        )
    return server_id, token


@dataclass
class RunningAgent:
    thread: AgentThread
    state: AgentState
    runtime: Runtime
    reconciler: Reconciler
    settings: ReconcileSettings
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def agent(self) -> Agent:
        return self.thread.agent

    def stop(self) -> None:
        self.thread.stop()


def start_agent(
    server_url: str,
    state_dir: Path,
    *,
    init_token: str | None = None,
    runtime: Runtime | None = None,
    engine: SimulatedEngine | None = None,
    port_range: tuple[int, int] = (41000, 41999),
    public_host: list[str] | None = None,
    heartbeat: float = 0.5,
    wait_connected: bool = True,
    runtime_factory: Callable[[str], Runtime] | None = None,
    **settings: Any,
) -> RunningAgent:
    """Register (when ``init_token`` is given) and run an agent in a thread."""
    if init_token is not None:
        state = register(server_url, init_token, state_dir)
    else:
        loaded = load_state(state_dir)
        assert loaded is not None
        state = loaded
    if runtime is None:
        if runtime_factory is not None:
            runtime = runtime_factory(state.agent_id)
        else:
            runtime = SimulatedRuntime(state.agent_id, engine or SimulatedEngine())
    runtime.prepare()
    reconcile_settings = ReconcileSettings(
        agent_id=state.agent_id,
        port_range=port_range,
        poll_interval=settings.pop("poll_interval", 0.2),
        probe_ports=settings.pop("probe_ports", False),
        stop_timeout=settings.pop("stop_timeout", 2.0),
        **settings,
    )
    reconciler = Reconciler(runtime, reconcile_settings)
    agent = Agent(
        ChannelConfig(
            server_url=state.server_url,
            agent_token=state.agent_token,
            agent_id=state.agent_id,
            public_host=public_host or [],
            heartbeat_interval=heartbeat,
            backoff_initial=0.1,
            backoff_max=1.0,
        ),
        reconciler,
        FAKE_SPECS,
    )
    thread = AgentThread(agent).start()
    running = RunningAgent(thread, state, runtime, reconciler, reconcile_settings)
    if wait_connected:
        wait_for(agent.connected.is_set, 10, what="agent connected")
    return running


def my_order(client: Any, order_id: int) -> dict[str, Any]:
    orders = ok(client.get("/v1/my_orders", params={"return_completed": "true"}))["orders"]
    return next(o for o in orders if o["id"] == order_id)


def wait_order_state(
    client: Any, order_id: int, state: str, timeout: float = 10.0
) -> dict[str, Any]:
    result: dict[str, Any] = {}

    def check() -> bool:
        result.update(my_order(client, order_id))
        # the order's state, or its container's as the agent reported it (an ended order's
        # container is "stopped" once removed)
        return state in (result.get("state"), result.get("container_state"))

    try:
        wait_for(check, timeout, interval=0.05)
    except AssertionError:
        raise AssertionError(f"order {order_id} never reached {state!r}: {result}") from None
    return result


class RestartableServer:
    """The market's app on a fixed port, in a thread, that can be stopped and started again."""

    def __init__(self, market: Market) -> None:
        self.market = market
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server: uvicorn.Server | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        app = create_app(self.market.settings, db=self.market.db, clock=self.market.clock)
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_for(lambda: self.server is not None and self.server.started, 10, what="uvicorn")

    def stop(self) -> None:
        if self.server is not None and self.thread is not None:
            self.server.should_exit = True
            self.thread.join(10)
        self.server = None


class GatewayThread:
    """An access gateway on its own event loop in a thread (stoppable, restartable)."""

    def __init__(self, market: Market, **settings: Any) -> None:
        from openclore.gateway.server import Gateway

        self.market = market
        self.settings = market.settings.model_copy(update=settings)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.gateway = Gateway(market.db, self.settings, sync_interval=0.2)
        self.call(self.gateway.start())

    def call(self, coro: Any, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def restart(self) -> None:
        """Stop the gateway and start a new one for the same name (same ports, same key)."""
        from openclore.gateway.server import Gateway

        self.call(self.gateway.stop())
        self.gateway = Gateway(self.market.db, self.settings, sync_interval=0.2)
        self.call(self.gateway.start())

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.call(self.gateway.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
