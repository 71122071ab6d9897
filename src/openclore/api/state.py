"""What every request handler shares: the process's :class:`AppState`, the :class:`Call` a handler
gets, and the :class:`Endpoint` that names a handler and how the pipeline runs it."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError
from starlette.requests import Request

from openclore.api import idempotency, metrics
from openclore.api.callers import Callers
from openclore.api.market_cache import MarketCache
from openclore.api.ratelimit import RateLimiter
from openclore.config import Settings
from openclore.domain.errors import CloreError, InternalError, MarketError
from openclore.engine.clock import Clock, SystemClock, now_in
from openclore.engine.ticker import tick
from openclore.market import audit, standing
from openclore.market.api_keys import Key
from openclore.market.stats import MarketFigures, market_figures
from openclore.store.db import Database, run_write
from openclore.store.freshness import Versions

log = logging.getLogger("openclore.api")


class Reader:
    """A request's read transaction, begun only when something has to be read (a request that
    is answered from memory never opens one); one for the caller and the answer."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._stack = contextlib.ExitStack()
        self._conn: Connection | None = None

    def __call__(self) -> Connection:
        if self._conn is None:
            self._conn = self._stack.enter_context(self._db.read())
        return self._conn

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._conn = None
        self._stack.__exit__(*exc)  # type: ignore[arg-type]


@dataclass
class Call:
    """What a handler gets: the parsed request, the caller and the current time."""

    request: Request
    body: dict[str, Any]
    user_id: int | None
    now: int
    db: Database
    reader: Reader | None = None  # the read transaction the caller was authenticated in
    versions: Versions | None = None  # the market's versions when the request came in
    key: Key | None = None  # the API key the caller used (its scopes were checked)

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        """A read transaction: the request's own one when it has it (read-only endpoints)."""
        if self.reader is not None:
            yield self.reader()
        else:
            with self.db.read() as conn:
                yield conn


def caller_id(call: Call) -> int:
    """The authenticated caller of an endpoint that requires a token."""
    assert call.user_id is not None
    return call.user_id


def caller_actor(call: Call) -> audit.Actor:
    """The caller, as the use cases record it in the audit log: user, address, the key (its
    id and prefix) with its spend limit."""
    source = call.request.client.host if call.request.client else ""
    if call.key is not None:
        return call.key.actor(source)
    return audit.Actor.user(caller_id(call), source)


Handler = Callable[["AppState", Call], Any]


@dataclass(frozen=True)
class Endpoint:
    name: str
    handler: Handler
    auth: bool = True  # False: token optional
    extra_interval: str | None = None  # name of an extra per-endpoint rate limit setting
    readonly: bool = False  # answered inside the caller's authentication transaction
    sandbox: bool = False
    array_body: str | None = None  # a JSON array body arrives as {array_body: [...]}
    # the plain listing (no query, no body) may be answered from the listing and callers held
    # in memory, on the event loop, when they are known current (the marketplace)
    memory_listing: bool = False
    # the key scope it needs (SPEC §8: read, rent, host, money, account); None: any live key
    # (``api_key``: a key always sees itself)
    scope: str | None = "read"


class StreamSlots:
    """How many event streams each user has open in this process."""

    def __init__(self) -> None:
        self._open: Counter[int] = Counter()
        self._lock = threading.Lock()

    def take(self, user_id: int, limit: int) -> Callable[[], None] | None:
        """A slot for one more stream (its release, safe to call twice), or None when full."""
        with self._lock:
            if self._open[user_id] >= limit:
                return None
            self._open[user_id] += 1
        released = threading.Event()

        def release() -> None:
            if released.is_set():
                return
            released.set()
            with self._lock:
                self._open[user_id] -= 1
                if self._open[user_id] <= 0:
                    del self._open[user_id]

        return release

    def count(self, user_id: int) -> int:
        return self._open[user_id]


def _integrity_to_market(exc: Exception) -> CloreError:
    text = str(exc)
    # PostgreSQL names the index; SQLite names the columns
    if "uq_orders_spot_live" in text or "orders.server_id, orders.user_id" in text:
        return MarketError("you_already_have_spot_order")
    if "uq_orders_on_demand_live" in text or "orders.server_id" in text:
        return MarketError("server-already-rented")
    if "uq_servers_owner_name_live" in text:
        return MarketError("server_name_taken")
    if "balance_not_negative" in text:
        return MarketError("not_enough_balance")
    log.error("integrity error: %s", text)
    return InternalError("conflicting concurrent change, please retry")


class AppState:
    def __init__(
        self, settings: Settings, db: Database, clock: Clock, rate_clock: Clock | None = None
    ) -> None:
        self.settings = settings
        self.db = db
        self.clock = clock
        # rate limits follow the wall clock, even in a time-travelling sandbox
        self.rate_clock: Clock = rate_clock or SystemClock()
        self.limiter = RateLimiter(
            db.rate_budget(local=settings.rate_limit_local), settings.rate_limit_tolerance
        )
        self.market = MarketCache(settings, pooled=db.direct_engine is not db.engine)
        self.callers = Callers()
        self.streams = StreamSlots()  # open event streams per user
        # the engine's standing-order match (SPEC §8): at the end of every write transaction
        # that may have made a server or GPU slots available, before it commits
        db.listing_hooks["standing_orders"] = self._match_standing_orders

    def now(self) -> int:
        return int(self.clock.now())

    def _match_standing_orders(self, conn: Connection) -> None:
        # inside the transaction: its time without a second connection
        standing.match_standing_orders(conn, self.settings, int(now_in(self.clock, conn)))

    def tick(self, now: int) -> None:
        """One engine tick, timed for the metrics."""
        started = time.perf_counter()
        try:
            report = tick(
                self.db, now, self.settings.agent_timeout, self.settings.reliability_interval
            )
        except Exception:
            metrics.TICK_FAILURES.inc()
            raise
        metrics.TICK_SECONDS.observe(time.perf_counter() - started)
        metrics.ORDERS_SETTLED.inc(report.settled)

    def figures(self) -> MarketFigures:
        with self.db.read() as conn:
            return market_figures(conn)

    def db_write(
        self,
        fn: Callable[[Connection], Any],
        answer: Callable[[Any], dict[str, Any]] | None = None,
    ) -> Any:
        """Run one use case in one transaction (retried on deadlock); a unique index that
        refused a concurrent twin is reported as the market rule it protects. Under an
        Idempotency-Key the request's answer (``answer(result)``, else the result itself) is
        stored in the same transaction."""
        run, committed = idempotency.bind(fn, answer)
        try:
            out = run_write(self.db, run)
        except IntegrityError as exc:
            raise _integrity_to_market(exc) from None
        committed()
        return out
