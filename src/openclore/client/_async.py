"""The asynchronous client: the same API as :class:`Client`, awaitable.

This file is the source of ``_sync.py``: after changing it, run ``scripts/unasync.py``
(``scripts/test`` runs ``scripts/unasync.py --check``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, TypeVar

import httpx

from openclore.client import _calls as calls
from openclore.client import _standing
from openclore.client._base import BaseClient, ssh_banner_async
from openclore.client._calls import Amount, ApiCall, OrderType
from openclore.client._errors import (
    CloreError,
    OrderLookupFailed,
    RateLimited,
    UnexpectedResponse,
)
from openclore.client._models import (
    AddedServer,
    ApiKey,
    CancelOrdersResponse,
    CreatedApiKey,
    Event,
    EventPage,
    Gigaspot,
    GigaspotCreated,
    GigaspotEdited,
    Marketplace,
    MyServer,
    Order,
    RenterFees,
    ServerConfig,
    SpotMarketplace,
    SshKey,
    StandingOrder,
    Statement,
    Template,
    Transaction,
    TransactionsPage,
    Volume,
    Wallet,
    Webhook,
    Withdrawal,
)
from openclore.client._pacing import Pacer

T = TypeVar("T")
STREAM_READ_TIMEOUT = 60.0  # the server sends a keep-alive comment every 15 s


class AsyncClient(BaseClient):
    """The asyncio twin of :class:`Client`. Safe to share between tasks (and threads).

    ``api_key`` defaults to ``$OPENCLORE_API_KEY``, ``base_url`` to ``$OPENCLORE_URL`` or
    ``https://api.clore.ai``. Calls are paced to the API's limits (``interval`` between any two
    calls, ``create_order_interval`` between two orders); ``rate_limit=False`` switches pacing off.
    A refused call (code 5) waits for Retry-After and is sent again, up to ``max_retries`` times;
    network errors are retried (after ``retry_backoff`` × 2ⁿ s) for reads, for requests that
    surely never left, and for create_order, which carries an ``Idempotency-Key`` so that openclore
    rents once however often it arrives (``keyed_retries``; off for api.clore.ai, which ignores
    the key, so there a create_order that may have arrived is never sent twice).
    ``transport`` or ``http_client`` replace the HTTP layer (tests, proxies, custom TLS).
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        timeout: float = 30.0,
        rate_limit: bool = True,
        interval: float = 1.0,
        create_order_interval: float = 5.0,
        pacer: Pacer | None = None,
        max_retries: int = 3,
        retry_rate_limited: bool = True,
        retry_backoff: float = 0.5,
        lookup_attempts: int = 3,
        extra_headers: Mapping[str, str] | None = None,
        keyed_retries: bool | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(
            api_key,
            base_url=base_url,
            timeout=timeout,
            rate_limit=rate_limit,
            interval=interval,
            create_order_interval=create_order_interval,
            pacer=pacer,
            max_retries=max_retries,
            retry_rate_limited=retry_rate_limited,
            retry_backoff=retry_backoff,
            lookup_attempts=lookup_attempts,
            extra_headers=extra_headers,
            keyed_retries=keyed_retries,
        )
        self._owns_http = http_client is None
        self._http = http_client or httpx.AsyncClient(timeout=timeout, transport=transport)
        self.sandbox = AsyncSandbox(self)

    # ------------------------------------------------------------------ lifecycle

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ transport

    async def request(
        self,
        method: Literal["GET", "POST"],
        path: str,
        body: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
        *,
        idempotent: bool | None = None,
    ) -> dict[str, Any]:
        """Any endpoint, raw: the decoded body (numbers with a fraction as Decimal).

        ``path`` is ``/v1/<endpoint>``. Transport errors are retried only when ``idempotent``
        (default: for GET).
        """
        safe = method == "GET" if idempotent is None else idempotent
        call: ApiCall[dict[str, Any]] = ApiCall(method, path, dict, body, params, idempotent=safe)
        return await self._run(call)

    async def _run(self, call: ApiCall[T]) -> T:
        return call.parse(await self._execute(call))

    async def _execute(self, call: ApiCall[Any]) -> dict[str, Any]:
        url = self._url(call)
        content = calls.encode(call)
        request_headers = self._request_headers(content is not None, call.idempotency_key)
        attempt = 0
        while True:
            delay = self.pacer.reserve(call.create_order)
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                response = await self._http.request(
                    call.method, url, content=content, params=call.params, headers=request_headers
                )
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                error = calls.connection_error(exc, url)
                if self.retry.transport(call, error, attempt):
                    attempt += 1
                    await asyncio.sleep(self.retry.backoff(attempt))
                    continue
                raise error from exc
            try:
                return calls.decode(response)
            except RateLimited as exc:
                if not self.retry.rate_limited(attempt):
                    raise
                attempt += 1
                self.pacer.hold(self._rate_wait(exc), call.create_order)
            except CloreError as exc:
                if not self.retry.failed(call, exc, attempt):
                    raise
                attempt += 1
                await asyncio.sleep(self.retry.backoff(attempt))

    # ------------------------------------------------------------------ Clore API v1

    async def wallets(self) -> list[Wallet]:
        """Your wallets: balance, deposit address, withdrawal fee per currency."""
        return await self._run(calls.wallets())

    async def my_servers(self) -> list[MyServer]:
        """The servers you host."""
        return await self._run(calls.my_servers())

    async def server_config(self, server_name: str) -> ServerConfig:
        """One of your servers by name (mrl in hours)."""
        return await self._run(calls.server_config(server_name))

    async def marketplace(self, **query: str | int | float | bool) -> Marketplace:
        """Every public, available, online server (rented ones too, ``rented=True``); keyword
        arguments ask openclore to filter on the server (``gpu="4090", sort="price"``, see
        ``GET /v1/marketplace`` in docs/extensions.md); Clore.ai ignores them."""
        params = {k: (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in query.items()}
        return await self._run(calls.marketplace(params))

    async def my_orders(self, return_completed: bool = False) -> list[Order]:
        """Your orders and spot offers; ``return_completed`` adds ended ones."""
        return await self._run(calls.my_orders(return_completed))

    async def order_logs(self, order_id: int, tail: int = 200) -> list[str]:
        """openclore: the last ``tail`` lines (at most 1000) of your order's container output,
        fetched from its host."""
        return await self._run(calls.order_logs(order_id, tail))

    async def wait_for_order(
        self, order_id: int, *, timeout: float = 600.0, interval: float = 1.0
    ) -> Order:
        """Wait until the order is reachable and return it: its container runs and, when it
        publishes port 22, an SSH server answers there (through the market's gateway, that is
        end to end). Raises :class:`TimeoutError` after ``timeout`` seconds (the order keeps
        running) and :class:`LookupError` when the order is unknown or has ended."""
        deadline = time.monotonic() + timeout
        while True:
            orders = await self.my_orders(return_completed=True)
            order = next((o for o in orders if o.id == order_id), None)
            if order is None or order.expired:
                raise LookupError(f"order {order_id} is not an active order of yours")
            if order.running is not False and (order.state or "running") == "running":
                if order.ssh_port is None or order.host is None or order.simulated:
                    if order.state == "running" or order.running:
                        return order
                elif await ssh_banner_async(order.host, order.ssh_port) is not None:
                    return order
            if time.monotonic() > deadline:
                raise TimeoutError(f"order {order_id} is not reachable after {timeout:.0f} s")
            await asyncio.sleep(interval)

    async def spot_marketplace(self, server_id: int) -> SpotMarketplace:
        """The spot order book of one server."""
        return await self._run(calls.spot_marketplace(server_id))

    async def set_server_settings(
        self,
        name: str,
        *,
        availability: bool | None = None,
        mrl: int | None = None,
        on_demand: Amount | None = None,
        spot: Amount | None = None,
        currency: str | None = None,
        visibility: Literal["public", "hidden"] | None = None,
        enabled: Mapping[str, bool] | None = None,
        usd_pricing: Mapping[str, Mapping[str, Amount]] | None = None,
        autoprice: Mapping[str, Literal["usd", False]] | None = None,
        disk_gb: int | None = None,
        storage_price: Amount | None = None,
    ) -> None:
        """Change your server's settings: prices per day, ``mrl`` in hours. Only what is given
        changes. With ``currency`` the prices go to that currency (``<currency>_on_demand``).
        ``enabled`` stops or starts accepting currencies; ``usd_pricing`` (USD per day per
        currency) with ``autoprice={"<currency>": "usd"}`` makes that currency's prices follow
        the market's exchange rate. openclore: ``disk_gb`` is the disk each rental gets (0:
        none offered), ``storage_price`` what a stopped order's disk or a volume pays per GB
        per day (in ``currency``, else the market's default currency)."""
        await self._run(
            calls.set_server_settings(
                name,
                availability=availability,
                mrl=mrl,
                on_demand=on_demand,
                spot=spot,
                currency=currency,
                visibility=visibility,
                enabled=enabled,
                usd_pricing=usd_pricing,
                autoprice=autoprice,
                disk_gb=disk_gb,
                storage_price=storage_price,
            )
        )

    async def set_spot_price(self, order_id: int, price: Amount) -> None:
        """Change your spot bid (per day). Raising: any time. Lowering: once per 600 s
        (:class:`CanLowerEvery600Seconds`) and by one step (:class:`ExceededMaxStep`)."""
        await self._run(calls.set_spot_price(order_id, price))

    async def cancel_order(
        self, order_id: int, issue: str | None = None, rating: int | None = None
    ) -> None:
        """End an order or spot offer; ``issue`` (≤ 2048 chars) reports a problem; ``rating``
        (1–5, once per order) scores the server, also for an order that already ended."""
        await self._run(calls.cancel_order(order_id, issue, rating))

    async def cancel_orders(self, order_ids: Iterable[int]) -> CancelOrdersResponse:
        """End several orders, each on its own; ``failed_to_cancel`` and ``results`` say which
        could not be ended and why."""
        return await self._run(calls.cancel_orders(order_ids))

    async def renter_fees(self) -> RenterFees:
        """The platform fee (percent) and creation fees, per currency."""
        return await self._run(calls.renter_fees())

    async def poh_balance(self) -> dict[str, Any]:
        """Proof of Holding (openclore has none: zeros)."""
        return await self._run(calls.poh_balance())

    async def get_gigaspot(self) -> Gigaspot:
        """The GigaSPOT snapshot: spot-rentable servers, their bids and GPU ranges."""
        return await self._run(calls.get_gigaspot())

    async def create_gigaspot_orders(self, bids: Iterable[Mapping[str, Any]]) -> GigaspotCreated:
        """Place spot bids in one call: each ``{renting_server, price, image, currency,
        oc: [{pl, core_lock, mem_lock, core_offset, mem_offset}, …], env}``."""
        return await self._run(calls.create_gigaspot_orders(bids))

    async def edit_gigaspot_orders(self, edits: Iterable[Mapping[str, Any]]) -> GigaspotEdited:
        """Re-price GigaSPOT bids and replace their GPU settings: ``{order_id, price, oc}``."""
        return await self._run(calls.edit_gigaspot_orders(edits))

    async def create_order(
        self,
        server_id: int,
        image: str | None = None,
        *,
        template_id: int | None = None,
        type: OrderType = "on-demand",
        currency: str = "bitcoin",
        spot_price: Amount | None = None,
        ports: Mapping[int, str] | Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
        jupyter_token: str | None = None,
        ssh_key: str | None = None,
        ssh_password: str | None = None,
        command: str | None = None,
        required_price: Amount | None = None,
        autossh_entrypoint: bool | None = None,
        dockerhub_auth: str | None = None,
        gpu_count: int | None = None,
        gpus: Sequence[int] | None = None,
        disk_gb: int | None = None,
        volumes: Mapping[int, str] | Mapping[str, str] | None = None,
        stop_after: int | None = None,
        terminate_after: int | None = None,
    ) -> Order:
        """Rent ``server_id`` (on-demand, or a spot bid of ``spot_price`` per day) and return the
        new order. ``ports`` maps container ports to ``"tcp"``/``"http"``. ``gpu_count`` (or
        explicit ``gpus`` indices) rents some of a server's GPUs where its host allows it
        (openclore); the bid is then the price per day for those GPUs.

        openclore, keeping work: ``disk_gb`` (at most what the host offers; default: all of
        it), ``volumes`` (``{volume id: "/path"}``, your volumes on this server), and timers
        in seconds from now: ``stop_after`` stops it (it keeps its disk),
        ``terminate_after`` ends it.

        openclore, templates: ``template_id`` (yours or a public one) gives the image and
        settings; the ones passed here override them (``image`` may then be left out).

        openclore answers with the order; a server that answers ``{"code":0}`` alone (Clore.ai)
        gets a *best-effort* lookup in ``my_orders`` by server, type and creation time, which
        raises :class:`OrderLookupFailed` when nothing matches. It carries an Idempotency-Key;
        without keyed retries it is never re-sent after it may have reached the server.
        """
        call = calls.create_order(
            server_id,
            image,
            template_id=template_id,
            type=type,
            currency=currency,
            spot_price=spot_price,
            ports=ports,
            env=env,
            jupyter_token=jupyter_token,
            ssh_key=ssh_key,
            ssh_password=ssh_password,
            command=command,
            required_price=required_price,
            autossh_entrypoint=autossh_entrypoint,
            dockerhub_auth=dockerhub_auth,
            gpu_count=gpu_count,
            gpus=gpus,
            disk_gb=disk_gb,
            volumes=volumes,
            stop_after=stop_after,
            terminate_after=terminate_after,
        )
        started = time.time()
        result = await self._run(call)
        if result.order is not None:
            return result.order
        for _ in range(self.lookup_attempts):
            orders = await self.my_orders(return_completed=result.order_id is not None)
            if result.order_id is not None:
                found = next((o for o in orders if o.id == result.order_id), None)
            else:
                found = calls.pick_new_order(
                    orders,
                    server_id=server_id,
                    spot=type == "spot",
                    started=started,
                    image=image,
                    currency=currency,
                )
            if found is not None:
                return found
        raise OrderLookupFailed(
            f"the order on server {server_id} was created, but my_orders does not show it "
            f"(order_id={result.order_id})",
            response=result.model_dump(),
        )

    # ------------------------------------------------------------------ keeping work (openclore)

    async def stop_order(self, order_id: int) -> Order:
        """Stop a running order: its GPUs go back to the market, its container and disk stay
        on the host, and it pays only ``storage_per_day`` until you start it again."""
        return await self._run(calls.stop_order(order_id))

    async def start_order(self, order_id: int) -> Order:
        """Start a stopped order again, in the same container on the same server. Raises
        :class:`GpusNotFree` (and it stays stopped) when its GPUs are rented by someone else."""
        return await self._run(calls.start_order(order_id))

    async def restart_order(self, order_id: int) -> int:
        """Restart a running order's container (its files stay); returns the restart's number."""
        return await self._run(calls.restart_order(order_id))

    async def reset_order(self, order_id: int) -> int:
        """Recreate a running order's container from its image: its files are lost, its volumes
        and ports stay. Returns how many resets it has had."""
        return await self._run(calls.reset_order(order_id))

    async def extend_order(self, order_id: int, hours: int) -> int:
        """Give an order ``hours`` more (within the host's maximum rental length, else
        :class:`ExtendOutOfRange` with ``max_hours``); returns its new ``mrl`` in seconds."""
        return await self._run(calls.extend_order(order_id, hours))

    async def create_volume(
        self, server_id: int, size_gb: int, name: str, currency: str | None = None
    ) -> Volume:
        """A volume of ``size_gb`` on ``server_id``, billed from now until you delete it; mount
        it with ``create_order(..., volumes={volume.id: "/data"})`` on the same server."""
        return await self._run(calls.create_volume(server_id, size_gb, name, currency))

    async def volumes(self, include_ended: bool = False) -> list[Volume]:
        """Your volumes (newest first); ``include_ended`` adds deleted and ended ones."""
        return await self._run(calls.volumes(include_ended))

    async def delete_volume(self, volume_id: int) -> None:
        """Delete a volume and its files (billed up to now). Raises :class:`VolumeInUse` while
        a live order mounts it."""
        await self._run(calls.delete_volume(volume_id))

    # ---------------------------------------------------- renters' own things (SPEC §8)

    async def add_ssh_key(self, name: str, public_key: str) -> SshKey:
        """Keep an SSH public key (one ``type base64 [comment]`` line: ed25519, ECDSA, or RSA
        of 2048+ bits) on the account: every order created from now on gets it in root's
        authorized_keys. Raises :class:`InvalidSshKey` or :class:`SshKeyExists`."""
        return await self._run(calls.add_ssh_key(name, public_key))

    async def ssh_keys(self) -> list[SshKey]:
        """The account's SSH keys (oldest first)."""
        return await self._run(calls.ssh_keys())

    async def delete_ssh_key(self, key_id: int) -> None:
        """Remove a key from the account; orders created before keep it."""
        await self._run(calls.delete_ssh_key(key_id))

    async def attach_ssh_key(self, order_id: int, key_id: int) -> bool:
        """Add one of the account's keys to a live order made before it; its container is made
        again with the key (its files kept, as a restart does). False: it had the key."""
        return await self._run(calls.attach_ssh_key(order_id, key_id))

    async def create_template(
        self,
        name: str,
        image: str,
        *,
        command: str | None = None,
        env: Mapping[str, str] | None = None,
        ports: Mapping[int, str] | Mapping[str, str] | None = None,
        jupyter_token: str | None = None,
        disk_gb: int | None = None,
        public: bool = False,
        readme: str | None = None,
    ) -> Template:
        """A template ``create_order(template_id=…)`` can start from; ``public`` lists it to
        everyone."""
        return await self._run(
            calls.create_template(
                name,
                image,
                command=command,
                env=env,
                ports=ports,
                jupyter_token=jupyter_token,
                disk_gb=disk_gb,
                public=public,
                readme=readme,
            )
        )

    async def templates(self, q: str | None = None) -> list[Template]:
        """Your templates and the public ones; ``q`` searches names (any case)."""
        return await self._run(calls.templates(q))

    async def delete_template(self, template_id: int) -> None:
        """Delete one of your templates (orders made from it keep their settings)."""
        await self._run(calls.delete_template(template_id))

    async def create_api_key(
        self,
        scopes: Sequence[str],
        *,
        name: str | None = None,
        expires_at: int | None = None,
        expires_in: int | None = None,
        spend_limit: Mapping[str, Amount] | None = None,
    ) -> CreatedApiKey:
        """A new API key with ``scopes`` (read, rent, host, money, account), optionally expiring
        (``expires_at`` market time, or ``expires_in`` seconds from now) and with a daily
        ``spend_limit`` per currency; its ``secret`` is shown this once. A key
        never makes a stronger key (:class:`ScopeNotHeld`, :class:`SpendLimitNotHeld`)."""
        return await self._run(
            calls.create_api_key(
                scopes,
                name=name,
                expires_at=expires_at,
                expires_in=expires_in,
                spend_limit=spend_limit,
            )
        )

    async def api_keys(self) -> list[ApiKey]:
        """The account's live keys, without their secrets."""
        return await self._run(calls.api_keys())

    async def current_api_key(self) -> ApiKey:
        """The key this client calls with: its scopes, expiry, limit and today's spend."""
        return await self._run(calls.api_key())

    async def revoke_api_key(self, key_id: int) -> None:
        """Revoke a key at once (in every API process); console sessions it began end."""
        await self._run(calls.revoke_api_key(key_id))

    async def create_standing_order(
        self,
        max_price_per_day: Amount,
        image: str | None = None,
        *,
        query: Mapping[str, str | int | float | bool] | None = None,
        currency: str = "bitcoin",
        gpu_count: int | None = None,
        type: OrderType = "on-demand",
        count: int = 1,
        expires_at: int | None = None,
        template_id: int | None = None,
        ports: Mapping[int, str] | Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
        jupyter_token: str | None = None,
        ssh_key: str | None = None,
        ssh_password: str | None = None,
        command: str | None = None,
        disk_gb: int | None = None,
    ) -> StandingOrder:
        """openclore: rent up to ``count`` servers matching ``query`` (marketplace filters:
        ``gpu``, ``min_gpus``, ``country``…) at or below ``max_price_per_day`` as soon as they
        appear, before any later standing order or direct ``create_order``; the fields are
        ``create_order``'s. It fills at once where a matching server is free."""
        return await self._run(
            _standing.create_standing_order(
                max_price_per_day,
                image,
                query=query,
                currency=currency,
                gpu_count=gpu_count,
                type=type,
                count=count,
                expires_at=expires_at,
                template_id=template_id,
                ports=ports,
                env=env,
                jupyter_token=jupyter_token,
                ssh_key=ssh_key,
                ssh_password=ssh_password,
                command=command,
                disk_gb=disk_gb,
            )
        )

    async def standing_orders(self) -> list[StandingOrder]:
        """openclore: your standing orders, newest first, with the orders they made."""
        return await self._run(_standing.standing_orders())

    async def cancel_standing_order(self, standing_order_id: int) -> StandingOrder:
        """openclore: an open standing order fills no more (the orders it made stay)."""
        return await self._run(_standing.cancel_standing_order(standing_order_id))

    # ------------------------------------------------------------------ openclore extensions

    async def add_server(self, name: str) -> AddedServer:
        """openclore: add a server to host; its agent registers with ``init_token``."""
        return await self._run(calls.add_server(name))

    # ------------------------------------------------------------------ events (openclore)

    async def events_after(
        self, after: int = 0, limit: int = 100, types: Sequence[str] | None = None
    ) -> EventPage:
        """Your events with an id above ``after``, oldest first (polling)."""
        return await self._run(calls.events_after(after, limit, types))

    async def events(
        self,
        after: int | None = None,
        *,
        types: Sequence[str] | None = None,
        reconnect: bool = True,
    ) -> AsyncGenerator[Event, None]:
        """Your events as they happen (the ``/v1/events`` stream), forever.

        ``after``: start after this event id (e.g. the last one you handled); None: from now.
        A dropped connection is opened again with ``Last-Event-ID`` (after ``retry_backoff``
        × 2ⁿ s, at most ``max_retries`` times in a row), so no event is skipped or repeated.
        """
        last = after
        wanted = list(types) if types else None
        url = self.base_url + "/v1/events"
        failures = 0
        while True:
            request_headers = self._request_headers(False)
            if last is not None:
                request_headers = {**request_headers, "Last-Event-ID": str(last)}
            delay = self.pacer.reserve(False)
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                async with self._http.stream(
                    "GET",
                    url,
                    headers=request_headers,
                    params={"types": ",".join(wanted)} if wanted else None,
                    timeout=httpx.Timeout(self.timeout, read=STREAM_READ_TIMEOUT),
                ) as response:
                    if not response.headers.get("content-type", "").startswith("text/event-stream"):
                        await response.aread()
                        calls.decode(response)  # raises the error the server answered
                        raise UnexpectedResponse("the server did not open an event stream")
                    frame: list[str] = []
                    async for line in response.aiter_lines():
                        if line:
                            frame.append(line)
                            continue
                        event = calls.parse_sse_event(frame)
                        frame = []
                        if event is not None:
                            failures = 0
                            last = event.id
                            yield event
            except httpx.HTTPError as exc:
                if not reconnect or failures >= self.retry.max_retries:
                    raise calls.connection_error(exc, url) from exc
                failures += 1
                await asyncio.sleep(self.retry.backoff(failures))
                continue
            if not reconnect:
                return

    async def create_webhook(self, url: str, events: Sequence[str] | None = None) -> Webhook:
        """Signed POSTs of your events to ``url`` (all types, or ``events``); keep ``secret``."""
        return await self._run(calls.create_webhook(url, events))

    async def webhooks(self) -> list[Webhook]:
        return await self._run(calls.webhooks())

    async def delete_webhook(self, webhook_id: int) -> None:
        await self._run(calls.delete_webhook(webhook_id))

    async def ping_webhook(self, webhook_id: int) -> None:
        """Send a ``webhook.ping`` event to that webhook (see its delivery log)."""
        await self._run(calls.ping_webhook(webhook_id))

    async def transactions(
        self,
        *,
        currency: str | None = None,
        since: int | None = None,
        until: int | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> TransactionsPage:
        """openclore: one page of your ledger entries, oldest first, each with the wallet's
        balance after it; pass ``next_cursor`` back as ``cursor`` for the next page."""
        return await self._run(
            calls.transactions(
                currency=currency, since=since, until=until, limit=limit, cursor=cursor
            )
        )

    async def all_transactions(
        self,
        *,
        currency: str | None = None,
        since: int | None = None,
        until: int | None = None,
    ) -> list[Transaction]:
        """openclore: every ledger entry of yours in the period, page by page."""
        out: list[Transaction] = []
        cursor: str | None = None
        while True:
            page = await self.transactions(
                currency=currency, since=since, until=until, limit=1000, cursor=cursor
            )
            out.extend(page.transactions)
            if page.next_cursor is None:
                return out
            cursor = page.next_cursor

    async def statement(self, month: str | None = None, currency: str | None = None) -> Statement:
        """openclore: the statement of a month (``YYYY-MM``, default this month) and currency."""
        return await self._run(calls.statement(month, currency))

    async def withdraw(self, currency: str, amount: Amount, address: str) -> Withdrawal:
        """openclore: ask to withdraw ``amount`` (the fee in ``wallets`` comes on top) to
        ``address``; the money leaves your wallet at once and is paid out when the operator
        approves (or comes back if they reject)."""
        return await self._run(calls.withdraw(currency, amount, address))

    async def withdrawals(self) -> list[Withdrawal]:
        """openclore: your withdrawal requests with their state."""
        return await self._run(calls.withdrawals())


class AsyncSandbox:
    """openclore sandbox extensions (``serve --demo`` or ``OPENCLORE_SANDBOX=1``); elsewhere
    they raise :class:`InvalidEndpoint`."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def advance_time(self, seconds: int) -> int:
        """Move the market's clock forward; returns the market's new time (unix seconds)."""
        return await self._client._run(calls.sandbox_advance_time(seconds))

    async def deposit(self, currency: str, amount: Amount) -> None:
        """Credit ``amount`` whole coins of ``currency`` to your wallet."""
        await self._client._run(calls.sandbox_deposit(currency, amount))
