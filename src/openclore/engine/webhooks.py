"""Webhook delivery: signed POSTs of the outbox's events, retried with backoff, at least once.

Every event's delivery rows are written with the event (:mod:`openclore.engine.outbox`), so
nothing committed can be missed. Any number of processes deliver at once: a process *claims*
due rows (``SELECT … FOR UPDATE SKIP LOCKED`` on PostgreSQL; the database write lock on SQLite)
and moves their ``next_attempt_at`` a lease ahead in the same transaction, so no other process
takes them while the POST is in flight. A process killed mid-delivery leaves its rows to come
due again when the lease runs out: the event is delivered again (receivers dedupe on its id),
never lost.

Each attempt has one deadline for all of it (``timeout``: connecting, sending, the answer's
headers), and only a prefix of the answer (``MAX_ANSWER_BYTES``) is ever read: a receiver that
trickles its answer or streams without end costs one slot for ``timeout`` seconds and a few KiB.
The slots of a process are shared fairly: at most ``user_concurrency`` deliveries of one user and
``hook_concurrency`` of one webhook are in flight at once, so one user's slow receivers cannot hold
the slots other users' deliveries need. While an attempt runs its lease is renewed, so a slow
attempt is never taken over by another process mid-flight.

Deliveries are signed ``Openclore-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>``
(Stripe's scheme: the timestamp lets receivers refuse replays). A receiver's 2xx is success;
anything else is retried after ``retry_base × 2^(attempt-1)`` seconds (at most
``retry_max_delay``) until ``retry_window`` has passed since the event.

Before each POST the host name is resolved and every address checked against the SSRF policy
(:mod:`openclore.domain.netpolicy`); redirects are not followed. The connection itself is opened
to an address checked at that moment (:class:`PinnedBackend`): a name that answers a public
address to the check and a private one to the connection (DNS rebinding) is refused too.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import logging
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx
from sqlalchemy import Connection, func, select, update

from openclore.domain.netpolicy import refusal
from openclore.engine import notify as wake
from openclore.engine.outbox import WAKE_ID
from openclore.store.db import Database, run_write
from openclore.store.schema import webhook_deliveries, webhooks

log = logging.getLogger("openclore.webhooks")

SIGNATURE_HEADER = "Openclore-Signature"
MAX_URL_LENGTH = 2048
CLAIM_BATCH = 100
CONCURRENCY = 64  # the default of Policy.concurrency
MAX_ANSWER_BYTES = 4096  # of a receiver's answer body; the rest is never read
POLL_INTERVAL = 1.0  # retries come due without a wake-up; SQLite replicas have no NOTIFY


def signature(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(secret: str, header: str, body: bytes, *, now: float, tolerance: float = 300) -> bool:
    """What a receiver does: the signature matches and its timestamp is recent."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance:
        return False
    expected = signature(secret, timestamp, body).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


def backoff(attempts: int, policy: Policy) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt."""
    exponent = min(attempts - 1, 40)
    return float(min(policy.retry_base * 2**exponent, policy.retry_max_delay))


@dataclass(frozen=True)
class Policy:
    """The operator's delivery settings (built from ``Settings`` by the market layer)."""

    allow_private: bool = False  # loopback, private, link-local, CGNAT
    allow_loopback: bool = False  # sandbox/demo: bots test against localhost
    timeout: float = 10.0  # the whole attempt's deadline
    lease: float = 60.0
    concurrency: int = CONCURRENCY  # deliveries in flight in one process
    user_concurrency: int = 8  # of them, one user's
    hook_concurrency: int = 4  # of them, one webhook's
    retry_base: float = 10.0
    retry_max_delay: float = 21600.0
    retry_window: float = 259200.0


# ----------------------------------------------------------------------------- URL policy


def url_problem(url: str) -> str | None:
    """What is wrong with a webhook URL's form, or None."""
    if len(url) > MAX_URL_LENGTH:
        return f"url: at most {MAX_URL_LENGTH} characters"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        return "url: not a valid URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "url: must be an http:// or https:// URL with a host"
    if parts.username or parts.password:
        return "url: credentials in the URL are not allowed (use the signature)"
    return None


