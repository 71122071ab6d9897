"""GigaSPOT GPU settings on the host: the NVML apply path against a fake NVML that records
every call and can refuse (a real GPU's settings are never changed by a test), and the
registry login of dockerhub_auth reaching the runtime's pull."""

from __future__ import annotations

from typing import Any

import pytest

from openclore.agent.gpu import GpuTuner
from openclore.agent.reconcile import Reconciler, ReconcileSettings
from openclore.agent.runtime.simulated import SimulatedEngine, SimulatedRuntime
from openclore.protocol import KIND_ORDER, RUNNING, DesiredContainer


class NVMLError(Exception):
    pass


class FakeNVML:
    """The pynvml functions the tuner uses, on ``count`` GPUs. ``refuse``: setter names that
    raise (as NVML does without root: NVMLError_NoPermission). ``calls``: every setter call."""

    NVML_CLOCK_GRAPHICS = 0
    NVML_CLOCK_MEM = 2

    def __init__(self, count: int = 2, refuse: set[str] | None = None) -> None:
        self.count = count
        self.refuse = refuse or set()
        self.calls: list[tuple[Any, ...]] = []
        self.limit = {i: 350_000 for i in range(count)}  # mW
        self.offsets = {i: [0, 0] for i in range(count)}
        self.inits = 0

    def nvmlInit(self) -> None:
        self.inits += 1

    def nvmlShutdown(self) -> None:
        self.inits -= 1

    def nvmlDeviceGetCount(self) -> int:
        return self.count

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetName(self, h: int) -> bytes:
        return b"NVIDIA GeForce RTX 4090"

    def nvmlDeviceGetPowerManagementLimitConstraints(self, h: int) -> tuple[int, int]:
        return 150_000, 450_000

    def nvmlDeviceGetPowerManagementLimit(self, h: int) -> int:
        return self.limit[h]

    def nvmlDeviceGetPowerManagementDefaultLimit(self, h: int) -> int:
        return 350_000

    def nvmlDeviceGetMaxClockInfo(self, h: int, kind: int) -> int:
        return 3105 if kind == self.NVML_CLOCK_GRAPHICS else 10501

    def nvmlDeviceGetGpcClkMinMaxVfOffset(self, h: int) -> tuple[int, int]:
        return -1000, 1000

    def nvmlDeviceGetMemClkMinMaxVfOffset(self, h: int) -> tuple[int, int]:
        raise NVMLError("Not Supported")

    def nvmlDeviceGetGpcClkVfOffset(self, h: int) -> int:
        return self.offsets[h][0]

    def nvmlDeviceGetMemClkVfOffset(self, h: int) -> int:
        return self.offsets[h][1]

    def _set(self, name: str, *args: Any) -> None:
        self.calls.append((name, *args))
        if name in self.refuse:
            raise NVMLError("Insufficient Permissions")

    def nvmlDeviceSetPowerManagementLimit(self, h: int, mw: int) -> None:
        self._set("pl", h, mw)
        self.limit[h] = mw

    def nvmlDeviceSetGpuLockedClocks(self, h: int, low: int, high: int) -> None:
        self._set("core_lock", h, low, high)

    def nvmlDeviceResetGpuLockedClocks(self, h: int) -> None:
        self._set("reset_core_lock", h)

    def nvmlDeviceSetMemoryLockedClocks(self, h: int, low: int, high: int) -> None:
        self._set("mem_lock", h, low, high)

    def nvmlDeviceResetMemoryLockedClocks(self, h: int) -> None:
        self._set("reset_mem_lock", h)

    def nvmlDeviceSetGpcClkVfOffset(self, h: int, offset: int) -> None:
        self._set("core_offset", h, offset)
        self.offsets[h][0] = offset

    def nvmlDeviceSetMemClkVfOffset(self, h: int, offset: int) -> None:
        self._set("mem_offset", h, offset)
        self.offsets[h][1] = offset


