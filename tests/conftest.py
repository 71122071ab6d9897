"""Test harness: every test runs against a real database (SQLite and PostgreSQL) over real HTTP.

One uvicorn server per session serves whichever app the current test built (a fresh database,
settings and manual clock per test), so tests pay for a new app, not a new process.

PostgreSQL: ``OPENCLORE_TEST_POSTGRES_URL`` (default ``postgresql://postgres@127.0.0.1:5432/test``)
names the server; each test session creates its own database ``openclore_test_<pid>`` there and
drops it at the end (it never touches the named database's tables, and two sessions never share
one). Without a reachable server the PostgreSQL half is skipped with a message, except when
``CI=true``, where it fails.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from sqlalchemy import text

from openclore.api.app import create_app
from openclore.api.transport import server_options
from openclore.config import Settings
from openclore.engine.clock import ManualClock
from openclore.ledger import ensure_system_accounts
from openclore.store.db import Database

from support import (
    HEADER_TIMEOUT,
    IN_CI,
    PG_DATABASE,
    PG_SERVER_URL,
    PG_URL,
    T0,
    Market,
    Switch,
    free_port,
    fresh_database,
    test_settings,
)

# Tests sit in one folder per subject (tests/<subject>/test_*.py, basenames unique across the
# folders); the helpers (support.py, agent_support.py, event_support.py, market_model.py) stay
# here. A few test modules import from another subject's (test_gateway from test_agent_docker,
# test_clore_ai_compat from test_client_sdk): every subject folder is on the path, so that works
# whichever files a run selects.
_TESTS = Path(__file__).resolve().parent
for _folder in sorted(_TESTS.iterdir()):
    if _folder.is_dir() and any(_folder.glob("test_*.py")) and str(_folder) not in sys.path:
        sys.path.append(str(_folder))

# A pytest-xdist worker inherits COLUMNS from the run that started it, and a rich Console made
# while COLUMNS is set keeps that width for good: the CLI's module-level consoles would then
# ignore the COLUMNS each CLI test passes to its invocation (a real CLI run is a new process).
os.environ.pop("COLUMNS", None)

# The `serve` processes tests start run no embedded gateway: its default ports are fixed, and
# the gateway tests start their own on free ports.
os.environ.setdefault("OPENCLORE_GATEWAY", "0")


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the mark
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist (``./scripts/test`` runs ``-n``): every test that drives the Docker
    engine runs on one worker, one at a time as before (they share the engine, its test network
    and the agents' host-port range), while the rest spread over the workers."""
    for item in items:
        if "docker_client" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("docker"))


_UNGROUPED: set[str] = set()  # Docker tests xdist did not put in the "docker" group


@pytest.hookimpl(trylast=True)  # after xdist's hook has named the groups
def pytest_collection_finish(session: pytest.Session) -> None:
    """xdist groups a test by appending ``@group`` to its node id on the worker. Where that
    fails (the hook order, or a pytest whose node ids cannot be renamed) the Docker tests would
    spread over the workers and fight over the engine and its ports: they fail instead, saying
    why (:func:`_docker_tests_run_grouped`)."""
    if session.config.getoption("loadgroup", default=False):
        _UNGROUPED.update(
            item.nodeid
            for item in session.items
            if "docker_client" in getattr(item, "fixturenames", ())
            and not item.nodeid.endswith("@docker")
        )


@pytest.fixture(autouse=True)
def _docker_tests_run_grouped(request: pytest.FixtureRequest) -> None:
    if request.node.nodeid in _UNGROUPED:
        pytest.fail(
            "this Docker test is not in pytest-xdist's 'docker' group, so it would run beside "
            "the others: pytest or pytest-xdist changed how --dist loadgroup names groups"
        )


@pytest.fixture(scope="session")
def http_server() -> Iterator[tuple[Switch, str]]:
    switch = Switch()
    port = free_port()
    # the options `openclore serve` runs with (frame cap, header timeout, connection cap)
    options = server_options(Settings(header_timeout=HEADER_TIMEOUT))
    config = uvicorn.Config(switch, host="127.0.0.1", port=port, log_level="warning", **options)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 10
    while not server.started and time.time() < deadline:
        time.sleep(0.02)
    yield switch, f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=5)


def _pg_available() -> str | None:
    """Reach the server and make sure the suite's own database exists."""
    try:
        server = Database(PG_SERVER_URL)
        with server.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            exists = conn.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": PG_DATABASE}
            ).first()
            if exists is None:
                conn.execute(text(f'CREATE DATABASE "{PG_DATABASE}"'))
        server.dispose()
        return None
    except Exception as exc:
        return str(exc).splitlines()[0]


@pytest.fixture(scope="session")
def pg_template() -> Iterator[Database]:
    problem = _pg_available()
    if problem is not None:
        message = f"PostgreSQL not usable at {PG_SERVER_URL}: {problem}"
        if IN_CI:
            pytest.fail(message + " (CI=true: PostgreSQL tests are mandatory)")
        pytest.skip(message + " — set OPENCLORE_TEST_POSTGRES_URL to run the PostgreSQL half")
    db = Database(PG_URL)
    db.create_all()
    yield db
    db.dispose()
    server = Database(PG_SERVER_URL)
    with server.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{PG_DATABASE}" WITH (FORCE)'))
    server.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.sqlite"
    db = Database(f"sqlite:///{path}")
    db.create_all()
    with db.engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    db.dispose()
    return path


BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def market(
    request: pytest.FixtureRequest,
    backend: str,
    tmp_path: Path,
    http_server: tuple[Switch, str],
) -> Iterator[Market]:
    switch, url = http_server
    db = fresh_database(request, backend, tmp_path)
    with db.write() as conn:
        ensure_system_accounts(conn, Settings().currencies)
    settings = test_settings(db.url)
    clock = ManualClock(T0)
    switch.app = create_app(settings, db=db, clock=clock)
    m = Market(db=db, settings=settings, clock=clock, url=url, switch=switch, backend=backend)
    yield m
    m.close()
