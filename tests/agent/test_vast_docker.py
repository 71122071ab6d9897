"""The Vast-compatible API end to end (docs/vast-compat.md): market server + host agent + real
Docker containers. An instance created with Vast's body (ssh runtype, onstart, ``-p`` ports,
``-e`` variables, the account's SSH key) runs as a container; stop keeps it, start runs it again,
destroy removes it. Mandatory when ``CI=true`` (see tests/agent/test_agent_docker.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from openclore.domain.usd import rate_units
from openclore.market.rates import set_rates
from test_agent_docker import IMAGE, SERVE, containers, docker_agent, fetch

from agent_support import host_server, wait_for
from support import Market

KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl renter@laptop"
)


def test_a_vast_instance_runs_stops_starts_and_is_destroyed(
    market: Market, tmp_path: Path, docker_client: Any, docker_run: dict[str, str]
) -> None:
    host, renter = market.user(), market.user(bitcoin="0.01")
    sid, token = host_server(market, host)
    with market.db.write() as conn:
        set_rates(conn, {"bitcoin": rate_units("60000")}, market.settings, market.now())
    api = httpx.Client(
        base_url=market.url, headers={"Authorization": f"Bearer {renter}"}, timeout=30
    )
    market.clients.append(api)
    agent = docker_agent(market.url, tmp_path / "s", docker_run, token)

    def instance(iid: int) -> dict[str, Any]:
        found: dict[str, Any] = api.get(f"/api/v0/instances/{iid}/").json()["instances"]
        return found

    try:
        assert api.post("/api/v0/ssh/", json={"ssh_key": KEY}).status_code == 200
        offers: list[dict[str, Any]] = []
        wait_for(
            lambda: offers.extend(api.post("/api/v0/bundles/", json={}).json()["offers"]) or offers,
            15,
            interval=0.2,
            what="the agent's server offered",
        )
        (offer,) = offers
        assert offer["machine_id"] == sid
        made = api.put(
            f"/api/v0/asks/{offer['id']}/",
            json={
                "client_id": "me",
                "image": IMAGE,
                "runtype": "ssh_direc ssh_proxy",
                "env": {"-p 8000:8000": "1", "GREETING": "hello-vast"},
                "onstart": "cp /root/.ssh/authorized_keys /www/keys.txt\n"
                f'echo "$GREETING" > /www/env.txt\n{SERVE}',
                "label": "docker",
                "price": None,
            },
        )
        assert made.status_code == 200, made.text
        iid = made.json()["new_contract"]
        wait_for(
            lambda: instance(iid)["actual_status"] == "running", 30, 0.2, what="instance running"
        )
        row = instance(iid)
        port = int(row["ports"]["8000/tcp"][0]["HostPort"])
        assert fetch("127.0.0.1", port, "/env.txt").strip() == "hello-vast"
        assert KEY.split()[1] in fetch("127.0.0.1", port, "/keys.txt")
        assert row["ssh_port"] == int(row["ports"]["22/tcp"][0]["HostPort"])
        assert row["ssh_host"] == row["public_ipaddr"] and row["label"] == "docker"
        (container,) = containers(docker_client, docker_run, f"order-{iid}")

        assert api.put(f"/api/v0/instances/{iid}/", json={"state": "stopped"}).status_code == 200
        wait_for(
            lambda: containers(docker_client, docker_run, f"order-{iid}")[0].status == "exited",
            30,
            0.2,
            what="the container stopped and kept",
        )
        assert instance(iid)["actual_status"] == "stopped"
        assert api.put(f"/api/v0/instances/{iid}/", json={"state": "running"}).status_code == 200
        wait_for(lambda: instance(iid)["actual_status"] == "running", 30, 0.2, what="running again")
        (again,) = containers(docker_client, docker_run, f"order-{iid}")
        assert again.id == container.id  # the same container, its files kept

        assert api.delete(f"/api/v0/instances/{iid}/").json() == {"success": True}
        wait_for(
            lambda: not containers(docker_client, docker_run, f"order-{iid}"),
            30,
            0.2,
            what="the container removed",
        )
        assert api.get("/api/v1/instances/").json()["instances"] == []
    finally:
        agent.stop()
