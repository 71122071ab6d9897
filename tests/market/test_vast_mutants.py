"""Vast instances (market/vast.py) driven directly: every field of an instance row for a whole
server, a per-GPU bid, a stopped order and one whose server is gone; the runtype, status and
port translations at each of their cases.

Written to kill the mutants `scripts/mutation vast` found alive: the HTTP tests (test_vast.py)
check the fields the clients read, and the real clients' tests (test_vastai_client.py) run
`vastai` in processes of its own, where mutmut cannot see."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import insert, select, update

from openclore.domain.errors import InvalidInput, MarketError
from openclore.domain.money import to_coins, to_units
from openclore.domain.usd import rate_units
from openclore.market import vast
from openclore.market.account_keys import add_key
from openclore.market.audit import Actor
from openclore.market.rates import set_rates
from openclore.store.schema import audit_log, orders, server_prices, servers

from support import Market, ok, order_body

ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl laptop"
pytestmark = pytest.mark.origin("mutant")

RATES = {"bitcoin": rate_units("60000")}
SERVER = {
    "id": 7,
    "owner_id": 3,
    "specs": {
        "gpu": "4x NVIDIA GeForce RTX 3090",
        "gpuram": 24,
        "ram": 64,
        "cpus": "16/32",
        "cpu": "AMD EPYC 7302",
        "net": {"cc": "CZ", "up": 500, "down": 1000},
    },
    "gpu_array": ["NVIDIA GeForce RTX 3090"] * 4,
    "reliability": 0.99,
}
ROW: dict[str, Any] = {
    "id": 55,
    "server_id": 7,
    "gpu_count": None,
    "currency": "bitcoin",
    "price": to_units("0.0001"),  # a day: 6 USD at 60,000 USD a coin, 0.25 an hour
    "pub_cluster": ["gw.example", "other.example"],
    "tcp_ports": ["22:40001", "8888:40002"],
    "stopped": False,
    "running": True,
    "spot": False,
    "expired": False,
    "runtime_state": "running",
    "runtime_error": None,
    "storage_rate": to_units("0.00002"),  # a day: 1.2 USD, 0.05 an hour
    "image": "busybox:latest",
    "ports": {"22": "tcp", "8080": "http"},
    "jupyter_token": "tok",
    "autossh_entrypoint": True,
    "command": "echo hi",
    "env": {"B": "2", "A": "1"},
    "disk_gb": 20,
    "ct": 1000,
    "mrl": 3600,
}
MONEY = ("dph_base", "dph_total", "storage_total_cost", "min_bid")


def exact(row: dict[str, Any]) -> dict[str, Any]:
    """The row with its money compared to the ninth decimal."""
    return {k: (pytest.approx(v, rel=1e-9) if k in MONEY and v else v) for k, v in row.items()}


def test_a_whole_server_on_demand_instance_field_by_field() -> None:
    got = vast.instance_row(ROW, SERVER, RATES, "trainer", 1500)
    facts = {
        "machine_id": 7,
        "host_id": 3,
        "gpu_name": "RTX 3090",
        "gpu_ram": 24000,
        "cpu_name": "AMD EPYC 7302",
        "cpu_ram": 64000,
        "inet_up": 500,
        "inet_down": 1000,
        "geolocation": "CZ",
        "reliability": 0.99,
        "reliability2": 0.99,
    }
    assert {k: got[k] for k in facts} == facts
    own = {k: v for k, v in got.items() if k not in vast.server_facts({"id": 0})}
    assert own == exact(
        {
            "id": 55,
            "actual_status": "running",
            "cur_state": "running",
            "next_state": "running",
            "intended_status": "running",
            "status_msg": "running",
            "label": "trainer",
            "image_uuid": "busybox:latest",
            "image_runtype": "jupyter_proxy ssh_proxy",
            "image_args": [],
            "onstart": "echo hi",
            "extra_env": [["A", "1"], ["B", "2"]],
            "jupyter_token": "tok",
            "num_gpus": 4,
            "gpu_frac": 1.0,
            "gpu_totalram": 96000,
            "cpu_cores": 32,
            "cpu_cores_effective": 32.0,
            "disk_space": 20,
            "disk_usage": None,
            "gpu_util": None,
            "dph_base": 0.25,
            "dph_total": 0.25,
            "storage_total_cost": 0.05,
            "is_bid": False,
            "min_bid": None,
            "public_ipaddr": "gw.example",
            "ssh_host": "gw.example",
            "ssh_port": 40001,
            "ssh_idx": None,
            "ports": {
                "22/tcp": [{"HostIp": "gw.example", "HostPort": "40001"}],
                "8888/tcp": [{"HostIp": "gw.example", "HostPort": "40002"}],
            },
            "local_ipaddrs": "",
            "start_date": 1000.0,
            "end_date": 4600.0,
            "duration": 500.0,
            "currency": "bitcoin",
            "openclore_state": "running",
        }
    )
    assert isinstance(got["start_date"], float) and isinstance(got["duration"], float)
    assert vast.instance_row(ROW, SERVER, RATES, None, 900)["duration"] == 0.0  # never negative


def test_a_per_gpu_bid_is_its_share_of_the_server() -> None:
    row = {**ROW, "gpu_count": 1, "spot": True, "runtime_state": None, "ports": {"22": "tcp"}}
    got = vast.instance_row(row, SERVER, RATES, None, 1500)
    assert (got["num_gpus"], got["gpu_frac"], got["gpu_totalram"]) == (1, 0.25, 24000)
    assert (got["cpu_cores"], got["cpu_cores_effective"]) == (32, 8.0)
    assert got["is_bid"] is True and got["min_bid"] == pytest.approx(0.25, rel=1e-9)
    assert (got["actual_status"], got["status_msg"], got["openclore_state"]) == (
        "loading",
        "loading",
        None,
    )
    assert got["image_runtype"] == "ssh_proxy"


def test_a_stopped_order_whose_server_is_gone_and_that_has_no_rate() -> None:
    row = {
        **ROW,
        "gpu_count": 2,
        "spot": True,
        "stopped": True,
        "running": True,  # a stopped order holds no GPU whatever the flag says
        "pub_cluster": [],
        "tcp_ports": ["22:40003", "bad", "8080:", ":1"],
        "storage_rate": 0,
        "command": None,
        "env": None,
        "runtime_error": "image not found",
        "autossh_entrypoint": False,
        "ports": {"8080": "http"},
        "jupyter_token": None,
    }
    got = vast.instance_row(row, None, {}, None, 1500)
    assert got["machine_id"] == 7 and got["host_id"] is None and got["gpu_ram"] is None
    assert (got["num_gpus"], got["gpu_frac"], got["gpu_totalram"]) == (2, 1.0, None)
    assert (got["cpu_cores"], got["cpu_cores_effective"]) == (None, None)
    assert (got["dph_base"], got["dph_total"], got["storage_total_cost"], got["min_bid"]) == (
        None,
        None,
        None,
        None,
    )
    assert (got["actual_status"], got["cur_state"], got["next_state"]) == (
        "stopped",
        "stopped",
        "stopped",
    )
    assert (got["intended_status"], got["status_msg"]) == ("stopped", "image not found")
    assert (got["public_ipaddr"], got["ssh_host"], got["ssh_port"]) == (None, None, 40003)
    assert got["ports"] == {"22/tcp": [{"HostIp": "0.0.0.0", "HostPort": "40003"}]}
    assert (got["onstart"], got["extra_env"], got["image_runtype"]) == ("", [], "args")
    # a rate but no storage price: no storage cost
    assert vast.instance_row(row, SERVER, RATES, None, 1500)["storage_total_cost"] is None
    # running and not stopped: it holds its GPUs
    held = vast.instance_row({**row, "stopped": False}, SERVER, RATES, None, 1500)
    assert (held["cur_state"], held["next_state"], held["intended_status"]) == (
        "running",
        "running",
        "running",
    )
    waiting = vast.instance_row({**row, "stopped": False, "running": False}, SERVER, RATES, None, 1)
    assert (waiting["cur_state"], waiting["actual_status"]) == ("stopped", "stopped")


@pytest.mark.parametrize(
    ("fields", "runtype"),
    [
        (
            {"ports": {"8080": "http"}, "jupyter_token": "t", "autossh_entrypoint": False},
            "jupyter_proxy ssh_proxy",
        ),
        (
            {"ports": {"8080": "http"}, "jupyter_token": None, "autossh_entrypoint": True},
            "ssh_proxy",
        ),
        ({"ports": {"8080": "http"}, "jupyter_token": "", "autossh_entrypoint": False}, "args"),
        ({"ports": {"22": "tcp"}, "jupyter_token": "t", "autossh_entrypoint": True}, "ssh_proxy"),
        ({"ports": None, "jupyter_token": "t", "autossh_entrypoint": None}, "args"),
        ({"jupyter_token": "t"}, "args"),
    ],
)
def test_the_runtype_of_an_instance(fields: dict[str, Any], runtype: str) -> None:
    assert vast._runtype(fields) == runtype


@pytest.mark.parametrize(
    ("fields", "status"),
    [
        ({"stopped": True}, "stopped"),
        ({"running": False, "spot": True}, "stopped"),  # waiting for its GPUs
        ({"running": False, "spot": False}, "exited"),  # its server is offline
        ({"runtime_state": "running"}, "running"),
        ({"runtime_state": "crash_loop"}, "exited"),
        ({"runtime_state": "exited"}, "exited"),
        ({"runtime_state": "error"}, "exited"),
        ({"runtime_state": "dead"}, "exited"),
        ({"runtime_state": "failed"}, "exited"),
        ({"runtime_state": "pulling"}, "loading"),
        ({"runtime_state": "starting"}, "loading"),
        ({"runtime_state": None}, "loading"),
        ({"runtime_state": "stopped"}, "loading"),  # the agent's stop before it runs again
    ],
)
def test_the_actual_status_of_each_state(fields: dict[str, Any], status: str) -> None:
    base = {"expired": False, "stopped": False, "running": True, "spot": False}
    assert vast.actual_status({**base, "runtime_state": None, **fields}) == status


def test_docker_ports_keep_only_whole_mappings() -> None:
    assert vast.docker_ports(["22:40001", "x:1", "2:y", "3:", ":4", "5"], None) == {
        "22/tcp": [{"HostIp": "0.0.0.0", "HostPort": "40001"}]
    }
    assert vast.docker_ports([], "h") == {}


# ------------------------------------------------------------------- the create body, read


def refused(body: dict[str, Any]) -> str:
    with pytest.raises(InvalidInput) as caught:
        vast.read_create(body)
    return caught.value.message


def test_each_refusal_of_a_create_body_says_what_is_wrong() -> None:
    assert refused({}) == "image: required"
    assert refused({"image": ""}) == "image: required"
    assert refused({"template_hash_id": "abc"}) == "templates are not supported: send image"
    assert refused({"image": 5}) == "image: expected a string"
    assert refused({"image": "i" * 513}) == "image: at most 512 characters"
    assert refused({"image": "x", "runtype": "r" * 65}) == "runtype: at most 64 characters"
    assert refused({"image": "x", "args": 5}) == "args: expected a list of strings"
    assert refused({"image": "x", "args": ["a", 1]}) == "args: expected a list of strings"
    assert refused({"image": "x", "env": "-e A=1"}) == (
        "env: expected an object (the vastai client parses '-e K=V -p 80:80')"
    )
    assert refused({"image": "x", "env": [1]}) == "env: expected an object"
    assert refused({"image": "x", "env": {"A": None}}) == "env: 'A' must be a string"
    assert refused({"image": "x", "env": {"A": True}}) == "env: 'A' must be a string"
    assert refused({"image": "x", "env": {"K" * 40: []}}) == f"env: {'K' * 32!r} must be a string"
    assert refused({"image": "x", "disk": "big"}) == "disk: expected a number, got 'big'"
    assert refused({"image": "x", "onstart": "o" * 16001}) == "onstart: at most 16000 characters"
    assert refused({"image": "x", "image_login": "l" * 2049}) == (
        "image_login: at most 2048 characters"
    )
    assert refused({"image": "x", "currency": "c" * 33}) == "currency: at most 32 characters"
    assert refused({"image": "x", "label": 7}) == "label: expected a string"
    assert refused({"image": "x", "env": {"-p 8080/udp": "1"}}) == (
        "env -p 8080/udp: only TCP ports are published"
    )
    assert refused({"image": "x", "env": {"-p 80:0": "1"}}) == "env -p 80:0: not a port number"
    assert refused({"image": "x", "env": {"-p 80:65536": "1"}}) == (
        "env -p 80:65536: not a port number"
    )
    long = "9" * 40
    assert refused({"image": "x", "env": {f"-p {long}": "1"}}) == (
        f"env -p {long[:32]}: not a port number"
    )
    assert refused({"image": "x", "env": {f"-p {long}/udp": "1"}}) == (
        f"env -p {long[:32]}: only TCP ports are published"
    )


def test_a_create_body_at_its_limits_and_its_defaults() -> None:
    ask = vast.read_create(
        {
            "image": "i" * 512,
            "runtype": "r" * 64,
            "onstart": "o" * 16000,
            "image_login": "l" * 2048,
            "currency": "c" * 32,
        }
    )
    assert (len(ask.image), len(ask.onstart), ask.currency) == (512, 16000, "c" * 32)
    assert ask.image_login == "l" * 2048 and ask.ports == {}  # no ssh or jupyter in the runtype
    plain = vast.read_create({"image": "x", "currency": "", "label": ""})
    assert (plain.runtype, plain.args, plain.env, plain.ports) == ("ssh", None, {}, {"22": "tcp"})
    assert (plain.onstart, plain.label, plain.currency, plain.disk, plain.price) == (
        "",
        None,
        None,
        None,
        None,
    )
    with_args = vast.read_create({"image": "x", "args": ["run", "--fast"]})
    assert (with_args.runtype, with_args.args, with_args.ports) == ("args", ["run", "--fast"], {})
    assert vast.read_create({"image": "x", "args": "  "}).args is None
    assert vast.read_create({"image": "x", "args": []}).args is None
    assert vast.read_create({"image": "x", "args": "a 'b c'"}).args == ["a", "b c"]
    assert vast.read_create({"image": "x", "args": None}).runtype == "ssh"
    assert vast.read_create({"image": "x", "disk": "32"}).disk == 32.0
    assert vast.read_create({"image": "x", "currency": "bitcoin"}).currency == "bitcoin"


def test_env_keys_become_variables_ports_or_are_left_out() -> None:
    ask = vast.read_create(
        {
            "image": "x",
            "runtype": "jupyter_proxy",
            "env": {
                "-p 8888:8888": "1",
                "-p 70": "1",
                "-p 1:1": "1",
                "-p 2:65535/tcp": "1",
                "-v /data:/data": "1",
                "-n name": "1",
                "-h host": "1",
                "-h": "1",
                "-x other": "2",
                "NUM": 3,
                "DEC": 1.5,
                "LAST": "v",
            },
        }
    )
    assert ask.ports == {
        "8888": "tcp",
        "70": "tcp",
        "1": "tcp",
        "65535": "tcp",
        "22": "tcp",
        "8080": "http",
    }
    assert ask.env == {"-x other": "2", "NUM": "3", "DEC": "1.5", "LAST": "v"}
    assert vast.read_create({"image": "x", "runtype": "ssh_direc ssh_proxy"}).ports == {"22": "tcp"}
    # jupyter alone brings SSH too
    assert vast.read_create({"image": "x", "runtype": "jupyter"}).ports == {
        "22": "tcp",
        "8080": "http",
    }
    assert vast.read_create({"image": "x", "runtype": "args"}).ports == {}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (True, "price: expected a number (USD per hour) or null"),
        ([1], "price: expected a number (USD per hour) or null"),
        ({"a": 1}, "price: expected a number (USD per hour) or null"),
        ("cheap", "price: expected a number (USD per hour) or null"),
        ("-1", "price: expected a number ≥ 0 (USD per hour) or null"),
        (float("inf"), "price: expected a number ≥ 0 (USD per hour) or null"),
        ("NaN", "price: expected a number ≥ 0 (USD per hour) or null"),
    ],
)
def test_a_bad_price_says_what_a_price_is(raw: Any, message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        vast.read_price(raw)
    assert caught.value.message == message


def test_prices_read_as_exact_decimals() -> None:
    assert vast.read_price(None) is None
    assert vast.read_price(0) == Decimal(0)
    assert vast.read_price("0.25") == Decimal("0.25")
    assert vast.read_price(Decimal("1.5")) == Decimal("1.5")
    assert vast.read_price(2) == Decimal(2)


def test_registry_logins() -> None:
    assert vast.registry_auth(None) is None
    assert vast.registry_auth("-u alice -p s3cret ghcr.io") == "alice:s3cret"
    assert vast.registry_auth("--username alice --password 's p'") == "alice:s p"
    for bad in ("-u alice", "-p s3cret", "alice s3cret", "-u '' -p x", "--USERNAME a -p b"):
        with pytest.raises(InvalidInput) as caught:
            vast.registry_auth(bad)
        assert caught.value.message == "image_login: expected '-u USER -p PASSWORD [REGISTRY]'"


def test_the_onstart_script_runs_the_args_last() -> None:
    ask = vast.read_create({"image": "x", "onstart": "echo 1", "args": ["python", "a b.py"]})
    assert vast.onstart_command(ask) == "echo 1\nexec python 'a b.py'"
    assert vast.onstart_command(vast.read_create({"image": "x", "args": ["run"]})) == "exec run"
    assert vast.onstart_command(vast.read_create({"image": "x", "onstart": "o"})) == "o"
    assert vast.onstart_command(vast.read_create({"image": "x"})) == ""


def test_an_instance_without_ssh_has_no_ssh_address() -> None:
    row = {**ROW, "tcp_ports": ["8888:40002"]}
    got = vast.instance_row(row, SERVER, RATES, None, 1500)
    assert (got["public_ipaddr"], got["ssh_host"], got["ssh_port"]) == ("gw.example", None, None)


def test_env_names_are_strings() -> None:
    assert refused({"image": "x", "env": {1: "x"}}) == "env: names are strings"


def test_the_current_user_in_usd_at_the_rates(market: Market) -> None:
    token = market.user("alice", bitcoin="0.01", CLORE_Blockchain="100", USD_Blockchain="5")
    uid = market.user_id(token)
    other = market.user("bob", bitcoin="1")  # another account's money is not alice's
    assert other
    rates = {"bitcoin": rate_units("60000"), "CLORE-Blockchain": rate_units("0.02")}
    with market.db.write() as conn:
        key = add_key(conn, uid, "laptop", ED25519, market.now())
        me = vast.current_user(conn, uid, rates, market.settings)
    # 0.01 × 60,000 + 100 × 0.02 = 602 USD; the USD-Blockchain wallet has no rate here
    assert me == {
        "id": uid,
        "username": "alice",
        "email": None,
        "fullname": "alice",
        "balance": 602.0,
        "credit": 602.0,
        "has_billing": True,
        "can_pay": True,
        "ssh_key": key["public_key"],
        "billed_verification": None,
    }
    with market.db.read() as conn:
        poor = vast.current_user(conn, market.user_id(market.user("carol")), rates, market.settings)
    assert (poor["balance"], poor["credit"], poor["ssh_key"], poor["username"]) == (
        0.0,
        0.0,
        "",
        "carol",
    )


def test_labels_of_ones_own_live_orders(market: Market) -> None:
    token, other = market.user(bitcoin="1"), market.user(bitcoin="1")
    uid, them = market.user_id(token), market.user_id(other)
    sid = market.server(market.user())
    oid = ok(market.client(token).post("/v1/create_order", json=order_body(sid)))["order_id"]
    with market.db.write() as conn:
        vast.set_label(conn, uid, oid, "l" * vast.MAX_LABEL, actor=Actor.user(uid))
        with pytest.raises(InvalidInput) as long:
            vast.set_label(conn, uid, oid, "l" * (vast.MAX_LABEL + 1))
        assert long.value.message == "label: at most 256 characters"
        with pytest.raises(MarketError) as theirs:
            vast.set_label(conn, them, oid, "mine now")
        assert theirs.value.name == "order_dont_exist"
        with pytest.raises(MarketError) as missing:
            vast.set_label(conn, uid, 999_999, "x")
        assert missing.value.name == "order_dont_exist"
        assert vast.labels(conn, uid) == {oid: "l" * 256}
        vast.set_label(conn, uid, oid, "")  # cleared
        assert vast.labels(conn, uid) == {oid: None}
        vast.set_label(conn, uid, oid, "second")
        # entries by the system about this user count as theirs; another user's do not
        row = conn.execute(
            select(audit_log.c.user_id, audit_log.c.detail)
            .where(audit_log.c.action == vast.ORDER_LABEL)
            .order_by(audit_log.c.id.desc())
        ).first()
        assert row is not None and (row.user_id, row.detail) == (uid, {"label": "second"})
        assert vast.labels(conn, them) == {}
        # odd entries under the action are skipped
        for target, detail in [
            ("server:5", {"label": "no"}),
            ("order:x", {"label": "no"}),
            (f"order:{oid}", {"label": 5}),
        ]:
            conn.execute(
                insert(audit_log).values(
                    at=0,
                    actor="system",
                    user_id=uid,
                    action=vast.ORDER_LABEL,
                    target=target,
                    detail=detail,
                    source="",
                )
            )
        assert vast.labels(conn, uid) == {oid: None}  # the latest: not a text
    ok(market.client(token).post("/v1/cancel_order", json={"id": oid}))
    with market.db.write() as conn, pytest.raises(MarketError) as ended:
        vast.set_label(conn, uid, oid, "late")
    assert ended.value.name == "order_not_active"


def test_instances_are_the_users_own_live_orders_oldest_first(market: Market) -> None:
    token, other = market.user(bitcoin="1"), market.user(bitcoin="1")
    uid = market.user_id(token)
    first_sid, second_sid = market.server(market.user()), market.server(market.user())
    first = ok(market.client(token).post("/v1/create_order", json=order_body(first_sid)))
    second = ok(market.client(token).post("/v1/create_order", json=order_body(second_sid)))
    ok(market.client(other).post("/v1/create_order", json=order_body(market.server(market.user()))))
    with market.db.write() as conn:  # written again: last in PostgreSQL's heap
        moved = update(orders).where(orders.c.id == first["order_id"])
        conn.execute(moved.values(user_id=market.user_id(other)))
        conn.execute(moved.values(user_id=uid))
    with market.db.read() as conn:
        listed = vast.instances(conn, uid, RATES, market.now())
        one = vast.instance(conn, uid, second["order_id"], RATES, market.now())
    assert [i["id"] for i in listed] == [first["order_id"], second["order_id"]]
    assert one is not None and one["machine_id"] == second_sid and one["host_id"] is not None


# ------------------------------------------------------------------- creating, over the API

GPU = "NVIDIA GeForce RTX 4090"


def quad(market: Market, partial: bool = True) -> int:
    """Four GPUs at 0.0004 BTC a day on demand, a spot minimum of 0.00004 (0.00001 a GPU), a
    100 GB disk; 60,000 USD a bitcoin."""
    host = market.user()
    sid = market.server(host, "quad", on_demand="0.0004", spot="0.00004")
    with market.db.write() as conn:
        conn.execute(
            update(servers).where(servers.c.id == sid).values(gpu_array=[GPU] * 4, disk_gb=100)
        )
        conn.execute(
            update(server_prices)
            .where(server_prices.c.server_id == sid)
            .values(storage=to_units("0.0000001"))
        )
        set_rates(conn, RATES, market.settings, market.now())
    body = {"name": "quad", "partial_gpu_rental": partial, "min_gpus": 1}
    ok(market.client(host).post("/v1/set_server_settings", json=body))
    return sid


def vast_client(market: Market, token: str) -> httpx.Client:
    client = httpx.Client(
        base_url=market.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    market.clients.append(client)
    return client


def ask(market: Market, token: str, offer: int, **body: Any) -> Any:
    return vast_client(market, token).put(
        f"/api/v0/asks/{offer}/", json={"image": "busybox", **body}
    )


def made(market: Market, answer: Any) -> Any:
    assert answer.status_code == 200, answer.text
    with market.db.read() as conn:
        return conn.execute(
            select(orders).where(orders.c.id == answer.json()["new_contract"])
        ).one()


def test_creating_a_one_gpu_instance_with_everything(market: Market) -> None:
    sid = quad(market)
    token = market.user(bitcoin="0.01")
    row = made(
        market,
        ask(
            market,
            token,
            sid * 100 + 1,
            disk=40.2,
            runtype="jupyter",
            label="lab",
            image_login="-u a -p b",
            onstart="echo",
            args=["run"],
        ),
    )
    assert (row.gpu_count, row.disk_gb, row.spot, row.currency) == (1, 25, False, "bitcoin")
    assert row.autossh_entrypoint is True and row.ports == {"22": "tcp", "8080": "http"}
    assert len(row.jupyter_token) == 32 and int(row.jupyter_token, 16) >= 0
    assert (row.dockerhub_auth, row.command, row.env) == ("a:b", "echo\nexec run", {})
    with market.db.read() as conn:
        assert vast.labels(conn, market.user_id(token)) == {row.id: "lab"}
    # the whole server: no GPU count; a disk of half a gigabyte is one
    other = quad(market)
    whole = made(market, ask(market, market.user(bitcoin="0.01"), other * 100 + 4, disk=0.5))
    assert (whole.gpu_count, whole.disk_gb, whole.jupyter_token) == (None, 1, None)
    assert whole.autossh_entrypoint is True and whole.ports == {"22": "tcp"}
    plain = made(market, ask(market, market.user(bitcoin="0.01"), sid * 100 + 2, runtype="args"))
    # no SSH, no ports, no script; its disk is the market's default for a GPU of the server
    assert (plain.autossh_entrypoint, plain.ports, plain.command) == (False, {}, "")


def test_bids_at_the_minimum_at_a_price_and_below_it(market: Market) -> None:
    sid = quad(market)
    least = made(market, ask(market, market.user(bitcoin="0.01"), sid * 100 + 1, price=0))
    assert least.spot is True and least.price == to_units("0.00001")  # a quarter of the minimum
    priced = made(market, ask(market, market.user(bitcoin="0.01"), sid * 100 + 1, price=0.05))
    assert priced.price == to_units("0.00002")  # 0.05 USD an hour at 60,000 a coin
    low = ask(market, market.user(bitcoin="0.01"), sid * 100 + 1, price=0.0001)
    assert low.status_code >= 400 and low.json()["error"] == "too_low_price"
    assert low.json()["min_bid"] == pytest.approx(0.025, rel=1e-9)
    assert Decimal(str(low.json()["min_price"])) == Decimal("0.00001")
    other = quad(market)
    whole = made(market, ask(market, market.user(bitcoin="0.01"), other * 100 + 4, price=0))
    assert whole.price == to_units("0.00004")


def test_offers_that_cannot_be_rented(market: Market) -> None:
    sid = quad(market, partial=False)
    token = market.user(bitcoin="0.01")
    for offer in (sid * 100 + 1, 999_999 * 100 + 1):
        answer = ask(market, token, offer)
        assert answer.status_code == 404 and answer.json()["error"] == "server-dont-exist"
    unrated = ask(market, token, sid * 100 + 4, currency="CLORE-Blockchain")
    assert unrated.status_code == 400
    assert unrated.json()["msg"] == "this offer has no price in a currency with a USD rate"


def test_a_bids_price_changed_in_usd_an_hour(market: Market) -> None:
    sid = quad(market)
    token = market.user(bitcoin="0.01")
    bid = made(market, ask(market, token, sid * 100 + 1, price=0.05))  # 0.00002 a day

    def change(order_id: int, price: Any, who: str = token) -> Any:
        path = f"/api/v0/instances/bid_price/{order_id}/"
        return vast_client(market, who).put(path, json={"price": price})

    def price_of(order_id: int) -> int:
        with market.db.read() as conn:
            return int(conn.execute(select(orders.c.price).where(orders.c.id == order_id)).scalar())

    assert change(bid.id, 0.1).status_code == 200 and price_of(bid.id) == to_units("0.00004")
    # lowered by one minimum for one GPU (a quarter of the server's), as the spot rules allow
    assert change(bid.id, 0.075).status_code == 200 and price_of(bid.id) == to_units("0.00003")
    stranger = change(bid.id, 0.2, who=market.user(bitcoin="0.01"))
    assert stranger.status_code == 404 and stranger.json()["error"] == "order_dont_exist"
    renter = market.user(bitcoin="0.01")
    on_demand = made(market, ask(market, renter, sid * 100 + 1))
    not_a_bid = change(on_demand.id, 0.2, who=renter)
    assert not_a_bid.status_code == 400
    assert not_a_bid.json()["msg"] == "not an interruptible instance: only a bid has a bid price"
    fresh = quad(market)
    lowered = made(market, ask(market, token, fresh * 100 + 1, price=0.05))
    # null: the least the bid may be, a quarter of the server's minimum for one GPU
    assert change(lowered.id, None).status_code == 200
    assert price_of(lowered.id) == to_units("0.00001")
    whole_sid = quad(market)
    whole = made(market, ask(market, token, whole_sid * 100 + 4, price=0.125))  # 0.00005
    assert change(whole.id, 0).status_code == 200 and price_of(whole.id) == to_units("0.00004")


def test_the_currency_a_renter_pays_in(market: Market) -> None:
    """No currency asked: the cheapest (in USD) of the server's rated currencies in which the
    renter holds money, else the offer's own."""
    sid = quad(market)
    with market.db.write() as conn:
        # 0.0004 BTC is 24 USD a day; 1000 CLORE at 0.02 is 20 USD; USD-B: no rate
        conn.execute(
            insert(server_prices),
            [
                {
                    "server_id": sid,
                    "currency": currency,
                    "on_demand": to_units(on_demand),
                    "spot": to_units(spot),
                    "enabled": True,
                    "storage": 0,
                }
                for currency, on_demand, spot in (
                    ("CLORE-Blockchain", "1000", "100"),
                    ("USD-Blockchain", "1", "0.1"),
                )
            ],
        )
        set_rates(
            conn,
            {**RATES, "CLORE-Blockchain": rate_units("0.02")},
            market.settings,
            market.now(),
        )
    both = market.user(bitcoin="0.01", CLORE_Blockchain="10000", USD_Blockchain="100")
    assert made(market, ask(market, both, sid * 100 + 1)).currency == "CLORE-Blockchain"
    only_btc = market.user(bitcoin="0.01")
    assert made(market, ask(market, only_btc, sid * 100 + 1)).currency == "bitcoin"
    # a bid looks at the spot prices: 0.00004 BTC (2.4 USD) against 100 CLORE (2 USD)
    bidder = market.user(bitcoin="0.01", CLORE_Blockchain="10000")
    assert made(market, ask(market, bidder, sid * 100 + 1, price=0)).currency == "CLORE-Blockchain"
    asked = market.user(bitcoin="0.01", CLORE_Blockchain="10000")
    assert made(market, ask(market, asked, sid * 100 + 1, currency="bitcoin")).currency == "bitcoin"


