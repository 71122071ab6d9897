"""A server process killed with SIGKILL while withdrawals pour in loses nothing between request and
approval (both databases).

Four users send withdrawal requests as fast as the server answers; the server is killed -9 at a
random moment, again and again. After each kill every request is all or nothing (its row and both
of its transfers, or none of them), every acknowledged request is there, the pending account holds
exactly the pending requests and the ledger sums to zero. Then the operator, in another process,
approves or rejects every request, and each wallet ends at exactly its deposit less what was paid
out.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from functools import partial

import httpx
import pytest
from sqlalchemy import Connection, func, select
from typer.testing import CliRunner

from openclore.cli.main import app
from openclore.market.withdrawals import approve_withdrawal, reject_withdrawal
from openclore.store.db import run_write
from openclore.store.schema import accounts, transfers, withdrawals

from support import ADDRESS_SECRET, Market, free_port

USERS = 4
KILLS = 4
ADDRESS = "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq"
FEE = 100_000  # the default bitcoin withdrawal fee, 0.0001


def check_books(market: Market, acknowledged: set[int]) -> None:
    with market.db.read() as conn:
        assert conn.execute(select(func.sum(accounts.c.balance))).scalar() == 0
        rows = {r.id: r for r in conn.execute(select(withdrawals))}
        assert acknowledged <= set(rows), acknowledged - set(rows)
        legs = {
            r.key: r.amount
            for r in conn.execute(
                select(transfers.c.key, transfers.c.amount).where(
                    transfers.c.key.like("withdrawal:%")
                )
            )
        }
        for wid, row in rows.items():
            assert legs[f"withdrawal:{wid}:request"] == row.amount
            assert legs[f"withdrawal:{wid}:fee"] == row.fee
        assert len(legs) == 2 * len(rows) + sum(
            2 if r.state == "approved" else 1 for r in rows.values() if r.state != "pending"
        )
        pending = conn.execute(
            select(accounts.c.balance).where(accounts.c.key == "pending_withdrawals:bitcoin")
        ).scalar_one()
        assert pending == sum(r.amount + r.fee for r in rows.values() if r.state == "pending")


def decide(conn: Connection, *, wid: int, approve: bool, now: int) -> None:
    if approve:
        approve_withdrawal(conn, wid, f"tx{wid}", "t", now)
    else:
        reject_withdrawal(conn, wid, "test", "t", now)


@pytest.mark.slow
def test_kill_9_between_request_and_approval_loses_nothing(market: Market) -> None:
    tokens = [market.user(f"w{i}", bitcoin="1") for i in range(USERS)]
    port = free_port()
    env = {
        **os.environ,
        "OPENCLORE_DATABASE_URL": market.db.url,
        "OPENCLORE_TICK_INTERVAL": "0",
        "OPENCLORE_RATE_LIMIT_INTERVAL": "0",
        "OPENCLORE_ADDRESS_SECRET": ADDRESS_SECRET,
    }
    url = f"http://127.0.0.1:{port}"
    rng = random.Random(15)
    acknowledged: set[int] = set()
    cut_off = 0
    for _ in range(KILLS):
        proc = subprocess.Popen(
            [sys.executable, "-m", "openclore", "serve", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 30
        while True:
            try:
                httpx.get(url + "/openapi.json", timeout=1)
                break
            except httpx.HTTPError:
                assert time.time() < deadline and proc.poll() is None, "server did not start"
                time.sleep(0.1)
        stop = threading.Event()
        failures: list[int] = []

        def pour(token: str, stop: threading.Event = stop, failures: list[int] = failures) -> None:
            with httpx.Client(base_url=url, headers={"auth": token}, timeout=10) as client:
                while not stop.is_set():
                    try:
                        r = client.post(
                            "/v1/withdraw",
                            json={"currency": "bitcoin", "amount": 0.0001, "address": ADDRESS},
                        )
                    except httpx.HTTPError:
                        failures.append(1)
                        return
                    body = r.json()
                    assert body["code"] == 0, body
                    acknowledged.add(int(body["withdrawal"]["id"]))

        threads = [threading.Thread(target=pour, args=(t,)) for t in tokens]
        for t in threads:
            t.start()
        time.sleep(rng.uniform(0.3, 1.0))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        stop.set()
        for t in threads:
            t.join(timeout=15)
        cut_off += len(failures)
        check_books(market, acknowledged)
    assert len(acknowledged) > 10 and cut_off > 0, (len(acknowledged), cut_off)

    # the operator decides every request after the crashes: the first two with the admin
    # command, the rest through the same use cases
    runner = CliRunner()
    with market.db.read() as conn:
        ids = sorted(conn.execute(select(withdrawals.c.id)).scalars())
    approved = set(ids[::2])
    now = int(time.time())
    for wid in ids:
        if wid in ids[:2]:
            args = (
                ["approve", str(wid), "--txid", f"tx{wid}"]
                if wid in approved
                else ["reject", str(wid), "--reason", "test"]
            )
            result = runner.invoke(
                app, ["admin", "withdrawals", *args, "--database-url", market.db.url]
            )
            assert result.exit_code == 0, result.output
        else:
            run_write(market.db, partial(decide, wid=wid, approve=wid in approved, now=now))
    check_books(market, acknowledged)
    with market.db.read() as conn:
        per_user = {
            int(r.user_id): int(r.paid)
            for r in conn.execute(
                select(
                    withdrawals.c.user_id,
                    func.sum(withdrawals.c.amount + withdrawals.c.fee).label("paid"),
                )
                .where(withdrawals.c.state == "approved")
                .group_by(withdrawals.c.user_id)
            )
        }
        for token in tokens:
            uid = market.user_id(token)
            wallet = conn.execute(
                select(accounts.c.balance).where(accounts.c.key == f"wallet:bitcoin:{uid}")
            ).scalar_one()
            assert wallet == 10**9 - per_user.get(uid, 0)
        platform = conn.execute(
            select(accounts.c.balance).where(accounts.c.key == "platform:bitcoin")
        ).scalar_one()
        assert platform == FEE * len(approved)
