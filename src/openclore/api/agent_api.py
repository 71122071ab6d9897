"""The host agents' control channel, under ``/agent/v1`` (apart from the Clore API under ``/v1``).

- ``POST /agent/v1/register`` ``{"init_token": …}`` → ``{"server_id", "name", "agent_token"}``:
  spends the server's 48-character init_token once (``connected`` becomes true for good) and
  issues the agent's own long-lived credential, of which only a SHA-256 hash is stored
  (``servers.agent_token_hash``). A spent token gets HTTP 409, an unknown one 401.
- ``WS /agent/v1/connect`` with ``Authorization: Bearer <agent_token>``: one persistent
  connection per agent (protocol in :mod:`openclore.protocol`).

Why a WebSocket: the server must *push* a new order to the machine in well under a second, and
agents sit behind NAT and firewalls that allow only outbound connections. A WebSocket is one
outbound, authenticated, long-lived TCP (or TLS) connection through which both sides talk at any
time; it passes through ordinary HTTP reverse proxies, needs no extra port, and uvicorn[standard]
serves it already. Long polling would need a request per change and per timeout, and loses the
agent's reports' ordering; server-sent events are one-way; gRPC streams need HTTP/2 end to end.

This module only speaks the protocol: what each message does is in :mod:`openclore.market.agents`.
Frames are capped (:data:`MAX_WS_FRAME_BYTES`, also enforced by the HTTP server before a frame is
buffered) and checked for size before they are parsed; a malformed message is ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket, WebSocketDisconnect

from openclore.api import metrics
from openclore.api.state import AppState
from openclore.api.transport import MAX_WS_FRAME_BYTES, BodyTooLarge
from openclore.api.wire import dumps, parse_json, parse_object
from openclore.domain.errors import InvalidInput
from openclore.domain.text import has_lone_surrogate
from openclore.engine.notify import subscribe
from openclore.market import audit
from openclore.market.agents import (
    AgentRefused,
    Tunnel,
    agent_heartbeat,
    agent_heartbeats,
    agent_hello,
    agent_specs,
    apply_statuses,
    authenticate_agent,
    desired_for,
    parse_statuses,
    parse_volumes,
    pub_cluster_for,
    register_agent,
)
from openclore.market.logs import open_questions, record_answer
from openclore.market.tunnels import assign_gateway
from openclore.market.volumes import apply_volume_reports, desired_volumes
from openclore.protocol import CLOSE_UNAUTHORIZED, PROTOCOL_VERSION, desired_rev

log = logging.getLogger("openclore.agent_api")

PREFIX = "/agent/v1"
HELLO_TIMEOUT = 15.0
# Safety net under the push: re-read the desired set this often even without a notification
# (covers several SQLite processes, which share no notifications). On PostgreSQL every commit
# that changes a desired set is NOTIFYed to every process, and a re-opened LISTEN connection
# wakes every channel: the re-read only guards against a change made without a notification,
# so it is rare (each channel's re-read costs a read transaction: 10,000 agents re-reading every
# 5 s would be 2,000 transactions a second). Each wait is jittered by ±20 % so that agents that
# connected together do not re-read together.
RESYNC_SQLITE = 3.0
RESYNC_POSTGRES = 60.0
RESYNC_JITTER = 0.2
CLOSE_BAD_MESSAGE = 4400
CLOSE_TOO_BIG = 1009


class _Closed(Exception):
    """The channel ends: ``code`` and ``reason`` are sent to the agent."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def _bearer(ws: WebSocket) -> str | None:
    header = ws.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


async def _receive_message(ws: WebSocket) -> dict[str, Any] | None:
    """The next text frame as a JSON object; None for one that is not (it is ignored)."""
    message = await ws.receive()
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    raw = message.get("text")
    if raw is None:  # a binary frame: not part of the protocol
        return None
    if len(raw) > MAX_WS_FRAME_BYTES:
        raise _Closed(CLOSE_TOO_BIG, "frame too large")
    try:
        # NUL may stand in reported text (logs, errors): what stores it cleans it
        parsed = parse_json(raw.encode("utf-8", "surrogatepass"), exact=False, checked=False)
    except InvalidInput:
        return None
    if not isinstance(parsed, dict) or has_lone_surrogate(parsed):  # not text any store takes
        return None
    return parsed


def wall_now() -> int:
    """Gateways' liveness runs on the wall clock (the market's clock may be a sandbox's)."""
    return int(time.time())


