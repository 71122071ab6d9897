"""Keeping a renter's work (agent protocol 3) on the simulated runtime, one pass at a time: stopped
containers are kept with their files, restarts happen once per number, resets start again from
the image on the same ports, a changed spec carries the files over, volumes are kept, removed
and reported (no server, no Docker)."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import pytest

from openclore.agent.channel import Agent, AgentThread, ChannelConfig
from openclore.agent.launch import keep_image
from openclore.agent.reconcile import Reconciler, ReconcileSettings
from openclore.agent.runtime import LABEL_AGENT, LABEL_BASE, LaunchSpec
from openclore.agent.runtime.docker import Hardening, create_options
from openclore.agent.runtime.simulated import SimulatedEngine, SimulatedRuntime
from openclore.protocol import (
    CRASH_LOOP,
    ERROR,
    HALTED,
    KIND_ORDER,
    PROTOCOL_VERSION,
    RUNNING,
    DesiredContainer,
    DesiredVolume,
    VolumeStatus,
)

from agent_support import FAKE_SPECS, wait_for

IMAGE = "img/app:1"
MARKER = "/root/work.txt"


def order(oid: int = 1, **kw: Any) -> DesiredContainer:
    values: dict[str, Any] = {
        "key": f"order-{oid}",
        "kind": KIND_ORDER,
        "image": IMAGE,
        "order_id": oid,
        "ports": {"22": "tcp", "8888": "http"},
    }
    values.update(kw)
    return DesiredContainer(**values)


def make(
    engine: SimulatedEngine | None = None, agent_id: str = "agent-a"
) -> tuple[Reconciler, SimulatedRuntime]:
    runtime = SimulatedRuntime(agent_id, engine or SimulatedEngine())
    settings = ReconcileSettings(agent_id=agent_id, port_range=(50000, 50009), probe_ports=False)
    return Reconciler(runtime, settings), runtime


def run(reconciler: Reconciler, *desired: DesiredContainer, passes: int = 1, **kw: Any) -> None:
    reconciler.set_desired(list(desired), **kw)
    for _ in range(passes):
        reconciler.reconcile_once()


def only(runtime: SimulatedRuntime) -> Any:
    (c,) = runtime.containers()
    return c


# ----------------------------------------------------------------------------- stop and start


def test_a_stopped_order_keeps_its_container_and_its_ports() -> None:
    reconciler, runtime = make()
    run(reconciler, order())
    running = only(runtime)
    runtime.write(running.id, MARKER, "epoch 7")
    before = reconciler.statuses()["order-1"]

    run(reconciler, order(stopped=True), passes=5)
    kept = only(runtime)
    assert kept.id == running.id and kept.state == "exited"
    assert runtime.engine.stops[kept.id] == 1
    assert runtime.engine.starts[kept.id] == 1  # never started again while stopped
    status = reconciler.statuses()["order-1"]
    assert status.state == HALTED and status.error is None
    assert status.container_id == running.id
    assert (status.tcp_ports, status.http_port, status.http_host_port) == (
        before.tcp_ports,
        before.http_port,
        before.http_host_port,
    )
    # stopped on purpose: no crash counted
    assert not reconciler._crashes.get("order-1")

    run(reconciler, order())
    resumed = only(runtime)
    assert resumed.id == running.id and resumed.state == "running"
    assert runtime.engine.starts[resumed.id] == 2
    assert runtime.read(resumed.id, MARKER) == "epoch 7"
    status = reconciler.statuses()["order-1"]
    assert status.state == RUNNING and status.error is None
    assert status.tcp_ports == before.tcp_ports


def test_a_stopped_order_without_a_container_is_not_launched() -> None:
    reconciler, runtime = make()
    run(reconciler, order(stopped=True), passes=3)
    assert runtime.containers() == []
    status = reconciler.statuses()["order-1"]
    assert status.state == HALTED and status.container_id is None
    run(reconciler, order())
    assert only(runtime).state == "running"


def test_a_stop_is_not_a_crash_even_after_it_crashed_before() -> None:
    reconciler, runtime = make()
    run(reconciler, order())
    c = only(runtime)
    for _ in range(3):  # a crash loop
        runtime.crash(c.id)
        reconciler.reconcile_once()
        reconciler._crashes["order-1"].exits = [0.0] * len(reconciler._crashes["order-1"].exits)
    run(reconciler, order(stopped=True), passes=3)
    assert reconciler.statuses()["order-1"].state == HALTED
    run(reconciler, order())
    status = reconciler.statuses()["order-1"]
    assert status.state == RUNNING and status.state != CRASH_LOOP


def test_an_agent_restart_adopts_a_stopped_container_and_keeps_it() -> None:
    engine = SimulatedEngine()
    first, runtime = make(engine)
    run(first, order())
    c = only(runtime)
    runtime.write(c.id, MARKER, "kept")
    run(first, order(stopped=True))

    second, _ = make(engine)  # a new agent process: same labels, empty memory
    second.reconcile_once()  # before the server has spoken: nothing changes
    second.reconcile_once()
    assert only(runtime).id == c.id and only(runtime).state == "exited"
    run(second, order(stopped=True), passes=3)
    assert only(runtime).id == c.id and only(runtime).state == "exited"
    assert engine.starts[c.id] == 1
    assert second.statuses()["order-1"].state == HALTED

    run(second, order())
    assert only(runtime).id == c.id and only(runtime).state == "running"
    assert runtime.read(c.id, MARKER) == "kept"


# ----------------------------------------------------------------------------- restart


def test_a_restart_happens_once_per_number() -> None:
    reconciler, runtime = make()
    run(reconciler, order())
    c = only(runtime)
    assert reconciler.statuses()["order-1"].restarted is None

    run(reconciler, order(restart=1), passes=4)
    assert runtime.engine.restarts[c.id] == 1
    assert only(runtime).id == c.id and only(runtime).state == "running"
    status = reconciler.statuses()["order-1"]
    assert status.restarted == 1 and status.state == RUNNING

    run(reconciler, order(restart=2), passes=4)
    assert runtime.engine.restarts[c.id] == 2
    assert reconciler.statuses()["order-1"].restarted == 2
    # the container keeps its files through a restart
    runtime.write(c.id, MARKER, "x")
    run(reconciler, order(restart=3))
    assert runtime.read(c.id, MARKER) == "x"


def test_an_agent_restart_costs_at_most_one_extra_restart() -> None:
    engine = SimulatedEngine()
    first, runtime = make(engine)
    run(first, order(restart=4), passes=2)
    c = only(runtime)
    assert engine.restarts.get(c.id, 0) == 0  # launched after the ask: that was the restart
    assert first.statuses()["order-1"].restarted == 4

    second, _ = make(engine)
    run(second, order(restart=4), passes=6)
    assert engine.restarts[c.id] <= 1
    assert second.statuses()["order-1"].restarted == 4


def test_a_restart_of_a_crashed_container_starts_it() -> None:
    reconciler, runtime = make()
    run(reconciler, order())
    c = only(runtime)
    runtime.crash(c.id)
    run(reconciler, order(restart=1))
    assert only(runtime).state == "running"
    assert reconciler.statuses()["order-1"].restarted == 1


# ----------------------------------------------------------------------------- reset and respec


def test_a_reset_starts_again_from_the_image_on_the_same_ports() -> None:
    reconciler, runtime = make()
    run(reconciler, order())
    old = only(runtime)
    runtime.write(old.id, MARKER, "old")
    before = reconciler.statuses()["order-1"]
    # another rental takes the next ports of the cursor meanwhile
    run(reconciler, order(), order(2))

    run(reconciler, order(generation=1), order(2))
    new = next(c for c in runtime.containers() if c.key == "order-1")
    assert new.id != old.id
    assert runtime.read(new.id, MARKER) is None  # from the image: nothing carried
    assert runtime.engine.specs[new.id].image == IMAGE
    after = reconciler.statuses()["order-1"]
    assert after.tcp_ports == before.tcp_ports
    assert after.http_host_port == before.http_host_port
    assert not runtime.engine.image_ids  # nothing committed


def test_a_reset_while_stopped_removes_the_container_and_keeps_the_ports() -> None:
    reconciler, runtime = make()
    run(reconciler, order())
    old = only(runtime)
    runtime.write(old.id, MARKER, "old")
    before = reconciler.statuses()["order-1"]
    run(reconciler, order(stopped=True))
    run(reconciler, order(stopped=True, generation=1), passes=2)
    assert runtime.containers() == []
    halted = reconciler.statuses()["order-1"]
    assert halted.state == HALTED and halted.tcp_ports == before.tcp_ports
    run(reconciler, order(generation=1))
    new = only(runtime)
    assert new.id != old.id and runtime.read(new.id, MARKER) is None
    assert reconciler.statuses()["order-1"].tcp_ports == before.tcp_ports


def test_a_stopped_container_started_on_other_gpus_keeps_its_files() -> None:
    reconciler, runtime = make()
    first = order(gpus=[0], share=(1, 2))
    run(reconciler, first)
    old = only(runtime)
    runtime.write(old.id, MARKER, "trained weights")
    before = reconciler.statuses()["order-1"]
    run(reconciler, order(gpus=[0], share=(1, 2), stopped=True))

    # the spec changes while stopped: the container is kept as it is until it starts again
    run(reconciler, order(gpus=[1], share=(1, 2), stopped=True), passes=2)
    assert only(runtime).id == old.id and only(runtime).state == "exited"
    assert reconciler.statuses()["order-1"].state == HALTED

    moved = order(gpus=[1], share=(1, 2))
    run(reconciler, moved)
    new = only(runtime)
    assert new.id != old.id and new.state == "running"
    assert runtime.read(new.id, MARKER) == "trained weights"
    spec = runtime.engine.specs[new.id]
    assert spec.gpu_ids == [1] and spec.env["NVIDIA_VISIBLE_DEVICES"] == "1"
    base = new.labels[LABEL_BASE]
    assert spec.image == base
    kept = keep_image("order-1", 0, "agent-a")
    assert runtime.engine.image_ids[kept] == base
    assert runtime.engine.image_labels[base][LABEL_AGENT] == "agent-a"
    status = reconciler.statuses()["order-1"]
    assert status.state == RUNNING and status.tcp_ports == before.tcp_ports
    assert status.http_host_port == before.http_host_port

    # the committed image goes with the last container made from it
    run(reconciler)
    assert runtime.containers() == []
    assert base not in runtime.engine.images and not runtime.engine.image_ids


def test_a_changed_spec_of_a_running_order_carries_its_files() -> None:
    reconciler, runtime = make()
    run(reconciler, order(disk_gb=20))
    old = only(runtime)
    runtime.write(old.id, MARKER, "data")
    run(reconciler, order(disk_gb=40))
    new = only(runtime)
    assert new.id != old.id and runtime.read(new.id, MARKER) == "data"
    assert runtime.engine.specs[new.id].disk_gb == 40
    # and again: the chain of commits keeps carrying
    runtime.write(new.id, "/root/more.txt", "more")
    run(reconciler, order(disk_gb=60))
    third = only(runtime)
    assert runtime.read(third.id, MARKER) == "data"
    assert runtime.read(third.id, "/root/more.txt") == "more"


def test_files_committed_before_an_agent_restart_are_still_carried() -> None:
    engine = SimulatedEngine()
    first, runtime = make(engine)
    run(first, order(gpus=[0], share=(1, 2)))
    old = only(runtime)
    runtime.write(old.id, MARKER, "saved")
    # the agent committed the files and removed the old container, then stopped
    runtime.commit(old.id, keep_image("order-1", 0, "agent-a"), {})
    runtime.remove(old.id, 0)

    second, _ = make(engine)
    run(second, order(gpus=[1], share=(1, 2)))
    assert runtime.read(only(runtime).id, MARKER) == "saved"


def test_a_background_job_is_not_carried() -> None:
    reconciler, runtime = make()
    run(reconciler, DesiredContainer(key="bg-1-1", kind="background", image="miner:1"))
    runtime.write(only(runtime).id, MARKER, "x")
    changed = DesiredContainer(key="bg-1-1", kind="background", image="miner:1", env={"A": "1"})
    run(reconciler, changed)
    assert runtime.read(only(runtime).id, MARKER) is None
    assert not runtime.engine.image_ids


# ----------------------------------------------------------------------------- volumes


def test_volumes_are_made_reported_and_removed() -> None:
    reconciler, runtime = make()
    vol = DesiredVolume(name="openclore-vol-1", size_gb=10)
    run(reconciler, volumes=[vol])
    assert [v.name for v in runtime.volumes()] == ["openclore-vol-1"]
    expected = [VolumeStatus(name="openclore-vol-1", ok=True, quota=True, error=None)]
    assert reconciler.volume_snapshot() == expected
    assert reconciler.take_volume_changes() == expected
    assert reconciler.take_volume_changes() is None  # only when it changes
    run(reconciler, volumes=[vol], passes=2)
    assert reconciler.take_volume_changes() is None

    run(reconciler, volumes=[])
    assert runtime.volumes() == []
    assert reconciler.take_volume_changes() == []


def test_a_desired_set_without_volumes_leaves_them_alone() -> None:
    reconciler, runtime = make()
    run(reconciler, volumes=[DesiredVolume(name="v1", size_gb=1)])
    run(reconciler, order())  # an older market: no volumes key
    assert [v.name for v in runtime.volumes()] == ["v1"]

    restarted, _ = make(runtime.engine)
    restarted.reconcile_once()  # before the server has spoken: reported, kept
    assert [v.name for v in restarted.volume_snapshot()] == ["v1"]
    assert [v.name for v in runtime.volumes()] == ["v1"]


def test_an_unenforced_size_is_said() -> None:
    reconciler, _ = make(SimulatedEngine(volume_quota=False))
    run(reconciler, volumes=[DesiredVolume(name="v1", size_gb=50)])
    (status,) = reconciler.volume_snapshot()
    assert status.ok and not status.quota
    assert "50 GB" in (status.error or "") and "not enforced" in (status.error or "")


def test_a_mounted_volume_is_never_removed_and_its_data_outlives_the_container() -> None:
    reconciler, runtime = make()
    vol = DesiredVolume(name="openclore-vol-7", size_gb=5)
    mounted = order(mounts={"openclore-vol-7": "/data"})
    run(reconciler, mounted, volumes=[vol])
    c = only(runtime)
    assert runtime.engine.specs[c.id].mounts == {"openclore-vol-7": "/data"}
    runtime.write(c.id, "/data/dataset.bin", "rows")

    # the market no longer lists the volume while a container (even a stopped one) mounts it
    run(reconciler, mounted, volumes=[], passes=2)
    assert [v.name for v in runtime.volumes()] == ["openclore-vol-7"]
    run(reconciler, order(mounts={"openclore-vol-7": "/data"}, stopped=True), volumes=[])
    assert [v.name for v in runtime.volumes()] == ["openclore-vol-7"]

    # the order ends, the volume is still wanted: a later order mounts it and finds the data
    run(reconciler, volumes=[vol])
    assert runtime.containers() == []
    run(reconciler, order(2, mounts={"openclore-vol-7": "/mnt/v"}), volumes=[vol])
    assert runtime.read(only(runtime).id, "/mnt/v/dataset.bin") == "rows"

    # the order ends and the volume is dropped in the same message: both go
    run(reconciler, volumes=[])
    assert runtime.containers() == [] and runtime.volumes() == []


class Careless(SimulatedRuntime):
    """An engine that would remove a volume a container mounts: the reconciler must not ask."""

    removed: list[str]

    def remove_volume(self, name: str) -> None:
        self.removed = [*getattr(self, "removed", []), name]
        with self.engine.lock:
            self.engine.volumes.pop(name, None)


def test_the_reconciler_itself_never_removes_a_mounted_volume() -> None:
    engine = SimulatedEngine()
    runtime = Careless("agent-a", engine)
    settings = ReconcileSettings(agent_id="agent-a", port_range=(50000, 50009), probe_ports=False)
    reconciler = Reconciler(runtime, settings)
    mounted = order(mounts={"v1": "/data"})
    run(reconciler, mounted, volumes=[DesiredVolume(name="v1", size_gb=1)])
    run(reconciler, mounted, volumes=[], passes=2)
    run(reconciler, order(mounts={"v1": "/data"}, stopped=True), volumes=[], passes=2)
    assert [v.name for v in runtime.volumes()] == ["v1"]
    assert getattr(runtime, "removed", []) == []
    run(reconciler, volumes=[])
    assert runtime.removed == ["v1"] and runtime.volumes() == []

    # nor one that a desired container will mount (a stopped order without its container yet)
    run(reconciler, volumes=[DesiredVolume(name="v2", size_gb=1)])
    run(reconciler, order(2, mounts={"v2": "/data"}, stopped=True), volumes=[], passes=2)
    assert runtime.containers() == [] and [v.name for v in runtime.volumes()] == ["v2"]


def test_a_mount_of_a_missing_volume_is_an_error() -> None:
    reconciler, runtime = make()
    run(reconciler, order(mounts={"nope": "/data"}), volumes=[])
    assert runtime.containers() == []
    status = reconciler.statuses()["order-1"]
    assert status.state == ERROR and "volume nope" in (status.error or "")


def test_a_volume_that_cannot_be_made_is_reported_and_retried() -> None:
    engine = SimulatedEngine()
    reconciler, runtime = make(engine)
    other = SimulatedRuntime("agent-b", engine)
    other.create_volume("taken", 1)
    wanted = [DesiredVolume(name="taken", size_gb=1)]
    run(reconciler, volumes=wanted)
    (status,) = reconciler.volume_snapshot()
    assert not status.ok and "not this agent's" in (status.error or "")
    other.remove_volume("taken")
    run(reconciler, volumes=wanted)
    assert runtime.volumes() == []  # not before the retry delay
    reconciler.volumes._next_try["taken"] = 0.0
    run(reconciler, volumes=wanted)
    assert [v.name for v in runtime.volumes()] == ["taken"]
    assert reconciler.volume_snapshot() == [VolumeStatus(name="taken", ok=True, quota=True)]


# ----------------------------------------------------------------------------- disk size


def test_disk_gb_is_the_containers_disk_over_the_share() -> None:
    reconciler, runtime = make()
    run(reconciler, order(gpus=[0], share=(1, 2), disk_gb=30))
    spec = runtime.engine.specs[only(runtime).id]
    assert spec.disk_gb == 30
    options = create_options(spec, Hardening(), None, 100 << 30)
    assert options["storage_opt"] == {"size": "30G"}
    no_size = create_options(spec, Hardening(), None, 100 << 30, disk_sizes=False)
    assert no_size["storage_opt"] == {"size": str(50 << 30)}
    plain = create_options(LaunchSpec(name="p", image=IMAGE), Hardening(), None, None)
    assert "storage_opt" not in plain and "volumes" not in plain
    spec.mounts = {"v1": "/data"}
    assert create_options(spec, Hardening(), None, None)["volumes"] == {
        "v1": {"bind": "/data", "mode": "rw"}
    }


# ----------------------------------------------------------------------------- channel


class FakeMarket:
    """A WebSocket peer that speaks the market's side of the channel: records what the agent
    sends and sends one ``desired`` message after the hello."""

    def __init__(self, desired: dict[str, Any]) -> None:
        self.desired = desired
        self.received: list[dict[str, Any]] = []
        self.port = 0
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._thread.start()
        assert self._ready.wait(10)

    def _main(self) -> None:
        from websockets.asyncio.server import serve

        async def handler(ws: Any) -> None:
            hello = json.loads(await ws.recv())
            self.received.append(hello)
            await ws.send(json.dumps({"type": "hello", "server_id": 1, "heartbeat_interval": 30}))
            await ws.send(json.dumps(self.desired))
            async for raw in ws:
                self.received.append(json.loads(raw))

        async def main() -> None:
            self._stop = asyncio.Event()
            async with serve(handler, "127.0.0.1", 0) as server:
                self.port = next(iter(server.sockets)).getsockname()[1]
                self._ready.set()
                await self._stop.wait()

        self._loop.run_until_complete(main())

    def close(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(5)


@pytest.mark.parametrize("with_volumes", [True, False])
def test_the_channel_carries_volumes(with_volumes: bool) -> None:
    engine = SimulatedEngine()
    SimulatedRuntime("agent-a", engine).create_volume("old", 1)  # held from before
    reconciler, runtime = make(engine)
    reconciler.settings.poll_interval = 0.05
    desired: dict[str, Any] = {
        "type": "desired",
        "rev": "r1",
        "containers": [order(mounts={"openclore-vol-1": "/data"}).to_wire()],
    }
    if with_volumes:
        desired["volumes"] = [{"name": "openclore-vol-1", "size_gb": 3}]
    market = FakeMarket(desired)
    config = ChannelConfig(
        server_url=f"http://127.0.0.1:{market.port}", agent_token="t", agent_id="agent-a"
    )
    config.tunnel = False
    agent = Agent(config, reconciler, FAKE_SPECS)
    thread = AgentThread(agent).start()
    try:
        wait_for(lambda: market.received, 10, what="hello")
        hello = market.received[0]
        assert hello["type"] == "hello" and hello["protocol"] == PROTOCOL_VERSION == 3
        assert hello["volumes"] == [{"name": "old", "ok": True, "quota": True, "error": None}]
        if with_volumes:

            def reported() -> Any:
                for m in market.received[1:]:
                    if m["type"] == "status" and "volumes" in m:
                        names = [v["name"] for v in m["volumes"]]
                        if names == ["openclore-vol-1"]:
                            return m
                return None

            message = wait_for(reported, 10, what="volumes reported")
            assert message["volumes"] == [
                {"name": "openclore-vol-1", "ok": True, "quota": True, "error": None}
            ]
            wait_for(
                lambda: (
                    reconciler.statuses().get("order-1") is not None
                    and reconciler.statuses()["order-1"].state == RUNNING
                ),
                10,
                what="order running",
            )
            assert [v.name for v in runtime.volumes()] == ["openclore-vol-1"]
        else:
            wait_for(lambda: agent.desired_received, 10, what="desired")
            wait_for(lambda: "order-1" in reconciler.statuses(), 10, what="a status")
            # an older market: the volumes are left alone, the mount is refused
            assert agent.last_volumes is None
            assert [v.name for v in runtime.volumes()] == ["old"]
            status = reconciler.statuses()["order-1"]
            assert status.state == ERROR and "volume openclore-vol-1" in (status.error or "")
    finally:
        thread.stop()
        market.close()