# ------------------------------------------------------------------ the currency a renter pays in

DOLLAR_A_COIN = {"bitcoin": 10**9, "CLORE-Blockchain": 10**9}  # units compare as USD


def offer(on_demand: dict[str, Any], spot: dict[str, Any]) -> dict[str, Any]:
    return {"price": {"on_demand": on_demand, "spot": spot}}


def paid_in(market: Market, token: str, item: dict[str, Any], bid: bool) -> str | None:
    with market.db.read() as conn:
        return vast._funded_currency(conn, market.user_id(token), item, DOLLAR_A_COIN, bid)


def test_the_funded_currency_is_read_on_the_side_asked(market: Market) -> None:
    both = market.user(bitcoin="1", CLORE_Blockchain="1")
    item = offer(
        {"bitcoin": to_coins(100), "CLORE-Blockchain": to_coins(200)},
        {"bitcoin": to_coins(300), "CLORE-Blockchain": to_coins(50)},
    )
    assert paid_in(market, both, item, bid=False) == "bitcoin"
    assert paid_in(market, both, item, bid=True) == "CLORE-Blockchain"
    clore_only = market.user(CLORE_Blockchain="1")
    cheap_btc_spot = offer(
        {"bitcoin": to_coins(100), "CLORE-Blockchain": to_coins(200)},
        {"bitcoin": to_coins(50), "CLORE-Blockchain": to_coins(300)},
    )
    assert paid_in(market, clore_only, cheap_btc_spot, bid=True) == "CLORE-Blockchain"
    broke = market.user()  # nothing funded: the cheapest on the side asked
    assert paid_in(market, broke, item, bid=True) == "CLORE-Blockchain"
    assert paid_in(market, broke, item, bid=False) == "bitcoin"