def _refused(addresses: list[str], policy: Policy) -> str | None:
    for text in addresses:
        address = ipaddress.ip_address(text.split("%", 1)[0])
        why = refusal(
            address, allow_private=policy.allow_private, allow_loopback=policy.allow_loopback
        )
        if why is not None:
            return why
    return None


def _port(url: str) -> int:
    parts = urlsplit(url)
    return parts.port or (443 if parts.scheme == "https" else 80)


def address_refusal(url: str, policy: Policy) -> str | None:
    """Resolve the URL's host now; why delivering there is refused, or None."""
    host = urlsplit(url).hostname or ""
    try:
        infos = socket.getaddrinfo(host, _port(url), type=socket.SOCK_STREAM)
    except OSError as exc:
        return f"cannot resolve {host}: {exc.strerror or exc}"
    return _refused([str(info[4][0]) for info in infos], policy)


Resolver = Callable[[str, int], Awaitable[list[str]]]


async def resolve(host: str, port: int) -> list[str]:
    """The addresses a host name (or address) stands for, in the resolver's order."""
    with contextlib.suppress(ValueError):  # an address needs no resolver (nor a thread)
        return [str(ipaddress.ip_address(host))]
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


async def address_refusal_async(
    url: str, policy: Policy, resolver: Resolver = resolve
) -> str | None:
    host = urlsplit(url).hostname or ""
    try:
        addresses = await resolver(host, _port(url))
    except OSError as exc:
        return f"cannot resolve {host}: {exc.strerror or exc}"
    return _refused(addresses, policy)


class AddressRefused(httpcore.ConnectError):
    """The connection's address is one the SSRF policy refuses."""


