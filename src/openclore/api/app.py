"""The HTTP application: Clore API v1 under /v1, sandbox extensions under /sandbox, the agents'
channel under /agent/v1 and the operational and payment routes beside them.

What a serving process runs besides (the engine's ticker, housekeeping, webhook delivery, the
embedded gateway) is wired by :mod:`openclore.serve` through ``background``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

from fastapi import FastAPI

from openclore.api import metrics
from openclore.api.agent_api import install_agent_api
from openclore.api.listing import MemoryListing
from openclore.api.openapi import install_openapi
from openclore.api.operations import install_operations
from openclore.api.payments import install_payments
from openclore.api.pipeline import Pipeline, install_error_handlers
from openclore.api.request_ids import RequestId
from openclore.api.state import AppState
from openclore.api.transport import BodyLimit, DateHeader
from openclore.api.v1 import SANDBOX_ENDPOINTS, V1_ENDPOINTS, install_snapshot
from openclore.api.vast import install_vast_api
from openclore.config import Settings
from openclore.engine.clock import Clock, SandboxClock, SystemClock
from openclore.store.db import Database

# what runs while the app serves: entered at startup, left at shutdown (before the database the
# app opened is closed)
Background = Callable[[AppState], AbstractAsyncContextManager[None]]

DESCRIPTION = (
    "A self-hostable GPU-rental marketplace speaking the Clore.ai API v1. Every response "
    "carries `code` (0 OK, 1 internal, 2 invalid input, 3 invalid token, 4 invalid "
    "endpoint, 5 rate limit, 6 named error in `error`). Authenticate with the `auth` "
    "header."
)


def create_app(
    settings: Settings,
    db: Database | None = None,
    clock: Clock | None = None,
    *,
    rate_clock: Clock | None = None,
    background: Background | None = None,
) -> FastAPI:
    """Build the application. ``db``, ``clock`` (the market's time) and ``rate_clock`` (the wall
    clock rate limits follow) are injectable for tests and the sandbox; ``background`` runs
    alongside the app while it serves (``openclore serve``: :mod:`openclore.serve`)."""
    database = db or Database(settings.database_url, direct_url=settings.database_direct_url)
    if clock is None:
        clock = SandboxClock(database.engine) if settings.sandbox_enabled else SystemClock()
    state = AppState(settings, database, clock, rate_clock)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            if background is None:
                yield
            else:
                async with background(state):
                    yield
        finally:
            if db is None:  # the app opened it
                database.dispose()

    app = FastAPI(
        lifespan=lifespan,
        title="openclore",
        version="1.0",
        description=DESCRIPTION,
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.openclore = state
    pipeline = Pipeline(state)
    for ep in V1_ENDPOINTS:
        pipeline.register(app, "/v1", ep)
    for ep in SANDBOX_ENDPOINTS:
        pipeline.register(app, "/sandbox", ep)
    install_error_handlers(app, settings)
    install_snapshot(app, state)
    install_payments(app, state)
    install_agent_api(app, state)  # host agents: /agent/v1, apart from the Clore API
    install_operations(app, state)
    install_vast_api(app, state)  # Vast.ai's API v0/v1 (docs/vast-compat.md)
    install_openapi(app, V1_ENDPOINTS, SANDBOX_ENDPOINTS)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(DateHeader)
    app.add_middleware(metrics.Metrics)
    app.add_middleware(RequestId)  # every log line of the request carries its id
    # outermost: the listing held in memory goes out before any other layer (api/listing.py)
    app.add_middleware(MemoryListing, pipeline=pipeline)
    return app