def test_prices_that_are_no_price_are_passed_over(market: Market) -> None:
    both = market.user(bitcoin="1", CLORE_Blockchain="1")
    free_btc = offer({"bitcoin": to_coins(0), "CLORE-Blockchain": to_coins(5)}, {})
    assert paid_in(market, both, free_btc, bid=False) == "CLORE-Blockchain"
    one_unit = offer({"bitcoin": to_coins(1), "CLORE-Blockchain": to_coins(5)}, {})
    assert paid_in(market, both, one_unit, bid=False) == "bitcoin"
    odd = offer({"bitcoin": None, "CLORE-Blockchain": to_coins(5)}, {})
    assert paid_in(market, both, odd, bid=False) == "CLORE-Blockchain"
    clore_only = market.user(CLORE_Blockchain="1")
    unrated_first = offer(
        {
            "USD-Blockchain": to_coins(1),
            "bitcoin": to_coins(1),
            "CLORE-Blockchain": to_coins(5),
        },
        {},
    )
    assert paid_in(market, clore_only, unrated_first, bid=False) == "CLORE-Blockchain"


def test_one_unit_in_a_wallet_funds_it(market: Market) -> None:
    crumb = market.user(CLORE_Blockchain="0.000000001")
    item = offer({"bitcoin": to_coins(1), "CLORE-Blockchain": to_coins(5)}, {})
    assert paid_in(market, crumb, item, bid=False) == "CLORE-Blockchain"


