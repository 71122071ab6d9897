"""Process entry points for uvicorn (one per worker) and the engine's background ticker."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from openclore.api.app import AppState, create_app
from openclore.api.transport import configure_protocol
from openclore.config import Settings
from openclore.engine.ticker import tick

log = logging.getLogger("openclore.engine")


async def _ticker(state: AppState) -> None:
    interval = state.settings.tick_interval
    while True:
        await asyncio.sleep(interval)
        try:
            await run_in_threadpool(tick, state.db, state.now(), state.settings.agent_timeout)
        except Exception:  # keep ticking; the next tick settles whatever this one missed
            log.exception("engine tick failed")


def with_ticker(app: FastAPI) -> FastAPI:
    state: AppState = app.state.openclore

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        task = None
        if state.settings.tick_interval > 0:
            task = asyncio.create_task(_ticker(state))
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            state.db.dispose()

    app.router.lifespan_context = lifespan
    return app


def app_factory() -> FastAPI:
    """uvicorn ``--factory`` target: settings come from OPENCLORE_* variables."""
    settings = Settings()
    configure_protocol(settings)  # this worker's header timeout
    return with_ticker(create_app(settings))
