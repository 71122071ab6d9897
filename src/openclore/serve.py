"""The composition root of a serving process: the API's app with the web console mounted on it,
and the background work that runs while it serves (the engine's tick, housekeeping, webhook
delivery, the embedded access gateway). ``openclore serve`` runs :func:`app_factory` in each
uvicorn worker; ``openclore gateway`` runs a gateway alone (:func:`run_gateway`).

This is the one module that starts background work, so the packages it wires (``api``, ``web``,
``engine``, ``gateway``) need not know of each other beyond their own layers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from openclore.api import metrics
from openclore.api.app import Background, create_app
from openclore.api.state import AppState
from openclore.api.transport import configure_protocol
from openclore.config import Settings
from openclore.engine import housekeeping
from openclore.engine.billing import publish_rules
from openclore.engine.clock import Clock
from openclore.engine.webhooks import Deliverer
from openclore.gateway.service import serve_gateway
from openclore.market import webhooks as webhook_service
from openclore.store.db import Database
from openclore.web.app import install_console

log_engine = logging.getLogger("openclore.engine")

GATEWAY_STOP_WAIT = 10.0  # seconds the embedded gateway gets to close at shutdown


def app_factory() -> FastAPI:
    """uvicorn ``--factory`` target of ``openclore serve`` (one per worker): the API with the
    console mounted on it; settings come from OPENCLORE_* variables."""
    app = api_app_factory()
    install_console(app)
    return app


def api_app_factory() -> FastAPI:
    """uvicorn ``--factory`` target: the API alone (no console), with its background work."""
    settings = Settings()
    configure_protocol(settings)  # this worker's header timeout
    return server_app(settings, gateway=settings.gateway)


def server_app(
    settings: Settings,
    db: Database | None = None,
    clock: Clock | None = None,
    *,
    gateway: bool = False,
) -> FastAPI:
    """The API's app as a server process runs it: with the background work while it serves."""
    return create_app(settings, db, clock, background=background_work(gateway=gateway))


def background_work(*, gateway: bool) -> Background:
    """What a serving process runs besides the requests, each as the settings ask: the engine's
    tick, housekeeping, webhook delivery and (with ``gateway``) the embedded access gateway.
    Left at shutdown: the gateway closes, the loops are cancelled, the process's live metrics
    stop counting."""

    @contextlib.asynccontextmanager
    async def run(state: AppState) -> AsyncIterator[None]:
        settings = state.settings
        # the market's rules the engine reads from the database (every replica, every resolve)
        await run_in_threadpool(publish_rules, state.db, settings.spot_starvation_seconds)
        tasks = []
        if settings.tick_interval > 0:
            tasks.append(asyncio.create_task(_ticker(state)))
        if settings.event_retention_days > 0:
            tasks.append(asyncio.create_task(_housekeeper(state)))
        if settings.webhook_delivery:
            deliverer = Deliverer(state.db, webhook_service.policy(settings))
            tasks.append(asyncio.create_task(deliverer.run()))
        gateway_stop = asyncio.Event()
        gateway_task = None
        if gateway:
            gateway_task = asyncio.create_task(serve_gateway(state.db, settings, gateway_stop))
        try:
            yield
        finally:
            if gateway_task is not None:
                gateway_stop.set()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(gateway_task, GATEWAY_STOP_WAIT)
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            metrics.process_exit()  # a server process ends

    return run


async def _ticker(state: AppState) -> None:
    """The engine's tick every ``tick_interval`` seconds, in every process (ticks are
    idempotent and replica-safe)."""
    interval = state.settings.tick_interval
    while True:
        await asyncio.sleep(interval)
        try:
            await run_in_threadpool(state.tick, state.now())
        except Exception:  # keep ticking; the next tick settles whatever this one missed
            log_engine.exception("engine tick failed")


async def _housekeeper(state: AppState) -> None:
    """Old events and finished webhook deliveries go (:mod:`openclore.engine.housekeeping`),
    soon after the process starts and then every hour."""
    await asyncio.sleep(housekeeping.FIRST_DELAY)
    while True:
        try:
            purged = await run_in_threadpool(
                housekeeping.purge,
                state.db,
                state.now(),
                time.time(),
                state.settings.event_retention_days,
            )
            if purged.events or purged.deliveries:
                log_engine.info(
                    "purged %d events and %d webhook deliveries older than %d days",
                    purged.events,
                    purged.deliveries,
                    state.settings.event_retention_days,
                )
        except Exception:  # tried again at the next run
            log_engine.exception("housekeeping failed")
        await asyncio.sleep(housekeeping.INTERVAL)


def run_gateway(db: Database, settings: Settings) -> None:
    """``openclore gateway``: serve ``settings.gateway_name`` alone until SIGINT or SIGTERM."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve_gateway(db, settings, stop)

    asyncio.run(main())
