"""What an operator watches and proves: /healthz, /readyz, /metrics, request ids in the logs and
the audit log, on both databases."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select, text
from typer.testing import CliRunner
from websockets.sync.client import connect

from openclore.api import metrics
from openclore.api.app import create_app
from openclore.api.request_ids import JsonFormatter, RequestIdFilter
from openclore.cli.main import app as cli
from openclore.config import DEFAULT_ADDRESS_SECRET, Settings
from openclore.engine.clock import ManualClock
from openclore.market import audit
from openclore.market.accounts import hash_token
from openclore.store.db import Database
from openclore.store.migrate import head_revision
from openclore.store.schema import api_tokens, audit_log, servers

import support
from support import ADDRESS_SECRET, METRICS_TOKEN, Market, free_port, ok, spot_body

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(market: Market, **headers: str) -> Samples:
    headers = headers or {"Authorization": f"Bearer {METRICS_TOKEN}"}
    response = market.client().get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def own_count(metric: Any) -> float:
    """A counter's or histogram's count in this process."""
    for family in metric.collect():
        for sample in family.samples:
            if sample.name.endswith(("_count", "_total")):
                return float(sample.value)
    raise AssertionError(f"no count in {metric}")


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(
        v
        for (n, ls), v in samples.items()
        if n == name and all((k, w) in ls for k, w in labels.items())
    )


# ----------------------------------------------------------------------------- health


def test_healthz_and_readyz(market: Market) -> None:
    client = market.client()
    health = client.get("/healthz")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}
    # outside the Clore API: no rate limit, no auth, no code field
    assert client.get("/v1/healthz").json()["code"] == 4


def test_readyz_refuses_a_database_behind_the_code(market: Market) -> None:
    with market.db.write() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0002'"))
    try:
        ready = market.client().get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["status"] == "not ready"
        assert "0002" in ready.json()["reason"] and str(head_revision()) in ready.json()["reason"]
        assert market.client().get("/healthz").status_code == 200  # the process is up
    finally:
        with market.db.write() as conn:
            conn.execute(
                text("UPDATE alembic_version SET version_num = :v"), {"v": head_revision()}
            )
    assert market.client().get("/readyz").status_code == 200


def test_readyz_refuses_an_unreachable_database(market: Market) -> None:
    gone = Database("postgresql://nobody@127.0.0.1:9/nothing?connect_timeout=1")
    market.switch.app = create_app(support.test_settings(gone.url), db=gone, clock=ManualClock(0))
    try:
        ready = market.client().get("/readyz")
        assert ready.status_code == 503 and ready.json()["reason"] == "database unreachable"
        assert market.client().get("/healthz").status_code == 200
    finally:
        gone.dispose()


# ----------------------------------------------------------------------------- metrics


def test_metrics_count_requests_by_endpoint_and_code(market: Market) -> None:
    token = market.user(bitcoin="1")
    client = market.client(token)
    before = scrape(market)
    for _ in range(3):
        ok(client.get("/v1/wallets"))
    assert client.get("/v1/wallets", headers={"auth": "not-a-token"}).json()["code"] == 3
    assert client.post("/v1/create_order", content=b"{").json()["code"] == 2
    after = scrape(market)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    wallets = {"endpoint": "/v1/wallets", "method": "GET", "status": "200"}
    assert delta("openclore_http_requests_total", **wallets, code="0") == 3
    assert delta("openclore_http_requests_total", **wallets, code="3") == 1
    assert delta("openclore_http_requests_total", endpoint="/v1/create_order", code="2") == 1
    latency = "openclore_http_request_duration_seconds_count"
    assert delta(latency, endpoint="/v1/wallets") == 4
    # an unknown path shares one label instead of growing the label set
    client.get("/no/such/path/" + "x" * 30)
    assert value(scrape(market), "openclore_http_requests_total", endpoint="unmatched") >= 1


def test_metrics_show_the_market_ticks_and_rate_limit_refusals(market: Market) -> None:
    host = market.user(name="host")
    renter = market.user(bitcoin="1")
    sid = market.server(host, "rig", spot="0.000001")
    ok(market.client(renter).post("/v1/create_order", json=spot_body(sid, "0.00001")))
    with market.db.write() as conn:  # the agent keeps beating through the next 600 s
        conn.execute(servers.update().values(last_seen=market.now() + 600))
    scrape(market)  # the endpoint answers before the tick too
    ticks_before, settled_before = (
        own_count(metrics.TICK_SECONDS),
        own_count(metrics.ORDERS_SETTLED),
    )
    market.clock.advance(600)
    market.switch.app.state.openclore.tick(market.now())  # the background ticker's call
    after = scrape(market)
    assert value(after, "openclore_orders", state="running", kind="spot") == 1
    assert value(after, "openclore_orders", state="ended") == 0
    # this process's own tick: counted once (the scrape's totals may include other processes'
    # ticks, e.g. servers other tests run, so the counters are read from this process)
    assert own_count(metrics.TICK_SECONDS) - ticks_before == 1
    assert own_count(metrics.ORDERS_SETTLED) > settled_before
    assert value(after, "openclore_tick_duration_seconds_count") >= 1
    assert value(after, "openclore_orders_settled_total") >= 1
    # the ledger: money moved (spend, fees) and every currency still sums to zero
    balances = {
        dict(labels)["kind"]: v
        for (name, labels), v in after.items()
        if name == "openclore_ledger_balance_units" and dict(labels)["currency"] == "bitcoin"
    }
    assert balances["external"] == -(10**9) and balances["platform"] > 0
    assert sum(balances.values()) == 0

    market.reconfigure(rate_limit_interval=1.0)
    client = market.client(renter)
    refused_before = value(
        scrape(market), "openclore_rate_limit_refusals_total", endpoint="wallets"
    )
    ok(client.get("/v1/wallets"))
    assert client.get("/v1/wallets").json()["code"] == 5
    refusals = value(scrape(market), "openclore_rate_limit_refusals_total", endpoint="wallets")
    assert refusals - refused_before == 1


def test_metrics_count_connected_agents(market: Market) -> None:
    host = market.user(name="host")
    added = ok(market.client(host).post("/v1/add_server", json={"name": "rig"}))
    sid = added["id"]
    registered = market.client().post(
        "/agent/v1/register", json={"init_token": added["init_token"]}
    )
    agent_token = registered.json()["agent_token"]
    base = value(scrape(market), "openclore_agents_connected")
    ws_url = market.url.replace("http://", "ws://") + "/agent/v1/connect"
    with connect(ws_url, additional_headers={"Authorization": f"Bearer {agent_token}"}) as ws:
        ws.send(json.dumps({"type": "hello", "protocol": 1}))
        assert json.loads(ws.recv(timeout=10))["type"] == "hello"
        assert value(scrape(market), "openclore_agents_connected") == base + 1
    deadline = time.time() + 10
    while value(scrape(market), "openclore_agents_connected") != base:
        assert time.time() < deadline, "the agent still counts after it left"
        time.sleep(0.05)
    # the agent's sign-ins are in the audit log, with the address they came from
    with market.db.read() as conn:
        signins = [e for e in audit.entries(conn) if e.action == audit.SIGN_IN]
    assert [(e.actor, e.action, e.detail["via"]) for e in signins] == [
        (f"agent:{sid}", "sign_in", "init_token"),
        (f"agent:{sid}", "sign_in", "agent"),
    ]
    assert all(e.source == "127.0.0.1" for e in signins)


def test_metrics_token_protects_the_endpoint(market: Market) -> None:
    market.reconfigure(metrics_token="s3cret-scrape")
    client = market.client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert "openclore_orders" in scrape(market, Authorization="Bearer s3cret-scrape").__repr__()
    # a token set and metrics public: the token still counts
    market.reconfigure(metrics_token="s3cret-scrape", metrics_public=True)
    assert client.get("/metrics").status_code == 401


def test_metrics_are_not_public_by_default(market: Market) -> None:
    """They show every wallet's total and the platform's revenue: without a token, nobody sees
    them unless the operator makes them public."""
    assert Settings().metrics_public is False and Settings().metrics_token is None
    market.user(bitcoin="1.5")
    market.reconfigure(metrics_token=None)
    client = market.client()
    for headers in ({}, {"Authorization": "Bearer"}, {"Authorization": "Bearer anything"}):
        refused = client.get("/metrics", headers=headers)
        assert refused.status_code == 403, refused.text
        message = refused.json()["error"]
        assert "OPENCLORE_METRICS_TOKEN" in message and "OPENCLORE_METRICS_PUBLIC" in message
        assert "openclore_" not in refused.text and "1.5" not in refused.text
    market.reconfigure(metrics_token=None, metrics_public=True)
    assert "openclore_ledger_balance_units" in client.get("/metrics").text


# ----------------------------------------------------------------------------- request ids


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestIdFilter())
    logger = logging.getLogger("openclore")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield stream
    logger.removeHandler(handler)
    logger.setLevel(old_level)


def test_request_id_is_returned_kept_and_logged(market: Market, json_log: io.StringIO) -> None:
    client = market.client()
    fresh = client.get("/healthz").headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", fresh)
    assert client.get("/healthz").headers["x-request-id"] != fresh
    kept = client.get("/v1/marketplace", headers={"X-Request-Id": "lb-7f3a.2:9_x"})
    assert kept.headers["x-request-id"] == "lb-7f3a.2:9_x"
    for insane in (b"a b", b"x" * 129, "é".encode(), b"a/b", b"<script>"):
        sent = httpx.Headers([(b"X-Request-Id", insane)])
        got = client.get("/healthz", headers=sent).headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", got), insane

    # a log line written while a request is served (here in a worker thread) carries its id
    host = market.user(name="host")
    init_token = ok(market.client(host).post("/v1/add_server", json={"name": "rig"}))["init_token"]
    answer = client.post(
        "/agent/v1/register", json={"init_token": init_token}, headers={"X-Request-Id": "reg-1"}
    )
    assert answer.status_code == 200 and answer.headers["x-request-id"] == "reg-1"
    lines = [json.loads(line) for line in json_log.getvalue().splitlines()]
    registered = [line for line in lines if "agent registered" in line["message"]]
    assert len(registered) == 1
    assert registered[0]["request_id"] == "reg-1" and registered[0]["level"] == "info"
    assert registered[0]["logger"] == "openclore.agent_api"


# ----------------------------------------------------------------------------- audit log


def _entries(market: Market) -> list[audit.Entry]:
    with market.db.read() as conn:
        return audit.entries(conn)


def test_api_changes_are_audited_with_who_and_where(market: Market) -> None:
    host = market.user(name="host")
    renter = market.user(name="renter", bitcoin="1")
    host_id, renter_id = market.user_id(host), market.user_id(renter)
    sid = market.server(host, "rig", spot="0.000001")
    h = market.client(host)
    ok(h.post("/v1/set_server_settings", json={"name": "rig", "mrl": 96, "spot": 0.000002}))
    # a refused change leaves no entry (it rolled back with the change)
    assert h.post("/v1/set_server_settings", json={"name": "nope", "mrl": 5}).json()["code"] != 0
    added = ok(h.post("/v1/add_server", json={"name": "rig-2"}))
    order = ok(market.client(renter).post("/v1/create_order", json=spot_body(sid, "0.000003")))
    ok(
        market.client(renter).post(
            "/v1/set_spot_price", json={"order_id": order["order_id"], "desired_price": 0.000004}
        )
    )
    everything = _entries(market)
    # the test's own set-up (a server added directly, not through an entry point) is the market's
    assert [(e.actor, e.action) for e in everything if not e.actor.startswith("user:")] == [
        ("system", "server.add")
    ]
    found = [e for e in everything if e.actor.startswith("user:")]
    oid = order["order_id"]
    assert [(e.actor, e.user_id, e.action, e.target) for e in found] == [
        (f"user:{host_id}", host_id, "server.settings", "server:rig"),
        (f"user:{host_id}", host_id, "server.add", f"server:{added['id']}"),
        (f"user:{renter_id}", renter_id, "order.create", f"order:{oid}"),
        (f"user:{renter_id}", renter_id, "order.spot_price", f"order:{oid}"),
    ]
    # the key used, by its id and prefix (SPEC §8: the audit log names the key)
    with market.db.read() as conn:
        key_ids = {
            t: conn.execute(
                select(api_tokens.c.id).where(api_tokens.c.token_hash == hash_token(t))
            ).scalar_one()
            for t in (host, renter)
        }
    via = {"via": f"key:{key_ids[host]}:{host[:8]}"}
    assert found[0].detail == {"name": "rig", "mrl": 96, "spot": "0.000002", **via}
    assert found[3].detail == {
        "desired_price_units": 4000,
        "via": f"key:{key_ids[renter]}:{renter[:8]}",
    }
    assert all(e.source == "127.0.0.1" and abs(e.at - time.time()) < 60 for e in found)
    assert all(renter not in json.dumps(e.detail) for e in found)  # never a whole token


def _admin(market: Market, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, [*args, "--database-url", market.db.url])
    return result.exit_code, result.output


def test_admin_commands_are_audited_and_listed(market: Market) -> None:
    code, out = _admin(market, "admin", "user", "add", "alice")
    assert code == 0, out
    token = re.search(r"token (\w{32})", out).group(1)  # type: ignore[union-attr]
    assert _admin(market, "admin", "user", "add", "bob")[0] == 0
    assert _admin(market, "admin", "deposit", "alice", "bitcoin", "0.5")[0] == 0
    second = _admin(market, "admin", "token", "issue", "alice")[1].strip()
    assert _admin(market, "admin", "token", "revoke", second)[0] == 0
    assert _admin(market, "admin", "token", "revoke", "no-such-token")[0] == 1  # not recorded
    assert _admin(market, "admin", "server", "add", "alice", "rig-01")[0] == 0
    assert _admin(market, "admin", "server", "remove", "alice", "rig-01")[0] == 0
    alice = market.user_id(token)

    found = _entries(market)
    assert [e.action for e in found if e.user_id == alice] == [
        "admin.user.add",
        "admin.token.issue",
        "admin.deposit",
        "admin.token.issue",
        "admin.token.revoke",
        "admin.server.add",
        "admin.server.remove",
    ]
    assert all(e.actor.startswith("admin:") and e.source.startswith("cli@") for e in found)
    revoke = next(e for e in found if e.action == "admin.token.revoke")
    assert revoke.detail == {"prefix": second[:8]} and revoke.target == f"user:{alice}"
    assert token not in json.dumps([e.detail for e in found])  # never a whole token

    code, out = _admin(market, "admin", "audit", "--user", "alice", "--json")
    assert code == 0, out
    listed = [json.loads(line) for line in out.splitlines()]
    assert [e["action"] for e in listed] == [e.action for e in found if e.user_id == alice]
    code, out = _admin(market, "admin", "audit", "--user", "bob", "--json")
    assert [json.loads(line)["action"] for line in out.splitlines()] == [
        "admin.user.add",
        "admin.token.issue",
    ]
    # --since: an entry from yesterday is left out by "1h", kept by a date before it
    with market.db.write() as conn:
        audit.record(conn, "admin:old", "admin.test", at=int(time.time()) - 86400)
    code, out = _admin(market, "admin", "audit", "--since", "1h", "--json")
    assert "admin.test" not in out and "admin.user.add" in out
    code, out = _admin(market, "admin", "audit", "--since", "2020-01-01", "--json")
    assert "admin.test" in out
    code, out = _admin(market, "admin", "audit", "--limit", "2", "--json")
    assert [json.loads(line)["action"] for line in out.splitlines()] == [
        "admin.server.remove",
        "admin.test",
    ]
    code, out = _admin(market, "admin", "audit", "--limit", "2")
    assert code == 0 and "audit log (2 entries)" in out
    assert _admin(market, "admin", "audit", "--user", "nobody")[0] == 1
    assert _admin(market, "admin", "audit", "--since", "yesterday-ish")[0] == 1


def test_audit_record_keeps_long_fields_bounded(market: Market) -> None:
    detail: dict[str, Any] = {"k": "v"}
    with market.db.write() as conn:
        audit.record(conn, "x" * 500, "y" * 500, "t" * 500, detail, "s" * 500, user_id=None)
    with market.db.read() as conn:
        row = conn.execute(select(audit_log)).one()
    assert (len(row.actor), len(row.action), len(row.target), len(row.source)) == (
        128,
        64,
        256,
        256,
    )
    assert row.detail == detail


# ----------------------------------------------------------------------------- `openclore serve`


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite"])  # the process model, not the database
def test_serve_with_workers_adds_up_metrics_and_logs_json(market: Market, tmp_path: Path) -> None:
    """Two worker processes: a scrape of either reports the requests both answered, and every
    access line is one JSON object carrying the request id the client got back."""
    port = free_port()
    log = tmp_path / "serve.log"
    env = {
        **os.environ,
        "OPENCLORE_DATABASE_URL": market.db.url,
        "OPENCLORE_WORKERS": "2",
        "OPENCLORE_LOG_FORMAT": "json",
        "OPENCLORE_TICK_INTERVAL": "0",
        "OPENCLORE_RATE_LIMIT_INTERVAL": "0",
        "OPENCLORE_GATEWAY": "0",
        "OPENCLORE_METRICS_PUBLIC": "1",
        "OPENCLORE_ADDRESS_SECRET": ADDRESS_SECRET,
    }
    shared = tmp_path / "metrics"
    shared.mkdir()
    (shared / "counter_999999.db").write_bytes(b"a previous run's")  # `serve` empties it
    env["PROMETHEUS_MULTIPROC_DIR"] = str(shared)
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "openclore", "serve", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.time() + 60
        while True:
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.time() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)
        ids = set()
        for i in range(40):  # new connections: the kernel spreads them over both workers
            answer = httpx.get(url + "/v1/marketplace", headers={"X-Request-Id": f"mp-{i}"})
            assert answer.status_code == 200
            ids.add(answer.headers["x-request-id"])
        for _ in range(30):
            text_ = httpx.get(url + "/metrics").text
            samples = {
                (s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text_)
                for s in family.samples
            }
            served = value(samples, "openclore_http_requests_total", endpoint="/v1/marketplace")
            assert served == 40  # whichever worker answered the scrape
        assert ids == {f"mp-{i}" for i in range(40)}
        writers = {p.stem.rsplit("_", 1)[1] for p in shared.glob("counter_*.db")}
        assert len(writers) == 2 and "999999" not in writers  # both workers answered
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    access = [line for line in lines if line["logger"] == "uvicorn.access"]
    logged = {line["request_id"] for line in access if "/v1/marketplace" in line["message"]}
    assert logged == ids
    assert all({"time", "level", "message"} <= set(line) for line in lines)


def test_money_admin_commands_are_audited(market: Market) -> None:
    market.clock.set(time.time())  # admin commands book in real time
    token = market.user("alice")
    alice = market.user_id(token)
    btc = "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq"
    assert _admin(market, "admin", "deposit", "alice", "bitcoin", "0.02", "--by", "carol")[0] == 0
    code, out = _admin(market, "admin", "refund", "alice", "bitcoin", "0.001", "--reason", "outage")
    assert code == 0, out
    adjust = ["admin", "adjust", "alice", "bitcoin", "--reason", "typo"]
    result = CliRunner().invoke(cli, [*adjust, "--database-url", market.db.url, "--", "-0.0005"])
    code, out = result.exit_code, result.output
    assert code == 0, out
    client = market.client(token)
    first = ok(
        client.post("/v1/withdraw", json={"currency": "bitcoin", "amount": 0.005, "address": btc})
    )
    second = ok(
        client.post("/v1/withdraw", json={"currency": "bitcoin", "amount": 0.004, "address": btc})
    )
    wid1, wid2 = first["withdrawal"]["id"], second["withdrawal"]["id"]
    assert _admin(market, "admin", "withdrawals", "approve", str(wid1), "--txid", "f00d")[0] == 0
    assert _admin(market, "admin", "withdrawals", "reject", str(wid2), "--reason", "net")[0] == 0
    # a refused decision (already decided) leaves no entry
    assert _admin(market, "admin", "withdrawals", "reject", str(wid1), "--reason", "x")[0] == 1
    found = [e for e in _entries(market) if e.user_id == alice]
    assert [(e.action, e.target) for e in found] == [
        ("admin.deposit", f"user:{alice}"),
        ("admin.refund", f"user:{alice}"),
        ("admin.adjust", f"user:{alice}"),
        # the requests themselves, by alice through the API (the use case records them)
        ("withdrawal.request", f"withdrawal:{wid1}"),
        ("withdrawal.request", f"withdrawal:{wid2}"),
        ("admin.withdrawal.approve", f"withdrawal:{wid1}"),
        ("admin.withdrawal.reject", f"withdrawal:{wid2}"),
    ]
    assert found[0].actor == "admin:carol"
    assert found[2].detail["units"] == -500_000 and found[2].detail["reason"] == "typo"
    assert found[3].actor == f"user:{alice}" and found[3].detail["address"] == btc
    assert found[5].detail == {"txid": "f00d"}


def test_exchange_rate_commands_are_audited(market: Market) -> None:
    assert _admin(market, "admin", "rates", "set", "bitcoin=60000")[0] == 0
    assert _admin(market, "admin", "rates", "clear", "bitcoin")[0] == 0
    assert _admin(market, "admin", "rates", "clear", "bitcoin")[0] == 1  # nothing: no entry
    found = _entries(market)
    assert [(e.action, e.target) for e in found] == [
        ("admin.rates.set", "rates"),
        ("admin.rates.clear", "rate:bitcoin"),
    ]
    assert found[0].detail == {"bitcoin": "60000", "repriced": 0}


def test_serve_refuses_the_default_address_secret_outside_the_sandbox(tmp_path: Path) -> None:
    """Every installation keeping the built-in secret would give out the same deposit
    addresses: `serve` refuses to start with it (or none), before touching the database."""
    path = tmp_path / "market.sqlite"
    for secret in (None, DEFAULT_ADDRESS_SECRET, "  "):
        result = CliRunner().invoke(
            cli,
            ["serve", "--database-url", f"sqlite:///{path}"],
            env={"OPENCLORE_ADDRESS_SECRET": secret, "OPENCLORE_SANDBOX": None},
        )
        assert result.exit_code == 1, result.output
        line = " ".join(result.output.split())
        assert line.startswith("error: OPENCLORE_ADDRESS_SECRET is not set"), line
        assert "Traceback" not in result.output and not path.exists()
    # sandbox and demo mode need none; a market of its own secret may serve
    assert Settings(sandbox=True).address_secret_problem() is None
    assert Settings(demo=True).address_secret_problem() is None
    assert Settings(address_secret="k3p7-this-installation").address_secret_problem() is None
    assert "OPENCLORE_ADDRESS_SECRET" in (Settings().address_secret_problem() or "")