def test_the_read_path_reports_ranges_and_changes_nothing() -> None:
    nvml = FakeNVML()
    tuner = GpuTuner(nvml)
    limits = tuner.limits()
    assert limits["allowed"] is True and len(limits["gpus"]) == 2
    assert limits["gpus"][0] == {
        "model": "NVIDIA GeForce RTX 4090",
        "pl": [150, 450],
        "core_lock": [0, 3105],
        "mem_lock": [0, 10501],
        "core_offset": [-1000, 1000],
        "mem_offset": None,  # not supported on this GPU
    }
    assert tuner.current()[1] == {"pl": 350, "core_offset": 0, "mem_offset": 0}
    assert nvml.calls == [] and nvml.inits == 0
    assert GpuTuner(nvml, allowed=False).limits()["allowed"] is False


def test_apply_sets_each_gpu_and_restore_puts_the_defaults_back() -> None:
    nvml = FakeNVML()
    tuner = GpuTuner(nvml)
    assert tuner.apply([{"pl": 300, "core_lock": 2500}, {"pl": 250.5, "core_offset": 100}]) is None
    assert nvml.calls == [
        ("pl", 0, 300_000),
        ("core_lock", 0, 2500, 2500),
        ("pl", 1, 250_500),
        ("core_offset", 1, 100),
    ]
    nvml.calls.clear()
    tuner.restore()
    assert ("pl", 0, 350_000) in nvml.calls and ("pl", 1, 350_000) in nvml.calls
    assert ("reset_core_lock", 0) in nvml.calls and ("core_offset", 1, 0) in nvml.calls
    assert nvml.limit == {0: 350_000, 1: 350_000} and nvml.inits == 0
    nvml.calls.clear()
    tuner.restore()  # nothing changed since: nothing to do
    assert nvml.calls == []


def test_settings_outside_the_ranges_are_refused_before_any_call() -> None:
    nvml = FakeNVML()
    tuner = GpuTuner(nvml)
    assert "pl 500" in (tuner.apply([{"pl": 500}]) or "")
    assert "mem_offset" in (tuner.apply([{"pl": 300, "mem_offset": 100}]) or "")
    assert tuner.apply([{"pl": 300}] * 3) == "3 GPU settings for 2 GPUs"
    assert GpuTuner(nvml, allowed=False).apply([{"pl": 300}]) == (
        "the host does not allow GPU settings"
    )
    assert nvml.calls == []


def test_a_refusing_driver_is_reported_and_what_was_set_is_undone() -> None:
    nvml = FakeNVML(refuse={"core_lock"})
    tuner = GpuTuner(nvml)
    problem = tuner.apply([{"pl": 300, "core_lock": 2500}])
    assert problem == "refused by the driver: Insufficient Permissions"
    assert nvml.calls[:2] == [("pl", 0, 300_000), ("core_lock", 0, 2500, 2500)]
    assert ("pl", 0, 350_000) in nvml.calls[2:]  # the power limit went back
    assert nvml.limit[0] == 350_000 and nvml.inits == 0


def gpu_order(oid: int, settings: list[dict[str, Any]], **kw: Any) -> DesiredContainer:
    return DesiredContainer(
        key=f"order-{oid}",
        kind=KIND_ORDER,
        image="img/app:1",
        order_id=oid,
        gpu_settings=settings,
        **kw,
    )


def reconciler(nvml: FakeNVML | None, engine: SimulatedEngine) -> Reconciler:
    runtime = SimulatedRuntime("agent-a", engine)
    settings = ReconcileSettings(agent_id="agent-a", port_range=(50000, 50009), probe_ports=False)
    return Reconciler(runtime, settings, gpu=None if nvml is None else GpuTuner(nvml))


def test_the_reconciler_applies_the_running_orders_settings() -> None:
    nvml = FakeNVML()
    engine = SimulatedEngine()
    r = reconciler(nvml, engine)
    r.set_desired([gpu_order(7, [{"pl": 300}])])
    r.reconcile_once()  # starts the container
    r.reconcile_once()  # it runs: the settings are applied
    status = r.statuses()["order-7"]
    assert status.state == RUNNING and status.gpu_settings_applied is True
    assert nvml.calls == [("pl", 0, 300_000)]
    container = engine.containers[next(iter(engine.containers))].id
    # new settings: applied to the GPUs, the container is kept
    r.set_desired([gpu_order(7, [{"pl": 200}])])
    r.reconcile_once()
    assert ("pl", 0, 200_000) in nvml.calls
    assert [c.id for c in engine.containers.values()] == [container]
    nvml.calls.clear()
    r.set_desired([])  # the order ended: defaults back
    r.reconcile_once()
    assert ("pl", 0, 350_000) in nvml.calls


