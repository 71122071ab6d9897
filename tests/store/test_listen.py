"""The process's one LISTEN connection (store/listen.py) on its own: handlers of both channels on
one connection, a handler that fails leaves the others served, and only known channels are
listened to. (How the version cache and the agents' wake-ups use it, and a lost connection, are
in store/test_freshness.py.)"""

from __future__ import annotations

import pytest
from sqlalchemy import text

from openclore.store import listen
from openclore.store.freshness import listen_dsn
from test_freshness import until

from support import Market


class Recorder:
    def __init__(self, fail: bool = False) -> None:
        self.heard: list[tuple[str, str]] = []
        self.states: list[str] = []
        self.fail = fail

    def notified(self, channel: str, payload: str) -> None:
        self.heard.append((channel, payload))
        if self.fail:
            raise RuntimeError("this handler fails")

    def connected(self, again: bool) -> None:
        self.states.append("again" if again else "up")

    def lost(self) -> None:
        self.states.append("lost")


def test_only_the_known_channels_can_be_listened_to() -> None:
    with pytest.raises(ValueError, match="unknown channel 'openclore_other'"):
        listen.register("postgresql://nowhere/none", "openclore_other", Recorder())


def test_a_failing_handler_leaves_the_others_served(
    market: Market, caplog: pytest.LogCaptureFixture
) -> None:
    if market.backend != "postgresql":
        pytest.skip("SQLite has no listener")
    dsn = listen_dsn(market.db.engine)
    failing, servers, changes = Recorder(fail=True), Recorder(), Recorder()
    first = listen.register(dsn, listen.SERVERS, failing)
    second = listen.register(dsn, listen.SERVERS, servers)
    third = listen.register(dsn, listen.CHANGES, changes)
    try:
        assert first is second is third  # one listener, one connection, both channels
        assert first.ready.wait(10)
        until(lambda: servers.states == ["up"] and changes.states == ["up"], 10)
        with caplog.at_level("ERROR", logger="openclore.store"):
            with market.db.engine.connect() as conn:
                conn.execute(text("SELECT pg_notify('openclore_servers', '7')"))
                conn.execute(text("SELECT pg_notify('openclore_changes', 'auth')"))
                conn.commit()
            until(lambda: servers.heard == [("openclore_servers", "7")], 10)
            until(lambda: changes.heard == [("openclore_changes", "auth")], 10)
        assert failing.heard == [("openclore_servers", "7")]
        assert any("notification handler failed" in r.getMessage() for r in caplog.records)
    finally:
        for channel, handler in (
            (listen.SERVERS, failing),
            (listen.SERVERS, servers),
            (listen.CHANGES, changes),
        ):
            first.remove(channel, handler)
