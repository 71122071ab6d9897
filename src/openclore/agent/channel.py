"""The agent's side of the control channel: one WebSocket to the market, re-opened with
exponential backoff (plus jitter) across server restarts and network cuts.

The reconciler keeps running whatever happens to the connection: containers keep running while
the agent is disconnected, and the statuses it could not send go out in the next ``hello``.

Protocol 3: the ``hello`` carries ``volumes`` (every volume the agent holds, see
:class:`openclore.protocol.VolumeStatus`), and a ``status`` message carries the full ``volumes``
list whenever it changed (its ``containers`` may then be empty). A ``desired`` message's
``volumes`` are handed to the reconciler; without that key (an older market) the volumes are left
alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openclore.agent.reconcile import Reconciler
from openclore.agent.specs import Specs
from openclore.agent.tunnel import Tunnel, forwards_of, load_key
from openclore.protocol import (
    CLOSE_UNAUTHORIZED,
    PROTOCOL_VERSION,
    ContainerStatus,
    DesiredContainer,
    DesiredVolume,
)

log = logging.getLogger("openclore.agent")

VERSION = "0.1.0"


class AgentUnauthorized(Exception):
    """The market does not know this agent's credential (revoked, or another database)."""


@dataclass
class ChannelConfig:
    server_url: str  # http(s)://host:port of the market
    agent_token: str
    agent_id: str
    public_host: list[str] = field(default_factory=list)
    heartbeat_interval: float | None = None  # None: what the server asks for
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    open_timeout: float = 10.0
    # reach renters through the market's access gateway when it names one (containers' ports
    # then bind to the host's loopback only); False: publish ports on the host directly
    tunnel: bool = True
    tunnel_key_dir: Path | None = None  # where the tunnel key is kept (None: a new one per run)


def websocket_url(server_url: str) -> str:
    base = server_url.rstrip("/")
    if base.startswith("https://"):
        base = "wss://" + base[len("https://") :]
    elif base.startswith("http://"):
        base = "ws://" + base[len("http://") :]
    return base + "/agent/v1/connect"