class PinnedBackend(httpcore.AsyncNetworkBackend):
    """Opens every connection to an address resolved and checked against the policy just then.

    httpcore hands the host name to the network backend, which would otherwise resolve it again
    after the check: a name with a short TTL could answer a public address to the check and a
    private one to the connection. Here the one resolution both decides and connects; TLS still
    verifies the certificate against the host name (httpcore passes it as the SNI name)."""

    def __init__(self, policy: Policy, resolver: Resolver = resolve) -> None:
        self.policy = policy
        self.resolver = resolver
        self._backend = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            addresses = await self.resolver(host, port)
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc.strerror or exc}") from exc
        why = _refused(addresses, self.policy)
        if why is not None:
            raise AddressRefused(f"refused: {why}")
        if not addresses:
            raise httpcore.ConnectError(f"cannot resolve {host}: no address")
        failure: Exception | None = None
        for address in addresses:
            try:
                return await self._backend.connect_tcp(
                    address.split("%", 1)[0],
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("webhooks are delivered over TCP only")

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


class PinnedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport (TLS verified, no proxy from the environment) over a
    :class:`PinnedBackend`."""

    def __init__(self, policy: Policy, limits: httpx.Limits, resolver: Resolver = resolve) -> None:
        super().__init__(limits=limits, trust_env=False)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=PinnedBackend(policy, resolver),
        )


# ----------------------------------------------------------------------------- the deliverer


@dataclass(frozen=True)
class Due:
    id: int
    webhook_id: int
    event_id: int | None
    body: str
    attempts: int  # including the one just claimed
    created_at: float
    url: str
    secret: str
    user_id: int = 0


@dataclass(frozen=True)
class Outcome:
    status: int | None
    error: str | None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


@dataclass
class InFlight:
    """What one process is delivering now, per user and per webhook (the fair-share caps)."""

    users: Counter[int] = field(default_factory=Counter)
    hooks: Counter[int] = field(default_factory=Counter)
    ids: set[int] = field(default_factory=set)

    def add(self, due: Due) -> None:
        self.users[due.user_id] += 1
        self.hooks[due.webhook_id] += 1
        self.ids.add(due.id)

    def remove(self, due: Due) -> None:
        self.users[due.user_id] -= 1
        self.hooks[due.webhook_id] -= 1
        self.ids.discard(due.id)
        if self.users[due.user_id] <= 0:
            del self.users[due.user_id]
        if self.hooks[due.webhook_id] <= 0:
            del self.hooks[due.webhook_id]


def _candidates(conn: Connection, now: float, limit: int, policy: Policy, busy: InFlight) -> Any:
    """Ids of due deliveries, at most ``hook_concurrency`` per webhook and ``user_concurrency``
    per user (window ranks), earliest first, without the users and webhooks already at their cap
    in this process: one user's backlog never hides another user's due delivery."""
    d, w = webhook_deliveries, webhooks
    due = (
        select(
            d.c.id,
            d.c.next_attempt_at,
            w.c.user_id,
            func.row_number()
            .over(partition_by=d.c.webhook_id, order_by=(d.c.next_attempt_at, d.c.id))
            .label("in_hook"),
        )
        .join(w, w.c.id == d.c.webhook_id)
        .where(d.c.state == "pending", d.c.next_attempt_at <= now)
    )
    full_users = [u for u, n in busy.users.items() if n >= policy.user_concurrency]
    full_hooks = [h for h, n in busy.hooks.items() if n >= policy.hook_concurrency]
    if full_users:
        due = due.where(w.c.user_id.not_in(full_users))
    if full_hooks:
        due = due.where(d.c.webhook_id.not_in(full_hooks))
    per_hook = due.subquery()
    per_user = (
        select(
            per_hook.c.id,
            per_hook.c.next_attempt_at,
            func.row_number()
            .over(
                partition_by=per_hook.c.user_id,
                order_by=(per_hook.c.next_attempt_at, per_hook.c.id),
            )
            .label("in_user"),
        )
        .where(per_hook.c.in_hook <= policy.hook_concurrency)
        .subquery()
    )
    return (
        select(per_user.c.id)
        .where(per_user.c.in_user <= policy.user_concurrency)
        .order_by(per_user.c.next_attempt_at, per_user.c.id)
        .limit(limit)
    )


def claim(
    db: Database,
    now: float,
    limit: int,
    lease: float,
    policy: Policy | None = None,
    busy: InFlight | None = None,
) -> list[Due]:
    """Take up to ``limit`` due deliveries for this process for ``lease`` seconds, within the
    fair-share caps of ``policy`` given what this process has in flight (``busy``)."""
    d, w = webhook_deliveries, webhooks
    policy = policy or Policy()
    busy = busy or InFlight()

    def run(conn: Connection) -> list[Due]:
        ids = [int(i) for i in conn.execute(_candidates(conn, now, limit, policy, busy)).scalars()]
        if not ids:
            return []
        query = (
            select(
                d.c.id,
                d.c.webhook_id,
                d.c.event_id,
                d.c.body,
                d.c.attempts,
                d.c.created_at,
            )
            .where(d.c.id.in_(ids), d.c.state == "pending", d.c.next_attempt_at <= now)
            .order_by(d.c.next_attempt_at, d.c.id)
            .with_for_update(skip_locked=True)
        )
        rows = conn.execute(query).all()
        if not rows:
            return []
        hooks = {
            int(h.id): h
            for h in conn.execute(
                select(w.c.id, w.c.user_id, w.c.url, w.c.secret, w.c.deleted_at).where(
                    w.c.id.in_({int(r.webhook_id) for r in rows})
                )
            )
        }
        taken = InFlight(Counter(busy.users), Counter(busy.hooks))
        out = []
        for r in rows:
            hook = hooks[int(r.webhook_id)]
            if hook.deleted_at is not None:
                conn.execute(
                    update(d)
                    .where(d.c.id == r.id)
                    .values(state="failed", last_error="webhook deleted")
                )
                continue
            due = Due(
                int(r.id),
                int(r.webhook_id),
                None if r.event_id is None else int(r.event_id),
                r.body,
                int(r.attempts) + 1,
                float(r.created_at),
                hook.url,
                hook.secret,
                int(hook.user_id),
            )
            if (
                taken.users[due.user_id] >= policy.user_concurrency
                or taken.hooks[due.webhook_id] >= policy.hook_concurrency
            ):
                continue
            taken.add(due)
            out.append(due)
        if out:
            conn.execute(
                update(d)
                .where(d.c.id.in_([due.id for due in out]))
                .values(
                    next_attempt_at=now + lease,
                    attempts=d.c.attempts + 1,
                    last_attempt_at=now,
                )
            )
        return out

    return run_write(db, run)


def renew(db: Database, ids: Iterable[int], until: float) -> None:
    """Keep the leases of deliveries still in flight here (a slow attempt is not taken over)."""
    d = webhook_deliveries
    chosen = sorted(ids)
    if not chosen:
        return

    def run(conn: Connection) -> None:
        conn.execute(
            update(d)
            .where(d.c.id.in_(chosen), d.c.state == "pending", d.c.next_attempt_at < until)
            .values(next_attempt_at=until)
        )

    run_write(db, run)


Result = tuple[Due, Outcome, float]  # a delivery, its attempt's outcome, when it ended


def record(db: Database, results: list[Result], policy: Policy) -> None:
    """Write attempts' outcomes (delivered, retried later, or failed for good), in one
    transaction: a busy deliverer writes once per batch, not once per POST."""
    d = webhook_deliveries

    def run(conn: Connection) -> None:
        for due, outcome, now in results:
            values: dict[str, Any] = {"last_status": outcome.status, "last_error": outcome.error}
            if outcome.ok:
                values.update(state="delivered", delivered_at=now)
            else:
                retry_at = now + backoff(due.attempts, policy)
                if retry_at - due.created_at > policy.retry_window:
                    values.update(state="failed")
                else:
                    values.update(next_attempt_at=retry_at)
            conn.execute(update(d).where(d.c.id == due.id, d.c.state == "pending").values(**values))

    run_write(db, run)


class Deliverer:
    """Delivers due webhook deliveries from this process until stopped."""

    def __init__(
        self,
        db: Database,
        policy: Policy,
        *,
        clock: Callable[[], float] = time.time,
        transport: httpx.AsyncBaseTransport | None = None,
        resolver: Resolver = resolve,
    ) -> None:
        self.db = db
        self.policy = policy
        self.clock = clock
        self.resolver = resolver
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self.in_flight = InFlight()

    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            limits = httpx.Limits(max_connections=self.policy.concurrency)
            self._client = httpx.AsyncClient(
                timeout=self.policy.timeout,
                follow_redirects=False,
                transport=self._transport or PinnedTransport(self.policy, limits, self.resolver),
                trust_env=False,
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def send(self, due: Due) -> Outcome:
        """One attempt, ended at ``policy.timeout`` whatever the receiver does."""
        try:
            async with asyncio.timeout(self.policy.timeout):
                return await self._send(due)
        except TimeoutError:
            return Outcome(None, f"timed out: no answer within {self.policy.timeout:g} s")

    async def _send(self, due: Due) -> Outcome:
        why = await address_refusal_async(due.url, self.policy, self.resolver)
        if why is not None:
            return Outcome(None, f"refused: {why}")
        body = due.body.encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "openclore-webhooks/1",
            SIGNATURE_HEADER: signature(due.secret, int(self.clock()), body),
            "Openclore-Delivery": str(due.id),
        }
        if due.event_id is not None:
            headers["Openclore-Event-Id"] = str(due.event_id)
        try:
            async with self.client().stream(
                "POST", due.url, content=body, headers=headers
            ) as response:
                await _read_at_most(response, MAX_ANSWER_BYTES)
        except httpx.ConnectError as exc:
            if str(exc).startswith("refused: "):  # the address changed since the check above
                return Outcome(None, str(exc)[:500])
            return Outcome(None, ("ConnectError: " + str(exc))[:500])
        except httpx.HTTPError as exc:
            return Outcome(None, (type(exc).__name__ + ": " + str(exc))[:500])
        error = None if 200 <= response.status_code < 300 else f"HTTP {response.status_code}"
        return Outcome(response.status_code, error)

    async def _attempt(self, due: Due) -> Result:
        try:
            outcome = await self.send(due)
        except Exception as exc:  # never lose the row: it is recorded as a failed attempt
            log.exception("webhook delivery %s failed", due.id)
            outcome = Outcome(None, f"{type(exc).__name__}: {exc}"[:500])
        return due, outcome, self.clock()

    async def _record(self, results: list[Result]) -> None:
        try:
            await asyncio.to_thread(record, self.db, results, self.policy)
        except Exception:  # the leases run out and the deliveries are attempted again
            log.exception("recording %d webhook deliveries failed", len(results))

    async def _claim(self, limit: int) -> list[Due]:
        return await asyncio.to_thread(
            claim, self.db, self.clock(), limit, self.policy.lease, self.policy, self.in_flight
        )

    async def deliver_due(self) -> int:
        """Claim what is due now (within the fair-share caps) and deliver it, waiting for every
        attempt (tests, CLI)."""
        claimed = await self._claim(min(self.policy.concurrency, CLAIM_BATCH))
        results = await asyncio.gather(*(self._attempt(d) for d in claimed))
        if results:
            await self._record(list(results))
        return len(claimed)

    async def _recorder(self, queue: asyncio.Queue[Result], freed: asyncio.Event) -> None:
        """Write outcomes as they come, everything waiting in one transaction; each recorded
        attempt frees its slot and wakes the claiming loop."""
        while True:
            batch = [await queue.get()]
            while not queue.empty():
                batch.append(queue.get_nowait())
            await self._record(batch)
            for due, _outcome, _at in batch:
                self.in_flight.remove(due)  # recorded: its slot is free
            freed.set()

    async def _renewer(self) -> None:
        """Renew the leases of what is in flight here, three times a lease."""
        while True:
            await asyncio.sleep(self.policy.lease / 3)
            try:
                await asyncio.to_thread(
                    renew, self.db, set(self.in_flight.ids), self.clock() + self.policy.lease
                )
            except Exception:
                log.exception("renewing webhook delivery leases failed")

    async def _deliver(self, due: Due, queue: asyncio.Queue[Result]) -> None:
        queue.put_nowait(await self._attempt(due))

    async def run(self) -> None:
        """Deliver forever: woken at once by every commit that wrote events (this process, or
        any process on PostgreSQL), and every second for retries that came due."""
        loop = asyncio.get_running_loop()
        woken = asyncio.Event()
        subscription = wake.subscribe(self.db.engine, WAKE_ID, lambda: wake.set_soon(loop, woken))
        tasks: set[asyncio.Task[None]] = set()
        results: asyncio.Queue[Result] = asyncio.Queue()
        recorder = asyncio.create_task(self._recorder(results, woken))
        renewer = asyncio.create_task(self._renewer())
        try:
            await asyncio.to_thread(subscription.wait_ready, 5.0)
            while True:
                woken.clear()
                free = self.policy.concurrency - len(self.in_flight.ids)
                claimed: list[Due] = []
                if free > 0:
                    try:
                        claimed = await self._claim(min(free, CLAIM_BATCH))
                    except Exception:
                        log.exception("claiming webhook deliveries failed")
                for due in claimed:
                    self.in_flight.add(due)
                    task = asyncio.create_task(self._deliver(due, results))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                if claimed and len(claimed) == min(free, CLAIM_BATCH):
                    await asyncio.sleep(0)  # more may be due
                    continue
                # woken by a new event or a freed slot; retries come due within POLL_INTERVAL
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), POLL_INTERVAL)
        finally:
            subscription.close()
            recorder.cancel()
            renewer.cancel()
            for task in tasks:
                task.cancel()
            await self.aclose()


async def _read_at_most(response: httpx.Response, limit: int) -> int:
    """Read the answer's body until ``limit`` bytes have come (nothing of it is kept: only the
    status matters); the rest is never read (the connection is closed instead of drained when
    more was sent). Answers how many bytes were read."""
    read = 0
    async for chunk in response.aiter_raw():
        read += len(chunk)
        if read >= limit:
            break
    return read
