"""Per-GPU rentals on the agent (SPEC §8): each rental on one machine gets its own GPUs, CPUs,
memory, disk and ports, and cannot see or signal the others.

The protocol and the container a rental becomes are checked without Docker; two rentals side by
side on a simulated 4-GPU host are then run with the real engine (``openclore-test/busybox``,
skipped without it, mandatory when ``CI=true``) and what Docker created is inspected, first
through the reconciler alone, then end to end (market, channel, agent) on a 2-GPU server. This
machine has no NVIDIA runtime, so the real containers request no GPU; the exact GPU device
request is pinned on the options the runtime builds (``scripts/gpu-partial-check.sh`` checks it
on a GPU machine).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker  # type: ignore[import-untyped]
import pytest

from openclore.agent import share
from openclore.agent.reconcile import Reconciler, ReconcileSettings
from openclore.agent.runtime import LaunchSpec, PortBinding
from openclore.agent.runtime.docker import DockerRuntime, Hardening, create_options, gpu_request
from openclore.agent.runtime.simulated import SimulatedEngine, SimulatedRuntime
from openclore.protocol import KIND_BACKGROUND, KIND_ORDER, RUNNING, DesiredContainer

from agent_support import host_server, start_agent, wait_for, wait_order_state
from support import IN_CI, Market, ok, order_body

IMAGE = "openclore-test/busybox:latest"
TEST_LABEL = "openclore.test"
MiB = 1024**2


def rental(oid: int, **kw: Any) -> DesiredContainer:
    values: dict[str, Any] = {
        "key": f"order-{oid}",
        "kind": KIND_ORDER,
        "image": IMAGE,
        "order_id": oid,
        "ports": {"22": "tcp"},
    }
    values.update(kw)
    return DesiredContainer(**values)


# ----------------------------------------------------------------------------- protocol


def test_an_old_server_means_the_whole_machine() -> None:
    old = {"key": "order-1", "kind": "order", "image": IMAGE, "order_id": 1, "env": {"A": "b"}}
    d = DesiredContainer.from_wire(old)
    assert d.gpus is None and d.share is None
    # the hash of a whole-machine container is the one agents computed before these fields
    # existed (the same fields, the same way): an upgraded agent restarts no rental it finds
    before = {
        "key": "order-1",
        "kind": "order",
        "image": IMAGE,
        "command": "",
        "env": {"A": "b"},
        "ports": {},
        "order_id": 1,
        "jupyter_token": None,
        "ssh_key": None,
        "ssh_password": None,
        "autossh_entrypoint": False,
    }
    raw = json.dumps(before, sort_keys=True, separators=(",", ":"))
    assert d.spec_hash() == hashlib.sha256(raw.encode()).hexdigest()[:16]


def test_gpus_and_share_travel_and_shape_the_container() -> None:
    d = rental(3, gpus=[2, 1], share=(2, 4))
    wire = d.to_wire()
    assert wire["gpus"] == [2, 1] and wire["share"] == [2, 4]
    back = DesiredContainer.from_wire(wire)
    assert back.gpus == [1, 2] and back.share == (2, 4)
    whole = rental(3)
    assert len({whole.spec_hash(), back.spec_hash()}) == 2
    # moved to other GPUs, or another share: a new container
    assert rental(3, gpus=[1, 3], share=(2, 4)).spec_hash() != back.spec_hash()
    assert rental(3, gpus=[1, 2], share=(2, 8)).spec_hash() != back.spec_hash()
    assert rental(3, gpus=[1, 2], share=(2, 4)).spec_hash() == back.spec_hash()


@pytest.mark.parametrize(
    "fields",
    [
        {"gpus": "0"},
        {"gpus": [-1]},
        {"gpus": [True]},
        {"share": [0, 4]},
        {"share": [5, 4]},
        {"share": [1]},
        {"gpus": [0, 1], "share": [1, 4]},  # more GPUs than its share
        {"gpus": [4], "share": [1, 4]},  # an index the machine does not have
    ],
)
def test_malformed_slots_are_refused(fields: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        DesiredContainer.from_wire({"key": "order-1", "image": IMAGE, **fields})


# ----------------------------------------------------------------------------- shares


def test_cpu_slices_are_disjoint_and_follow_the_slots() -> None:
    cpus = list(range(16))
    assert [share.slot_cpus(i, 4, cpus) for i in range(4)] == [
        [0, 1, 2, 3],
        [4, 5, 6, 7],
        [8, 9, 10, 11],
        [12, 13, 14, 15],
    ]
    assert share.cpuset(share.cpus_for_slots([1, 2], 4, cpus)) == "4-11"
    assert share.cpuset(share.cpus_for_slots([0, 3], 4, cpus)) == "0-3,12-15"
    # any split of 8 slots over 12 CPUs: disjoint, every CPU used once
    twelve = list(range(12))
    parts = [share.slot_cpus(i, 8, twelve) for i in range(8)]
    assert sorted(c for p in parts for c in p) == twelve and all(parts)
    # fewer CPUs than GPUs: each slot still gets one (then shared)
    assert share.slot_cpus(3, 4, [0, 1]) == [1]
    # the host's own CPU numbers, not positions
    assert share.cpus_for_slots([1], 2, [2, 3, 6, 7]) == [6, 7]
    with pytest.raises(ValueError):
        share.slot_cpus(4, 4, cpus)


def test_memory_cpu_and_disk_shares() -> None:
    assert share.scaled(8 << 30, (1, 4)) == 2 << 30
    assert share.scaled(1000 * MiB + 3, (1, 3)) == 333 * MiB
    assert share.scaled(8 << 30, None) == 8 << 30
    assert share.scaled(None, (1, 4)) is None
    assert share.scaled_cpus(16.0, (3, 4)) == 12.0
    assert share.visible_devices([3, 1]) == "1,3"
    assert share.visible_devices([]) == "void"


def test_the_container_a_partial_rental_becomes() -> None:
    runtime = SimulatedRuntime("agent-a", SimulatedEngine())
    settings = ReconcileSettings(
        agent_id="agent-a",
        port_range=(50000, 50009),
        probe_ports=False,
        gpus=True,
        cpus=16.0,
        memory=64 << 30,
        host_cpus=list(range(16)),
    )
    reconciler = Reconciler(runtime, settings)
    binding = [PortBinding("22", 50000, "0.0.0.0", "tcp")]
    env = {"NVIDIA_VISIBLE_DEVICES": "all"}  # the renter asks for more: not given
    spec = reconciler.launch_spec(rental(1, gpus=[1, 2], share=(2, 4), env=env), binding)
    assert spec.gpus and spec.gpu_ids == [1, 2]
    assert spec.env["NVIDIA_VISIBLE_DEVICES"] == "1,2"
    assert spec.cpuset_cpus == "4-11" and spec.cpus == 8.0 and spec.memory == 32 << 30
    assert spec.disk_share == (2, 4)
    whole = reconciler.launch_spec(rental(2), binding)
    assert whole.gpus and whole.gpu_ids is None and whole.cpuset_cpus is None
    assert "NVIDIA_VISIBLE_DEVICES" not in whole.env
    assert whole.cpus == 16.0 and whole.memory == 64 << 30 and whole.disk_share is None
    background = DesiredContainer(key="bg-1-0", kind=KIND_BACKGROUND, image=IMAGE)
    assert reconciler.launch_spec(background, []).gpu_ids is None


def test_the_engine_is_asked_for_exactly_the_rentals_gpus() -> None:
    spec = LaunchSpec(
        name="r",
        image=IMAGE,
        gpus=True,
        gpu_ids=[1, 2],
        cpuset_cpus="4-11",
        cpus=8.0,
        memory=32 << 30,
        disk_share=(2, 4),
    )
    options = create_options(spec, Hardening(), "openclore", 100 << 30)
    (request,) = options["device_requests"]
    assert request["DeviceIDs"] == ["1", "2"]
    assert request["Capabilities"] == [["gpu"]]
    assert request["Count"] == 0  # Docker refuses a count together with device ids
    assert options["cpuset_cpus"] == "4-11" and options["nano_cpus"] == 8 * 10**9
    assert options["mem_limit"] == 32 << 30
    assert options["storage_opt"] == {"size": str(50 << 30)}
    assert options["ipc_mode"] == "private" and "pid_mode" not in options
    # a whole-machine rental: every GPU, as before
    whole = create_options(LaunchSpec(name="w", image=IMAGE, gpus=True), Hardening(), None, None)
    (request,) = whole["device_requests"]
    assert request["Count"] == -1 and not request["DeviceIDs"]
    assert "cpuset_cpus" not in whole and "storage_opt" not in whole
    # an agent without GPUs sends no device request, whatever the rental holds
    none = create_options(LaunchSpec(name="n", image=IMAGE, gpu_ids=[0]), Hardening(), None, None)
    assert "device_requests" not in none
    assert gpu_request([]) is None


# ----------------------------------------------------------------------------- real engine


@pytest.fixture
def engine_labels() -> Iterator[tuple[Any, dict[str, str]]]:
    """The Docker engine and this test's label; everything carrying it is removed afterwards."""
    try:
        client = docker.from_env(timeout=60)
        client.ping()
        client.images.get(IMAGE)
    except Exception as exc:
        message = f"no Docker engine with {IMAGE} ({type(exc).__name__}); scripts/setup-docker.sh"
        if IN_CI:
            pytest.fail(message + " (CI=true: the Docker tests are mandatory)")
        pytest.skip(message)
    labels = {TEST_LABEL: uuid.uuid4().hex[:12]}
    try:
        yield client, labels
    finally:
        found = client.containers.list(
            all=True, filters={"label": f"{TEST_LABEL}={labels[TEST_LABEL]}"}
        )
        for container in found:
            container.remove(force=True)
        client.close()


