"""The released ``vastai`` 1.9.1 client (PyPI; the `test` extra pins it) against a real openclore
server: its CLI as a subprocess, then its SDK (``VastAI(api_key=..., server_url=...)``).

The client runs in its own interpreter: the one running the tests when it has ``vastai``
installed, else ``$OPENCLORE_VASTAI_PYTHON`` or ``.vastai-venv/bin/python`` at the checkout's root
(a virtualenv of its own keeps vastai's exact pins, such as ``cryptography==49.0.0``, out of the
project's environment)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from openclore.domain.money import to_units
from openclore.domain.usd import rate_units
from openclore.market.demo import RENTER_TOKEN, seed
from openclore.market.rates import set_rates
from openclore.store.schema import orders, server_prices, servers

from support import IN_CI, Market

ROOT = Path(__file__).resolve().parents[2]
KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl renter@laptop"
)


def _client_python() -> str | None:
    if importlib.util.find_spec("vastai") is not None:
        return sys.executable
    for candidate in (os.environ.get("OPENCLORE_VASTAI_PYTHON"), ROOT / ".vastai-venv/bin/python"):
        if candidate and Path(candidate).exists():
            found = subprocess.run(
                [str(candidate), "-c", "import vastai.sdk"], capture_output=True, timeout=60
            )
            if found.returncode == 0:
                return str(candidate)
    return None


PYTHON = _client_python()
if PYTHON is None:
    if IN_CI:
        raise RuntimeError("vastai is not installed (./scripts/test makes .vastai-venv)")
    pytest.skip(
        "vastai 1.9.1 is not installed (./scripts/test makes .vastai-venv; or: python -m venv "
        ".vastai-venv && .vastai-venv/bin/pip install vastai==1.9.1)",
        allow_module_level=True,
    )


def rig(market: Market, host: str) -> int:
    """A demo server (ports published at once) with a disk to keep, priced, with a USD rate."""
    sid = market.server(host)
    with market.db.write() as conn:
        conn.execute(update(servers).where(servers.c.id == sid).values(disk_gb=50))
        conn.execute(
            update(server_prices)
            .where(server_prices.c.server_id == sid)
            .values(storage=to_units("0.0000001"))
        )
        set_rates(conn, {"bitcoin": rate_units("60000")}, market.settings, market.now())
    return sid


class Cli:
    def __init__(self, market: Market, token: str, home: Path) -> None:
        self.base = [str(PYTHON), "-c", "import sys; from vastai.cli.main import main; main()"]
        self.url, self.token = market.url, token
        self.env = {
            **os.environ,
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / "config"),
            "XDG_CACHE_HOME": str(home / "cache"),
            "XDG_STATE_HOME": str(home / "state"),
            "XDG_DATA_HOME": str(home / "data"),
            "VASTAI_NO_UPDATE_CHECK": "1",
        }
        self.env.pop("VAST_API_KEY", None)

    def __call__(self, *args: str) -> str:
        key = ["--api-key", self.token] if self.token else []  # none: no key set at all
        done = subprocess.run(
            [*self.base, "--url", self.url, *key, *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=120,
        )
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr, done.stderr
        return done.stdout

    def raw(self, *args: str) -> Any:
        return json.loads(self(*args, "--raw"))


def test_vastai_cli(market: Market, tmp_path: Path) -> None:
    host, renter = market.user(), market.user(bitcoin="0.01")
    sid = rig(market, host)
    cli = Cli(market, renter, tmp_path)

    offers = cli.raw("search", "offers", "num_gpus>=1")
    assert [o["id"] for o in offers] == [sid * 100 + 1]
    assert offers[0]["dph_total"] == pytest.approx(0.025)
    assert cli.raw("search", "offers", "num_gpus>=2") == []
    assert cli.raw("search", "offers", "gpu_name=RTX_3090 geolocation in [CZ,DE]", "-o", "dph-")
    table = cli("search", "offers", "num_gpus>=1")
    assert str(sid * 100 + 1) in table and "RTX_3090" in table
    # before any key is set: the search is public, as Vast's and the Clore marketplace are
    assert Cli(market, "", tmp_path / "keyless").raw("search", "offers", "num_gpus>=1") == offers

    created = cli.raw(
        "create",
        "instance",
        str(sid * 100 + 1),
        "--image",
        "busybox:latest",
        "--disk",
        "20",
        "--ssh",
        "--label",
        "cli-made",
        "--onstart-cmd",
        "echo hello > /tmp/hello",
        "--env",
        "-e MODE=cli -p 8080:8080",
    )
    assert created["success"] is True
    instance_id = created["new_contract"]
    with market.db.read() as conn:
        row = conn.execute(select(orders).where(orders.c.id == instance_id)).one()
    assert row.env == {"MODE": "cli"} and row.ports == {"22": "tcp", "8080": "tcp"}
    assert row.command == "echo hello > /tmp/hello" and row.autossh_entrypoint is True

    (shown,) = cli.raw("show", "instances")
    assert shown["id"] == instance_id and shown["actual_status"] == "running"
    assert shown["label"] == "cli-made" and shown["extra_env"] == {"MODE": "cli"}
    assert str(instance_id) in cli("show", "instances")
    assert cli.raw("show", "instance", str(instance_id))["id"] == instance_id
    port = shown["ports"]["22/tcp"][0]["HostPort"]
    assert cli("ssh-url", str(instance_id)).strip() == f"ssh://root@{shown['public_ipaddr']}:{port}"
    assert shown["ssh_port"] == int(port) and shown["ssh_host"] == shown["public_ipaddr"]

    cli("label", "instance", str(instance_id), "renamed")
    cli("stop", "instance", str(instance_id))
    (stopped,) = cli.raw("show", "instances")
    assert (stopped["actual_status"], stopped["intended_status"]) == ("stopped", "stopped")
    assert stopped["label"] == "renamed"
    cli("start", "instance", str(instance_id))
    assert cli.raw("show", "instance", str(instance_id))["actual_status"] == "running"
    cli("destroy", "instance", str(instance_id), "-y")
    assert cli.raw("show", "instances") == []
    with market.db.read() as conn:
        assert conn.execute(select(orders.c.expired).where(orders.c.id == instance_id)).scalar()

    cli("create", "ssh-key", KEY)
    keys = cli.raw("show", "ssh-keys")
    assert [k["key"] for k in keys] == [KEY.rsplit(" ", 1)[0] + " renter@laptop"]
    assert cli.raw("show", "user")["ssh_key"].startswith("ssh-ed25519 ")

    # an error: Vast's message, no traceback, a failing exit
    failed = subprocess.run(
        [*cli.base, "--url", cli.url, "--api-key", "wrong", "show", "instances"],
        capture_output=True,
        text=True,
        env=cli.env,
        timeout=120,
    )
    assert "Traceback" not in failed.stderr + failed.stdout
    assert "invalid API key" in failed.stderr + failed.stdout


SDK_SCRIPT = r"""
import json, sys
from vastai import VastAI
url, token, offer_id, key = sys.argv[1:5]
sdk = VastAI(api_key=token, server_url=url)
out = {}
out["offers"] = sdk.search_offers(query="num_gpus>=1 rented=False")
made = sdk.create_instance(id=int(offer_id), image="busybox:latest", disk=5, label="sdk",
                           onstart_cmd="echo hi", env="-e A=1 -p 9000:9000", ssh=True)