def test_instances_and_bid_changes_are_audited_as_the_renter(market: Market) -> None:
    sid = quad(market)
    token = market.user(bitcoin="0.01")
    uid = market.user_id(token)
    bid = made(market, ask(market, token, sid * 100 + 1, price=0.05, label="mine"))
    path = f"/api/v0/instances/bid_price/{bid.id}/"
    assert vast_client(market, token).put(path, json={"price": 0.1}).status_code == 200
    with market.db.read() as conn:
        entries = conn.execute(
            select(audit_log.c.action, audit_log.c.actor).where(
                audit_log.c.target == f"order:{bid.id}"
            )
        ).all()
    assert {action for action, _ in entries} >= {"order.create", "order.label"}
    assert len(entries) >= 3 and {actor for _, actor in entries} == {f"user:{uid}"}


def test_a_bid_in_a_currency_without_a_rate_cannot_be_priced_in_usd(market: Market) -> None:
    host = market.user()
    sid = market.server(host, "clore", currency="CLORE-Blockchain", on_demand="10", spot="1")
    token = market.user(CLORE_Blockchain="1000")
    body = {**order_body(sid), "type": "spot", "spotprice": 2, "currency": "CLORE-Blockchain"}
    order_id = ok(market.client(token).post("/v1/create_order", json=body))["order_id"]
    path = f"/api/v0/instances/bid_price/{order_id}/"
    refused = vast_client(market, token).put(path, json={"price": 0.1})
    assert refused.status_code == 400
    assert refused.json()["msg"] == (
        "no USD rate for CLORE-Blockchain: the bid cannot be priced in USD"
    )