class Agent:
    """Connects, reports, receives the desired containers and hands them to the reconciler."""

    def __init__(
        self,
        config: ChannelConfig,
        reconciler: Reconciler,
        specs: Specs | Callable[[], Specs],
    ) -> None:
        self.config = config
        self.reconciler = reconciler
        self._specs = specs
        self.connected = threading.Event()
        self.connections = 0
        self.server_id: int | None = None
        self.desired_received = 0
        self.last_desired: list[DesiredContainer] | None = None
        self.last_volumes: list[DesiredVolume] | None = None
        self.last_desired_at: float | None = None
        self._changed: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.tunnel = Tunnel(load_key(config.tunnel_key_dir)) if config.tunnel else None
        self._direct_bind = reconciler.settings.bind_address
        self._tasks: set[asyncio.Task[None]] = set()

    def specs(self) -> Specs:
        if callable(self._specs):
            self._specs = self._specs()
        return self._specs

    def _on_reconciler_change(self) -> None:
        loop, changed = self._loop, self._changed
        if loop is None or changed is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closing
            loop.call_soon_threadsafe(changed.set)
            if self.tunnel is not None:
                loop.call_soon_threadsafe(self._refresh_forwards)

    def _refresh_forwards(self) -> None:
        if self.tunnel is not None:
            self.tunnel.set_forwards(forwards_of(self.reconciler.snapshot()))

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Until ``stop`` is set (or the credential is refused: :class:`AgentUnauthorized`)."""

        stop = stop or asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        self.reconciler.on_change = self._on_reconciler_change
        url = websocket_url(self.config.server_url)
        backoff = self.config.backoff_initial
        tunnel_task = None
        if self.tunnel is not None:
            tunnel_task = asyncio.create_task(self.tunnel.run(stop))
        try:
            await self._run(url, backoff, stop)
        finally:
            if tunnel_task is not None:
                tunnel_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await tunnel_task

    async def _run(self, url: str, backoff: float, stop: asyncio.Event) -> None:
        from websockets.asyncio.client import connect

        while not stop.is_set():
            started = time.monotonic()
            try:
                async with connect(
                    url,
                    additional_headers={"Authorization": f"Bearer {self.config.agent_token}"},
                    open_timeout=self.config.open_timeout,
                    ping_interval=20,
                    ping_timeout=20,
                    close_timeout=2,
                    max_size=4 * 1024 * 1024,
                ) as ws:
                    await self._session(ws, stop)
            except AgentUnauthorized:
                raise
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if stop.is_set():
                    break
                log.warning("connection to %s: %s", url, _describe(exc))
            finally:
                self.connected.clear()
            if stop.is_set():
                break
            if time.monotonic() - started > 60:  # it had been up a while: start over
                backoff = self.config.backoff_initial
            delay = backoff * random.uniform(0.8, 1.2)
            log.info("reconnecting in %.1fs", delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            backoff = min(backoff * 2, self.config.backoff_max)

    async def _session(self, ws: Any, stop: asyncio.Event) -> None:
        from websockets.exceptions import ConnectionClosed

        specs = self.specs()
        hello_out = {
            "type": "hello",
            "version": VERSION,
            "protocol": PROTOCOL_VERSION,
            "agent_id": self.config.agent_id,
            "specs": specs.specs,
            "gpu_array": specs.gpu_array,
            "gpu_limits": specs.gpu_limits,
            "public_host": self.config.public_host,
            "containers": [s.to_wire() for s in self.reconciler.snapshot()],
            "volumes": [v.to_wire() for v in self.reconciler.volume_snapshot()],
        }
        if self.tunnel is not None:
            hello_out["tunnel_key"] = self.tunnel.public_key
        try:
            await ws.send(json.dumps(hello_out))
            hello = json.loads(await asyncio.wait_for(ws.recv(), self.config.open_timeout))
        except ConnectionClosed as exc:
            _raise_if_unauthorized(exc)
            raise
        if not isinstance(hello, dict) or hello.get("type") != "hello":
            raise ConnectionError(f"unexpected first message from the server: {hello!r}"[:200])
        self.server_id = hello.get("server_id")
        self._use_gateway(hello.get("gateway"))
        interval = self.config.heartbeat_interval or float(hello.get("heartbeat_interval", 15))
        self.connections += 1
        self.connected.set()
        assert self._changed is not None
        self._changed.set()  # flush whatever changed while disconnected
        log.info("connected as server %s (%s)", self.server_id, hello.get("name"))

        tasks = {
            asyncio.create_task(self._receive(ws)),
            asyncio.create_task(self._heartbeats(ws, interval)),
            asyncio.create_task(self._report(ws)),
            asyncio.create_task(stop.wait()),
        }
        try:
            done, _pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        for task in done:
            failure = task.exception()
            if isinstance(failure, ConnectionClosed):
                _raise_if_unauthorized(failure)
            if failure is not None:
                raise failure
        if stop.is_set():
            with contextlib.suppress(Exception):
                await ws.close()

    def _use_gateway(self, gateway: Any) -> None:
        """Through a gateway, new containers bind their ports to the loopback only."""
        if self.tunnel is None:
            return
        self.tunnel.configure(gateway, self.server_id)
        through = isinstance(gateway, dict)
        self.reconciler.settings.bind_address = "127.0.0.1" if through else self._direct_bind
        if through:
            log.info("renters reach this machine through gateway %s", gateway.get("name"))
        self._refresh_forwards()

    async def _receive(self, ws: Any) -> None:
        async for raw in ws:
            try:
                message = json.loads(raw)
            except ValueError:
                continue
            if not isinstance(message, dict):
                continue
            if message.get("type") == "desired":
                try:
                    desired = [
                        DesiredContainer.from_wire(c) for c in message.get("containers") or []
                    ]
                    volumes = (
                        None
                        if "volumes" not in message
                        else [DesiredVolume.from_wire(v) for v in message["volumes"] or []]
                    )
                except (KeyError, TypeError, ValueError, AttributeError) as exc:
                    log.error("malformed desired set ignored: %s", exc)
                    continue
                self.desired_received += 1
                self.last_desired = desired
                self.last_volumes = volumes
                self.last_desired_at = time.monotonic()
                log.info(
                    "desired: %s%s",
                    ", ".join(d.key for d in desired) or "nothing",
                    "" if volumes is None else f"; volumes: {len(volumes)}",
                )
                self.reconciler.set_desired(desired, volumes)
            elif message.get("type") == "logs":
                task = asyncio.create_task(self._answer_logs(ws, message))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        # the server closed the connection
        raise ConnectionError("server closed the connection")

    async def _answer_logs(self, ws: Any, message: dict[str, Any]) -> None:
        """The last lines of an order's container, for the market's ``order_logs``."""
        order_id, tail = message.get("order_id"), message.get("tail")
        if not isinstance(order_id, int) or not isinstance(tail, int):
            return
        tail = max(1, min(tail, 1000))
        container = next(
            (
                s.container_id
                for s in self.reconciler.statuses().values()
                if s.order_id == order_id and s.container_id
            ),
            None,
        )
        text = ""
        if container is not None:
            with contextlib.suppress(Exception):
                text = await asyncio.to_thread(self.reconciler.runtime.logs, container, tail)
        lines = text.splitlines()[-tail:]
        with contextlib.suppress(Exception):
            await ws.send(json.dumps({"type": "logs", "req": message.get("req"), "lines": lines}))

    async def _heartbeats(self, ws: Any, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            await ws.send('{"type":"heartbeat"}')

    async def _report(self, ws: Any) -> None:
        assert self._changed is not None
        while True:
            await self._changed.wait()
            self._changed.clear()
            changes: list[ContainerStatus] = self.reconciler.take_changes()
            volumes = self.reconciler.take_volume_changes()
            if changes or volumes is not None:
                message: dict[str, Any] = {
                    "type": "status",
                    "containers": [c.to_wire() for c in changes],
                }
                if volumes is not None:
                    message["volumes"] = [v.to_wire() for v in volumes]
                await ws.send(json.dumps(message))


def _raise_if_unauthorized(exc: Exception) -> None:
    rcvd = getattr(exc, "rcvd", None)
    if rcvd is not None and rcvd.code == CLOSE_UNAUTHORIZED:
        raise AgentUnauthorized(rcvd.reason or "the market refused this agent's credential")


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class AgentThread:
    """Run an :class:`Agent` (and its reconciler) on an event loop in a background thread:
    for tests, benchmarks and embedding. ``stop()`` leaves the containers running."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.error: BaseException | None = None
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name="openclore-agent", daemon=True)

    def start(self) -> AgentThread:
        self.agent.reconciler.start()
        self._thread.start()
        self._ready.wait(5)
        return self

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def main() -> None:
            self._stop = asyncio.Event()
            self._ready.set()
            await self.agent.run(self._stop)

        try:
            self._loop.run_until_complete(main())
        except BaseException as exc:
            self.error = exc
        finally:
            self._loop.close()

    def stop(self, timeout: float = 10.0) -> None:
        if self._stop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)
        self.agent.reconciler.stop(timeout)

    def alive(self) -> bool:
        return self._thread.is_alive()