def sh(container: Any, script: str) -> str:
    result = container.exec_run(["sh", "-c", script])
    return bytes(result.output).decode("utf-8", "replace").strip()


def test_two_rentals_side_by_side_on_a_four_gpu_host(
    engine_labels: tuple[Any, dict[str, str]],
) -> None:
    client, labels = engine_labels
    agent_id = "slots-" + labels[TEST_LABEL]
    runtime = DockerRuntime(agent_id, network="openclore-test", isolation="off")
    runtime.prepare()
    # this host has 2 CPUs: a 4-GPU machine's slots 0-1 get CPU 0, slots 2-3 CPU 1
    settings = ReconcileSettings(
        agent_id=agent_id,
        port_range=(43000, 43099),
        gpus=False,  # no NVIDIA runtime here (the device request is pinned above)
        cpus=2.0,
        memory=512 * MiB,
        host_cpus=[0, 1],
        extra_labels=labels,
    )
    reconciler = Reconciler(runtime, settings)
    first = rental(101, gpus=[0, 1], share=(2, 4), env={"NVIDIA_VISIBLE_DEVICES": "all"})
    second = rental(102, gpus=[2, 3], share=(2, 4))
    try:
        reconciler.set_desired([first, second])
        reconciler.reconcile_once()
        statuses = reconciler.statuses()
        assert {k: s.state for k, s in statuses.items()} == {
            "order-101": RUNNING,
            "order-102": RUNNING,
        }
        a, b = (client.containers.get(statuses[f"order-{oid}"].container_id) for oid in (101, 102))
        ca, cb = a.attrs["HostConfig"], b.attrs["HostConfig"]
        # CPUs: disjoint cpusets, half the CPU time each; memory: half the agent's limit each
        assert (ca["CpusetCpus"], cb["CpusetCpus"]) == ("0", "1")
        assert ca["NanoCpus"] == cb["NanoCpus"] == 10**9
        assert ca["Memory"] == cb["Memory"] == 256 * MiB
        assert (
            sh(
                a,
                "cat /sys/fs/cgroup/cpuset/cpuset.cpus 2>/dev/null || "
                "cat /sys/fs/cgroup/cpuset.cpus.effective",
            )
            == "0"
        )
        # GPUs: each sees exactly its own indices (the renter's "all" is overridden)
        assert sh(a, "echo $NVIDIA_VISIBLE_DEVICES") == "0,1"
        assert sh(b, "echo $NVIDIA_VISIBLE_DEVICES") == "2,3"
        assert not ca.get("DeviceRequests") and not cb.get("DeviceRequests")
        # ports: the same container port 22, two different host ports
        pa = a.attrs["NetworkSettings"]["Ports"]["22/tcp"][0]["HostPort"]
        pb = b.attrs["NetworkSettings"]["Ports"]["22/tcp"][0]["HostPort"]
        assert pa != pb
        assert statuses["order-101"].tcp_ports == {"22": int(pa)}
        assert statuses["order-102"].tcp_ports == {"22": int(pb)}
        # namespaces: own PID namespace (not the host's, not shared), private IPC
        for config in (ca, cb):
            assert config["PidMode"] == "" and config["IpcMode"] == "private"
            assert not config.get("Privileged")
        assert sh(a, "readlink /proc/self/ns/pid") != sh(b, "readlink /proc/self/ns/pid")
        assert sh(a, "readlink /proc/self/ns/ipc") != sh(b, "readlink /proc/self/ns/ipc")
        # a process of one rental is invisible to the other, and cannot be signalled by it
        b.exec_run(["sh", "-c", "exec sleep 4242"], detach=True)
        wait_for(lambda: "sleep 4242" in sh(b, "ps"), 10, what="the sleep in b")
        assert "sleep 4242" not in sh(a, "ps")
        host_pid = next(
            p[1] for p in b.top(ps_args="-eo comm,pid,args")["Processes"] if "4242" in p[-1]
        )
        assert "No such process" in sh(a, f"kill {host_pid} 2>&1; kill -0 {host_pid} 2>&1")
        assert "sleep 4242" in sh(b, "ps")
        # the agent computes the same containers again: nothing is restarted
        reconciler.reconcile_once()
        assert {s.container_id for s in reconciler.statuses().values()} == {a.id, b.id}
        # one rental moved to other GPUs: a new container, the other untouched
        reconciler.set_desired([first, rental(102, gpus=[3], share=(1, 4))])
        reconciler.reconcile_once()
        moved = reconciler.statuses()["order-102"]
        assert moved.state == RUNNING and moved.container_id != b.id
        assert client.containers.get(moved.container_id).attrs["HostConfig"]["CpusetCpus"] == "1"
        assert reconciler.statuses()["order-101"].container_id == a.id
    finally:
        reconciler.set_desired([])
        reconciler.reconcile_once()
        runtime.close()
    assert not client.containers.list(
        all=True, filters={"label": f"{TEST_LABEL}={labels[TEST_LABEL]}"}
    )


