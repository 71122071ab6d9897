"""The agent's side of the access gateway: one outbound SSH connection that carries every port
of the machine's running order, so that the host needs no public address and no inbound port.

The market names the gateway (address and host key, pinned) in its ``hello``; the agent logs in
as its server id with its own key (kept in its state directory, recorded on the server at each
``hello``) and asks for one remote forward per port: ``order-<id>``:``<container port>`` →
the container's port bound on the host's loopback. It reconnects with backoff and re-asks
whatever the gateway refused (an order the market has not yet seen running).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from pathlib import Path
from typing import Any

import asyncssh

from openclore.protocol import KIND_ORDER, RUNNING, ContainerStatus

log = logging.getLogger("openclore.agent.tunnel")

RETRY_REFUSED = 3.0  # seconds before asking again for a forward the gateway refused
KEY_FILE = "tunnel_key"


def load_key(directory: Path | None) -> asyncssh.SSHKey:
    """The agent's tunnel key: kept in ``directory`` (created on first use), else in memory."""
    if directory is None:
        return asyncssh.generate_private_key("ssh-ed25519")
    path = directory / KEY_FILE
    if path.exists():
        return asyncssh.read_private_key(str(path))
    key = asyncssh.generate_private_key("ssh-ed25519")
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key.export_private_key("openssh"))
    return key


def forwards_of(statuses: list[ContainerStatus]) -> dict[tuple[int, int], int]:
    """(order, container port) → host port on the loopback, for the running order's ports."""
    wanted: dict[tuple[int, int], int] = {}
    for s in statuses:
        if s.kind != KIND_ORDER or s.order_id is None or s.state != RUNNING:
            continue
        for port, host_port in s.tcp_ports.items():
            wanted[(s.order_id, int(port))] = host_port
        if s.http_port and s.http_host_port:
            wanted[(s.order_id, int(s.http_port))] = s.http_host_port
    return wanted


class Tunnel:
    """Keeps the SSH connection to the assigned gateway and the forwards it should carry."""

    def __init__(
        self,
        key: asyncssh.SSHKey,
        *,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        keepalive: float = 15.0,
    ) -> None:
        self.key = key
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.keepalive = keepalive
        self.gateway: dict[str, Any] | None = None
        self.server_id: int | None = None
        self.wanted: dict[tuple[int, int], int] = {}
        self.active: dict[tuple[int, int], tuple[int, asyncssh.SSHListener]] = {}
        self.connected = asyncio.Event()
        self.connections = 0
        self._changed = asyncio.Event()
        self._target: tuple[str, int, str] | None = None

    @property
    def public_key(self) -> str:
        return self.key.export_public_key("openssh").decode().strip()

    def configure(self, gateway: Any, server_id: int | None) -> None:
        """The gateway the market assigned (None: no tunnel, ports are published directly)."""
        if not isinstance(gateway, dict) or server_id is None:
            gateway = None
        self.gateway = gateway
        self.server_id = server_id
        self._changed.set()

    def set_forwards(self, wanted: dict[tuple[int, int], int]) -> None:
        if wanted != self.wanted:
            self.wanted = dict(wanted)
            self._changed.set()

    def _target_of(self) -> tuple[str, int, str] | None:
        gw = self.gateway
        if gw is None:
            return None
        host, _, port = str(gw.get("ssh", "")).rpartition(":")
        if not host or not port.isdigit():
            log.error("the market named a gateway without a usable address: %r", gw.get("ssh"))
            return None
        return host.strip("[]"), int(port), str(gw.get("host_key", ""))

    async def run(self, stop: asyncio.Event) -> None:
        backoff = self.backoff_initial
        while not stop.is_set():
            target = self._target_of()
            if target is None:
                self._changed.clear()
                await _wait_any(stop, self._changed)
                continue
            started = time.monotonic()
            try:
                await self._session(target, stop)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if stop.is_set():
                    break
                log.warning("tunnel to %s:%s: %s", target[0], target[1], _describe(exc))
            finally:
                self.connected.clear()
                self.active.clear()
            if stop.is_set():
                break
            if time.monotonic() - started > 60:
                backoff = self.backoff_initial
            delay = backoff * random.uniform(0.8, 1.2)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            backoff = min(backoff * 2, self.backoff_max)

    async def _session(self, target: tuple[str, int, str], stop: asyncio.Event) -> None:
        host, port, host_key = target
        trusted = asyncssh.import_public_key(host_key)
        async with asyncssh.connect(
            host,
            port,
            username=str(self.server_id),
            client_keys=[self.key],
            known_hosts=([trusted], [], []),
            keepalive_interval=self.keepalive,
            keepalive_count_max=3,
            connect_timeout=15,
            agent_path=None,
            config=None,
        ) as conn:
            self.connections += 1
            self.connected.set()
            log.info("tunnel to gateway %s open", (self.gateway or {}).get("name"))
            self._target = target
            while not stop.is_set():
                if self._target_of() != target:
                    return  # reassigned: reconnect to the new gateway
                refused = await self._reconcile(conn)
                self._changed.clear()
                closed = asyncio.ensure_future(conn.wait_closed())
                try:
                    timeout = RETRY_REFUSED if refused else None
                    await _wait_any(stop, self._changed, closed, timeout=timeout)
                finally:
                    if closed.done():
                        raise ConnectionError("the gateway closed the tunnel")
                    closed.cancel()

    async def _reconcile(self, conn: asyncssh.SSHClientConnection) -> bool:
        """Ask for the forwards wanted and not yet granted, withdraw the others. Returns True
        when some were refused (to be asked again later)."""
        for key, (host_port, listener) in list(self.active.items()):
            if self.wanted.get(key) != host_port:
                listener.close()
                del self.active[key]
        refused = False
        for key, host_port in self.wanted.items():
            if key in self.active:
                continue
            order_id, container_port = key
            try:
                listener = await conn.forward_remote_port(
                    f"order-{order_id}", container_port, "127.0.0.1", host_port
                )
            except asyncssh.ChannelListenError as exc:
                log.info("gateway refused the forward of order %s port %s: %s", *key, exc)
                refused = True
                continue
            self.active[key] = (host_port, listener)
            log.info("order %s port %s forwarded through the gateway", *key)
        return refused


async def _wait_any(*events: Any, timeout: float | None = None) -> None:
    waits = [asyncio.ensure_future(e.wait()) if isinstance(e, asyncio.Event) else e for e in events]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w, e in zip(waits, events, strict=True):
            if isinstance(e, asyncio.Event):
                w.cancel()


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
