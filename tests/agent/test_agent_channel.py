"""The host agent's registration and control channel against a real market (SQLite and
PostgreSQL over real HTTP/WebSocket), with the simulated runtime: no Docker needed."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from openclore.agent.channel import Agent, AgentThread, AgentUnauthorized, ChannelConfig
from openclore.agent.reconcile import Reconciler, ReconcileSettings
from openclore.agent.runtime.simulated import SimulatedEngine, SimulatedRuntime
from openclore.agent.state import RegistrationRefused, load_state, register
from openclore.cli.main import app as cli_app
from openclore.store.schema import orders, servers

from agent_support import (
    FAKE_SPECS,
    RestartableServer,
    host_server,
    my_order,
    start_agent,
    wait_for,
    wait_order_state,
)
from support import ADDRESS_SECRET, Market, ok, order_body, spot_body

pytestmark = pytest.mark.timing  # agents and the market talk in real time

IMAGE = "cloreai/ubuntu20.04-jupyter"


def _server_row(market: Market, server_id: int) -> dict[str, object]:
    with market.db.read() as conn:
        return dict(conn.execute(select(servers).where(servers.c.id == server_id)).one()._mapping)


# ----------------------------------------------------------------------------- onboarding


def test_registration_spends_the_init_token_once(market: Market, tmp_path: Path) -> None:
    host = market.user()
    sid, token = host_server(market, host)
    mine = ok(market.client(host).get("/v1/my_servers"))["servers"]
    assert mine[0]["init_token"] == token and mine[0]["connected"] is False

    state_dir = tmp_path / "state"
    state = register(market.url, token, state_dir)
    assert state.server_id == sid
    assert stat.S_IMODE(os.stat(state_dir / "agent.json").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(state_dir).st_mode) == 0o700
    saved = json.loads((state_dir / "agent.json").read_text())
    assert token not in json.dumps(saved)  # the init_token is spent, not kept

    row = _server_row(market, sid)
    assert row["connected"] is True
    assert row["agent_token_hash"] == hashlib.sha256(state.agent_token.encode()).hexdigest()
    mine = ok(market.client(host).get("/v1/my_servers"))["servers"]
    assert mine[0]["connected"] is True and "init_token" not in mine[0]

    with pytest.raises(RegistrationRefused, match="init_token_already_used"):
        register(market.url, token, tmp_path / "again")
    with pytest.raises(RegistrationRefused, match="invalid_init_token"):
        register(market.url, "x" * 48, tmp_path / "unknown")


def test_cli_registers_once_then_runs_without_a_token(market: Market, tmp_path: Path) -> None:
    host = market.user()
    sid, token = host_server(market, host)
    runner = CliRunner()
    state_dir = str(tmp_path / "state")
    first = runner.invoke(
        cli_app,
        [
            "agent",
            "--server-url",
            market.url,
            "--init-token",
            token,
            "--state-dir",
            state_dir,
            "--register-only",
        ],
    )
    assert first.exit_code == 0, first.output
    assert f"registered as server {sid}" in first.output
    again = runner.invoke(cli_app, ["agent", "--state-dir", state_dir, "--register-only"])
    assert again.exit_code == 0, again.output
    state = load_state(Path(state_dir))
    assert state is not None and state.server_url == market.url
    spent = runner.invoke(
        cli_app,
        [
            "agent",
            "--server-url",
            market.url,
            "--init-token",
            token,
            "--state-dir",
            str(tmp_path / "other"),
            "--register-only",
        ],
    )
    assert spent.exit_code == 78
    assert "init_token_already_used" in spent.output
    none = runner.invoke(cli_app, ["agent", "--state-dir", str(tmp_path / "nothing")])
    assert none.exit_code == 78


def test_unknown_credential_is_refused(market: Market) -> None:
    runtime = SimulatedRuntime("x")
    agent = Agent(
        ChannelConfig(server_url=market.url, agent_token="oca_nope", agent_id="x"),
        Reconciler(runtime, ReconcileSettings(agent_id="x")),
        FAKE_SPECS,
    )
    thread = AgentThread(agent).start()
    wait_for(lambda: not thread.alive(), 10, what="agent gives up")
    assert isinstance(thread.error, AgentUnauthorized)


# ----------------------------------------------------------------------------- liveness, specs


def test_connected_agent_is_online_with_its_specs(market: Market, tmp_path: Path) -> None:
    host = market.user()
    sid, token = host_server(market, host)
    assert ok(market.client().get("/v1/marketplace"))["servers"] == []
    running = start_agent(market.url, tmp_path / "s", init_token=token)
    try:
        mine = ok(market.client(host).get("/v1/my_servers"))["servers"][0]
        assert mine["online"] is True
        assert mine["specs"] == FAKE_SPECS.specs
        listed = ok(market.client().get("/v1/marketplace"))["servers"]
        assert [s["id"] for s in listed] == [sid]
        assert listed[0]["gpu_array"] == FAKE_SPECS.gpu_array
        assert listed[0]["specs"]["gpu"] == "2x NVIDIA GeForce RTX 4090"
        # heartbeats move last_seen with the market's clock
        market.clock.advance(30)
        wait_for(lambda: _server_row(market, sid)["last_seen"] == market.now(), 5)
    finally:
        running.stop()


def test_offline_then_back_online_re_resolves_the_market(market: Market, tmp_path: Path) -> None:
    host = market.user()
    renter = market.user(bitcoin="0.01")
    sid, token = host_server(market, host)
    running = start_agent(market.url, tmp_path / "s", init_token=token, heartbeat=0.3)
    engine = running.runtime.engine  # type: ignore[attr-defined]
    try:
        c = market.client(renter)
        oid = ok(c.post("/v1/create_order", json=order_body(sid, image=IMAGE)))["order_id"]
        wait_order_state(c, oid, "running")
        # no heartbeat for longer than the timeout: offline, the order stops running
        market.advance(market.settings.agent_timeout + 1)
        # …until the next heartbeat brings the server back and the order runs again
        wait_for(lambda: _server_row(market, sid)["online"] is True, 5)
        wait_for(lambda: my_order(c, oid)["running"] is True, 5)
        # the push of the order's desired set follows the commit that set it running: the
        # agent may still be re-creating its container when the API already says running
        wait_for(lambda: len(engine.containers) == 1, 5, what="the order's container back")
        time.sleep(0.3)
        assert len(engine.containers) == 1
    finally:
        running.stop()


# ----------------------------------------------------------------------------- orders


def test_order_reaches_the_agent_at_once_and_cancel_removes_it(
    market: Market, tmp_path: Path
) -> None:
    host = market.user()
    renter = market.user(bitcoin="0.01")
    sid, token = host_server(market, host)
    running = start_agent(
        market.url, tmp_path / "s", init_token=token, public_host=["gpu1.example"]
    )
    engine = running.runtime.engine  # type: ignore[attr-defined]
    try:
        c = market.client(renter)
        t0 = time.monotonic()
        body = order_body(
            sid,
            image=IMAGE,
            ports={"22": "tcp", "8000": "tcp", "8888": "http"},
            env={"A": "1"},
            jupyter_token="jt",
            ssh_password="pw",
            command="echo hi",
        )
        oid = ok(c.post("/v1/create_order", json=body))["order_id"]
        wait_for(lambda: len(engine.containers) == 1, 5, interval=0.005)
        delivered = time.monotonic() - t0
        assert delivered < 1.0, f"the order took {delivered:.3f}s to reach the agent"
        order = wait_order_state(c, oid, "running")
        assert order["pub_cluster"] == ["gpu1.example"]
        assert order["http_port"] == "8888"
        published = dict(p.split(":") for p in order["tcp_ports"])
        assert set(published) == {"22", "8000"}
        assert all(41000 <= int(v) <= 41999 for v in published.values())
        assert len(set(published.values())) == 2
        spec = next(iter(engine.specs.values()))
        assert spec.env["A"] == "1" and spec.env["JUPYTER_TOKEN"] == "jt"
        assert spec.env["SSH_PASSWORD"] == "pw"
        assert spec.onstart is not None and spec.onstart[-1] == "#!/bin/sh\necho hi\n"

        ok(c.post("/v1/cancel_order", json={"id": oid}))
        wait_for(lambda: not engine.containers, 10, what="container removed")
        order = wait_order_state(c, oid, "stopped")
        assert order["tcp_ports"] == []
    finally:
        running.stop()


def test_outbid_spot_order_is_stopped_and_the_winner_started(
    market: Market, tmp_path: Path
) -> None:
    host = market.user()
    low = market.client(market.user(bitcoin="0.01"))
    high = market.client(market.user(bitcoin="0.01"))
    sid, token = host_server(market, host)
    running = start_agent(market.url, tmp_path / "s", init_token=token)
    engine = running.runtime.engine  # type: ignore[attr-defined]
    try:
        first = ok(low.post("/v1/create_order", json=spot_body(sid, "0.000002", image=IMAGE)))
        wait_order_state(low, first["order_id"], "running")
        second = ok(high.post("/v1/create_order", json=spot_body(sid, "0.000003", image=IMAGE)))
        wait_order_state(high, second["order_id"], "running")
        # outbid: stopped, its container kept (not running) with its disk (SPEC §8)
        wait_order_state(low, first["order_id"], "halted")
        states = {c.labels["openclore.key"]: c.state for c in engine.containers.values()}
        assert states == {
            f"order-{second['order_id']}": "running",
            f"order-{first['order_id']}": "exited",
        }
    finally:
        running.stop()


def test_preempted_spot_order_gives_way_to_on_demand(market: Market, tmp_path: Path) -> None:
    host = market.user()
    bidder = market.client(market.user(bitcoin="0.01"))
    renter = market.client(market.user(bitcoin="0.01"))
    sid, token = host_server(market, host)
    running = start_agent(market.url, tmp_path / "s", init_token=token)
    engine = running.runtime.engine  # type: ignore[attr-defined]
    try:
        spot = ok(bidder.post("/v1/create_order", json=spot_body(sid, "0.000002", image=IMAGE)))
        wait_order_state(bidder, spot["order_id"], "running")
        oid = ok(renter.post("/v1/create_order", json=order_body(sid, image=IMAGE)))["order_id"]
        wait_order_state(renter, oid, "running")
        wait_order_state(bidder, spot["order_id"], "halted")
        states = {c.labels["openclore.key"]: c.state for c in engine.containers.values()}
        assert states == {f"order-{oid}": "running", f"order-{spot['order_id']}": "exited"}
        # the on-demand order leaves: the preempted bid starts again in its kept container
        ok(renter.post("/v1/cancel_order", json={"id": oid}))
        wait_order_state(bidder, spot["order_id"], "running")
    finally:
        running.stop()


def test_background_job_runs_while_idle(market: Market, tmp_path: Path) -> None:
    host = market.user()
    renter = market.client(market.user(bitcoin="0.01"))
    sid, token = host_server(market, host, bg_image="miner/idle:1")
    running = start_agent(market.url, tmp_path / "s", init_token=token)
    engine = running.runtime.engine  # type: ignore[attr-defined]

    def keys() -> set[str]:
        return {c.labels["openclore.key"] for c in engine.containers.values()}

    try:
        wait_for(lambda: keys() == {f"bg-{sid}-1"}, 5, what="background job")
        oid = ok(renter.post("/v1/create_order", json=order_body(sid, image=IMAGE)))["order_id"]
        wait_for(lambda: keys() == {f"order-{oid}"}, 5, what="order replaces background job")
        ok(renter.post("/v1/cancel_order", json={"id": oid}))
        wait_for(lambda: keys() == {f"bg-{sid}-1"}, 10, what="background job again")
    finally:
        running.stop()


def test_unavailable_image_and_crash_loop_are_reported(market: Market, tmp_path: Path) -> None:
    host = market.user()
    renter = market.client(market.user(bitcoin="0.01"))
    sid, token = host_server(market, host)
    engine = SimulatedEngine(pullable=set(), crash_images={"crashy/app:1"}, images={"crashy/app:1"})
    running = start_agent(market.url, tmp_path / "s", init_token=token, engine=engine)
    try:
        oid = ok(renter.post("/v1/create_order", json=order_body(sid, image="nobody/nothing:1")))[
            "order_id"
        ]
        order = wait_order_state(renter, oid, "error")
        assert "nobody/nothing:1" in order["error"] and "unavailable" in order["error"]
        ok(renter.post("/v1/cancel_order", json={"id": oid}))

        oid = ok(renter.post("/v1/create_order", json=order_body(sid, image="crashy/app:1")))[
            "order_id"
        ]
        order = wait_order_state(renter, oid, "restarting")
        assert "exited with code 1" in order["error"]
        order = wait_order_state(renter, oid, "crash_loop", timeout=15)
        assert "exited with code 1" in order["error"]
    finally:
        running.stop()


def test_an_agent_sees_and_changes_only_its_own_server(market: Market, tmp_path: Path) -> None:
    from websockets.sync.client import connect

    host = market.user()
    renter = market.client(market.user(bitcoin="0.01"))
    sid_a, token_a = host_server(market, host, "a")
    sid_b, token_b = host_server(market, host, "b")
    state_a = register(market.url, token_a, tmp_path / "a")
    other = start_agent(market.url, tmp_path / "b", init_token=token_b)
    try:
        oid = ok(renter.post("/v1/create_order", json=order_body(sid_b, image=IMAGE)))["order_id"]
        wait_order_state(renter, oid, "running")
        url = market.url.replace("http://", "ws://") + "/agent/v1/connect"
        auth = {"Authorization": f"Bearer {state_a.agent_token}"}
        with connect(url, additional_headers=auth) as ws:
            forged = {
                "key": f"order-{oid}",
                "kind": "order",
                "state": "error",
                "order_id": oid,
                "error": "forged",
                "tcp_ports": {"22": 1},
            }
            hello_out = {"type": "hello", "specs": {"gpu": "9x Fake"}, "containers": [forged]}
            ws.send(json.dumps(hello_out))
            hello = json.loads(ws.recv(5))
            assert hello["server_id"] == sid_a
            desired = json.loads(ws.recv(5))
            assert desired["type"] == "desired" and desired["containers"] == []
            ws.send(json.dumps({"type": "status", "containers": [forged]}))
            ws.send(json.dumps({"type": "heartbeat"}))
            time.sleep(0.3)
        order = my_order(renter, oid)
        assert order["state"] == "running" and "error" not in order
        with market.db.read() as conn:
            row = conn.execute(select(orders).where(orders.c.id == oid)).one()
        assert row.runtime_error is None
        assert _server_row(market, sid_b)["specs"] == FAKE_SPECS.specs
        assert _server_row(market, sid_a)["specs"] == {"gpu": "9x Fake"}
    finally:
        other.stop()


# ----------------------------------------------------------------------------- resilience


def test_agent_restart_adopts_its_containers(market: Market, tmp_path: Path) -> None:
    host = market.user()
    renter = market.client(market.user(bitcoin="0.01"))
    sid, token = host_server(market, host)
    engine = SimulatedEngine()
    first = start_agent(market.url, tmp_path / "s", init_token=token, engine=engine)
    oid = ok(renter.post("/v1/create_order", json=order_body(sid, image=IMAGE)))["order_id"]
    wait_order_state(renter, oid, "running")
    (container_id,) = engine.containers
    first.stop()
    assert list(engine.containers) == [container_id]  # stopping the agent stops no container

    second = start_agent(market.url, tmp_path / "s", engine=engine)
    try:
        assert second.state.agent_id == first.state.agent_id
        wait_for(lambda: second.reconciler.passes > 3, 5)
        assert list(engine.containers) == [container_id]
        assert engine.starts[container_id] == 1
        assert wait_order_state(renter, oid, "running")["tcp_ports"]
        ok(renter.post("/v1/cancel_order", json={"id": oid}))
        wait_for(lambda: not engine.containers, 10, what="container removed")
    finally:
        second.stop()


def test_agent_reconnects_after_a_server_restart(market: Market, tmp_path: Path) -> None:
    host = market.user()
    renter = market.user(bitcoin="0.01")
    sid, token = host_server(market, host)
    server = RestartableServer(market)
    server.start()
    running = start_agent(server.url, tmp_path / "s", init_token=token)
    engine = running.runtime.engine  # type: ignore[attr-defined]
    try:
        c = market.client(renter)
        oid = ok(c.post("/v1/create_order", json=order_body(sid, image=IMAGE)))["order_id"]
        wait_for(lambda: len(engine.containers) == 1, 5)
        server.stop()
        wait_for(lambda: not running.agent.connected.is_set(), 10, what="disconnect seen")
        time.sleep(0.5)
        assert len(engine.containers) == 1  # the rental keeps running meanwhile
        # cancelled while the agent could not hear of it
        ok(c.post("/v1/cancel_order", json={"id": oid}))
        server.start()
        wait_for(lambda: running.agent.connections == 2, 10, what="reconnected")
        wait_for(lambda: not engine.containers, 10, what="resynchronised after reconnect")
        assert wait_order_state(c, oid, "stopped")
    finally:
        running.stop()
        server.stop()


# ----------------------------------------------------------------------------- several processes


@pytest.mark.parametrize("backend", ["postgresql"])  # LISTEN/NOTIFY is PostgreSQL's
def test_order_created_on_one_api_process_reaches_an_agent_on_another(
    market: Market, tmp_path: Path
) -> None:
    """Two real ``openclore serve`` processes on one PostgreSQL database: the agent is connected
    to the first, the order is created through the second, and LISTEN/NOTIFY carries it over."""
    assert market.backend == "postgresql"
    import subprocess
    import sys

    import httpx

    from support import free_port

    host = market.user()
    renter = market.user(bitcoin="0.01")
    sid, token = host_server(market, host)
    procs = []
    urls = []
    env = {
        **os.environ,
        "OPENCLORE_DATABASE_URL": market.db.url,
        "OPENCLORE_RATE_LIMIT_INTERVAL": "0",
        "OPENCLORE_CREATE_ORDER_INTERVAL": "0",
        "OPENCLORE_TICK_INTERVAL": "0",
        "OPENCLORE_ADDRESS_SECRET": ADDRESS_SECRET,
    }
    try:
        for _ in range(2):
            port = free_port()
            procs.append(
                subprocess.Popen(
                    [str(Path(sys.executable).parent / "openclore"), "serve", "--port", str(port)],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=(tmp_path / f"serve-{port}.log").open("w"),
                )
            )
            urls.append(f"http://127.0.0.1:{port}")

        def up(url: str) -> bool:
            try:
                return httpx.get(url + "/v1/marketplace", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        for url in urls:
            try:
                wait_for(lambda url=url: up(url), 30, interval=0.1, what=f"{url} up")  # type: ignore[misc]
            except AssertionError:
                logs = "\n".join(p.read_text() for p in tmp_path.glob("serve-*.log"))
                raise AssertionError(f"{url} did not come up; server logs:\n{logs}") from None
        running = start_agent(urls[0], tmp_path / "s", init_token=token)
        engine = running.runtime.engine  # type: ignore[attr-defined]
        try:
            with httpx.Client(base_url=urls[1], headers={"auth": renter}) as other:
                t0 = time.monotonic()
                oid = ok(other.post("/v1/create_order", json=order_body(sid, image=IMAGE)))[
                    "order_id"
                ]
                wait_for(lambda: len(engine.containers) == 1, 5, interval=0.005)
                delivered = time.monotonic() - t0
                assert delivered < 1.0, f"took {delivered:.3f}s across processes"
                assert wait_order_state(other, oid, "running")["tcp_ports"]
        finally:
            running.stop()
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)


def test_event_hub_delivers_only_after_commit(market: Market) -> None:
    """notify_server inside a transaction: nothing before the commit, nothing after a rollback."""
    from openclore.engine.notify import notify_server, subscribe

    heard: list[float] = []
    sub = subscribe(market.db.engine, 77, lambda: heard.append(time.monotonic()))
    try:
        assert sub.wait_ready(5)
        with pytest.raises(RuntimeError), market.db.write() as conn:
            notify_server(conn, 77)
            raise RuntimeError("rolled back")
        time.sleep(0.3)
        assert heard == []
        with market.db.write() as conn:
            notify_server(conn, 77)
            time.sleep(0.2)
            assert heard == []
        wait_for(lambda: heard, 2, what="notification after commit")
    finally:
        sub.close()


def test_no_subscriber_leaks(market: Market, tmp_path: Path) -> None:
    from openclore.engine.notify import hub

    host = market.user()
    _, token = host_server(market, host)
    before = hub.subscriber_count()
    running = start_agent(market.url, tmp_path / "s", init_token=token)
    wait_for(lambda: hub.subscriber_count() == before + 1, 5)
    running.stop()
    wait_for(lambda: hub.subscriber_count() == before, 5, what="unsubscribed")


def test_openclore_agent_command_runs_until_sigterm(market: Market, tmp_path: Path) -> None:
    """The real command: registered once, then started with no token; SIGTERM ends it cleanly."""
    import signal
    import subprocess
    import sys

    host = market.user()
    sid, token = host_server(market, host)
    register(market.url, token, tmp_path / "s")
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "openclore"),
            "agent",
            "--state-dir",
            str(tmp_path / "s"),
            "--runtime",
            "simulated",
            "--disk-path",
            str(tmp_path),
            "--country",
            "CZ",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for(lambda: _server_row(market, sid)["online"] is True, 20, what="agent online")
        specs = _server_row(market, sid)["specs"]
        assert isinstance(specs, dict) and specs["net"]["cc"] == "CZ"
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, output
    assert "connected as server" in output


# ----------------------------------------------------------------------------- heartbeats


def test_heartbeats_written_together_leave_out_offline_and_removed_servers(
    market: Market,
) -> None:
    from sqlalchemy import update

    from openclore.market.agents import agent_heartbeats

    host = market.user()
    live, offline, removed = (host_server(market, host, name)[0] for name in ("a", "b", "c"))
    with market.db.write() as conn:
        conn.execute(update(servers).where(servers.c.id.in_([live, removed])).values(online=True))
        conn.execute(update(servers).where(servers.c.id == removed).values(removed_at=1))
    market.clock.advance(7)
    with market.db.write() as conn:
        late = agent_heartbeats(conn, [removed, live, offline, live], market.now())
    assert late == sorted([offline, removed])
    assert _server_row(market, live)["last_seen"] == market.now()
    assert _server_row(market, offline)["last_seen"] != market.now()


def test_a_heartbeat_of_a_server_removed_without_notice_closes_the_channel(
    market: Market, tmp_path: Path
) -> None:
    from sqlalchemy import update
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    sid, token = host_server(market, market.user())
    state = register(market.url, token, tmp_path / "s")
    url = market.url.replace("http://", "ws://") + "/agent/v1/connect"
    auth = {"Authorization": f"Bearer {state.agent_token}"}
    with connect(url, additional_headers=auth) as ws:
        ws.send(json.dumps({"type": "hello"}))
        assert json.loads(ws.recv(5))["server_id"] == sid
        assert json.loads(ws.recv(5))["type"] == "desired"
        ws.send(json.dumps({"type": "heartbeat"}))
        wait_for(lambda: _server_row(market, sid)["last_seen"] == market.now(), 5)
        # gone behind the market's back (no notification): the next heartbeat finds it out
        with market.db.write() as conn:
            conn.execute(update(servers).where(servers.c.id == sid).values(removed_at=1))
        ws.send(json.dumps({"type": "heartbeat"}))
        with pytest.raises(ConnectionClosed):
            while True:
                ws.recv(10)
        assert ws.close_code == 4401


def test_the_tunnel_withdraws_forwards_no_longer_wanted() -> None:
    """A container restarted on a new host port: the old forward is closed and the new one asked
    for (else the gateway would keep sending renters to the dead port)."""
    import asyncio

    import asyncssh

    from openclore.agent.tunnel import Tunnel

    class Listener:
        def __init__(self, host_port: int) -> None:
            self.host_port = host_port
            self.closed = False

        def close(self) -> None:
            self.closed = True

    class Gateway:  # the SSH connection's side the tunnel uses: remote forwards
        def __init__(self) -> None:
            self.asked: list[tuple[str, int, int]] = []
            self.listeners: list[Listener] = []

        async def forward_remote_port(
            self, listen_host: str, listen_port: int, dest_host: str, dest_port: int
        ) -> Listener:
            assert dest_host == "127.0.0.1"
            self.asked.append((listen_host, listen_port, dest_port))
            self.listeners.append(Listener(dest_port))
            return self.listeners[-1]

    async def run() -> None:
        tunnel = Tunnel(asyncssh.generate_private_key("ssh-ed25519"))
        gateway = Gateway()
        conn: Any = gateway
        tunnel.set_forwards({(7, 22): 40000, (7, 8888): 40001})
        assert not await tunnel._reconcile(conn)
        assert sorted(gateway.asked) == [("order-7", 22, 40000), ("order-7", 8888, 40001)]
        tunnel.set_forwards({(7, 22): 40002, (7, 8888): 40001})  # 22 restarted elsewhere
        await tunnel._reconcile(conn)
        assert gateway.asked[-1] == ("order-7", 22, 40002) and len(gateway.asked) == 3
        assert [(li.host_port, li.closed) for li in gateway.listeners] == [
            (40000, True),
            (40001, False),
            (40002, False),
        ]
        tunnel.set_forwards({})  # the order ended: every forward goes
        await tunnel._reconcile(conn)
        assert all(li.closed for li in gateway.listeners) and tunnel.active == {}

    asyncio.run(run())