def test_a_bid_exactly_at_the_least_is_taken_and_one_dollar_below_it_is_not(
    market: Market,
) -> None:
    sid = quad(market)
    # a quarter of 0.00004 BTC a day is 0.00001, 0.025 USD an hour at 60,000 USD a coin
    at_least = made(market, ask(market, market.user(bitcoin="0.01"), sid * 100 + 1, price=0.025))
    assert at_least.price == to_units("0.00001")
    dear = quad(market)
    with market.db.write() as conn:  # 0.004 BTC a day for the server: 2.5 USD an hour per GPU
        conn.execute(
            update(server_prices)
            .where(server_prices.c.server_id == dear)
            .values(spot=to_units("0.004"))
        )
    low = ask(market, market.user(bitcoin="1"), dear * 100 + 1, price=1)
    assert low.status_code >= 400 and low.json()["error"] == "too_low_price"
    assert low.json()["min_bid"] == pytest.approx(2.5, rel=1e-9)  # in USD an hour, as Vast's


def test_a_gpus_share_of_a_small_disk_is_at_least_one_gigabyte(market: Market) -> None:
    sid = quad(market)
    with market.db.write() as conn:
        conn.execute(update(servers).where(servers.c.id == sid).values(disk_gb=3))
    row = made(market, ask(market, market.user(bitcoin="0.01"), sid * 100 + 1, disk=5))
    assert row.disk_gb == 1  # 3 GB over four GPUs rounds down to none: one is the least


