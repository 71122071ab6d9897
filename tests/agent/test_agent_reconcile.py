"""The reconciler on the simulated runtime, one pass at a time (no server, no Docker)."""

from __future__ import annotations

from openclore.agent.reconcile import (
    AUTOSSH_ENTRYPOINT,
    ONSTART_PATH,
    RUN_ONSTART,
    Reconciler,
    ReconcileSettings,
)
from openclore.agent.runtime import LABEL_AGENT, LABEL_KEY, LABEL_ORDER, LaunchSpec
from openclore.agent.runtime.simulated import SimulatedEngine, SimulatedRuntime
from openclore.protocol import (
    ERROR,
    KIND_BACKGROUND,
    KIND_ORDER,
    PULLING,
    RESTARTING,
    RUNNING,
    STOPPED,
    DesiredContainer,
)

IMAGE = "img/app:1"


def order(oid: int, **kw: object) -> DesiredContainer:
    values: dict[str, object] = {
        "key": f"order-{oid}",
        "kind": KIND_ORDER,
        "image": IMAGE,
        "order_id": oid,
        "ports": {"22": "tcp", "8888": "http"},
    }
    values.update(kw)
    return DesiredContainer(**values)  # type: ignore[arg-type]


def make(
    engine: SimulatedEngine | None = None, agent_id: str = "agent-a", **kw: object
) -> tuple[Reconciler, SimulatedRuntime]:
    runtime = SimulatedRuntime(agent_id, engine or SimulatedEngine())
    settings = ReconcileSettings(
        agent_id=agent_id,
        port_range=(50000, 50009),
        probe_ports=False,
        **kw,  # type: ignore[arg-type]
    )
    return Reconciler(runtime, settings), runtime


def keys(runtime: SimulatedRuntime) -> list[str]:
    return sorted(c.labels[LABEL_KEY] for c in runtime.containers())


def test_nothing_is_removed_before_the_server_has_spoken() -> None:
    engine = SimulatedEngine()
    first, runtime = make(engine)
    first.set_desired([order(1)])
    first.reconcile_once()
    assert keys(runtime) == ["order-1"]

    restarted, _ = make(engine)  # same agent id, fresh memory
    restarted.reconcile_once()
    restarted.reconcile_once()
    assert keys(runtime) == ["order-1"]
    (status,) = restarted.snapshot()
    assert (status.state, status.order_id) == (RUNNING, 1)
    assert status.tcp_ports == {"22": 50000}

    restarted.set_desired([])
    restarted.reconcile_once()
    assert keys(runtime) == []
    assert [(s.key, s.state) for s in restarted.take_changes()][-1] == ("order-1", STOPPED)


def test_other_agents_containers_are_left_alone() -> None:
    engine = SimulatedEngine()
    mine, runtime = make(engine, "agent-a")
    theirs, their_runtime = make(engine, "agent-b")
    theirs.set_desired([order(9)])
    theirs.reconcile_once()
    mine.set_desired([])
    mine.reconcile_once()
    assert keys(their_runtime) == ["order-9"] and keys(runtime) == []


def test_a_changed_spec_means_a_new_container() -> None:
    reconciler, runtime = make()
    reconciler.set_desired([order(1, env={"A": "1"})])
    reconciler.reconcile_once()
    (before,) = runtime.containers()
    reconciler.set_desired([order(1, env={"A": "2"})])
    reconciler.reconcile_once()
    (after,) = runtime.containers()
    assert before.id != after.id
    assert runtime.engine.specs[after.id].env["A"] == "2"


def test_ports_rotate_through_the_range_and_never_collide() -> None:
    reconciler, runtime = make()
    seen: list[int] = []
    for oid in range(1, 8):
        reconciler.set_desired([order(oid)])
        reconciler.reconcile_once()
        (c,) = runtime.containers()
        seen.extend(c.host_ports.values())
        assert len(set(c.host_ports.values())) == 2
    # the cursor moves on: a port just given up is not handed to the next renter at once
    assert seen[:4] == [50000, 50001, 50002, 50003]
    assert all(50000 <= p <= 50009 for p in seen)


def test_a_port_taken_behind_our_back_is_replaced() -> None:
    engine = SimulatedEngine()
    squatter, _ = make(engine, "other")
    squatter.set_desired([order(5, ports={"80": "tcp"})])
    squatter.reconcile_once()  # holds 50000

    class Blind(SimulatedRuntime):
        def used_host_ports(self) -> set[int]:
            return set()  # as if another program had taken the port

    runtime = Blind("agent-a", engine)
    reconciler = Reconciler(
        runtime, ReconcileSettings(agent_id="agent-a", port_range=(50000, 50009), probe_ports=False)
    )
    reconciler.set_desired([order(1, ports={"22": "tcp"})])
    reconciler.reconcile_once()
    (status,) = reconciler.statuses().values()
    assert status.state == RUNNING and status.tcp_ports == {"22": 50001}