out["created"] = made
iid = made["new_contract"]
out["instances"] = sdk.show_instances()
out["instance"] = sdk.show_instance(id=iid)
out["ssh_url"] = sdk.ssh_url(id=iid)
out["label"] = sdk.label_instance(id=iid, label="sdk2")
out["stop"] = sdk.stop_instance(id=iid)
out["stopped"] = sdk.show_instance(id=iid)
out["start"] = sdk.start_instance(id=iid)
out["started"] = sdk.show_instance(id=iid)
out["key"] = sdk.create_ssh_key(ssh_key=key)
out["keys"] = sdk.show_ssh_keys()
out["user"] = sdk.show_user()
out["destroy"] = sdk.destroy_instance(id=iid)
out["after"] = sdk.show_instances()
bid = sdk.create_instance(id=int(offer_id), image="busybox", price=0.01)
out["bid"] = bid
out["bid_destroy"] = sdk.destroy_instance(id=bid["new_contract"])
print(json.dumps(out))
"""


def test_vastai_sdk(market: Market, tmp_path: Path) -> None:
    host, renter = market.user(), market.user(bitcoin="0.01")
    sid = rig(market, host)
    env = {**os.environ, "HOME": str(tmp_path), "VASTAI_NO_UPDATE_CHECK": "1"}
    done = subprocess.run(
        [str(PYTHON), "-c", SDK_SCRIPT, market.url, renter, str(sid * 100 + 1), KEY],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert [o["id"] for o in out["offers"]] == [sid * 100 + 1]
    assert out["created"]["success"] is True
    iid = out["created"]["new_contract"]
    (inst,) = out["instances"]
    assert inst["id"] == iid and inst["label"] == "sdk" and inst["extra_env"] == {"A": "1"}
    assert out["instance"]["id"] == iid and out["instance"]["actual_status"] == "running"
    port = inst["ports"]["22/tcp"][0]["HostPort"]
    assert out["ssh_url"] == f"ssh://root@{inst['public_ipaddr']}:{port}"
    assert out["stop"] == {"success": True} and out["start"] == {"success": True}
    assert out["stopped"]["actual_status"] == "stopped" and out["stopped"]["label"] == "sdk2"
    assert out["started"]["actual_status"] == "running"
    assert out["key"]["success"] is True and len(out["keys"]) == 1
    assert out["user"]["balance"] == pytest.approx(600, rel=0.01)
    assert out["destroy"] == {"success": True} and out["after"] == []
    with market.db.read() as conn:
        bid = conn.execute(select(orders).where(orders.c.id == out["bid"]["new_contract"])).one()
    assert bid.spot is True and bid.price == to_units("0.000004") and bid.expired is True


DEMO_SCRIPT = r"""
import json, sys
from vastai import VastAI
url, token = sys.argv[1:3]
sdk = VastAI(api_key=token, server_url=url)
out = {"all": sdk.search_offers(no_default=True, limit=1000)}
out["single"] = sdk.search_offers(query="num_gpus=1 rentable=True", order=[["dph_total", "asc"]])
pick = [o for o in out["single"] if o["gpu_frac"] < 1][0]
made = sdk.create_instance(id=pick["id"], image="ubuntu:22.04", disk=10, ssh=True, label="demo")
out["pick"], out["made"] = pick, made
out["instance"] = sdk.show_instance(id=made["new_contract"])
out["ssh_url"] = sdk.ssh_url(id=made["new_contract"])
out["destroy"] = sdk.destroy_instance(id=made["new_contract"])
print(json.dumps(out))
"""


def test_vastai_sdk_against_the_demo_world(market: Market, tmp_path: Path) -> None:
    """The demo world (USD rates, whole and per-GPU servers) as Vast offers: a one-GPU bundle of
    a partial server rented, shown and destroyed through the SDK."""
    with market.db.write() as conn:
        seed(conn, market.settings, market.now())
    env = {**os.environ, "HOME": str(tmp_path), "VASTAI_NO_UPDATE_CHECK": "1"}
    done = subprocess.run(
        [str(PYTHON), "-c", DEMO_SCRIPT, market.url, RENTER_TOKEN],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    machines = {o["machine_id"] for o in out["all"]}
    assert len(machines) > 10 and all(o["dph_total"] > 0 for o in out["all"])
    assert any(o["num_gpus"] < max(p["num_gpus"] for p in out["all"]) for o in out["all"])
    prices = [o["dph_total"] for o in out["single"]]
    assert prices == sorted(prices) and all(o["num_gpus"] == 1 for o in out["single"])
    pick, inst = out["pick"], out["instance"]
    assert out["made"]["success"] is True
    assert inst["num_gpus"] == 1 and inst["machine_id"] == pick["machine_id"]
    assert inst["label"] == "demo" and out["ssh_url"].startswith("ssh://root@")
    assert out["destroy"] == {"success": True}
    with market.db.read() as conn:
        row = conn.execute(select(orders).where(orders.c.id == out["made"]["new_contract"])).one()
    assert row.gpu_count == 1 and row.expired is True