def test_the_market_runs_two_renters_on_one_machine_each_on_its_gpu(
    market: Market, tmp_path: Path, engine_labels: tuple[Any, dict[str, str]]
) -> None:
    """End to end: a 2-GPU server rented per GPU by two renters; the agent gets both orders over
    its channel and runs each in its own container on its own GPU's share of the machine."""
    client, labels = engine_labels
    host = market.user()
    sid, token = host_server(market, host, on_demand="0.00002")
    agent = start_agent(
        market.url,
        tmp_path / "s",
        init_token=token,
        runtime_factory=lambda agent_id: DockerRuntime(
            agent_id, network="openclore-test", isolation="off"
        ),
        port_range=(43100, 43199),
        probe_ports=True,
        extra_labels=labels,
        cpus=2.0,
        memory=512 * MiB,
        host_cpus=[0, 1],
    )
    try:
        settings = {"name": "rig", "partial_gpu_rental": True}
        ok(market.client(host).post("/v1/set_server_settings", json=settings))
        renters = [market.client(market.user(bitcoin="0.01")) for _ in range(2)]
        body = order_body(sid, image=IMAGE, ports={"22": "tcp"}, gpu_count=1)
        ids = [ok(r.post("/v1/create_order", json=body))["order_id"] for r in renters]
        seen = [wait_order_state(r, oid, "running") for r, oid in zip(renters, ids, strict=True)]
        assert sorted(g for o in seen for g in o["gpus"]) == [0, 1]
        assert len({o["tcp_ports"][0] for o in seen}) == 2  # port 22 of each: two public ports
        for order in seen:
            found = client.containers.list(
                filters={
                    "label": [
                        f"{TEST_LABEL}={labels[TEST_LABEL]}",
                        f"openclore.order={order['id']}",
                    ]
                }
            )
            (container,) = found
            config = container.attrs["HostConfig"]
            (gpu,) = order["gpus"]
            assert config["CpusetCpus"] == str(gpu) and config["Memory"] == 256 * MiB
            assert f"NVIDIA_VISIBLE_DEVICES={gpu}" in container.attrs["Config"]["Env"]
            assert config["IpcMode"] == "private" and config["PidMode"] == ""
        for renter, oid in zip(renters, ids, strict=True):
            ok(renter.post("/v1/cancel_order", json={"id": oid}))
        label = f"{TEST_LABEL}={labels[TEST_LABEL]}"
        # the low-level list: the high-level one inspects each container it lists, and one
        # removed in between raises NotFound
        wait_for(
            lambda: not client.api.containers(all=True, filters={"label": label}),
            15,
            what="both containers removed",
        )
    finally:
        agent.stop()