class HeartbeatWriter:
    """The heartbeats of this process's agents, written together (group commit): a heartbeat is
    queued and its channel goes on reading at once; one task writes everything queued in one
    transaction (:func:`agent_heartbeats`), then what was queued meanwhile, and so on. At low
    load a heartbeat is written within milliseconds; at 10,000 agents (2,000 heartbeats a
    second) a write covers what came in during the previous one, instead of 2,000 transactions
    a second. A server that had gone offline comes back in its own transaction (lock, resolve);
    one that was removed has its channel told (``gone``), which then closes it.

    One per app; its task lives in the event loop that queued the first heartbeat of a batch."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        self.pending: dict[int, Callable[[], None]] = {}
        self._task: asyncio.Task[None] | None = None

    def beat(self, server_id: int, gone: Callable[[], None]) -> None:
        self.pending[server_id] = gone
        task = self._task
        loop = asyncio.get_running_loop()
        if task is None or task.done() or task.get_loop() is not loop:
            # a context of its own: the batch is no one channel's (nor its request id's)
            self._task = loop.create_task(self._flush(), context=contextvars.Context())

    async def _flush(self) -> None:
        while self.pending:
            batch, self.pending = self.pending, {}
            try:
                gone = await run_in_threadpool(self._write, list(batch))
            except Exception:  # the next heartbeats (seconds away) write again
                log.exception("heartbeats of %d agents not written", len(batch))
                continue
            for server_id in gone:
                batch[server_id]()

    def _write(self, server_ids: list[int]) -> list[int]:
        """Write the heartbeats; the servers that were removed (their agents must go)."""
        now = self.state.now()
        late = self.state.db_write(lambda c: agent_heartbeats(c, server_ids, now))
        gone = []
        for server_id in late:

            def _one(c: Any, s: int = server_id) -> bool:
                return agent_heartbeat(c, s, self.state.now())

            try:
                alive = self.state.db_write(_one)
            except Exception:
                log.exception("heartbeat of server %s not written", server_id)
                continue
            if not alive:
                gone.append(server_id)
        return gone


class AgentChannel:
    """One connected agent: pushes its server's desired containers, applies what it reports."""

    def __init__(
        self,
        state: AppState,
        ws: WebSocket,
        server_id: int,
        name: str,
        heartbeats: HeartbeatWriter,
    ) -> None:
        self.state = state
        self.heartbeats = heartbeats
        self.ws = ws
        self.server_id = server_id
        self.name = name
        self.pub_cluster: list[str] = []
        self.tunnel: Tunnel | None = None
        self.asked = 0  # the last question (agent_requests id) passed on to the agent
        self.wake = asyncio.Event()
        db = state.db
        self.resync = RESYNC_SQLITE if db.is_sqlite else RESYNC_POSTGRES
        # billing of a server stops a grace period after its last heartbeat: beat well within it
        self.heartbeat_interval = max(1.0, min(5.0, state.settings.agent_timeout / 4))

    async def run(self) -> None:
        try:
            hello = await asyncio.wait_for(_receive_message(self.ws), HELLO_TIMEOUT)
        except (TimeoutError, WebSocketDisconnect):
            hello = None
        except _Closed as closed:
            await self._close(closed.code, closed.reason)
            return
        if hello is None or hello.get("type") != "hello":
            await self._close(CLOSE_BAD_MESSAGE, "expected a hello")
            return
        loop = asyncio.get_running_loop()

        def _wake() -> None:
            loop.call_soon_threadsafe(self.wake.set)

        sub = subscribe(self.state.db.engine, self.server_id, _wake)
        counted = False
        try:
            # listen before reading, so that no change committed from here on can be missed
            await run_in_threadpool(sub.wait_ready, 5.0)
            peer = self.ws.client.host if self.ws.client else None
            gateway = await self._write(
                lambda c: assign_gateway(c, self.server_id, hello.get("tunnel_key"), wall_now())
            )
            if gateway is not None:
                self.pub_cluster = [gateway["name"]]
                self.tunnel = Tunnel(gateway["name"], self.state.settings.gateway_ports)
            else:
                self.pub_cluster = pub_cluster_for(
                    hello, self.state.settings.public_hostnames, peer
                )

            def _hello(c: Any) -> bool:
                welcomed = agent_hello(
                    c, self.server_id, hello, self.pub_cluster, self.state.now(), self.tunnel
                )
                if welcomed:
                    actor = f"agent:{self.server_id}"
                    target = f"server:{self.server_id}"
                    audit.record(c, actor, audit.SIGN_IN, target, {"via": "agent"}, peer or "")
                return welcomed

            welcome = await self._write(_hello)
            if not welcome:
                await self._close(CLOSE_UNAUTHORIZED, "server removed")
                return
            await self._send(
                {
                    "type": "hello",
                    "protocol": PROTOCOL_VERSION,
                    "server_id": self.server_id,
                    "name": self.name,
                    "heartbeat_interval": self.heartbeat_interval,
                    "gateway": gateway,
                }
            )
            log.info("agent of server %s connected from %s", self.server_id, peer)
            metrics.AGENTS.inc()
            counted = True
            self.wake.set()
            await self._serve()
        finally:
            if counted:
                metrics.AGENTS.dec()
            sub.close()
            log.info("agent of server %s disconnected", self.server_id)

    async def _serve(self) -> None:
        tasks = {asyncio.create_task(self._push()), asyncio.create_task(self._receive())}
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for task in done:
            exc = task.exception()
            if isinstance(exc, _Closed):
                await self._close(exc.code, exc.reason)
            elif exc is not None and not isinstance(exc, WebSocketDisconnect | RuntimeError):
                log.warning("agent channel of server %s ended: %r", self.server_id, exc)
                await self._close(1011, "internal error")

    async def _push(self) -> None:
        sent: str | None = None
        while True:
            wait = self.resync * random.uniform(1 - RESYNC_JITTER, 1 + RESYNC_JITTER)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), wait)
            self.wake.clear()

            def _read() -> Any:
                # the desired set and the questions (order logs) put to this server since the
                # last ones sent, in one read transaction
                with self.state.db.read() as conn:
                    desired = desired_for(conn, self.server_id)
                    if desired is None:
                        return None, [], []
                    return (
                        desired,
                        desired_volumes(conn, self.server_id),
                        open_questions(conn, self.server_id, wall_now(), self.asked),
                    )

            desired, volumes, questions = await run_in_threadpool(_read)
            if desired is None:
                raise _Closed(CLOSE_UNAUTHORIZED, "server removed")
            rev = desired_rev(desired, volumes)
            if rev != sent:
                await self._send(
                    {
                        "type": "desired",
                        "rev": rev,
                        "containers": [c.to_wire() for c in desired],
                        "volumes": [v.to_wire() for v in volumes],
                    }
                )
                sent = rev
            for question in questions:
                await self._send(question)
                self.asked = max(self.asked, int(question["req"]))

    async def _receive(self) -> None:
        while True:
            message = await _receive_message(self.ws)
            if message is None:
                continue
            kind = message.get("type")
            if kind == "heartbeat":
                # queued, never awaited: reading the channel goes on while it is written (a
                # removed server wakes the push, which finds it gone and closes the channel)
                self.heartbeats.beat(self.server_id, self.wake.set)
            elif kind == "status":
                reported = parse_volumes(message.get("volumes"))
                if reported is not None:
                    await self._write(
                        lambda c, r=reported: apply_volume_reports(
                            c, self.server_id, r, self.state.now()
                        )
                    )
                statuses = parse_statuses(message.get("containers"))
                if statuses:
                    await self._write(
                        lambda c, s=statuses: apply_statuses(
                            c,
                            self.server_id,
                            s,
                            self.pub_cluster,
                            self.tunnel,
                            now=self.state.now(),
                        )
                    )
            elif kind == "specs":
                await self._write(lambda c, m=message: agent_specs(c, self.server_id, m))
            elif kind == "logs":
                await self._write(
                    lambda c, m=message: record_answer(c, self.server_id, m, wall_now())
                )

    async def _write(self, fn: Any) -> Any:
        return await run_in_threadpool(self.state.db_write, fn)

    async def _send(self, message: dict[str, Any]) -> None:
        await self.ws.send_text(dumps(message).decode())

    async def _close(self, code: int, reason: str) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close(code=code, reason=reason)