def test_an_exhausted_port_range_is_an_error() -> None:
    reconciler, _ = make()
    reconciler.settings.port_range = (50000, 50000)
    reconciler.set_desired([order(1)])  # two ports wanted, one available
    reconciler.reconcile_once()
    (status,) = reconciler.statuses().values()
    assert status.state == ERROR and "no free host port" in (status.error or "")


def test_image_pull_failure_then_recovery() -> None:
    engine = SimulatedEngine(pullable=set())
    reconciler, runtime = make(engine)
    reconciler.set_desired([order(1)])
    reconciler.reconcile_once()
    states = [s.state for s in reconciler.take_changes()]
    assert states == [ERROR]  # PULLING was overtaken before anyone read it
    (status,) = reconciler.statuses().values()
    assert IMAGE in (status.error or "")
    reconciler.reconcile_once()
    assert keys(runtime) == []  # not retried before the backoff
    engine.pullable = None
    reconciler._retries["order-1"].next_at = 0
    reconciler.reconcile_once()
    assert keys(runtime) == ["order-1"]
    assert reconciler.statuses()["order-1"].state == RUNNING
    assert PULLING not in {s.state for s in reconciler.statuses().values()}


def test_a_crashed_container_is_restarted_with_a_backoff() -> None:
    reconciler, runtime = make()
    reconciler.set_desired([order(1)])
    reconciler.reconcile_once()
    (c,) = runtime.containers()
    runtime.crash(c.id, exit_code=3)
    reconciler.reconcile_once()
    status = reconciler.statuses()["order-1"]
    assert status.state == RESTARTING and "exited with code 3" in (status.error or "")
    reconciler._crashes["order-1"].exits = [0.0]  # as if the backoff had passed
    reconciler.reconcile_once()
    assert reconciler.statuses()["order-1"].state == RUNNING
    assert runtime.engine.starts[c.id] == 2


def test_launch_spec_conventions() -> None:
    reconciler, runtime = make(gpus=True, cpus=4.0, memory=8 << 30, extra_labels={"x": "y"})
    reconciler.set_desired(
        [
            order(
                7,
                env={"MY": "var"},
                jupyter_token="jt",
                ssh_key="ssh-ed25519 AAAA k@h",
                ssh_password="pw",
                command="echo hi",
                autossh_entrypoint=True,
            )
        ]
    )
    reconciler.reconcile_once()
    (spec,) = runtime.engine.specs.values()
    assert isinstance(spec, LaunchSpec)
    assert spec.env["MY"] == "var"
    assert spec.env["JUPYTER_TOKEN"] == "jt"
    assert spec.env["SSH_PASSWORD"] == spec.env["ROOT_PASSWORD"] == "pw"
    assert spec.env["SSH_KEY"] == spec.env["PUBLIC_KEY"] == "ssh-ed25519 AAAA k@h"
    assert spec.env["OPENCLORE_ORDER_ID"] == "7"
    assert spec.env["OPENCLORE_TCP_PORTS"] == "22:50000"
    assert spec.files == []  # nothing is copied in: starts stay fast
    assert spec.entrypoint == [
        "/bin/sh",
        "-c",
        AUTOSSH_ENTRYPOINT,
        "openclore-entrypoint",
        "#!/bin/sh\necho hi\n",
    ]
    assert spec.command == []
    assert spec.onstart is None  # the entrypoint writes and runs onstart itself
    assert spec.gpus and spec.cpus == 4.0 and spec.memory == 8 << 30
    assert spec.labels[LABEL_AGENT] == "agent-a" and spec.labels[LABEL_ORDER] == "7"
    assert spec.labels["x"] == "y"
    by_kind = {b.kind: b for b in spec.ports}
    assert by_kind["tcp"].host_ip == "0.0.0.0" and by_kind["http"].host_ip == "127.0.0.1"


def test_plain_order_keeps_the_image_entrypoint_and_runs_onstart_after_start() -> None:
    reconciler, runtime = make()
    reconciler.set_desired([order(1, command="#!/bin/bash\nexec python app.py")])
    reconciler.reconcile_once()
    (spec,) = runtime.engine.specs.values()
    assert spec.entrypoint is None and spec.command is None
    script = "#!/bin/bash\nexec python app.py\n"
    assert spec.onstart == ["/bin/sh", "-c", RUN_ONSTART, "onstart", script]
    assert ONSTART_PATH in RUN_ONSTART


def test_background_job_gives_way_to_an_order() -> None:
    reconciler, runtime = make()
    bg = DesiredContainer(key="bg-1-1", kind=KIND_BACKGROUND, image="miner:1")
    reconciler.set_desired([bg])
    reconciler.reconcile_once()
    assert keys(runtime) == ["bg-1-1"]
    reconciler.set_desired([order(3)])
    reconciler.reconcile_once()
    assert keys(runtime) == ["order-3"]