def quad_with_clore(market: Market, *, enabled: bool) -> int:
    """quad() also priced in CLORE (1000 a day, a spot minimum of 200, at 0.02 USD a coin),
    accepted or switched off by its host."""
    sid = quad(market)
    with market.db.write() as conn:
        conn.execute(
            insert(server_prices).values(
                server_id=sid,
                currency="CLORE-Blockchain",
                on_demand=to_units("1000"),
                spot=to_units("200"),
                enabled=enabled,
                storage=0,
            )
        )
        set_rates(
            conn, {**RATES, "CLORE-Blockchain": rate_units("0.02")}, market.settings, market.now()
        )
    return sid


def test_a_bid_takes_the_currency_funded_cheapest_on_the_spot_side(market: Market) -> None:
    """CLORE is the cheaper on demand (20 USD a day against 24) but the dearer spot minimum
    (4 USD against 2.4): a renter funded in both bids in bitcoin and rents in CLORE."""
    sid = quad_with_clore(market, enabled=True)
    both = {"bitcoin": "0.01", "CLORE_Blockchain": "10000"}
    assert made(market, ask(market, market.user(**both), sid * 100 + 1, price=0)).currency == (
        "bitcoin"
    )
    assert made(market, ask(market, market.user(**both), sid * 100 + 1)).currency == (
        "CLORE-Blockchain"
    )


