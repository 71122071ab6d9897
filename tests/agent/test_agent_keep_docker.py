"""Keeping a renter's work (agent protocol 3) with real containers: the reconciler drives the
Docker runtime directly (no market server). Files written in a container survive a stop and a
start, an agent restart, a new spec of a stopped container (committed and carried over) and a
restart; a reset starts again from the image on the same ports; a volume's files outlive the
container that wrote them; a size that cannot be enforced is reported as such.

Needs a Docker engine and the local image ``openclore-test/busybox:latest``
(``scripts/setup-docker.sh``). Mandatory when ``CI=true``; skipped with a message elsewhere. Every
container, committed image and volume a test makes is removed by the fixture.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

import docker  # type: ignore[import-untyped]
import pytest

from openclore.agent.launch import keep_image
from openclore.agent.reconcile import Reconciler, ReconcileSettings
from openclore.agent.runtime import LABEL_AGENT, LABEL_BASE, LABEL_KEEP
from openclore.agent.runtime.docker import DockerRuntime
from openclore.protocol import (
    HALTED,
    KIND_ORDER,
    RUNNING,
    DesiredContainer,
    DesiredVolume,
)

from agent_support import wait_for

IMAGE = "openclore-test/busybox:latest"
TEST_LABEL = "openclore.test"
WORK = "/root/work.txt"
ONSTART_LOG = "/root/onstart-runs.txt"


class Run:
    """One test's agent id and labels; what carries them is removed afterwards."""

    def __init__(self, client: Any) -> None:
        self.client = client
        tag = uuid.uuid4().hex[:12]
        self.agent_id = f"keep-{tag}"
        self.labels = {TEST_LABEL: tag}
        self.runtimes: list[DockerRuntime] = []

    def reconciler(self) -> Reconciler:
        """A new agent process (same agent id, empty memory)."""
        runtime = DockerRuntime(self.agent_id, network=None)
        self.runtimes.append(runtime)
        settings = ReconcileSettings(
            agent_id=self.agent_id,
            port_range=(42700, 42799),
            probe_ports=True,
            stop_timeout=2,
            extra_labels=self.labels,
        )
        return Reconciler(runtime, settings)

    def cleanup(self) -> None:
        api = self.client.api
        for label in (f"{TEST_LABEL}={self.labels[TEST_LABEL]}", f"{LABEL_AGENT}={self.agent_id}"):
            for c in api.containers(all=True, filters={"label": label}):
                api.remove_container(c["Id"], force=True, v=True)
        # committed images carry the container's labels (the test's and the agent's)
        for label in (f"{LABEL_AGENT}={self.agent_id}", f"{TEST_LABEL}={self.labels[TEST_LABEL]}"):
            for image in api.images(filters={"label": label}):
                with contextlib.suppress(docker.errors.NotFound):
                    api.remove_image(image["Id"], force=True)
        for volume in (
            api.volumes(filters={"label": f"{LABEL_AGENT}={self.agent_id}"})["Volumes"] or []
        ):
            api.remove_volume(volume["Name"], force=True)
        for runtime in self.runtimes:
            runtime.client.close()


@pytest.fixture
def keep_run(docker_client: Any) -> Iterator[Run]:
    run = Run(docker_client)
    yield run
    run.cleanup()


def order(oid: int = 1, **kw: Any) -> DesiredContainer:
    values: dict[str, Any] = {
        "key": f"order-{oid}",
        "kind": KIND_ORDER,
        "image": IMAGE,
        "order_id": oid,
        "ports": {"8000": "tcp"},
        "command": f"echo started >> {ONSTART_LOG}",
    }
    values.update(kw)
    return DesiredContainer(**values)


def step(reconciler: Reconciler, *desired: DesiredContainer, passes: int = 1, **kw: Any) -> None:
    reconciler.set_desired(list(desired), **kw)
    for _ in range(passes):
        reconciler.reconcile_once()


def sh(client: Any, container_id: str, command: str) -> tuple[int, str]:
    code, out = client.containers.get(container_id).exec_run(["/bin/sh", "-c", command])
    return int(code), out.decode()


def inspect(client: Any, container_id: str) -> dict[str, Any]:
    return dict(client.api.inspect_container(container_id))


