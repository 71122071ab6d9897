"""Image digests: the agent reports which image each container was created from (its repository
digest, else its id), the market keeps it on the order and my_orders shows it. On the wire it is
an optional field: an older market ignores it, an older agent does not send it."""

from __future__ import annotations

from typing import Any

from openclore.agent.reconcile import Reconciler, ReconcileSettings
from openclore.agent.runtime import LABEL_DIGEST
from openclore.agent.runtime.docker import image_digest
from openclore.agent.runtime.simulated import SimulatedEngine, SimulatedRuntime
from openclore.market.agents import apply_statuses, parse_statuses
from openclore.protocol import KIND_ORDER, RUNNING, ContainerStatus, DesiredContainer

from support import Market, ok, order_body

ID = "sha256:" + "ab" * 32
REPO_DIGEST = "registry.example:5000/team/app@sha256:" + "cd" * 32


def order(oid: int, **kw: Any) -> DesiredContainer:
    return DesiredContainer(
        key=f"order-{oid}", kind=KIND_ORDER, image="img/app:1", order_id=oid, **kw
    )


def test_a_status_carries_its_digest_and_an_older_report_none() -> None:
    status = ContainerStatus(key="order-1", kind=KIND_ORDER, state=RUNNING, image_digest=ID)
    assert status.to_wire()["image_digest"] == ID
    assert ContainerStatus.from_wire(status.to_wire()) == status
    # an older agent's report has no such field; a field of the wrong type counts as none
    older = {"key": "order-1", "kind": KIND_ORDER, "state": RUNNING}
    assert ContainerStatus.from_wire(older).image_digest is None
    for junk in (7, ["sha256:x"], {"a": 1}, ""):
        assert ContainerStatus.from_wire({**older, "image_digest": junk}).image_digest is None


def test_the_market_keeps_only_well_formed_digests() -> None:
    base = {"key": "order-1", "kind": KIND_ORDER, "state": RUNNING, "order_id": 1}
    good = [ID, REPO_DIGEST, "ubuntu@sha256:" + "0" * 64]
    bad = [
        "sha256:" + "a" * 63,
        "sha256:" + "A" * 64,
        "latest",
        "ubuntu@sha256:" + "0" * 64 + "\n",
        "<b>@sha256:" + "0" * 64,
        "x" * 250 + "@sha256:" + "0" * 64,
    ]
    got = parse_statuses([{**base, "image_digest": d} for d in good + bad])
    assert [s.image_digest for s in got] == good + [None] * len(bad)


def test_the_repository_digest_of_the_image_asked_for_else_the_id() -> None:
    other = "mirror.example/team/app@sha256:" + "ef" * 32
    attrs = {"Id": ID, "RepoDigests": [other, REPO_DIGEST]}
    assert image_digest("registry.example:5000/team/app:1", attrs) == REPO_DIGEST
    assert image_digest("elsewhere.example/app:2", attrs) == other
    hub = "ubuntu@sha256:" + "12" * 32
    assert image_digest("docker.io/library/ubuntu:22.04", {"Id": ID, "RepoDigests": [hub]}) == hub
    # built or imported on the host: no repository digest, its id
    assert image_digest("openclore-test/busybox:latest", {"Id": ID, "RepoDigests": []}) == ID
    assert image_digest(ID, {"Id": ID}) == ID


def test_the_reconciler_reports_the_digest_also_for_a_container_that_keeps_its_files() -> None:
    runtime = SimulatedRuntime("agent-a", SimulatedEngine())
    reconciler = Reconciler(runtime, ReconcileSettings(agent_id="agent-a", probe_ports=False))
    reconciler.set_desired([order(1)])
    reconciler.reconcile_once()
    (first,) = runtime.containers()
    digest = runtime.image_digest("img/app:1")
    assert digest is not None and digest.startswith("sha256:")
    assert first.labels[LABEL_DIGEST] == digest
    assert reconciler.statuses()["order-1"].image_digest == digest
    # new settings: a new container from the committed files, still the order's image's digest
    reconciler.set_desired([order(1, env={"A": "1"})])
    reconciler.reconcile_once()
    (second,) = runtime.containers()
    assert second.id != first.id and second.labels[LABEL_DIGEST] == digest
    assert reconciler.statuses()["order-1"].image_digest == digest


def test_the_order_records_the_digest_and_my_orders_shows_it(market: Market) -> None:
    host = market.user()
    renter = market.client(market.user(bitcoin="1"))
    sid = market.server(host)
    oid = ok(renter.post("/v1/create_order", json=order_body(sid)))["order_id"]

    def report(digest: str | None) -> dict[str, Any]:
        status = ContainerStatus(
            key=f"order-{oid}", kind=KIND_ORDER, state=RUNNING, order_id=oid, image_digest=digest
        )
        with market.db.write() as conn:
            apply_statuses(conn, sid, parse_statuses([status.to_wire()]), ["h.example"])
        (mine,) = ok(renter.get("/v1/my_orders"))["orders"]
        return dict(mine)

    assert "image_digest" not in report(None)  # not reported yet
    assert report(REPO_DIGEST)["image_digest"] == REPO_DIGEST
    assert report(None)["image_digest"] == REPO_DIGEST  # an older agent's report keeps it
    assert report(ID)["image_digest"] == ID  # a reset: a new container, maybe a new image