def test_a_bid_in_a_currency_the_host_stopped_accepting_is_refused_for_it(
    market: Market,
) -> None:
    """The least a bid may be is read from the accepted currencies only: a bid in one the host
    switched off is refused for the currency (as create_order refuses it), not for its price,
    also at price 0 (the least, which such a currency does not have)."""
    sid = quad_with_clore(market, enabled=False)
    renter = market.user(CLORE_Blockchain="10000")
    for price in (0, 0.01):  # the least, and 12 CLORE a day: under the switched-off minimum
        refused = ask(market, renter, sid * 100 + 1, price=price, currency="CLORE-Blockchain")
        assert refused.status_code >= 400, refused.text
        assert refused.json()["error"] == "currency-not-allowed", refused.text


def test_a_bid_lowered_to_the_least_on_a_server_now_reporting_no_gpus(market: Market) -> None:
    """A bid for one of four GPUs may go down to a quarter of the server's minimum; once the
    server reports no GPUs there is no share to take, and the least is the whole minimum. Other
    servers (two GPUs here) do not count."""
    sid = quad(market)
    pair = quad(market)
    with market.db.write() as conn:
        conn.execute(update(servers).where(servers.c.id == pair).values(gpu_array=[GPU] * 2))
    token = market.user(bitcoin="0.01")
    bid = made(market, ask(market, token, sid * 100 + 1, price=0.05))  # 0.00002 a day
    path = f"/api/v0/instances/bid_price/{bid.id}/"

    def price_now() -> int:
        with market.db.read() as conn:
            return int(conn.execute(select(orders.c.price).where(orders.c.id == bid.id)).scalar())

    other = made(market, ask(market, market.user(bitcoin="0.01"), pair * 100 + 1, price=0.05))
    assert vast_client(market, token).put(path, json={"price": None}).status_code == 200
    assert price_now() == to_units("0.00001")  # a quarter, not the pair's half
    with market.db.write() as conn:
        conn.execute(update(servers).where(servers.c.id == sid).values(gpu_array=[]))
    market.advance(601)  # a bid may change again after the lowering window
    assert vast_client(market, token).put(path, json={"price": 0}).status_code == 200
    assert price_now() == to_units("0.00004")
    assert other.server_id == pair