def onstart_runs(client: Any, container_id: str, count: int) -> None:
    """Wait until the onstart script has run ``count`` times in the container."""
    wait_for(
        lambda: sh(client, container_id, f"cat {ONSTART_LOG}")[1].count("started") == count,
        10,
        what=f"onstart run {count} times",
    )


def image_gone(client: Any, image: str) -> bool:
    try:
        client.api.inspect_image(image)
    except docker.errors.NotFound:
        return True
    return False


def test_a_stopped_rental_keeps_its_files_through_start_agent_restart_and_new_gpus(
    docker_client: Any, keep_run: Run
) -> None:
    first = keep_run.reconciler()
    on_gpu0 = {"gpus": [0], "share": (1, 2)}
    step(first, order(**on_gpu0))
    status = first.statuses()["order-1"]
    assert status.state == RUNNING, status
    cid = status.container_id
    assert cid is not None
    onstart_runs(docker_client, cid, 1)
    assert sh(docker_client, cid, f"echo precious > {WORK}")[0] == 0
    ports = status.tcp_ports
    assert set(ports) == {"8000"}
    # the image it was created from: imported on this host, so its id (no repository digest)
    digest = docker_client.images.get(IMAGE).id
    assert status.image_digest == digest

    # stop: the container is kept (stopped, not removed), on the same ports
    step(first, order(stopped=True, **on_gpu0), passes=3)
    attrs = inspect(docker_client, cid)
    assert attrs["State"]["Status"] == "exited"
    halted = first.statuses()["order-1"]
    assert halted.state == HALTED and halted.container_id == cid and halted.tcp_ports == ports

    # a new agent process adopts it and keeps it stopped
    second = keep_run.reconciler()
    second.reconcile_once()
    step(second, order(stopped=True, **on_gpu0), passes=3)
    assert inspect(docker_client, cid)["State"]["Status"] == "exited"
    assert second.statuses()["order-1"].state == HALTED

    # start: the same container, its files, onstart run again
    step(second, order(**on_gpu0))
    assert inspect(docker_client, cid)["State"]["Status"] == "running"
    assert sh(docker_client, cid, f"cat {WORK}") == (0, "precious\n")
    onstart_runs(docker_client, cid, 2)
    assert second.statuses()["order-1"].state == RUNNING

    # stopped, then started on the other GPU: a new container made from the committed files
    step(second, order(stopped=True, **on_gpu0))
    step(second, order(gpus=[1], share=(1, 2)))
    moved = second.statuses()["order-1"]
    assert moved.state == RUNNING, moved
    new_id = moved.container_id
    assert new_id is not None and new_id != cid
    assert moved.tcp_ports == ports
    # made from the committed image, it reports the order's image all the same
    assert moved.image_digest == digest
    assert sh(docker_client, new_id, f"cat {WORK}") == (0, "precious\n")
    attrs = inspect(docker_client, new_id)
    assert attrs["HostConfig"]["CpusetCpus"] == "1"  # the second GPU's CPUs of this 2-CPU host
    gpu_env = [e for e in attrs["Config"]["Env"] if e.startswith("NVIDIA_VISIBLE_DEVICES=")]
    assert gpu_env == ["NVIDIA_VISIBLE_DEVICES=1"]  # over the old container's, in the image
    base = attrs["Config"]["Labels"][LABEL_BASE]
    committed = docker_client.api.inspect_image(base)
    assert committed["Config"]["Labels"][LABEL_AGENT] == keep_run.agent_id
    assert committed["Config"]["Labels"][LABEL_KEEP] == "order-1"
    with pytest.raises(docker.errors.NotFound):
        docker_client.api.inspect_container(cid)  # the old container is gone

    # the order ends: its container, then the committed image go
    step(second)
    assert docker_client.api.containers(all=True, filters={"id": new_id}) == []
    assert image_gone(docker_client, base)
    assert image_gone(docker_client, keep_image("order-1", 0, keep_run.agent_id))


