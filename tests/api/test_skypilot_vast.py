"""SkyPilot's Vast provisioner (``sky.provision.vast.instance``: run_instances, query_instances,
get_cluster_info, stop_instances, terminate_instances) against a real openclore server.

SkyPilot is large and is not in the `test` extra: this test runs when a Python with ``skypilot``
(0.14.1, ``skypilot[vast]``, which drives ``vastai`` 1.9.1) is found, ``$OPENCLORE_SKYPILOT_PYTHON``
or ``.skypilot-venv/bin/python`` at the checkout's root, and is skipped otherwise. SkyPilot's SSH
step (it logs in to set the cluster up) is not part of it: only the provisioner's calls."""

from __future__ import annotations

import csv
import json
import os
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import select, update

from openclore.domain.money import to_units
from openclore.domain.usd import rate_units
from openclore.market.rates import set_rates
from openclore.store.schema import orders, server_prices, servers

from support import IN_CI, Market

ROOT = Path(__file__).resolve().parents[2]


def _sky_python() -> str | None:
    for candidate in (
        os.environ.get("OPENCLORE_SKYPILOT_PYTHON"),
        ROOT / ".skypilot-venv/bin/python",
    ):
        if candidate and Path(candidate).exists():
            found = subprocess.run(
                [str(candidate), "-c", "import sky.provision.vast.instance"],
                capture_output=True,
                timeout=120,
            )
            if found.returncode == 0:
                return str(candidate)
    return None


PYTHON = _sky_python()
MISSING = (
    "skypilot[vast]==0.14.1 is not installed (./scripts/test makes .skypilot-venv; or: "
    "python -m venv .skypilot-venv && .skypilot-venv/bin/pip install 'skypilot[vast]==0.14.1')"
)
if PYTHON is None:
    if IN_CI:
        raise RuntimeError(MISSING)
    pytest.skip(MISSING, allow_module_level=True)

SCRIPT = r"""
import dataclasses, json, sys
from sky.provision import common
from sky.provision.vast import instance as vi

key_path, region = sys.argv[1], "Europe, CZ"
name = "oc-sky"
cfg = common.ProvisionConfig(
    provider_config={}, authentication_config={"ssh_public_key": key_path}, docker_config={},
    node_config={"InstanceType": "1x-RTX_3090-8-32768", "DiskSize": 20, "Preemptible": False,
                 "ImageId": "ubuntu:22.04"},
    count=1, tags={}, resume_stopped_nodes=False, ports_to_open_on_launch=None)
out = {}
def statuses():
    return {k: str(v[0]) for k, v in vi.query_instances(name, name, {}).items()}
rec = vi.run_instances(region, name, name, cfg)
out["record"] = {"head": rec.head_instance_id, "created": rec.created_instance_ids}
out["query"] = statuses()
info = vi.get_cluster_info(region, name, {})
out["info"] = {"head": info.head_instance_id, "instances": {
    k: [{"external_ip": i.external_ip, "ssh_port": i.ssh_port, "internal_ip": i.internal_ip}
        for i in v]
    for k, v in info.instances.items()}}
vi.stop_instances(name, {})
out["stopped"] = statuses()
rec2 = vi.run_instances(region, name, name, dataclasses.replace(cfg, resume_stopped_nodes=True))
out["resumed"] = {"head": rec2.head_instance_id, "status": statuses()}
vi.terminate_instances(name, {})
out["after"] = statuses()
print(json.dumps(out))
"""


def sky_server(market: Market) -> int:
    """A server SkyPilot's Vast search keeps (its catalog fetcher asks for 80 GB of disk and
    100 Mb/s down), with a disk to keep and a USD rate."""
    host = market.user()
    sid = market.server(
        host,
        specs={
            "gpu": "1x NVIDIA GeForce RTX 3090",
            "gpuram": 24,
            # SkyPilot's "chunked" offers have at least 64 GiB and 32 CPUs (vastai's filter)
            "ram": 128,
            "cpus": "16/32",
            "net": {"cc": "CZ", "down": 1000, "up": 500},
        },
    )
    with market.db.write() as conn:
        conn.execute(update(servers).where(servers.c.id == sid).values(disk_gb=100))
        conn.execute(
            update(server_prices)
            .where(server_prices.c.server_id == sid)
            .values(storage=to_units("0.0000001"))
        )
        set_rates(conn, {"bitcoin": rate_units("60000")}, market.settings, market.now())
    return sid


def test_skypilots_catalog_fetcher_writes_the_markets_offers(
    market: Market, tmp_path: Path
) -> None:
    """``sky launch --infra vast`` picks from a catalog (vast/vms.csv): SkyPilot's own fetcher,
    pointed at the market with VAST_URL, writes it from openclore's offers (docs/vast-compat.md).
    It lists an instance type in a region once two offers of it are there."""
    sky_server(market)
    sky_server(market)
    env = {
        **os.environ,
        "HOME": str(tmp_path),
        "VAST_URL": market.url,
        "VAST_API_KEY": market.user(),
        "VASTAI_NO_UPDATE_CHECK": "1",
    }
    done = subprocess.run(
        [str(PYTHON), "-m", "sky.catalog.data_fetchers.fetch_vast"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    with open(tmp_path / "vast" / "vms.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert rows, "the catalog lists no offer"
    (row,) = rows
    assert row["AcceleratorName"] == "RTX3090" and row["AcceleratorCount"] in ("1", "1.0")
    assert row["Region"] == "CZ, EU"  # georegion: the country and its region
    assert float(row["Price"]) > 0


def test_skypilot_vast_provisioner(market: Market, tmp_path: Path) -> None:
    renter = market.user(bitcoin="0.01")
    sid = sky_server(market)
    key = tmp_path / "id_ed25519.pub"
    key.write_text(
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl sky\n"
    )
    env = {
        **os.environ,
        "HOME": str(tmp_path),
        "VAST_URL": market.url,
        "VAST_API_KEY": renter,
        "VASTAI_NO_UPDATE_CHECK": "1",
    }
    done = subprocess.run(
        [str(PYTHON), "-c", SCRIPT, str(key)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    (made,) = out["record"]["created"]
    created = str(made)  # SkyPilot keys instances by the id as text
    assert str(out["record"]["head"]) == created
    assert out["query"] == {created: "ClusterStatus.UP"}
    (node,) = out["info"]["instances"][created]
    assert out["info"]["head"] == created and node["ssh_port"] and node["external_ip"]
    assert out["stopped"] == {created: "ClusterStatus.STOPPED"}
    assert out["resumed"] == {"head": created, "status": {created: "ClusterStatus.UP"}}
    assert out["after"] == {}
    with market.db.read() as conn:
        row = conn.execute(select(orders).where(orders.c.id == int(created))).one()
    assert row.expired is True and row.server_id == sid
    assert "sky" in (row.command or "")  # SkyPilot's onstart: its key into authorized_keys