def test_the_reconciler_reports_refused_settings() -> None:
    engine = SimulatedEngine()
    r = reconciler(FakeNVML(refuse={"pl"}), engine)
    r.set_desired([gpu_order(8, [{"pl": 300}])])
    r.reconcile_once()
    r.reconcile_once()
    status = r.statuses()["order-8"]
    assert status.state == RUNNING  # the rental runs; the settings did not take
    assert status.gpu_settings_applied is False
    assert status.gpu_settings_error == "refused by the driver: Insufficient Permissions"
    assert status.to_wire()["gpu_settings_applied"] is False

    plain = reconciler(None, SimulatedEngine())  # a host that does not allow settings
    plain.set_desired([gpu_order(9, [{"pl": 300}])])
    plain.reconcile_once()
    plain.reconcile_once()
    assert plain.statuses()["order-9"].gpu_settings_error == "the host does not allow GPU settings"


def test_a_per_gpu_rentals_settings_never_reach_other_rentals_gpus() -> None:
    """The tuner numbers settings from GPU 0: a rental holding GPU 1 of 2 would set GPU 0,
    another rental's. Its settings are refused (and said so); a whole-machine order's apply."""
    nvml = FakeNVML()
    r = reconciler(nvml, SimulatedEngine())
    r.set_desired([gpu_order(5, [{"pl": 300}], gpus=[1], share=(1, 2))])
    r.reconcile_once()
    r.reconcile_once()
    status = r.statuses()["order-5"]
    assert status.state == RUNNING and status.gpu_settings_applied is False
    assert status.gpu_settings_error == "GPU settings are applied to whole-server rentals only"
    assert nvml.calls == []


def test_the_registry_login_is_used_for_the_pull_only() -> None:
    engine = SimulatedEngine(pullable={"private/app:1"})
    r = reconciler(None, engine)
    d = DesiredContainer(
        key="order-3",
        kind=KIND_ORDER,
        image="private/app:1",
        order_id=3,
        registry_auth="bob:s3cret",
    )
    assert "s3cret" not in repr(d)
    r.set_desired([d])
    r.reconcile_once()
    assert engine.pulls == [("private/app:1", "bob:s3cret")]
    assert all("s3cret" not in str(s.env) for s in engine.specs.values())
    # the server stops sending the login once pulled: same spec, the container stays
    r.set_desired(
        [DesiredContainer(key="order-3", kind=KIND_ORDER, image="private/app:1", order_id=3)]
    )
    before = set(engine.containers)
    r.reconcile_once()
    assert set(engine.containers) == before and len(engine.pulls) == 1


def test_the_docker_runtime_passes_the_login_to_the_daemon_pull(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    docker = pytest.importorskip("docker")
    from openclore.agent.runtime.docker import DockerRuntime

    try:
        runtime = DockerRuntime("agent-auth-test")
    except docker.errors.DockerException as exc:  # pragma: no cover - no daemon here
        pytest.skip(f"no Docker daemon: {exc}")
    seen: list[tuple[str, dict[str, Any]]] = []

    def pull(_self: Any, name: str, **kwargs: Any) -> None:  # the daemon call, recorded
        seen.append((name, kwargs))

    monkeypatch.setattr(docker.models.images.ImageCollection, "pull", pull)
    try:
        runtime.pull("docker.io/bob/private:1", auth="bob:s3:cret")
        runtime.pull("docker.io/bob/public:1")
    finally:
        runtime.close()
    assert seen == [
        (
            "docker.io/bob/private",
            {"tag": "1", "auth_config": {"username": "bob", "password": "s3:cret"}},
        ),
        ("docker.io/bob/public", {"tag": "1"}),
    ]