def test_restart_once_and_a_reset_on_the_same_ports(docker_client: Any, keep_run: Run) -> None:
    reconciler = keep_run.reconciler()
    notes = reconciler.runtime.prepare()
    runtime = reconciler.runtime
    assert isinstance(runtime, DockerRuntime)
    step(reconciler, order(disk_gb=5))
    status = reconciler.statuses()["order-1"]
    assert status.state == RUNNING, status
    cid = status.container_id
    assert cid is not None
    # the disk size: set where the storage driver can, else said so (at start and in the log)
    storage = inspect(docker_client, cid)["HostConfig"].get("StorageOpt")
    if runtime.disk_sizes:
        assert storage == {"size": "5G"}
    else:
        assert not storage
        driver = docker_client.info()["Driver"]
        if driver == "overlay2":
            assert any("disk sizes (disk_gb) are not enforced" in n for n in notes), notes
    onstart_runs(docker_client, cid, 1)
    sh(docker_client, cid, f"echo mine > {WORK}")
    started = inspect(docker_client, cid)["State"]["StartedAt"]

    step(reconciler, order(disk_gb=5, restart=1), passes=3)
    after = inspect(docker_client, cid)
    assert after["State"]["Status"] == "running" and after["State"]["StartedAt"] != started
    onstart_runs(docker_client, cid, 2)
    assert sh(docker_client, cid, f"cat {WORK}") == (0, "mine\n")
    status = reconciler.statuses()["order-1"]
    assert status.restarted == 1 and status.state == RUNNING
    once = inspect(docker_client, cid)["State"]["StartedAt"]
    step(reconciler, order(disk_gb=5, restart=1), passes=3)
    assert inspect(docker_client, cid)["State"]["StartedAt"] == once  # not again

    ports = status.tcp_ports
    step(reconciler, order(disk_gb=5, restart=1, generation=1))
    reset = reconciler.statuses()["order-1"]
    assert reset.state == RUNNING and reset.container_id not in (None, cid)
    assert reset.tcp_ports == ports
    assert reset.container_id is not None
    assert sh(docker_client, reset.container_id, f"cat {WORK}")[0] != 0  # from the image
    assert docker_client.api.images(filters={"label": f"{LABEL_AGENT}={keep_run.agent_id}"}) == []
    step(reconciler)


def test_a_volume_outlives_its_container_and_is_kept_while_mounted(
    docker_client: Any, keep_run: Run
) -> None:
    reconciler = keep_run.reconciler()
    name = f"openclore-vol-{keep_run.agent_id}"
    volume = DesiredVolume(name=name, size_gb=1)
    step(reconciler, order(mounts={name: "/data"}), volumes=[volume])
    (reported,) = reconciler.volume_snapshot()
    options = docker_client.api.inspect_volume(name).get("Options") or {}
    # honest: a quota is claimed only when the driver took the size
    assert reported.ok and reported.quota == ("size" in options)
    if reported.quota:
        assert options["size"] == "1G" and reported.error is None
    else:
        assert "not enforced" in (reported.error or "")
    labels = docker_client.api.inspect_volume(name)["Labels"]
    assert labels[LABEL_AGENT] == keep_run.agent_id
    cid = reconciler.statuses()["order-1"].container_id
    assert cid is not None
    assert sh(docker_client, cid, "echo rows > /data/dataset.csv")[0] == 0

    # the order ends; the volume stays and the next order finds the file
    step(reconciler, volumes=[volume])
    assert docker_client.api.containers(all=True, filters={"id": cid}) == []
    step(reconciler, order(2, mounts={name: "/mnt/vol"}), volumes=[volume])
    second = reconciler.statuses()["order-2"].container_id
    assert second is not None
    assert sh(docker_client, second, "cat /mnt/vol/dataset.csv") == (0, "rows\n")

    # no longer listed while a container mounts it: kept
    step(reconciler, order(2, mounts={name: "/mnt/vol"}), volumes=[], passes=2)
    assert docker_client.api.inspect_volume(name)["Name"] == name
    # a new agent process reports it in its hello
    restarted = keep_run.reconciler()
    restarted.reconcile_once()
    assert [v.name for v in restarted.volume_snapshot()] == [name]

    # order and volume dropped together: both go
    step(reconciler, volumes=[])
    with pytest.raises(docker.errors.NotFound):
        docker_client.api.inspect_volume(name)
    assert reconciler.take_volume_changes() is not None
    assert reconciler.volume_snapshot() == []