def install_agent_api(app: FastAPI, state: AppState) -> None:
    """Mount the agent endpoints on the market's app."""
    heartbeats = HeartbeatWriter(state)

    async def register(request: Request) -> Response:
        try:
            body = parse_object(await request.body())
        except BodyTooLarge:
            return _json(413, {"error": "request body too large"})
        except InvalidInput as exc:
            return _json(400, {"error": exc.message})
        token = body.get("init_token")
        if not isinstance(token, str) or not token or len(token) > 256:
            return _json(400, {"error": "init_token is required"})
        source = request.client.host if request.client else ""

        def _register(c: Any) -> dict[str, Any]:
            done = register_agent(c, token)
            actor = f"agent:{done['server_id']}"
            detail = {"via": "init_token"}
            audit.record(c, actor, audit.SIGN_IN, f"server:{done['server_id']}", detail, source)
            return done

        try:
            result = await run_in_threadpool(state.db_write, _register)
        except AgentRefused as exc:
            return _json(exc.status, {"error": exc.error})
        except Exception:  # never a traceback, never plain text
            log.exception("agent registration failed")
            return _json(500, {"error": "internal error"})
        log.info("agent registered for server %s", result["server_id"])
        return _json(200, result)

    async def connect(ws: WebSocket) -> None:
        await ws.accept()

        def _auth() -> dict[str, Any] | None:
            with state.db.read() as conn:
                return authenticate_agent(conn, _bearer(ws))

        server = await run_in_threadpool(_auth)
        if server is None:
            await ws.close(code=CLOSE_UNAUTHORIZED, reason="unknown agent credential")
            return
        channel = AgentChannel(state, ws, int(server["id"]), str(server["name"]), heartbeats)
        await channel.run()

    app.add_api_route(f"{PREFIX}/register", register, methods=["POST"], include_in_schema=False)
    app.add_api_websocket_route(f"{PREFIX}/connect", connect)


def _json(status: int, body: dict[str, Any]) -> Response:
    return Response(dumps(body), status_code=status, media_type="application/json")
